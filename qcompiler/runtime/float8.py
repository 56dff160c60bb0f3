"""float8 (e4m3fn, e5m2) quantization with a scale per block.

``q = clamp(x / s, -max, max)`` cast to the float8 type (round to nearest even),
``x̂ = q·s``, with ``s = max|x| / max`` per block. Granularity is a block size as
everywhere: ``(-1, -1)`` per tensor, ``(1, -1)`` per row.
"""
from typing import Sequence

import torch

from .blocks import block_dims, blocked, check_qparam, qparam_shape, resolve_block_size, spread
from .dtypes import FLOAT8_DTYPES, check_float, check_float_dtype
from .errors import fail


def _check_f8(float8_dtype) -> float:
    if float8_dtype not in FLOAT8_DTYPES:
        raise fail("float8_dtype", "torch.float8_e4m3fn or torch.float8_e5m2", float8_dtype)
    return torch.finfo(float8_dtype).max


def _grid(x, block_size):
    block = resolve_block_size(x.shape, block_size)
    return block, qparam_shape(x.shape, block)


@torch.library.custom_op("qcompiler::choose_scale_float8", mutates_args=())
def _choose_scale_op(x: torch.Tensor, block_size: Sequence[int], float8_dtype: torch.dtype,
                     scale_dtype: torch.dtype) -> torch.Tensor:
    check_float(x)
    fmax = _check_f8(float8_dtype)
    check_float_dtype(scale_dtype, "scale_dtype")
    block, _ = _grid(x, block_size)
    amax = blocked(x.float(), block).abs().amax(dim=block_dims(x.ndim))
    return (amax / fmax).clamp(min=torch.finfo(torch.float32).tiny).to(scale_dtype)


@_choose_scale_op.register_fake
def _(x, block_size, float8_dtype, scale_dtype):
    check_float(x)
    _check_f8(float8_dtype)
    check_float_dtype(scale_dtype, "scale_dtype")
    return x.new_empty(_grid(x, block_size)[1], dtype=scale_dtype)


@torch.library.custom_op("qcompiler::quantize_float8", mutates_args=())
def _quantize_op(x: torch.Tensor, block_size: Sequence[int], scale: torch.Tensor,
                 float8_dtype: torch.dtype) -> torch.Tensor:
    fmax, block = _check_quantize(x, block_size, scale, float8_dtype)
    q = (blocked(x.float(), block) / spread(scale.float(), block)).clamp(-fmax, fmax)
    return q.to(float8_dtype).reshape(x.shape)


@_quantize_op.register_fake
def _(x, block_size, scale, float8_dtype):
    _check_quantize(x, block_size, scale, float8_dtype)
    return x.new_empty(x.shape, dtype=float8_dtype)


def _check_quantize(x, block_size, scale, float8_dtype):
    check_float(x)
    fmax = _check_f8(float8_dtype)
    block, shape = _grid(x, block_size)
    check_qparam(scale, shape, "scale")
    return fmax, block


@torch.library.custom_op("qcompiler::dequantize_float8", mutates_args=())
def _dequantize_op(q: torch.Tensor, block_size: Sequence[int], scale: torch.Tensor,
                   output_dtype: torch.dtype) -> torch.Tensor:
    block = _check_dequantize(q, block_size, scale, output_dtype)
    return (blocked(q.float(), block) * spread(scale.float(), block)).reshape(q.shape).to(output_dtype)


@_dequantize_op.register_fake
def _(q, block_size, scale, output_dtype):
    _check_dequantize(q, block_size, scale, output_dtype)
    return q.new_empty(q.shape, dtype=output_dtype)


def _check_dequantize(q, block_size, scale, output_dtype):
    if not isinstance(q, torch.Tensor) or q.dtype not in FLOAT8_DTYPES:
        raise fail("q", "a float8_e4m3fn or float8_e5m2 tensor", getattr(q, "dtype", type(q).__name__))
    check_float_dtype(output_dtype, "output_dtype")
    block, shape = _grid(q, block_size)
    check_qparam(scale, shape, "scale")
    return block


def choose_scale_float8(x: torch.Tensor, block_size: Sequence[int],
                        float8_dtype: torch.dtype = torch.float8_e4m3fn,
                        scale_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Scale per block so that ``max|x|`` maps to the float8 type's largest finite value."""
    return _choose_scale_op(x, list(block_size), float8_dtype, scale_dtype)


def quantize_float8(x: torch.Tensor, block_size: Sequence[int], scale: torch.Tensor,
                    float8_dtype: torch.dtype = torch.float8_e4m3fn) -> torch.Tensor:
    """``x / scale`` per block, saturated to the float8 range and cast to ``float8_dtype``."""
    return _quantize_op(x, list(block_size), scale, float8_dtype)


def dequantize_float8(q: torch.Tensor, block_size: Sequence[int], scale: torch.Tensor,
                      output_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``q * scale`` per block, in float32, rounded once to ``output_dtype``."""
    return _dequantize_op(q, list(block_size), scale, output_dtype)
