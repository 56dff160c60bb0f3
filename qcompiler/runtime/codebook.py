"""Codebook quantization: each value becomes the index of its nearest codebook entry.

``x̂ = codebook[block][idx]``. A codebook serves the whole tensor, or each block
of ``block_rows`` rows (dimension 0); codebooks have shape ``(n_blocks, k)`` with
``k <= 256`` and come from :func:`qcompiler.runtime.kmeans_codebook` or anywhere
else (they need not be sorted). Indices are uint8, unpacked; store them packed
with ``pack_int(idx, bits)``.
"""
from typing import Optional

import torch

from .codebook_layout import codebook_blocks, rows_of
from .dtypes import check_float, check_float_dtype
from .errors import fail


def _check_codebook(codebook: torch.Tensor, shape, block_rows: Optional[int]) -> int:
    nblocks = codebook_blocks(shape, block_rows)
    if not isinstance(codebook, torch.Tensor) or codebook.ndim != 2 or codebook.shape[0] != nblocks \
            or not 1 <= codebook.shape[1] <= 256:
        raise fail("codebook", f"a ({nblocks}, k) tensor with 1 <= k <= 256", getattr(codebook, "shape", codebook))
    check_float(codebook, "codebook")
    return nblocks


@torch.library.custom_op("qcompiler::quantize_codebook", mutates_args=())
def _quantize_codebook_op(x: torch.Tensor, codebook: torch.Tensor, block_rows: Optional[int]) -> torch.Tensor:
    check_float(x)
    nblocks = _check_codebook(codebook, x.shape, block_rows)
    v = rows_of(x, nblocks).float().contiguous()
    cb, order = codebook.float().sort(-1)
    k = cb.shape[1]
    hi = torch.searchsorted(cb, v).clamp(max=k - 1)
    lo = (hi - 1).clamp(min=0)
    take_lo = (v - cb.gather(1, lo)).abs() <= (cb.gather(1, hi) - v).abs()
    idx = torch.where(take_lo, lo, hi)
    return order.gather(1, idx).to(torch.uint8).reshape(x.shape)


@_quantize_codebook_op.register_fake
def _(x, codebook, block_rows):
    check_float(x)
    _check_codebook(codebook, x.shape, block_rows)
    return x.new_empty(x.shape, dtype=torch.uint8)


@torch.library.custom_op("qcompiler::dequantize_codebook", mutates_args=())
def _dequantize_codebook_op(idx: torch.Tensor, codebook: torch.Tensor, block_rows: Optional[int],
                            output_dtype: torch.dtype) -> torch.Tensor:
    nblocks = _check_dequantize_codebook(idx, codebook, block_rows, output_dtype)
    flat = rows_of(idx, nblocks).long()
    return codebook.gather(1, flat).to(output_dtype).reshape(idx.shape)


@_dequantize_codebook_op.register_fake
def _(idx, codebook, block_rows, output_dtype):
    _check_dequantize_codebook(idx, codebook, block_rows, output_dtype)
    return idx.new_empty(idx.shape, dtype=output_dtype)


def _check_dequantize_codebook(idx, codebook, block_rows, output_dtype):
    if not isinstance(idx, torch.Tensor) or idx.dtype != torch.uint8:
        raise fail("idx", "a uint8 tensor of unpacked indices", getattr(idx, "dtype", type(idx).__name__))
    check_float_dtype(output_dtype, "output_dtype")
    return _check_codebook(codebook, idx.shape, block_rows)


def quantize_codebook(x: torch.Tensor, codebook: torch.Tensor, block_rows: Optional[int] = None) -> torch.Tensor:
    """Index of the nearest codebook entry for every element of ``x`` (uint8, shape of ``x``).

    A value exactly between two entries takes the smaller one.
    """
    return _quantize_codebook_op(x, codebook, block_rows)


def dequantize_codebook(idx: torch.Tensor, codebook: torch.Tensor, block_rows: Optional[int] = None,
                        output_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Look every index up in its block's codebook: ``codebook[block][idx]`` in ``output_dtype``."""
    return _dequantize_codebook_op(idx, codebook, block_rows, output_dtype)
