"""Fixed-table weight formats: each weight a b-bit code into a fixed table of values (a float grid), times its
block's scale (DESIGN, Numerics: ``x̂ = table[idx] · s_block``). The formats the seeds and peers ship are all this
shape: fp6 e3m2 and generic ``fpx`` (torchao's ``fpx_weight_only``), OCP MXFP4 / MXFP8 (e2m1 / e4m3 elements, a
power-of-two e8m0 scale per 32) and NVFP4 (e2m1, an e4m3 scale per 16 and a float32 scale per tensor).

    grid_values("e2m1")                       # the 16 values of the 4-bit codes (sign bit high)
    s = choose_table_scale(w, "e2m1", 32, "e8m0")          # uint8 biased exponents [N, K/32]
    idx = quantize_table(w, "e2m1", 32, s, "e8m0")          # uint8 codes [N, K]
    w_hat = dequantize_table(idx, grid_values("e2m1"), 32, s, "e8m0")      # torch.ops.qcompiler.dequantize_table

Grids (``fpx-<e>-<m>`` style names ``e<E>m<M>``): one sign bit, E exponent bits with bias ``2^(E-1) - 1``,
M mantissa bits, subnormals, every code finite (no inf or NaN), as fp4/fp6 are; ``e4m3`` is float8_e4m3fn
(its two NaN codes are never chosen). A value is rounded to the nearest grid value, ties to the even code
(round-to-nearest-even on the mantissa, as a float cast is), and saturates at the grid's largest value.

Scale formats: ``"e8m0"`` (uint8: ``2^(e - 127)``; OCP MX: ``floor(log2 amax) - emax`` of the element type),
``"e4m3"`` (float8_e4m3fn: ``amax / max`` rounded to e4m3, within a float32 scale per tensor that keeps the
block scales in e4m3's range, as NVFP4), ``"float"`` (float32 ``amax / max``, stored in ``scale_dtype``).
"""
import functools
import math
import re
from typing import Optional

import torch

from .dtypes import check_float_dtype
from .errors import fail

GRID = re.compile(r"e(\d)m(\d)")
SCALE_FORMATS = ("e8m0", "e4m3", "float")
E8M0_BIAS = 127
E4M3_MAX = 448.0
NAMED_GRIDS: dict = {}  # name -> values by code: the grids schemes declare by their values (register_grid)


def register_grid(name: str, values) -> None:
    """Declare a grid by its values by code (2, 4, ..., 256 distinct finite values): a scheme's own table, such as
    NF4's 16 normal quantiles. A value is rounded to the nearest one (a tie to the lower code)."""
    values = tuple(float(v) for v in values)
    count = len(values)
    if GRID.fullmatch(name) or not name:
        raise fail("name", "a grid name other than the e<E>m<M> float grids", name)
    distinct = len(set(values)) == count and all(map(math.isfinite, values))
    if count < 2 or count > 256 or count & (count - 1) or not distinct:
        raise fail("values", "2, 4, ..., 256 distinct finite values", values)
    known = NAMED_GRIDS.get(name)
    if known is not None and known != values:
        raise fail("name", "a grid name not registered with other values", name)
    NAMED_GRIDS[name] = values


@functools.lru_cache(maxsize=None)
def _float_grid(name: str) -> tuple:
    """``(values by code, magnitudes sorted, their codes, bits)`` of a float grid name, as Python floats."""
    m = GRID.fullmatch(name or "")
    if m is None:
        raise fail("grid", "e<E>m<M> (e.g. e2m1, e3m2, e4m3) or a registered grid's name "
                   f"({', '.join(NAMED_GRIDS) or 'none'})", name)
    ebits, mbits = int(m.group(1)), int(m.group(2))
    if not (1 <= ebits <= 5 and 0 <= mbits <= 6 and 3 <= 1 + ebits + mbits <= 8):
        raise fail("grid", "1 to 5 exponent bits, 0 to 6 mantissa bits, 3 to 8 bits in all", name)
    bits, bias = 1 + ebits + mbits, (1 << (ebits - 1)) - 1
    values = []
    for code in range(1 << bits):
        sign = -1.0 if code >> (bits - 1) else 1.0
        e, f = (code >> mbits) & ((1 << ebits) - 1), code & ((1 << mbits) - 1)
        mag = f / (1 << mbits) * 2.0 ** (1 - bias) if e == 0 else (1 + f / (1 << mbits)) * 2.0 ** (e - bias)
        values.append(sign * mag)
    if name == "e4m3":  # float8_e4m3fn: S.1111.111 is NaN; the largest value is 448
        values[0x7F], values[0xFF] = math.nan, math.nan
    half = 1 << (bits - 1)
    mags = [(values[c], c) for c in range(half) if not math.isnan(values[c])]
    return tuple(values), tuple(v for v, _ in mags), tuple(c for _, c in mags), bits


def _grid(name: str) -> tuple:
    """``(values by code, magnitudes sorted, their codes, bits)``; a registered grid's codes are all of them, its
    magnitudes its values' sorted."""
    values = NAMED_GRIDS.get(name)
    if values is None:
        return _float_grid(name)
    return values, tuple(sorted(abs(v) for v in values)), (), len(values).bit_length() - 1


def grid_bits(name: str) -> int:
    """Bits of a grid's codes."""
    return _grid(name)[3]


def grid_values(name: str) -> torch.Tensor:
    """The grid's values by code, float32 [2^bits] (NaN at float8_e4m3fn's NaN codes)."""
    return torch.tensor(_grid(name)[0], dtype=torch.float32)


def grid_max(name: str) -> float:
    """The grid's largest value."""
    return _grid(name)[1][-1]


def grid_emax(name: str) -> int:
    """The exponent of the grid's largest value (OCP MX's emax of the element type)."""
    return math.floor(math.log2(grid_max(name)))


def _blocks(w: torch.Tensor, block_size: int) -> torch.Tensor:
    n, k = w.shape
    block_size = k if block_size == -1 else block_size
    if k % block_size:
        raise fail("input size", f"a multiple of the block size {block_size}", k)
    return w.reshape(n, k // block_size, block_size)


def choose_table_scale(w: torch.Tensor, grid: str, block_size: int, scale_format: str,
                       tensor_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Each block's scale of ``w`` [N, K] for ``grid``: e8m0 as uint8 biased exponents, e4m3 as float8_e4m3fn
    (divided by ``tensor_scale`` first), float as float32."""
    if scale_format not in SCALE_FORMATS:
        raise fail("scale_format", "e8m0, e4m3 or float", scale_format)
    amax = _blocks(w.float(), block_size).abs().amax(-1)
    if scale_format == "e8m0":
        exp = torch.floor(torch.log2(amax.clamp_min(2.0 ** -126))) - grid_emax(grid)
        return (exp.clamp(-E8M0_BIAS, E8M0_BIAS) + E8M0_BIAS).to(torch.uint8)
    s = amax / grid_max(grid)
    if scale_format == "e4m3":
        t = 1.0 if tensor_scale is None else tensor_scale.float()
        return (s / t).clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)
    return s


def table_scale(scale: torch.Tensor, scale_format: str, tensor_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Stored block scales as float32 multipliers."""
    if scale_format == "e8m0":
        return torch.exp2(scale.to(torch.float32) - E8M0_BIAS)
    s = scale.to(torch.float32)
    return s if tensor_scale is None else s * tensor_scale.float()


def nearest_code(v: torch.Tensor, grid: str) -> torch.Tensor:
    """The grid code nearest each value of ``v`` (ties to the even code; saturating), uint8."""
    if grid in NAMED_GRIDS:
        return _nearest_named(v, NAMED_GRIDS[grid])
    _, mags, codes, bits = _grid(grid)
    mag = torch.tensor(mags, dtype=torch.float64, device=v.device)
    a = v.double().abs().clamp(max=mags[-1])
    i = torch.bucketize(a, (mag[1:] + mag[:-1]) / 2)  # nearest, a tie to the lower one
    tie = (i + 1 < len(mags)) & (a == (mag[(i + 1).clamp(max=len(mags) - 1)] + mag[i]) / 2)
    i = torch.where(tie & (i % 2 == 1), i + 1, i)  # a tie goes to the even code (even mantissa)
    code = torch.tensor(codes, dtype=torch.int64, device=v.device)[i]
    negative = (v < 0) & (code != 0)
    return (code | (negative.to(torch.int64) << (bits - 1))).to(torch.uint8)


def _nearest_named(v: torch.Tensor, values: tuple) -> torch.Tensor:
    """The code of each value's nearest grid value (a tie to the lower value; saturating), uint8."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranked = torch.tensor([values[c] for c in order], dtype=torch.float64, device=v.device)
    i = torch.bucketize(v.double(), (ranked[1:] + ranked[:-1]) / 2)
    return torch.tensor(order, dtype=torch.uint8, device=v.device)[i]


def quantize_table(w: torch.Tensor, grid: str, block_size: int, scale: torch.Tensor, scale_format: str,
                   tensor_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``w`` [N, K] as grid codes (uint8) under its block scales."""
    s = table_scale(scale, scale_format, tensor_scale)
    blocks = _blocks(w.float(), block_size)
    v = torch.where(s[..., None] > 0, blocks / s[..., None], torch.zeros_like(blocks))
    return nearest_code(v, grid).reshape(w.shape)


def _check_dequantize_table(idx, table, block_size, scale, scale_format, output_dtype) -> int:
    """The block size in effect (``-1``: the whole row)."""
    if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.uint8, torch.int8) or idx.ndim != 2:
        raise fail("idx", "a uint8 (or, for 8-bit codes, int8) [N, K] tensor of unpacked codes",
                   getattr(idx, "dtype", type(idx).__name__))
    if not isinstance(table, torch.Tensor) or table.ndim != 1 or not 2 <= table.shape[0] <= 256:
        raise fail("table", "a 1-d tensor of 2 to 256 values", getattr(table, "shape", table))
    check_float_dtype(output_dtype, "output_dtype")
    if scale_format not in SCALE_FORMATS:
        raise fail("scale_format", "e8m0, e4m3 or float", scale_format)
    n, k = idx.shape
    block = k if block_size == -1 else block_size
    if block < 1 or k % block:
        raise fail("block_size", f"-1 or a divisor of K = {k}", block_size)
    if tuple(scale.shape) != (n, k // block):
        raise fail("scale", f"[{n}, {k // block}] (one per block)", tuple(scale.shape))
    return block


@torch.library.custom_op("qcompiler::dequantize_table", mutates_args=())
def _dequantize_table_op(idx: torch.Tensor, table: torch.Tensor, block_size: int, scale: torch.Tensor,
                         scale_format: str, tensor_scale: Optional[torch.Tensor],
                         output_dtype: torch.dtype) -> torch.Tensor:
    block = _check_dequantize_table(idx, table, block_size, scale, scale_format, output_dtype)
    s = table_scale(scale, scale_format, tensor_scale)
    if idx.dtype == torch.int8:
        # 8-bit codes are stored as int8 and read through an int8 -> bfloat16 conversion (exact for -128..127), which
        # Inductor's constant folding leaves to run time, as it does weight-only int8's: freezing then keeps them at
        # their width in a .pt2 instead of folding the dequantization into float32 weights. (Packed codes are kept
        # by unpack_int's shifts.)
        codes = idx.to(torch.bfloat16).to(torch.int32) & 0xFF
    else:
        codes = idx.long()
    columns = torch.arange(idx.shape[1], device=idx.device) // block
    return (table.float()[codes] * s[:, columns]).to(output_dtype)


@_dequantize_table_op.register_fake
def _(idx, table, block_size, scale, scale_format, tensor_scale, output_dtype):
    _check_dequantize_table(idx, table, block_size, scale, scale_format, output_dtype)
    return idx.new_empty(idx.shape, dtype=output_dtype)


def dequantize_table(idx: torch.Tensor, table: torch.Tensor, block_size: int, scale: torch.Tensor,
                     scale_format: str, tensor_scale: Optional[torch.Tensor] = None,
                     output_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``table[idx] · s_block`` [N, K] in ``output_dtype``: ``idx`` codes [N, K] (unpacked uint8; 8-bit codes may be
    their bytes as int8), ``table`` the
    grid's values by code, one scale per block of ``block_size`` along K (``-1``: per row), stored as
    ``scale_format`` says, times ``tensor_scale`` where given."""
    return _dequantize_table_op(idx, table, block_size, scale, scale_format, tensor_scale, output_dtype)
