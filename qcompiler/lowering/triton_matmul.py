"""Triton matmul with the weight decoded inside the kernel: ``y = x @ decode(W)ᵀ``, for the CUDA backend.

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

The decoded tile is cast to x's dtype, as the reference dequantizes to the activation
dtype, and multiplied with ``tl.dot`` (float32 accumulation). ``wo_matmul`` launches it
directly; the kernel also runs on the CPU under ``TRITON_INTERPRET=1`` for tests (where
it multiplies in float32, since the interpreter's bfloat16 ``tl.dot`` returns garbage).
"""
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from torch.library import wrap_triton

from ..runtime.dtypes import int_type


@triton.jit
def _decode(q_ptr, row_bytes, offs_n, offs_k, mask, BITS: tl.constexpr, SIGNED: tl.constexpr):
    """The b-bit values of rows ``offs_n`` at positions ``offs_k`` (a [BN, BK] tile), as int32."""
    bit = offs_k[None, :] * BITS
    byte = bit >> 3
    row = q_ptr + offs_n[:, None] * row_bytes
    lo = tl.load(row + byte, mask=mask, other=0).to(tl.int32)
    if BITS == 8:
        v = lo
    else:
        hi = tl.load(row + byte + 1, mask=mask & (byte + 1 < row_bytes), other=0).to(tl.int32)
        v = ((lo | (hi << 8)) >> (bit & 7)) & ((1 << BITS) - 1)
    if SIGNED:
        v = v - ((v >> (BITS - 1)) << BITS)
    return v


@triton.jit
def _wo_matmul_kernel(x_ptr, q_ptr, scale_ptr, zero_ptr, table_ptr, y_ptr, M, N, K, row_bytes, group_size,
                      groups, rows_per_table, stride_xm, stride_ym,
                      BITS: tl.constexpr, SIGNED: tl.constexpr, CODEBOOK: tl.constexpr, DOT_F32: tl.constexpr,
                      BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    if CODEBOOK:  # each row's table, held in registers for the whole K loop
        table_rows = table_ptr + (offs_n[:, None] // rows_per_table) * (1 << BITS)
        if BITS <= 4:
            tables = tl.load(table_rows + tl.arange(0, 1 << BITS)[None, :], mask=offs_n[:, None] < N, other=0.0)
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        w_mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
        v = _decode(q_ptr, row_bytes, offs_n, offs_k, w_mask, BITS, SIGNED)
        if CODEBOOK:
            if BITS <= 4:
                w = tl.gather(tables, v, axis=1)
            else:  # up to 256 entries a row: too many registers; read through the cache
                w = tl.load(table_rows + v, mask=w_mask, other=0.0)
        else:
            g = offs_n[:, None] * groups + offs_k[None, :] // group_size
            w = v.to(tl.float32) * tl.load(scale_ptr + g, mask=w_mask, other=0.0) \
                + tl.load(zero_ptr + g, mask=w_mask, other=0.0)
        w = tl.where(w_mask, w, 0.0).to(x.dtype)
        if DOT_F32:  # the interpreter's bf16 tl.dot is wrong; same values, multiplied in float32
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w))
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
        v = _decode(q_ptr, row_bytes, offs_n, offs_k, w_mask, BITS, True)
        v = tl.where(w_mask, v, 0)
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


def _blocks() -> tuple:
    """(BM, BN, BK). Fixed: a Python branch on M would guard the symbolic batch size when the op is
    exported, and AOTInductor bakes one choice per kernel anyway. Decode- and prefill-shaped
    variants chosen per shape need a GPU to build and measure (issue 5)."""
    return 16, 64, 64


@torch.library.triton_op("qcompiler::triton_wo_matmul", mutates_args=())
def wo_matmul(x: torch.Tensor, q: torch.Tensor, bits: int, k: int, signed: bool = False,
              scale: Optional[torch.Tensor] = None, zero: Optional[torch.Tensor] = None,
              table: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x @ decode(q)ᵀ`` for ``x`` [M, K] and ``q`` [N, ceil(K·bits/8)] (uint8, or int8 for bits = 8).

    Affine: ``scale`` and ``zero`` are float32 [N, K / group_size]. Codebook: ``table`` is
    float32 [T, 2**bits] with T dividing N (one table per N / T rows).
    """
    m, n = x.shape[0], q.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    x, q = x.contiguous(), q.contiguous().view(torch.uint8)
    codebook = table is not None
    dummy = torch.empty(1, dtype=torch.float32, device=x.device)
    scale = scale.contiguous() if scale is not None else dummy
    zero = zero.contiguous() if zero is not None else dummy
    groups = scale.shape[1] if not codebook else 1
    bm, bn, bk = _blocks()
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    wrap_triton(_wo_matmul_kernel)[grid](
        x, q, scale, zero, table.contiguous() if codebook else dummy, y, m, n, k, q.shape[1],
        k // groups, groups, n // table.shape[0] if codebook else 1, x.stride(0), y.stride(0),
        BITS=bits, SIGNED=signed, CODEBOOK=codebook, DOT_F32=os.environ.get("TRITON_INTERPRET") == "1",
        BM=bm, BN=bn, BK=bk)
    return y


@torch.library.triton_op("qcompiler::triton_dq_matmul", mutates_args=())
def dq_matmul(xq: torch.Tensor, x_scale: torch.Tensor, x_zero: Optional[torch.Tensor], q: torch.Tensor, bits: int,
              k: int, w_scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """``(xq - x_zero)·x_scale @ (v·w_scale)ᵀ`` with per-token int8 ``xq`` [M, K] and signed b-bit weights ``q``.

    ``x_scale`` float32 [M]; ``x_zero`` int32 [M] or None (symmetric); ``w_scale`` float32
    [N, G] for G groups along K. Integer products are exact (the zero point enters as
    ``zp·sum v`` per tile); the scales apply per group in float32.
    """
    m, n = xq.shape[0], q.shape[0]
    y = torch.empty(m, n, dtype=out_dtype, device=xq.device)
    groups = w_scale.shape[1]
    group_size = k // groups
    bm, bn, bk = _blocks()
    bk = min(bk, group_size) if groups > 1 else bk  # a K tile never spans two groups
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    asym = x_zero is not None
    wrap_triton(_dq_matmul_kernel)[grid](
        xq.contiguous(), x_scale.contiguous(), x_zero.contiguous() if asym else x_scale, q.contiguous().view(torch.uint8),
        w_scale.contiguous(), y, m, n, k, q.shape[1], group_size, groups,
        xq.stride(0), y.stride(0), BITS=bits, ASYMMETRIC=asym, BM=bm, BN=bn, BK=bk)
    return y
