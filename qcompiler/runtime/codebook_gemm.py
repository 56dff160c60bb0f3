"""``qcompiler::codebook_gemm``: float activations times b-bit codebook indices, each row's table read in the kernel.

A codebook weight on the int8 grid is ``w[n, k] = scale[n] · table[n, idx[n, k]]``: an int8 table of
``2**bits`` entries per output row and a b-bit index per weight. This op keeps the indices at their
bit width (b = 1..4) and decodes them inside the matmul with a byte shuffle of the row's table
(``vpshufb``, the way llama.cpp's IQ4_NL and T-MAC's kernels do), in C++ (``csrc/codebook_gemm.cpp``,
built and loaded by ``native.py``):

    y[m, n] = scale[n] · Σ_k x[m, k] · table[n, idx[n, k]]

for float32 ``x`` [M, K], which the kernel takes per row in 16 bits as ``int8_int4_gemm`` does (two
int8 rows, exact int32 sums, a relative error of about 2^-16 of the row's largest value).
The table is int8 [N, 16] with entries in [-127, 127] (the first ``2**bits`` used); ``w_sums[n] =
Σ_k table[n, idx[n, k]]`` (int32) takes off the kernel's unsigned shift. The indices are packed once
(:func:`pack`) in one layout for every machine; the kernel runs AVX512-VNNI, AVX2 or plain C++,
chosen per call. Shapes: N % 16 == 0, K % 128 == 0, K <= 65536.
"""
import torch

from .errors import fail

SCHEMA = "(Tensor a, Tensor w, Tensor table, Tensor w_sums, Tensor scale, int bits) -> Tensor"
BITS = (1, 2, 3, 4)
PANEL, BLOCK, CHUNK, SUB = 16, 4, 128, 16  # rows per panel, rows per block, k per chunk, k per sub-block
MAX_K = 65536
PLANES = {4: ((4, 0),), 2: ((2, 0),), 1: ((1, 0),), 3: ((2, 0), (1, 2))}  # (bits per plane, bit it starts at)

torch.library.define("qcompiler::codebook_gemm", SCHEMA)
OP = torch.ops.qcompiler.codebook_gemm.default


@torch.library.register_fake("qcompiler::codebook_gemm")
def _(a, w, table, w_sums, scale, bits):
    return a.new_empty((a.shape[0], scale.shape[0]), dtype=torch.float32)


def unfit(n: int, k: int, bits: int):
    """Why an [N, K] weight of ``bits``-bit indices does not fit the kernel (None when it does)."""
    if bits not in BITS:
        return f"its indices have {bits} bits; the kernel takes 1 to 4"
    if n % PANEL or k % CHUNK or k > MAX_K:
        return f"N = {n}, K = {k}: the kernel needs N % {PANEL} == 0, K % {CHUNK} == 0 and K <= {MAX_K}"
    return None


def pack(idx: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 indices [N, K] (each < 2**bits) -> uint8 [N, K·bits/8] in the kernel's layout.

    Panels of 16 rows, each stored chunk (128 k) by chunk, a chunk block (4 rows) by block, a block
    as ``bits`` 64-byte words: lane ``l`` (16 bytes) of a word holds row ``4·block + l``'s indices of
    the chunk's sub-blocks of 16 k, one plane of bits each (``csrc/codebook_gemm.cpp`` spells it out).
    """
    n, k = idx.shape
    declined = unfit(n, k, bits)
    if declined:
        raise fail("idx", "uint8 [N, K] indices the codebook kernel takes", declined)
    if idx.dtype != torch.uint8 or (idx.numel() and int(idx.max()) >= 1 << bits):
        top = int(idx.max()) if idx.numel() else 0
        raise fail("idx", f"uint8 indices below {1 << bits}", f"{idx.dtype}, max {top}")
    # (panel, block, lane, chunk, sub-block, i)
    v = idx.reshape(n // PANEL, PANEL // BLOCK, BLOCK, k // CHUNK, CHUNK // SUB, SUB).to(torch.int32)
    words = []
    for width, first in PLANES[bits]:
        per = 8 // width  # sub-blocks per byte
        plane = ((v >> first) & ((1 << width) - 1)).reshape(*v.shape[:4], width, per, SUB)
        shifts = torch.arange(per, dtype=torch.int32).reshape(per, 1) * width
        words.append((plane << shifts).sum(-2))  # (panel, block, lane, chunk, word, i)
    w = torch.cat(words, dim=4).permute(0, 3, 1, 4, 2, 5)  # (panel, chunk, block, word, lane, i)
    return w.to(torch.uint8).contiguous().reshape(n, k * bits // 8)


def table16(table: torch.Tensor) -> torch.Tensor:
    """int8 tables [N, 2**bits] -> [N, 16], zero-padded; entries must lie in [-127, 127]."""
    n, entries = table.shape
    if table.dtype != torch.int8 or entries > 16:
        raise fail("table", "int8 [N, e] tables with e <= 16", f"{table.dtype} {list(table.shape)}")
    if table.numel() and int(table.min()) < -127:
        raise fail("table", "entries in [-127, 127] (the kernel's AVX2 path negates them)", int(table.min()))
    return torch.nn.functional.pad(table, (0, 16 - entries)).contiguous()


def weight_sums(idx: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``Σ_k table[n, idx[n, k]]`` (int32 [N])."""
    return table.to(torch.int32).gather(1, idx.long()).sum(1, dtype=torch.int32)


def reference(a: torch.Tensor, idx: torch.Tensor, table: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The op's value from the unpacked indices, in float64 (for tests), before the kernel's 16-bit rounding."""
    w = table.double().gather(1, idx.long()) * scale.double().reshape(-1, 1)
    return a.double() @ w.t()
