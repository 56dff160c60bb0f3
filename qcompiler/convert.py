"""Convert: fold observers into qparams, quantize weights, rewrite to the reference Q/DQ pattern."""
import torch
from torch.export import ExportedProgram

from .capture import reexport
from .passes.calibration import solve
from .passes.observe import observers
from .passes.reference import rewrite_to_reference
from .passes.smoothing import smooth_inputs
from .prepare import SOURCE
from .runtime.errors import fail


def convert(prepared: torch.fx.GraphModule) -> ExportedProgram:
    """Turn a prepared (and, where needed, calibrated) module into a portable quantized ExportedProgram.

    The program's linears read ``qcompiler::dequantize_*`` of weights stored in quantized,
    packed form; it saves with ``torch.export.save`` and loads after ``import qcompiler``.
    Its per-layer report is ``qcompiler.report(program)``.
    """
    if not isinstance(prepared, torch.fx.GraphModule) or SOURCE not in prepared.meta:
        raise fail("prepared", "the module qcompiler.prepare returned", type(prepared).__name__)
    with torch.no_grad():
        solve(prepared, observers(prepared))  # what calibration did not solve in windows: GPTQ, AWQ, SmoothQuant
        smooth_inputs(prepared)  # SmoothQuant and AWQ rescale inputs and weights first
        rewrite_to_reference(prepared, prepared.meta["qcompiler_names"])
    return reexport(prepared, prepared.meta[SOURCE])
