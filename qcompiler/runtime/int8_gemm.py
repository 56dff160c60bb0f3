"""``qcompiler::int8_gemm``: int8 or 16-bit activations times int8 weights, exact integer sums, without VNNI.

On machines without VNNI, PyTorch's integer GEMMs are slow (``torch._int_mm``) or inexact
(oneDNN's AVX2 u8 x s8 path saturates its int16 pair sums on full-range operands), so qcompiler
ran int8 weights through ATen's bfloat16 packed kernel, a GEMV slower than the float32 program
at prefill shapes. This op is an integer GEMM for those machines, in C++ (``csrc/int8_gemm.cpp``,
built and loaded by ``native.py``):

    y[m, n] = a_scale[m] · w_scale[n] · Σ_k (a[m, k] - a_zero[m]) · w[n, k]

for ``a`` int8 [M, K] with an optional ``a_scale`` [M] (None: 1) and an optional ``a_zero``
(integer values; [M], or one for every row), or ``a`` float32 with neither: each row is then quantized inside
the kernel to 16 bits, ``a_scale = max|x| / 32639`` (``numerics.INT16_LIMIT``, the one 16-bit encoding; weight-only
int8 layers call it so). Either way it multiplies int16 rows by the int8 weights widened to int16 (AVX2's
``vpmaddwd``): exact int32 sums, one instruction per 16 products whether the activations have 8 bits or 16.

The weight is packed once (:func:`pack`), the same layout on every machine; the kernel runs its
AVX2 path on every AVX2 or AVX-512 machine and plain C++ elsewhere (``native.kernel_path()``).
"""
import torch

from .errors import fail

SCHEMA = "(Tensor a, Tensor? a_scale, Tensor? a_zero, Tensor w, Tensor w_scale) -> Tensor"
LANES = 8  # output columns per packed block

torch.library.define("qcompiler::int8_gemm", SCHEMA)
OP = torch.ops.qcompiler.int8_gemm.default


def fake(a, a_scale, a_zero, w, w_scale):
    """The output of an op with this schema (here and ``int8_tile_gemm``): float32 [M, N]."""
    return a.new_empty((a.shape[0], w_scale.shape[0]), dtype=torch.float32)


torch.library.register_fake("qcompiler::int8_gemm")(fake)


def pack(w: torch.Tensor) -> torch.Tensor:
    """int8 [N, K] -> int8 [N, K] in the kernel's layout: blocks of 8 rows, each stored k pair by k pair,
    16 bytes per pair: ``(w[8b + l, 2j], w[8b + l, 2j + 1])`` for lanes ``l`` = 0..7."""
    n, k = w.shape
    if w.dtype != torch.int8 or n % LANES or k % 2:
        raise fail("weight", f"an int8 [N, K] weight with N % {LANES} == 0 and even K", f"{w.dtype} [{n}, {k}]")
    return w.reshape(n // LANES, LANES, k // 2, 2).permute(0, 2, 1, 3).contiguous().reshape(n, k)


def reference(a, a_scale, a_zero, w, w_scale) -> torch.Tensor:
    """The op's value from the unpacked weight, in float64 (for tests); for a float ``a``, the product with
    ``a`` itself, before the kernel's 16-bit rounding."""
    x = a.double()
    if a_zero is not None:
        x = x - a_zero.double().reshape(-1, 1)
    if a_scale is not None:
        x = x * a_scale.double().reshape(-1, 1)
    return x @ (w.double() * w_scale.double().reshape(-1, 1)).t()
