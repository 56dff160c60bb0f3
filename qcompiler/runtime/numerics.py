"""The numerics written once: per-token int8 activations, the 16-bit activation encoding, the layer error, and
the timer every measurement uses. Everything else calls these (the passes, lowering rules, the KV cache, the CLI,
autoquant and the benchmarks), so a convention changes in one place.

The quantizing functions are written in ATen ops, so the same code runs on tensors (eagerly: references, tests)
and on ``torch.fx`` proxies (a lowering rule's replacement emits exactly these nodes).

- **Per-token int8** (:func:`per_token_int8`), as ``choose_qparams_affine`` + ``quantize_affine`` define it for a
  block of one row: symmetric ``s = max(max|x|/127.5, eps)``, ``q = clamp(round(x/s), -128, 127)``; asymmetric
  ``s = max((hi - lo)/255, eps)`` over the range widened to hold 0, ``z = clamp(-128 - round(lo/s), -128, 127)``.
- **16-bit activations** (:func:`int16_rows`, :func:`int16_halves`): a float row as ``s·q``, ``s = max|x| /
  32639``, ``q = round(x/s)`` in ±32639, the largest int16 whose two bytes are both int8: ``q = 256·hi + lo``
  with ``hi``, ``lo`` in [-128, 127]. Integer kernels multiply the two int8 rows and add ``256·acc_hi + acc_lo``.
  The C++ kernels use the same constant (``csrc/activation_rows.h``: ``kInt16Max``).
- **Layer error** (:func:`layer_error`): ``tr(ΔW H ΔWᵀ)``, the output error of a linear whose weight moved by
  ``ΔW`` on inputs with second moment ``H`` (GPTQ, AWQ, AQLM and the codebook refit compare candidates by it).
- **Timing** (:func:`median_call_s`): the median of timed calls after an untimed one.
"""
import statistics
import time
from typing import Callable, Optional

import torch

aten = torch.ops.aten

EPS = torch.finfo(torch.float32).eps  # the default floor on a scale (torchao's and ours)
INT16_LIMIT = 32639  # 16-bit activation rows are quantized to [-INT16_LIMIT, INT16_LIMIT] (256·127 + 127)
INT16_SCALE_FLOOR = 1e-30  # a row of zeros keeps a positive scale


def per_token_int8(x2, mapping: str, eps: float):
    """Per-token int8 quantization of ``x2`` along its last dimension, in ATen ops.

    Returns float32 ``(q, scale, zero)`` (integer values in float32; ``zero`` is None for the symmetric mapping),
    each scale and zero ``[..., 1]``."""
    xf = aten._to_copy.default(x2, dtype=torch.float32)
    lo, hi = aten.amin.default(xf, [-1], True), aten.amax.default(xf, [-1], True)
    if mapping == "symmetric":
        s = aten.clamp_min.default(aten.div.Tensor(aten.maximum.default(aten.neg.default(lo), hi), 127.5), eps)
        return aten.clamp.default(aten.round.default(aten.div.Tensor(xf, s)), -128, 127), s, None
    if mapping != "asymmetric":
        raise ValueError(f"qcompiler: mapping must be 'symmetric' or 'asymmetric'; got {mapping!r}")
    lo, hi = aten.clamp_max.default(lo, 0.0), aten.clamp_min.default(hi, 0.0)
    s = aten.clamp_min.default(aten.div.Tensor(aten.sub.Tensor(hi, lo), 255.0), eps)
    z = aten.clamp.default(aten.rsub.Scalar(aten.round.default(aten.div.Tensor(lo, s)), -128), -128, 127)
    q = aten.clamp.default(aten.add.Tensor(aten.round.default(aten.div.Tensor(xf, s)), z), -128, 127)
    return q, s, z


def int16_rows(x2):
    """``(q, s)``: each row of ``x2`` (float) as ``s·q`` with ``q`` integer values (float32) in ±INT16_LIMIT and
    ``s = max|x| / INT16_LIMIT`` ``[..., 1]``, in ATen ops."""
    xf = aten._to_copy.default(x2, dtype=torch.float32)
    top = aten.amax.default(aten.abs.default(xf), [-1], True)
    s = aten.clamp_min.default(aten.div.Tensor(top, float(INT16_LIMIT)), INT16_SCALE_FLOOR)
    return aten.clamp.default(aten.round.default(aten.div.Tensor(xf, s)), -INT16_LIMIT, INT16_LIMIT), s


def int16_halves(q):
    """``(hi, lo)``: 16-bit values ``q`` (from :func:`int16_rows`) as ``256·hi + lo``, both in [-128, 127] (float32
    integer values), in ATen ops."""
    hi = aten.floor.default(aten.div.Tensor(aten.add.Tensor(q, 128.0), 256.0))
    return hi, aten.sub.Tensor(q, aten.mul.Tensor(hi, 256.0))


def layer_error(delta: torch.Tensor, h: torch.Tensor) -> float:
    """``tr(ΔW H ΔWᵀ)`` for ``delta`` = ΔW ``[N, K]`` and ``h`` = H ``[K, K]``: the summed squared output error of
    the linear over the inputs whose second moment is H."""
    return float(((delta @ h) * delta).sum())


def median_call_s(fn: Callable[[], object], min_calls: int, min_time: float = 0.0,
                  before: Optional[Callable[[], object]] = None) -> float:
    """Median seconds of one ``fn()`` over at least ``min_calls`` calls and ``min_time`` seconds, after one untimed
    call; ``before()``, if given, runs untimed before each timed call (e.g. writing over the cache)."""
    fn()
    times: list = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_time:
        if before is not None:
            before()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
