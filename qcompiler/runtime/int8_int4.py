"""``qcompiler::int8_int4_gemm``: int8 or int16 activations times int4 weights in groups, exact int32 sums per group.

ATen's int4 CPU kernel takes bfloat16 activations and is a GEMV: it does not scale with the
rows (docs/cpu-kernels.md). This op is an integer GEMM instead, the idea of llama.cpp's
Q4 x Q8 and ONNX Runtime's int8-compute MatMulNBits, written in C++
(``csrc/int8_int4_gemm.cpp``, built and loaded by ``native.py``):

    y[m, n] = a_scale[m] · ( Σ_g ( w_scale[g, n]·Σ_{k∈g} a[m, k]·q[n, k] + w_offset[g, n]·Σ_{k∈g} a[m, k] )
                             - a_zero[m]·w_sums[n] )

for activations ``x = a_scale·(a - a_zero)`` (``a`` int8 or int16; ``a_zero`` optional) and weights
``w = w_scale·q + w_offset`` with ``q`` in [-8, 7] (``w_offset`` optional); ``w_sums[n] =
Σ_k w[n, k]``. Every int4 form (symmetric, integer or float zero point) is one ``w_scale``
and ``w_offset`` per group, float32 or bfloat16 (both the same; int4wo's bfloat16 scales and float zero points
go in as stored, half the bytes per group). The sums within a group are exact int32; scales apply in float32.

An int16 row runs as two int8 rows, its high and low bytes, whose integer sums combine
before the group's scale: twice the int8 work for 16-bit activations, in one call. int16
values must lie in [-32768, INT16_MAX]; larger ones saturate. A float32 ``a`` (no
``a_scale``, no ``a_zero``) is quantized per row to 16 bits inside the kernel,
``a_scale = max|x| / INT16_MAX``: int4 weight-only layers call it so, with their float
activations (a relative error of about 2^-16 of the row's largest value).

The weight is packed once (:func:`pack`) in one layout for every machine, so a ``.pt2``
that calls the op runs wherever the op is loaded; the kernel picks AVX512-VNNI, AVX2 or
plain C++ per call (``native.kernel_path()``).

On a machine with AMX (AMX-BF16, and oneDNN allowed to use it), calls of at least :data:`AMX_MIN_ROWS` float32
or int8 rows take bfloat16 tiles instead (``native.float_rows_path(rows)`` says ``amx_bf16``): each work item
decodes a 64-column panel of the packed weight into bfloat16 ``w_scale·q + w_offset`` and oneDNN's brgemm
multiplies the rows by it on AMX (``csrc/bf16_tiles.h``), about 2x the VNNI path from 128 rows
(``benchmarks/bench_int4_tiles.py``). The sums there are float32, not exact integers: the weights are rounded to
bfloat16 (2^-9 relative), float rows too, while int8 rows minus their zero point are exact in bfloat16; int4's
own rounding is some 30 times coarser. int16 rows keep the exact integer paths at every size.
"""
import torch

from .errors import fail
from .numerics import INT16_LIMIT

SCHEMA = ("(Tensor a, Tensor? a_scale, Tensor? a_zero, Tensor w, Tensor w_scale, Tensor? w_offset, Tensor? w_sums, "
          "int group) -> Tensor")
LANES, CHUNK, PANEL = 16, 8, 4  # rows per packed block, k per block, blocks per panel
GROUPS = (32, 64, 128, 256)
INT16_MAX = INT16_LIMIT  # the largest int16 that splits as 256·hi + lo with hi and lo in [-128, 127] (numerics.py)
AMX_MIN_ROWS = 32  # calls with this many float32 or int8 rows take bfloat16 tiles where AMX runs (kBf16MinRows)

torch.library.define("qcompiler::int8_int4_gemm", SCHEMA)
OP = torch.ops.qcompiler.int8_int4_gemm.default


@torch.library.register_fake("qcompiler::int8_int4_gemm")
def _(a, a_scale, a_zero, w, w_scale, w_offset, w_sums, group):
    return a.new_empty((a.shape[0], w_scale.shape[-1]), dtype=torch.float32)


def pack(q: torch.Tensor) -> torch.Tensor:
    """int [N, K] values in [-8, 7] -> uint8 [N, K/2] in the kernel's layout.

    Rows go in blocks of 16, blocks in panels of 4 (the last panel may be narrower); a panel
    is stored k-chunk by k-chunk (8 k each), its blocks side by side, 64 bytes per block:
    byte ``4·lane + i`` holds ``u = q + 8`` of row ``lane`` at ``k = 8c + i`` (low nibble)
    and ``k = 8c + 4 + i`` (high nibble).
    """
    n, k = q.shape
    if n % LANES or k % CHUNK:
        raise fail("weight", f"an [N, K] int4 weight with N % {LANES} == 0 and K % {CHUNK} == 0", f"[{n}, {k}]")
    if q.numel() and (q.min() < -8 or q.max() > 7):
        raise fail("weight", "int4 values in [-8, 7]", f"values in [{int(q.min())}, {int(q.max())}]")
    u = (q.to(torch.int32) + 8).to(torch.uint8)
    panels = []
    for start in range(0, n, LANES * PANEL):
        rows = u[start:start + LANES * PANEL]
        width = rows.shape[0] // LANES
        p = rows.reshape(width, LANES, k // CHUNK, 2, 4).permute(2, 0, 1, 4, 3)  # [c, block, lane, i, half]
        panels.append((p[..., 0] | (p[..., 1] << 4)).reshape(-1))
    return torch.cat(panels).reshape(n, k // 2)


def weight_sums(q: torch.Tensor, w_scale: torch.Tensor, w_offset=None) -> torch.Tensor:
    """``Σ_k w[n, k]`` (float32 [N]) for ``w = w_scale·q + w_offset``: what the activation zero point takes off."""
    n, k = q.shape
    group = k // w_scale.shape[0]
    per_group = q.to(torch.int32).reshape(n, -1, group).sum(-1).double() * w_scale.t().double()
    if w_offset is not None:
        per_group = per_group + group * w_offset.t().double()
    return per_group.sum(-1).float()


def reference(a, a_scale, a_zero, q, w_scale, w_offset, group: int) -> torch.Tensor:
    """The op's value from the unpacked int4 weight ``q`` [N, K], in float64 (for tests); for a float ``a``,
    the product with ``a`` itself, before the kernel's 16-bit rounding."""
    zero = 0.0 if a_zero is None else a_zero.reshape(-1, 1).double()
    x = a.double() if a_scale is None else (a.double() - zero) * a_scale.reshape(-1, 1).double()
    w = q.double().reshape(q.shape[0], -1, group) * w_scale.t().double()[:, :, None]
    if w_offset is not None:
        w = w + w_offset.t().double()[:, :, None]
    return x @ w.reshape(q.shape).t()
