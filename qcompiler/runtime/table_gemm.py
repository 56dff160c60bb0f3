"""``qcompiler::table_gemm``: float activations times b-bit codes into one fixed table, each block's scale read in
the kernel: the CPU kernel of the fixed-table formats (intx, fp6 / fpx, MXFP4, MXFP8, NVFP4).

    y[m, n] = Σ_k x[m, k] · (table[idx[n, k]] · s[n, k / block] + o[n, k / block])

``x`` is float32 ``a``, or int8 ``a`` as ``x = a_scale · (a - a_zero)`` (per-token int8 activations: ``a_scale``
and ``a_zero`` float32 [M], ``a_zero`` optional and then with ``w_sums`` float32 [N], each column's sum of
``table[idx] · s + o`` over K): on a table of intx's integers each int8 row is one vpdpbusd operand, half the
products of a float row's 16 bits.

A format is its table (the grid's values by code: e2m1's 16, e3m2's 64, intx's integers 0 .. 2^b - 1), its block and
the width of its scales; the kernel (``csrc/table_gemm.cpp``, its integer path in ``table_gemm_int.cpp``, built and
loaded by ``native.py``) reads each of them at its width: codes at ``bits`` bits (1-8) a weight, scales as float32,
bfloat16, e8m0 (uint8) or e4m3 (float8_e4m3fn), offsets as float32 or bfloat16, or as an integer zero point (uint8:
``o = -z · s``). On AVX-512 VNNI the rows go to 16 bits and the weights to integers: the codes themselves where the
table is intx's integers, else the table's entries looked up (vpshufb for up to 16 entries; vpermb / vpermi2b for up
to 256 on AVX512-VBMI): int8 entries where up to 16 values are integers at a power-of-two scale (e2m1's), 16-bit ones
as two bytes otherwise (e3m2's exactly; nf4's, e4m3's and learned tables rounded to 16 bits of their largest, as the
rows are); vpdpbusd sums per block in int32. Other tables (5-8 bits without VBMI) sum in float32: per k 16 columns'
values from the table in registers (vpermps; a 7-8-bit float grid decoded with shifts, else a gather from L1). From 32
rows on AMX machines the kernel decodes each panel once into bfloat16 tiles. On AVX2 (no AVX-512 VNNI) the codes
themselves and tables of up to 16 entries (int8, or 16-bit as two bytes) take the same 16-bit rows as int16
(vpmaddwd, exact int32 sums per block, or per 256 k inside longer ones); 5-8-bit tables sum in float32 on 8 lanes
(a gather from L1). Shapes: N % 16 == 0, K % 32 == 0, block a
multiple of 16 dividing K (a block of K: one scale per row).

The codes are packed once (:func:`pack`) and the scales and offsets laid out (:func:`panel_qparams`) in one layout
for every machine.
"""
from typing import Optional

import torch

from .errors import fail

SCHEMA = ("(Tensor a, Tensor? a_scale, Tensor? a_zero, Tensor w, Tensor table, Tensor scale, Tensor? offset, "
          "Tensor? w_sums, int bits, int block) -> Tensor")
BITS = range(1, 9)
COLS, STRIPE = 16, 32  # columns per panel, k per stripe
# The planes a code's bits are stored in: (bits per plane, the bit it starts at).
PLANES = {1: ((1, 0),), 2: ((2, 0),), 3: ((2, 0), (1, 2)), 4: ((4, 0),), 5: ((4, 0), (1, 4)),
          6: ((4, 0), (2, 4)), 7: ((4, 0), (2, 4), (1, 6)), 8: ((8, 0),)}
SCALE_DTYPES = (torch.float32, torch.bfloat16, torch.uint8, torch.float8_e4m3fn)  # uint8: e8m0
OFFSET_DTYPES = (torch.float32, torch.bfloat16, torch.uint8)  # uint8: an integer zero point

torch.library.define("qcompiler::table_gemm", SCHEMA)
OP = torch.ops.qcompiler.table_gemm.default


@torch.library.register_fake("qcompiler::table_gemm")
def _(a, a_scale, a_zero, w, table, scale, offset, w_sums, bits, block):
    return a.new_empty((a.shape[0], w.numel() // (2 * a.shape[1] * bits) * COLS), dtype=torch.float32)


def unfit(n: int, k: int, bits: int, block: int) -> Optional[str]:
    """Why an [N, K] weight of ``bits``-bit codes with a scale per ``block`` does not fit the kernel (None: fits)."""
    if bits not in BITS:
        return f"its codes have {bits} bits; the kernel takes 1 to 8"
    if n % COLS or k % STRIPE:
        return f"N = {n}, K = {k}: the kernel needs N % {COLS} == 0 and K % {STRIPE} == 0"
    if block < 16 or block % 16 or k % block:
        return f"its blocks of {block} along K = {k}: the kernel takes blocks of a multiple of 16 dividing K"
    return None


def pack(idx: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [N, K] (each < 2**bits) -> uint8 [N, K·bits/8] in the kernel's layout.

    Panels of 16 columns, each stored stripe (32 k) by stripe, a stripe as its planes (:data:`PLANES`), a plane
    of width w as w 64-byte words: word u's int32 lane c holds column c's plane bits of the codes of
    k = 32·stripe + u·(32/w) + 4·t + j at bit 8·j + w·t (byte j holds k, k + 4, k + 8, ...: one shift and mask give
    16 columns' codes of one k, or of 4 consecutive k as the 4 bytes of each lane).
    """
    n, k = idx.shape
    declined = unfit(n, k, bits, STRIPE if k % STRIPE == 0 else k)
    if declined:
        raise fail("idx", "uint8 [N, K] codes the table kernel takes", declined)
    if idx.dtype != torch.uint8 or (idx.numel() and int(idx.max()) >= 1 << bits):
        top = int(idx.max()) if idx.numel() else 0
        raise fail("idx", f"uint8 codes below {1 << bits}", f"{idx.dtype}, max {top}")
    v = idx.to(torch.int64).reshape(n // COLS, COLS, k // STRIPE, STRIPE).permute(0, 2, 1, 3)  # (panel, stripe, c, k)
    words = []
    for width, first in PLANES[bits]:
        per = STRIPE // width  # codes a lane holds: 4 per byte group t, byte j of group t at bit 8·j + width·t
        plane = ((v >> first) & ((1 << width) - 1)).reshape(*v.shape[:3], width, per // 4, 4)  # (.., u, t, j)
        shifts = torch.arange(4) * 8 + torch.arange(per // 4).reshape(-1, 1) * width
        words.append((plane << shifts).sum((-1, -2)).transpose(2, 3))  # (panel, stripe, u, c): one int32 lane each
    lanes = torch.cat(words, dim=2).to(torch.int64)
    lanes = torch.where(lanes >= 1 << 31, lanes - (1 << 32), lanes).to(torch.int32)
    return lanes.contiguous().view(torch.uint8).reshape(n, k * bits // 8)


def panel_qparams(t: torch.Tensor) -> torch.Tensor:
    """Scales or offsets [N, K / block] -> [N / 16, K / block, 16] (a panel's 16 columns side by side), same dtype."""
    n, blocks = t.shape
    if n % COLS:
        raise fail("scale", f"[N, K / block] with N % {COLS} == 0", list(t.shape))
    return t.reshape(n // COLS, COLS, blocks).transpose(1, 2).contiguous()


def weight(idx: torch.Tensor, table: torch.Tensor, scale: torch.Tensor,
           offset: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The weight [N, K] in float64 from unpacked codes [N, K] and float scales and offsets [N, K / block]."""
    block = idx.shape[1] // scale.shape[1]
    w = table.double()[idx.long()] * scale.double().repeat_interleave(block, 1)
    return w if offset is None else w + offset.double().repeat_interleave(block, 1)


def reference(a: torch.Tensor, idx: torch.Tensor, table: torch.Tensor, scale: torch.Tensor,
              offset: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The op's value from float rows ``a`` (or int8 activations' float values), in float64."""
    return a.double() @ weight(idx, table, scale, offset).t()
