"""Triton matmul with the weight decoded inside the kernel: ``y = x @ decode(W)ᵀ``, for the CUDA backend.

Registered as ``qcompiler::triton_wo_matmul`` and ``qcompiler::triton_dq_matmul`` when qcompiler is
imported (``runtime/__init__.py``; importing Triton costs about 0.15 s), so a saved CUDA-lowered
program loads with ``import qcompiler`` alone; AOTInductor compiles the kernels into a ``.pt2``.

One kernel reads every weight-only format straight from the reference program's
storage, so lowering repacks nothing:

- ``W`` is b-bit values (b = 1..8) packed along K as ``runtime.packing`` packs them (a
  little-endian bit stream per row, ``ceil(K·b/8)`` bytes a row); int8 is b = 8, signed.
- affine (``codebook=None``): ``w = v·scale + zero`` per (row, group of ``group_size``
  along K), in float32. Every zero-point domain maps onto that form exactly in float32:
  int ``(v - z)·s`` is ``zero = -z·s``, the tinygemm float domain ``(v - 8)·s + z`` is
  ``zero = z - 8·s``, and symmetric is ``zero = 0`` with signed ``v``.
- codebook: ``w = table[row // rows_per_table][v]``, a float32 table of ``2**b`` entries per
  block of rows. For b <= 4 each program loads its rows' tables into registers once and
  looks up with ``tl.gather``; wider tables are read through the cache. No dequantized
  weight is ever written to memory.

``qcompiler::triton_additive_matmul`` decodes AQLM weights (``runtime/additive.py``) the same way: each
weight of a tile is the sum of its group's codewords' entries, read from the float16 codebooks through
the cache, and each output column takes its row scale after the dot.

The decoded tile is cast to x's dtype, as the reference dequantizes to the activation
dtype, and multiplied with ``tl.dot`` (float32 accumulation). Each op launches a decode
(M <= 16) or a prefill config family, each autotuned; under export both, with grids
that are empty for the one M does not call (``_variants``; docs/cuda-kernels.md). The
kernel also runs on the CPU under ``TRITON_INTERPRET=1`` for tests (where
it multiplies in float32, since the interpreter's bfloat16 ``tl.dot`` returns garbage).
"""
import functools
import os
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from torch.library import wrap_triton

from .dtypes import int_type


@triton.jit
def _decode(q_ptr, row_bytes, offs_n, offs_k, mask, BITS: tl.constexpr):
    """The unsigned b-bit values of rows ``offs_n`` at positions ``offs_k`` (a [BN, BK] tile), as int32: any
    width, each value's one or two bytes read on their own (widths that do not divide a byte)."""
    bit = offs_k[None, :] * BITS
    byte = bit >> 3
    row = q_ptr + offs_n[:, None] * row_bytes
    lo = tl.load(row + byte, mask=mask, other=0).to(tl.int32)
    hi = tl.load(row + byte + 1, mask=mask & (byte + 1 < row_bytes), other=0).to(tl.int32)
    return ((lo | (hi << 8)) >> (bit & 7)) & ((1 << BITS) - 1)


@triton.jit
def _signed(v, BITS: tl.constexpr, SIGNED: tl.constexpr):
    if SIGNED:
        v = v - ((v >> (BITS - 1)) << BITS)
    return v


@triton.jit
def _decode_tile(q_ptr, row_bytes, offs_n, n_mask, k0, K, BITS: tl.constexpr, SIGNED: tl.constexpr,
                 BK: tl.constexpr):
    """The [BN, BK] tile of b-bit values from position ``k0``, as int32. Widths that divide a byte (8, 4, 2, 1)
    read the tile's bytes as one contiguous run per row (wide loads) and split them in registers."""
    if 8 % BITS != 0:
        offs_k = k0 + tl.arange(0, BK)
        v = _decode(q_ptr, row_bytes, offs_n, offs_k, n_mask[:, None] & (offs_k[None, :] < K), BITS)
    else:
        v = _split_bytes(q_ptr, row_bytes, offs_n, n_mask, k0, BITS, BK)
    return _signed(v, BITS, SIGNED)


@triton.jit
def _split_bytes(q_ptr, row_bytes, offs_n, n_mask, k0, BITS: tl.constexpr, BK: tl.constexpr):
    """``_decode_tile`` for a width dividing a byte: a row's BK·BITS/8 bytes in one load, split in registers."""
    PER_BYTE: tl.constexpr = 8 // BITS
    offs_b = k0 // PER_BYTE + tl.arange(0, BK // PER_BYTE)
    offs_b = tl.max_contiguous(tl.multiple_of(offs_b, BK // PER_BYTE), BK // PER_BYTE)
    b = tl.load(q_ptr + offs_n[:, None] * row_bytes + offs_b[None, :],
                mask=n_mask[:, None] & (offs_b[None, :] < row_bytes), other=0).to(tl.int32)
    if BITS == 8:
        v = b
    elif BITS == 4:  # values 2i, 2i + 1 in byte i's low and high halves
        v = tl.interleave(b & 15, b >> 4)
    elif BITS == 2:
        v = tl.interleave(tl.interleave(b & 3, (b >> 4) & 3), tl.interleave((b >> 2) & 3, b >> 6))
    else:
        v = tl.interleave(tl.interleave(tl.interleave(b & 1, (b >> 4) & 1), tl.interleave((b >> 2) & 1, (b >> 6) & 1)),
                          tl.interleave(tl.interleave((b >> 1) & 1, (b >> 5) & 1),
                                        tl.interleave((b >> 3) & 1, b >> 7)))
    return v


@triton.jit
def _block_scale(ptr, mask, FORMAT: tl.constexpr):
    """Block scales as float32 from their stored width: 0 a float dtype, 1 e8m0 (uint8: 2^(s - 127)), 2 e4m3
    (its uint8 bits: the 7 magnitude bits under float32's exponent and mantissa, rebiased by 2^(127 - 7))."""
    if FORMAT == 0:
        return tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(ptr, mask=mask, other=0).to(tl.int32)
    if FORMAT == 1:
        return (s << 23).to(tl.float32, bitcast=True)
    return ((s & 0x7F) << 20).to(tl.float32, bitcast=True) * 1.329227995784916e36


@triton.jit
def _grouped(w, scale_ptr, zero_ptr, offs_n, n_mask, k0, K, groups, group_size,
             GROUP: tl.constexpr, FORMAT: tl.constexpr, ZERO: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """``w·scale (+ zero)`` for a [BN, BK] tile from ``k0``, the scales (and zeros) per row and group along K.

    ``GROUP`` a power of two: each group's scale is read once a tile (a [BN, BK / GROUP] block, or one per row
    where a group spans the tile) and broadcast over its values; 0: one group per row; -1: any other group size,
    a scale read per value."""
    if GROUP == -1:
        offs_k = k0 + tl.arange(0, BK)
        g = offs_n[:, None] * groups + offs_k[None, :] // group_size
        mask = n_mask[:, None] & (offs_k[None, :] < K)
        w = w * _block_scale(scale_ptr + g, mask, FORMAT)
        if ZERO:
            w += tl.load(zero_ptr + g, mask=mask, other=0.0)
        return w
    NG: tl.constexpr = BK // GROUP if GROUP > 0 and GROUP < BK else 1
    first = k0 // GROUP if GROUP > 0 else 0
    offs_g = first + tl.arange(0, NG)
    g = offs_n[:, None] * groups + offs_g[None, :]  # [BN, NG]
    mask = n_mask[:, None] & (offs_g[None, :] < groups)
    s = _block_scale(scale_ptr + g, mask, FORMAT)
    w3 = tl.reshape(w, (BN, NG, BK // NG)) * s[:, :, None]
    if ZERO:
        w3 += tl.load(zero_ptr + g, mask=mask, other=0.0)[:, :, None]
    return tl.reshape(w3, (BN, BK))


@triton.jit
def _wo_matmul_kernel(x_ptr, q_ptr, scale_ptr, zero_ptr, table_ptr, y_ptr, M, N, K, row_bytes, group_size,
                      groups, rows_per_table, stride_xm, stride_ym,
                      BITS: tl.constexpr, SIGNED: tl.constexpr, CODEBOOK: tl.constexpr, SCALED: tl.constexpr,
                      SCALE_FORMAT: tl.constexpr, GROUP: tl.constexpr, DOT_F32: tl.constexpr,
                      BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    n_mask = offs_n < N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    if CODEBOOK:  # each row's table (2**BITS float32 entries, read through the cache: tiny, always resident)
        table_rows = table_ptr + (offs_n[:, None] // rows_per_table) * (1 << BITS)
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        w_mask = n_mask[:, None] & (offs_k[None, :] < K)
        v = _decode_tile(q_ptr, row_bytes, offs_n, n_mask, k0, K, BITS, SIGNED, BK)
        if CODEBOOK:
            w = tl.load(table_rows + v, mask=w_mask, other=0.0)
            if SCALED:  # a fixed table: each block's scale at its stored width
                w = _grouped(w, scale_ptr, zero_ptr, offs_n, n_mask, k0, K, groups, group_size, GROUP, SCALE_FORMAT,
                             False, BN, BK)
        else:
            w = _grouped(v.to(tl.float32), scale_ptr, zero_ptr, offs_n, n_mask, k0, K, groups, group_size, GROUP,
                         SCALE_FORMAT, True, BN, BK)
        w = tl.where(w_mask, w, 0.0).to(x.dtype)
        if DOT_F32:  # float32 activations in float32 (no tf32), and the interpreter (its bf16 tl.dot is wrong)
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w))
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & n_mask[None, :])


@triton.jit
def _additive_matmul_kernel(x_ptr, codes_ptr, books_ptr, scale_ptr, y_ptr, M, N, K, groups, entries,
                            stride_xm, stride_ym, BOOKS: tl.constexpr, GROUP: tl.constexpr, WIDE: tl.constexpr,
                            DOT_F32: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """AQLM: each weight the sum over codebooks of its group's codeword entry, read from the float16 codebooks
    (through the cache); the row scale applied to the tile's sums."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        w_mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
        at = (offs_n[:, None] * groups + offs_k[None, :] // GROUP) * BOOKS  # [BN, BK]: each weight's group codes
        w = tl.zeros((BN, BK), dtype=tl.float32)
        for c in tl.static_range(BOOKS):
            code = tl.load(codes_ptr + at + c, mask=w_mask, other=0).to(tl.int32)
            if WIDE:
                code = code & 0xFFFF
            w += tl.load(books_ptr + (c * entries + code) * GROUP + offs_k[None, :] % GROUP, mask=w_mask,
                         other=0.0).to(tl.float32)
        w = w.to(x.dtype)
        if DOT_F32:  # float32 activations in float32 (no tf32), and the interpreter (its bf16 tl.dot is wrong)
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w))
    acc *= tl.load(scale_ptr + offs_n, mask=offs_n < N, other=0.0)[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _dq_matmul_kernel(xq_ptr, x_scale_ptr, x_zero_ptr, q_ptr, w_scale_ptr, y_ptr, M, N, K, row_bytes,
                      group_size, groups, stride_xm, stride_ym,
                      BITS: tl.constexpr, ASYMMETRIC: tl.constexpr,
                      BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Per-token int8 activations times signed b-bit weights: an exact int32 dot per group, then the scales."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    m_mask, n_mask = offs_m < M, offs_n < N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    if ASYMMETRIC:
        x_zero = tl.load(x_zero_ptr + offs_m, mask=m_mask, other=0)
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        xq = tl.load(xq_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                     mask=m_mask[:, None] & (offs_k[None, :] < K), other=0)
        w_mask = n_mask[:, None] & (offs_k[None, :] < K)
        v = tl.where(w_mask, _decode_tile(q_ptr, row_bytes, offs_n, n_mask, k0, K, BITS, True, BK), 0)
        part = tl.dot(xq, tl.trans(v.to(tl.int8)))  # int32, exact
        g = offs_n * groups + k0 // group_size
        if ASYMMETRIC:  # sum (q - zp)·v = sum q·v - zp·sum v, over this tile
            part -= x_zero[:, None] * tl.sum(v, axis=1)[None, :]
        acc += part.to(tl.float32) * tl.load(w_scale_ptr + g, mask=n_mask, other=0.0)[None, :]
    acc *= tl.load(x_scale_ptr + offs_m, mask=m_mask, other=0.0)[:, None]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


def affine_scale_zero(scale: torch.Tensor, zero_point: Optional[torch.Tensor], dtype: str, domain: str) -> tuple:
    """The kernel's float32 (scale, zero) with ``w = v·scale + zero`` for an affine weight's stored qparams.

    ``v`` is the stored value as unpacked (signed types sign-extended); exact algebra,
    float32 rounding: int domain ``(v - z)·s``, float domain ``(v - mid)·s + z``, none ``(v - mid)·s``.
    """
    s, mid = scale.float(), int_type(dtype).mid
    if domain == "int":
        zero = -zero_point.float() * s
    elif domain == "float":
        zero = zero_point.float() - mid * s
    else:
        zero = -mid * s
    return s, zero


DECODE_MAX_M = 16  # at most this many rows run the decode-shaped configs
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

# (BM, BN, BK, num_warps, num_stages); the first of each list is the default where nothing is measured.
# Decode: one 16-row tile, narrow N tiles for many programs and long K tiles for bytes in flight
# (GEMV-shaped, bandwidth-bound). Prefill: square tensor-core tiles, pipelined (a tiled GEMM).
SHAPES = {
    "decode": ((16, 32, 128, 4, 3), (16, 16, 256, 4, 3), (16, 64, 128, 4, 4), (16, 32, 256, 8, 3)),
    "prefill": ((64, 64, 64, 4, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (128, 128, 64, 8, 3),
                (128, 128, 32, 8, 4)),
}


def configs(kind: str, max_bk: Optional[int] = None) -> list:
    """Triton configs for one variant ("decode" or "prefill"); ``max_bk`` caps the K tile (a tile
    of the int8-activation kernel never spans two weight groups)."""
    seen, out = set(), []
    for bm, bn, bk, warps, stages in SHAPES[kind]:
        bk = min(bk, max_bk) if max_bk else bk
        if (bm, bn, bk, warps, stages) not in seen:
            seen.add((bm, bn, bk, warps, stages))
            out.append(triton.Config({"BM": bm, "BN": bn, "BK": bk}, num_warps=warps, num_stages=stages))
    return out


@functools.lru_cache(maxsize=None)
def _tuned(kernel, kind: str, max_bk: Optional[int]):
    """``kernel`` autotuned over one variant's configs (only the default under the interpreter,
    which has nothing to time; tests run every config explicitly)."""
    cfgs = configs(kind, max_bk)
    key = ["N", "K"] + [name for name in ("BITS", "BOOKS", "WIDE") if name in kernel.arg_names]
    return triton.autotune(cfgs[:1] if _INTERPRETED else cfgs, key=key)(kernel)


def _variants(m):
    """(variant, on) pairs to launch for ``m`` rows; ``on`` multiplies the grid's first axis.

    A concrete ``m`` picks one variant here. A symbolic ``m`` (the op inside an exported
    program) launches both with guard-free factors that are 1 for the variant ``m`` calls for
    and 0 for the other, so one AOTInductor ``.pt2`` picks per call; its C++ launcher returns
    early on an empty grid.
    """
    if not isinstance(m, torch.SymInt):
        return [("decode" if m <= DECODE_MAX_M else "prefill", 1)]
    decode = 1 + (DECODE_MAX_M - m) // (1 << 40)  # 1 when m <= DECODE_MAX_M, else 0
    return [("decode", decode), ("prefill", 1 - decode)]


@dataclass(frozen=True)
class Launch:
    """One call of a kernel: its arguments, output and the bounds its configs must respect."""

    kernel: object
    m: object  # rows: an int, or a SymInt under export
    n: int
    max_bk: Optional[int]
    args: tuple
    kwargs: dict
    out: torch.Tensor

    def _grid(self, on):
        return lambda meta: (triton.cdiv(self.m, meta["BM"]) * on, triton.cdiv(self.n, meta["BN"]))

    def run(self) -> torch.Tensor:
        """Launch the variant(s) ``m`` calls for, each autotuned over its configs."""
        for kind, on in _variants(self.m):
            wrap_triton(_tuned(self.kernel, kind, self.max_bk))[self._grid(on)](*self.args, **self.kwargs)
        return self.out

    def run_config(self, config) -> torch.Tensor:
        """Launch one given ``triton.Config`` (for tests of every config)."""
        self.kernel[self._grid(1)](*self.args, **self.kwargs, **config.kwargs, num_warps=config.num_warps,
                                   num_stages=config.num_stages)
        return self.out


INT8_DOT_MIN_K = 32  # an int8 tl.dot's K on the GPU (Hopper's int8 MMA; 16 ran only in the interpreter)


def dq_max_bk(group_size: int) -> int:
    """The widest K tile of the int8-activation kernel for a group: the largest power of two dividing
    it, so that no tile spans two groups (an int8 ``tl.dot`` needs K >= ``INT8_DOT_MIN_K``)."""
    bk = group_size & -group_size
    if bk < INT8_DOT_MIN_K:
        raise ValueError(f"triton_dq_matmul needs groups of a multiple of {INT8_DOT_MIN_K} along K, not {group_size}")
    return bk


SCALE_FORMATS = ("float", "e8m0", "e4m3")  # wo_matmul's scale_format: 0, 1, 2


def wo_launch(x: torch.Tensor, q: torch.Tensor, bits: int, k: int, signed: bool = False,
              scale: Optional[torch.Tensor] = None, zero: Optional[torch.Tensor] = None,
              table: Optional[torch.Tensor] = None, scale_format: int = 0) -> Launch:
    """The weight-decoding kernel's launch for ``wo_matmul``'s arguments."""
    m, n = x.shape[0], q.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    x, q = x.contiguous(), q.contiguous().view(torch.uint8)
    codebook, scaled = table is not None, table is not None and scale is not None
    dummy = torch.empty(1, dtype=torch.float32, device=x.device)
    scale = scale.contiguous() if scale is not None else dummy
    scale = scale.view(torch.uint8) if scale.dtype == torch.float8_e4m3fn else scale
    zero = zero.contiguous() if zero is not None else dummy
    groups = scale.shape[1] if not codebook or scaled else 1
    args = (x, q, scale, zero, table.contiguous() if codebook else dummy, y, m, n, k, q.shape[1],
            k // groups, groups, n // table.shape[0] if codebook else 1, x.stride(0), y.stride(0))
    return Launch(_wo_matmul_kernel, m, n, None, args,
                  dict(BITS=bits, SIGNED=signed, CODEBOOK=codebook, SCALED=scaled, SCALE_FORMAT=scale_format,
                       GROUP=_group_constexpr(k, groups), DOT_F32=_dot_f32(x)), y)


def _group_constexpr(k: int, groups: int) -> int:
    """``_grouped``'s GROUP for ``groups`` scales a row along ``k``: 0 one a row, the group size where it is a
    power of two (read once a tile), -1 otherwise (read per value)."""
    if groups == 1:
        return 0
    size = k // groups
    return size if size * groups == k and size & (size - 1) == 0 else -1


def _dot_f32(x: torch.Tensor) -> bool:
    """Whether the kernels multiply in float32: float32 activations (as ``F.linear`` does, no tf32), and always
    under the interpreter."""
    return _INTERPRETED or x.dtype == torch.float32


def dq_launch(xq: torch.Tensor, x_scale: torch.Tensor, x_zero: Optional[torch.Tensor], q: torch.Tensor, bits: int,
              k: int, w_scale: torch.Tensor, out_dtype: torch.dtype) -> Launch:
    """The int8-activation kernel's launch for ``dq_matmul``'s arguments."""
    m, n = xq.shape[0], q.shape[0]
    y = torch.empty(m, n, dtype=out_dtype, device=xq.device)
    groups = w_scale.shape[1]
    group_size = k // groups
    asym = x_zero is not None
    args = (xq.contiguous(), x_scale.contiguous(), x_zero.contiguous() if asym else x_scale,
            q.contiguous().view(torch.uint8), w_scale.contiguous(), y, m, n, k, q.shape[1], group_size, groups,
            xq.stride(0), y.stride(0))
    return Launch(_dq_matmul_kernel, m, n, dq_max_bk(group_size) if groups > 1 else None, args,
                  dict(BITS=bits, ASYMMETRIC=asym), y)


@torch.library.triton_op("qcompiler::triton_wo_matmul", mutates_args=())
def wo_matmul(x: torch.Tensor, q: torch.Tensor, bits: int, k: int, signed: bool = False,
              scale: Optional[torch.Tensor] = None, zero: Optional[torch.Tensor] = None,
              table: Optional[torch.Tensor] = None, scale_format: int = 0) -> torch.Tensor:
    """``x @ decode(q)ᵀ`` for ``x`` [M, K] and ``q`` [N, ceil(K·bits/8)] (uint8, or int8 for bits = 8).

    Affine: ``scale`` and ``zero`` are float32 [N, K / group_size]. Codebook: ``table`` is
    float32 [T, 2**bits] with T dividing N (one table per N / T rows). A fixed table: ``table`` [1, 2**bits] and
    ``scale`` [N, K / block] as stored, ``scale_format`` 0 (a float dtype), 1 (e8m0, uint8) or 2 (float8_e4m3fn).
    """
    return wo_launch(x, q, bits, k, signed, scale, zero, table, scale_format).run()


def additive_launch(x: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor, scale: torch.Tensor) -> Launch:
    """The AQLM kernel's launch for ``additive_matmul``'s arguments."""
    m, (n, groups, books), (_, entries, group) = x.shape[0], codes.shape, codebooks.shape
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    x = x.contiguous()
    args = (x, codes.contiguous(), codebooks.contiguous(), scale.float().reshape(-1).contiguous(), y, m, n,
            groups * group, groups, entries, x.stride(0), y.stride(0))
    return Launch(_additive_matmul_kernel, m, n, None, args,
                  dict(BOOKS=books, GROUP=group, WIDE=codes.dtype == torch.int16, DOT_F32=_dot_f32(x)), y)


@torch.library.triton_op("qcompiler::triton_additive_matmul", mutates_args=())
def additive_matmul(x: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor,
                    scale: torch.Tensor) -> torch.Tensor:
    """``x @ Wᵀ`` for an AQLM weight as stored (``runtime/additive.py``): ``codes`` [N, G, C] uint8 or int16,
    ``codebooks`` float16 [C, E, g], ``scale`` [N] (or [N, 1]); the weight is decoded in the kernel's tiles."""
    return additive_launch(x, codes, codebooks, scale).run()


@torch.library.triton_op("qcompiler::triton_dq_matmul", mutates_args=())
def dq_matmul(xq: torch.Tensor, x_scale: torch.Tensor, x_zero: Optional[torch.Tensor], q: torch.Tensor, bits: int,
              k: int, w_scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """``(xq - x_zero)·x_scale @ (v·w_scale)ᵀ`` with per-token int8 ``xq`` [M, K] and signed b-bit weights ``q``.

    ``x_scale`` float32 [M]; ``x_zero`` int32 [M] or None (symmetric); ``w_scale`` float32
    [N, G] for G groups along K. Integer products are exact (the zero point enters as
    ``zp·sum v`` per tile); the scales apply per group in float32.
    """
    return dq_launch(xq, x_scale, x_zero, q, bits, k, w_scale, out_dtype).run()
