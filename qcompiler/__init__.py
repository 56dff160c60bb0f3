"""qcompiler: a quantization compiler for PyTorch programs captured with ``torch.export``.

The primitives every stage stands on are ``qcompiler::`` torch.library ops,
re-exported here with typed Python wrappers:

- affine: :func:`choose_qparams_affine`, :func:`quantize_affine`, :func:`dequantize_affine`
- sub-byte storage: :func:`pack_int`, :func:`unpack_int`
- codebooks: :func:`kmeans_codebook`, :func:`quantize_codebook`, :func:`dequantize_codebook`;
  additive codebooks (AQLM): :func:`dequantize_additive`
- float8: :func:`choose_scale_float8`, :func:`quantize_float8`, :func:`dequantize_float8`
- fixed-table formats (fp4/fp6/fp8 grids with block scales): :func:`dequantize_table` (grids, scales and
  rounding in ``qcompiler.runtime.tables``)

The stages (capture, annotate, prepare, convert, lower, package, load) build on them.
"""
from .runtime import (
    INT_TYPE_NAMES,
    IntType,
    choose_qparams_affine,
    choose_scale_float8,
    dequantize_additive,
    dequantize_affine,
    dequantize_codebook,
    dequantize_float8,
    dequantize_table,
    int_type,
    kmeans_codebook,
    pack_int,
    packed_size,
    quantize_affine,
    quantize_codebook,
    quantize_float8,
    unpack_int,
)

__version__ = "0.1.0"

__all__ = [
    "choose_qparams_affine", "quantize_affine", "dequantize_affine",
    "pack_int", "unpack_int", "packed_size",
    "kmeans_codebook", "quantize_codebook", "dequantize_codebook", "dequantize_additive",
    "choose_scale_float8", "quantize_float8", "dequantize_float8", "dequantize_table",
    "IntType", "int_type", "INT_TYPE_NAMES",
]

from .stages.capture import capture
from .llm.capture_lm import capture_lm
from .llm.batching import Batcher
from .llm.server import app as server_app
from .llm.generate import generate, stream
from .configs import (
    AQLMWeightOnlyConfig,
    CodebookWeightOnlyConfig,
    Float8DynamicActivationFloat8WeightConfig,
    Float8WeightOnlyConfig,
    Int4WeightOnlyConfig,
    Int8DynamicActivationInt4WeightConfig,
    Int8DynamicActivationInt8WeightConfig,
    Int8StaticActivationInt8WeightConfig,
    Int8WeightOnlyConfig,
    SCHEME_FORMS,
)
from .schemes import (FpxWeightOnlyConfig, Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig,
                      MXWeightOnlyConfig, NF4WeightOnlyConfig, NVFP4WeightOnlyConfig, config_from_dict,
                      config_from_string, config_to_dict, scheme, scheme_forms)
from .stages.convert import convert
from .stages.lower import lower
from .passes.algorithms import AWQ, GPTQ, HQQ, SmoothQuant
from .passes.aqlm import AQLM
from .stages.package import Loaded, load, package
from .files import Artifact, check_writable, open_artifact, save
from .stages.quantize import quantize
from .tuning.autoquant import AUTOQUANT_CANDIDATES, LayerFloor, ModelBudget, autoquant
from .plan import Plan
from .stages.calibrate import calibrate, needs_calibration
from .stages.prepare import prepare
from .recipe import Recipe, Rule
from .stages.report import LayerReport, Report, report
from .runtime.target import CPU_CAPABILITIES, Target
from .runtime.digests import Verified, verify
from .runtime.numerics import median_call_s

__all__ += [
    "capture", "prepare", "calibrate", "needs_calibration", "convert", "quantize", "report", "Report", "LayerReport",
    "lower", "package", "load", "Loaded", "verify", "Verified", "Target", "CPU_CAPABILITIES",
    "capture_lm", "generate", "stream", "Batcher", "server_app",
    "save", "open_artifact", "Artifact", "check_writable", "SCHEME_FORMS", "scheme_forms", "scheme",
    "config_to_dict", "config_from_dict",
    "Recipe", "Rule", "config_from_string", "GPTQ", "HQQ", "AWQ", "SmoothQuant", "AQLM", "AQLMWeightOnlyConfig",
    "autoquant", "AUTOQUANT_CANDIDATES", "median_call_s", "Plan", "LayerFloor", "ModelBudget",
    "Int8WeightOnlyConfig", "Int8DynamicActivationInt8WeightConfig", "Int4WeightOnlyConfig",
    "Int8DynamicActivationInt4WeightConfig", "CodebookWeightOnlyConfig", "Float8WeightOnlyConfig",
    "Float8DynamicActivationFloat8WeightConfig", "Int8StaticActivationInt8WeightConfig", "IntxWeightOnlyConfig",
    "FpxWeightOnlyConfig", "MXWeightOnlyConfig", "NVFP4WeightOnlyConfig", "NF4WeightOnlyConfig",
    "Int8DynamicActivationIntxWeightConfig",
]
