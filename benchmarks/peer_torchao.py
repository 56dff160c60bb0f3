"""torchao 0.18 as a side-by-side peer for ``bench_cpu_layers.py``: the same nn.Linear, quantized by torchao, on CPU.

    import peer_torchao as pt
    if pt.available():
        fn = pt.torchao_layer(linear, "int4wo-128", compile=False)   # callable: x -> y
        nbytes = pt.torchao_weight_bytes(fn)

What each of our schemes maps to (CPU, torch 2.13 CPU build, torchao 0.18 wheel without its CPU C++ kernels):

- ``int8wo``      ``Int8WeightOnlyConfig(granularity=PerRow())`` -> ``Int8Tensor``; forward is
                  ``mm(x, int8_w.t().to(bf16)) * scale`` (the int8 weight is converted to bf16 on every call).
- ``int8dq``      ``Int8DynamicActivationInt8WeightConfig(PerRow(), act SYMMETRIC)`` -> ``Int8Tensor``; per-token
                  symmetric int8 activations, ``torch._int_mm`` through ``torchao.kernel.intmm.int_scaled_matmul``.
- ``int4wo-<g>``  ``torchao.prototype.quantization.int4.PrototypeInt4WeightOnlyConfig(group_size=g)`` ->
                  ``Int4OpaqueTensor`` (tinygemm-style asymmetric uint4 with float zero points, packed by
                  ``aten._convert_weight_to_int4pack_for_cpu``, run by ``aten._weight_int4pack_mm_for_cpu``).
                  g in 32/64/128 only: ``Int4OpaqueTensor.from_hp`` asserts on 256 (the aten kernel itself would
                  take 256), so ``int4wo-256`` raises NotImplementedError. The non-prototype
                  ``Int4WeightOnlyConfig`` has no CPU packing format in 0.18 (plain/preshuffled need mslk,
                  plain_int32 is XPU/NPU only, tile_packed_to_4d is CUDA tinygemm).
- ``int8da-int4w-<g>``  the CPU kernel torchao has for this, ``prototype.quantization.int4.
                  Int8DynamicActivationInt4WeightConfig`` (DA8W4, ``torchao::da8w4_linear_cpu``), is only built
                  into torchao's C++ extension, which this wheel lacks (the op has a Meta kernel only). So when
                  that kernel is missing we use ``Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                  PerGroup(g), weight SYMMETRIC, act ASYMMETRIC, intx_packing_format=UNPACKED_TO_INT8)`` ->
                  ``IntxUnpackedToInt8Tensor``: the same numerics as ours (per-token asymmetric int8 activations,
                  symmetric grouped int4 weights) but a *reference* path meant for export: it quant-dequantizes
                  the activation and dequantizes the whole weight to bf16 on every call, then ``F.linear``.
                  (The opaque intx formats need torchao's kernel library or KleidiAI: not available here.)
- ``codebook-4``  ``torchao.prototype.quantization.codebook.CodebookQuantizedTensor`` as built by
                  ``codebook_weight_only(dtype=torch.uint4)`` (a 16-entry scalar codebook per tensor, one scale
                  per row = row max, codes packed in a ``UintxTensor``); forward dequantizes the weight through the
                  codebook on every call, then ``F.linear``. Built quickly, see ``_codebook_quick``. Eager only:
                  torch.compile cannot trace this subclass (also when built by torchao's own quantize_), so
                  ``compile=True`` raises NotImplementedError.
- ``fp8wo``       ``Float8WeightOnlyConfig(granularity=PerRow())`` -> ``Float8Tensor`` (e4m3fn, a scale per
                  output row); forward is ``matmul(x, w.dequantize())`` in bf16 (no float8 GEMM on CPU).
- ``intx-<b>-<g>`` ``IntxWeightOnlyConfig(int<b>, PerGroup(g), ASYMMETRIC)`` (whole models, ``quantized_model``).
- ``nvfp4``       ``prototype.mx_formats.NVFP4WeightOnlyConfig()`` (whole models, ``quantized_model``).
- ``int8da-intx-<b>-<g>`` ``Int8DynamicActivationIntxWeightConfig(int<b>, PerGroup(g))`` with its defaults (symmetric
                  weights, asymmetric per-token int8 activations; whole models, ``quantized_model``).
- ``int8static``  ``Int8StaticActivationInt8WeightConfig(act_quant_scale, act_quant_zero_point,
                  granularity=[PerTensor(), PerRow()], act ASYMMETRIC)`` with min/max qparams taken from a
                  calibration batch (ours: per-tensor asymmetric int8 activations, per-channel int8 weights).

Caveats: we pass ``set_inductor_config=False`` so quantizing never mutates the process-wide inductor config;
torchao's recommended settings (``force_fuse_int_mm_with_mul`` and the coordinate-descent knobs) are handed to
``torch.compile(options=...)`` instead, so they apply to the torchao graph only. ``compile=True`` uses
``dynamic=False``: each activation shape gets its own specialised graph (the best case for torchao), and
each callable gets a Dynamo cache of its own (see ``_compiled``), so many peers in one process never hit the
recompile limit and silently run eager.
"""
import copy
import itertools
import types
from typing import Callable, Optional

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

try:
    import torchao  # noqa: F401
    from torchao.quantization import quantize_
except Exception:  # pragma: no cover - torchao missing or broken
    torchao = None

# torchao's recommended_inductor_config_setter(), as scoped torch.compile options (the CPU-relevant ones).
COMPILE_OPTIONS = {"force_fuse_int_mm_with_mul": True, "coordinate_descent_tuning": True,
                   "coordinate_descent_check_all_directions": True}
INT4_GROUPS = (32, 64, 128)  # Int4OpaqueTensor.from_hp's allowed group sizes
CODEBOOK_SAMPLE = 1 << 16  # values the quick k-means fits the codebook on
_COMPILED_IDS = itertools.count()

PEER_SCHEMES = {
    "int8wo": "Int8WeightOnlyConfig(PerRow) -> Int8Tensor, bf16 mm of the upcast int8 weight",
    "int8dq": "Int8DynamicActivationInt8WeightConfig(PerRow, act symmetric) -> Int8Tensor, torch._int_mm",
    **{f"int4wo-{g}": f"prototype PrototypeInt4WeightOnlyConfig(group_size={g}) -> Int4OpaqueTensor, "
                      "aten._weight_int4pack_mm_for_cpu" for g in INT4_GROUPS},
    **{f"int8da-int4w-{g}": f"Int8DynamicActivationIntxWeightConfig(int4, PerGroup({g}), unpacked_to_int8) -> "
                            "IntxUnpackedToInt8Tensor, quant-dequant reference (DA8W4 CPU kernel not built)"
       for g in (32, 64, 128, 256)},
    "codebook-4": "codebook_weight_only(uint4) -> CodebookQuantizedTensor (codebook fit on a 64k sample), "
                  "dequantize + F.linear",
    "fp8wo": "Float8WeightOnlyConfig(PerRow) -> Float8Tensor, dequantize + bf16 matmul",
    "int8static": "Int8StaticActivationInt8WeightConfig([PerTensor, PerRow], act asymmetric) -> Int8Tensor, "
                  "min/max qparams from a calibration batch",
}


def available() -> bool:
    """Whether torchao imports."""
    return torchao is not None


def _da8w4_kernel_built() -> bool:
    return "CPU" in torch._C._dispatch_dump("torchao::da8w4_linear_cpu")


def _config(scheme: str, linear: torch.nn.Linear, calibration: Optional[torch.Tensor]):
    """The torchao config for ``scheme``, or NotImplementedError saying why there is none on CPU."""
    from torchao.quantization import (Int8DynamicActivationInt8WeightConfig, Int8DynamicActivationIntxWeightConfig,
                                      Int8StaticActivationInt8WeightConfig, Int8WeightOnlyConfig,
                                      Float8WeightOnlyConfig)
    from torchao.quantization.granularity import PerGroup, PerRow, PerTensor
    from torchao.quantization.quant_primitives import MappingType
    from torchao.quantization.quantize_.workflows import IntxPackingFormat

    if scheme == "int8wo":
        return Int8WeightOnlyConfig(granularity=PerRow(), set_inductor_config=False)
    if scheme == "int8dq":
        return Int8DynamicActivationInt8WeightConfig(granularity=PerRow(), act_mapping_type=MappingType.SYMMETRIC,
                                                     set_inductor_config=False)
    if scheme == "fp8wo":
        return Float8WeightOnlyConfig(granularity=PerRow(), set_inductor_config=False)
    if scheme.startswith("int4wo-"):
        g = int(scheme.split("-")[1])
        if g not in INT4_GROUPS:
            raise NotImplementedError(f"{scheme}: torchao 0.18's CPU int4 weight-only tensor (Int4OpaqueTensor) "
                                      f"accepts group sizes {INT4_GROUPS} only")
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
        return PrototypeInt4WeightOnlyConfig(group_size=g, set_inductor_config=False)
    if scheme.startswith("int8da-int4w-"):
        g = int(scheme.split("-")[2])
        if g in INT4_GROUPS and _da8w4_kernel_built():
            from torchao.prototype.quantization.int4 import Int8DynamicActivationInt4WeightConfig
            return Int8DynamicActivationInt4WeightConfig(group_size=g, set_inductor_config=False)
        return Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int4, weight_granularity=PerGroup(g), weight_mapping_type=MappingType.SYMMETRIC,
            act_mapping_type=MappingType.ASYMMETRIC, intx_packing_format=IntxPackingFormat.UNPACKED_TO_INT8)
    if scheme.startswith("int8da-intx-"):  # torchao's defaults: symmetric weights, asymmetric per-token int8 rows
        bits, group = (int(v) for v in scheme.split("-")[2:4])
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=getattr(torch, f"int{bits}"),
                                                     weight_granularity=PerGroup(group))
    if scheme.startswith("intx-"):  # torchao's IntxWeightOnlyConfig: asymmetric, an integer zero point per group
        from torchao.quantization import IntxWeightOnlyConfig
        bits, group = (int(v) for v in scheme.split("-")[1:3])
        return IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{bits}"), granularity=PerGroup(group),
                                    mapping_type=MappingType.ASYMMETRIC)
    if scheme == "nvfp4":
        from torchao.prototype.mx_formats import NVFP4WeightOnlyConfig
        return NVFP4WeightOnlyConfig()
    if scheme == "int8static":
        scale, zero_point = _static_act_qparams(linear, calibration)
        return Int8StaticActivationInt8WeightConfig(
            act_quant_scale=scale, act_quant_zero_point=zero_point, granularity=[PerTensor(), PerRow()],
            act_mapping_type=MappingType.ASYMMETRIC, set_inductor_config=False)
    raise NotImplementedError(f"{scheme}: no torchao 0.18 CPU peer")


def _static_act_qparams(linear, calibration):
    """Per-tensor asymmetric int8 (-128..127) min/max qparams, shaped (1, 1) as Int8Tensor wants for 2-D input.

    Without ``calibration`` a seeded standard-normal batch of 8 rows stands in, as the benchmark calibrates with.
    """
    if calibration is None:
        gen = torch.Generator().manual_seed(0)
        calibration = torch.randn(8, linear.in_features, generator=gen)
    lo = min(calibration.min().item(), 0.0)
    hi = max(calibration.max().item(), 0.0)
    scale = max((hi - lo) / 255.0, torch.finfo(torch.float32).eps)
    zero_point = max(-128, min(127, -128 - round(lo / scale)))
    return torch.tensor([[scale]]), torch.tensor([[zero_point]], dtype=torch.int8)


def _codebook_quick(module: torch.nn.Linear, bits: int = 4) -> torch.nn.Linear:
    """Give ``module`` the CodebookQuantizedTensor weight torchao's ``codebook_weight_only`` builds, but fast.

    torchao's path (``CodebookQuantizedTensor.from_float``) runs ``fit_kmeans`` (greedy init, up to 200
    Lloyd iterations) over every one of the N*K normalised weights: ~350 s for 4096x4096 here. We keep its
    exact format and numerics model and only cut the fitting cost:

    1. scales: per-row ``max`` of the weight, clamped at 1e-9, shape (N, 1, 1) -- what
       ``choose_qparams_codebook`` does for block_size (1, 1), scale_block_size = K;
    2. codebook: torchao's own ``fit_kmeans`` (same k = 2**bits, same max_iter) on a random sample of
       ``CODEBOOK_SAMPLE`` (65536) of the normalised weights instead of all of them; sorted ascending;
    3. codes: nearest entry for every weight via ``torch.bucketize`` on the midpoints of the sorted scalar
       codebook (the same nearest-entry rule as ``quantize_codebook``, without its 1024-row chunk loop);
    4. ``UintxTensor.from_uint8(codes, torch.uint<bits>)`` and ``CodebookQuantizedTensor(codes, codebook,
       (1, 1), scales, shape, dtype)`` constructed directly.

    The tensor is the one torchao would run; only its codebook is fit on a sample, which changes accuracy
    marginally and inference speed not at all.
    """
    from torchao.prototype.dtypes.uintx.uintx_utils import UintxTensor
    from torchao.prototype.quantization.codebook import CodebookQuantizedTensor
    from torchao.prototype.quantization.codebook.codebook_ops import fit_kmeans

    w = module.weight.detach()
    n, k = w.shape
    scales = w.float().view(n, 1, k).max(dim=-1, keepdim=True).values.clamp(min=1e-9)
    normed = (w.float().view(n, 1, k) / scales).reshape(-1)
    gen = torch.Generator().manual_seed(0)
    sample = normed[torch.randint(0, normed.numel(), (min(CODEBOOK_SAMPLE, normed.numel()),), generator=gen)]
    centroids, _, _ = fit_kmeans(sample[:, None].contiguous(), k=2 ** bits)
    centroids = centroids.flatten().sort().values
    codes = torch.bucketize(normed, (centroids[1:] + centroids[:-1]) / 2).to(torch.uint8).view(n, k)
    qweight = CodebookQuantizedTensor(
        UintxTensor.from_uint8(codes, dtype=getattr(torch, f"uint{bits}")),
        centroids.view(-1, 1, 1).to(w.dtype), (1, 1), scales.to(w.dtype), w.shape, dtype=w.dtype)
    module.weight = torch.nn.Parameter(qweight, requires_grad=False)
    return module


def quantized_copy(linear: torch.nn.Linear, scheme: str,
                   calibration: Optional[torch.Tensor] = None) -> torch.nn.Linear:
    """A deep copy of ``linear`` whose weight is the torchao-quantized tensor for ``scheme``."""
    if not available():
        raise NotImplementedError("torchao is not importable")
    module = copy.deepcopy(linear).eval()
    if scheme in ("codebook-4", "codebook-4-float"):  # torchao has one codebook form for both of ours
        return _codebook_quick(module, 4)
    config = _config(scheme, module, calibration)
    quantize_(module, config)
    if not is_traceable_wrapper_subclass(module.weight):  # torchao skips shapes it cannot handle, silently
        raise NotImplementedError(f"{scheme}: torchao left the weight {tuple(module.weight.shape)} unquantized")
    return module


WHOLE_MODEL_SCHEMES = ("int8wo", "int8dq", "fp8wo")  # configs that need no per-layer calibration


def quantized_model(model: torch.nn.Module, scheme: str) -> torch.nn.Module:
    """A deep copy of ``model`` with every nn.Linear quantized by torchao's config for ``scheme``."""
    if not available():
        raise NotImplementedError("torchao is not importable")
    if scheme not in WHOLE_MODEL_SCHEMES and not scheme.startswith(("intx-", "int8da-intx-")) and scheme != "nvfp4":
        raise NotImplementedError(f"{scheme}: whole-model torchao peer only for {WHOLE_MODEL_SCHEMES}, intx, "
                                  f"int8da-intx, nvfp4")
    module = copy.deepcopy(model).eval()
    quantize_(module, _config(scheme, None, None))
    return module


def torchao_layer(linear: torch.nn.Linear, scheme: str, compile: bool,
                  calibration: Optional[torch.Tensor] = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The torchao-quantized copy of ``linear`` as a callable, eager or ``torch.compile``'d.

    Raises NotImplementedError (with the reason) for schemes torchao 0.18 cannot run on CPU.
    ``calibration`` only matters to ``int8static``.
    """
    if compile and scheme.startswith("codebook"):
        raise NotImplementedError(
            f"{scheme}: torch.compile cannot trace torchao 0.18's CodebookQuantizedTensor (a __torch_function__-only "
            "subclass): Dynamo fails fakeifying the weight with 'InternalTorchDynamoError: RuntimeError: Expected "
            "meta != nullptr' (its blanket __torch_function__ answers Tensor._is_view() for the dequantized view), "
            "and past that with 'Please convert all Tensors to FakeTensors first' in aten.copy_")
    module = quantized_copy(linear, scheme, calibration)
    return _compiled(module) if compile else module


def _compiled(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` of ``module`` with a Dynamo cache of its own.

    Dynamo caches compiled graphs on the Python code object of the compiled frame. ``torch.compile(module)``
    compiles one shared wrapper frame, and every ``nn.Linear`` shares ``Linear.forward``, so all peers in a
    process would share one cache: after ``torch._dynamo.config.recompile_limit`` (8) schemes x shapes, Dynamo
    silently falls back to eager. A fresh code object per callable gives each its own cache (up to 8
    input shapes each); identical graphs still compile fast through inductor's FX graph cache.
    """
    def run(x):
        return module(x)

    code = run.__code__.replace(co_name=f"torchao_peer_{next(_COMPILED_IDS)}")
    fresh = types.FunctionType(code, run.__globals__, code.co_name, run.__defaults__, run.__closure__)
    compiled = torch.compile(fresh, dynamic=False, options=COMPILE_OPTIONS)
    compiled.module = module  # for torchao_weight_bytes
    return compiled


def _tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of a plain tensor, or of the plain tensors inside a (nested) tensor subclass."""
    if is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, name)) for name in names if getattr(t, name) is not None)
    return t.numel() * t.element_size()


def torchao_weight_bytes(layer) -> int:
    """Bytes the quantized weight (and bias) occupy: every plain tensor inside the torchao subclass.

    Takes the module from ``quantized_copy`` or the callable ``torchao_layer`` returned.
    """
    module = getattr(layer, "module", layer)
    return sum(_tensor_bytes(p) for p in (module.weight, module.bias) if p is not None)
