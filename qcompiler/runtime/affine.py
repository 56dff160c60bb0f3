"""Affine quantization: ``choose_qparams_affine``, ``quantize_affine``, ``dequantize_affine``.

One convention everywhere (DESIGN.md, Numerics). With ``q`` in ``[qmin, qmax]``:

- zero point in the integer domain: ``q = clamp(round(x/s) + z)``, ``x̂ = (q - z)·s``;
- zero point in the float domain (tinygemm style): ``q = clamp(round((x - z)/s) + mid)``,
  ``x̂ = (q - mid)·s + z``;
- no zero point (``"none"``): ``q = clamp(round(x/s) + mid)``, ``x̂ = (q - mid)·s``,
  where ``mid`` is 0 for signed types.

``round`` is round-half-to-even. Arithmetic runs in float32 whatever the
input, scale and zero-point dtypes. Each op is a ``qcompiler::`` torch.library
op with a fake implementation, so it survives ``torch.export``.
"""
from typing import Optional, Sequence

import torch

from .blocks import block_dims, blocked, check_qparam, qparam_shape, resolve_block_size, spread
from .dtypes import IntType, check_float, check_float_dtype, check_storage, int_type
from .errors import fail

MAPPINGS = ("symmetric", "asymmetric")
ZERO_POINT_DOMAINS = ("int", "float", "none")
INT_DOMAIN_ZP_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.bfloat16, torch.float16, torch.float32)
FLOAT_DOMAIN_ZP_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_EXACT_INT_LIMIT = {torch.bfloat16: 256, torch.float16: 2048, torch.float32: 1 << 24}


def check_domain(zero_point_domain: str) -> None:
    if zero_point_domain not in ZERO_POINT_DOMAINS:
        raise fail("zero_point_domain", "'int', 'float' or 'none'", zero_point_domain)


def resolve_zero_point_dtype(t: IntType, mapping: str, domain: str, zero_point_dtype: Optional[torch.dtype],
                             scale_dtype: torch.dtype) -> Optional[torch.dtype]:
    """Check a mapping / domain / zero-point dtype combination; return the zero point's dtype."""
    if mapping not in MAPPINGS:
        raise fail("mapping", "'symmetric' or 'asymmetric'", mapping)
    check_domain(domain)
    if domain == "none":
        if mapping != "symmetric":
            raise fail("zero_point_domain", "'int' or 'float' for the asymmetric mapping ('none' needs 'symmetric')",
                       domain)
        if zero_point_dtype is not None:
            raise fail("zero_point_dtype", "None when zero_point_domain is 'none'", zero_point_dtype)
        return None
    if domain == "float":
        zp = zero_point_dtype or scale_dtype
        if zp not in FLOAT_DOMAIN_ZP_DTYPES:
            raise fail("zero_point_dtype", "torch.bfloat16, torch.float16 or torch.float32 in the float domain", zp)
        return zp
    zp = zero_point_dtype or t.storage
    if zp not in INT_DOMAIN_ZP_DTYPES:
        raise fail("zero_point_dtype", "int8, uint8, int16, int32, bfloat16, float16 or float32 in the int domain", zp)
    if zp.is_floating_point:
        ok = max(-t.qmin, t.qmax) <= _EXACT_INT_LIMIT[zp]
    else:
        info = torch.iinfo(zp)
        ok = info.min <= t.qmin and t.qmax <= info.max
    if not ok:
        raise fail("zero_point_dtype", f"a dtype that holds every {t.name} value [{t.qmin}, {t.qmax}] exactly", zp)
    return zp


def _grid(x: torch.Tensor, block_size: Sequence[int]):
    block = resolve_block_size(x.shape, block_size)
    return block, qparam_shape(x.shape, block)


def _check_qparams(shape, scale, zero_point, domain):
    check_qparam(scale, shape, "scale")
    if domain == "none":
        if zero_point is not None and zero_point.numel() != 0:
            raise fail("zero_point", "None (or empty) when zero_point_domain is 'none'", tuple(zero_point.shape))
    else:
        if zero_point is None:
            raise fail("zero_point", f"a tensor when zero_point_domain is {domain!r}", None)
        check_qparam(zero_point, shape, "zero_point")


# --- choose_qparams_affine -------------------------------------------------

@torch.library.custom_op("qcompiler::choose_qparams_affine", mutates_args=())
def _choose_qparams_op(x: torch.Tensor, block_size: Sequence[int], dtype: str, mapping: str,
                       zero_point_domain: str, zero_point_dtype: Optional[torch.dtype],
                       scale_dtype: torch.dtype, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    t, zp_dtype, block, _ = _check_choose(x, block_size, dtype, mapping, zero_point_domain, zero_point_dtype,
                                          scale_dtype, eps)
    xb = blocked(x.float(), block)
    mn, mx = xb.amin(dim=block_dims(x.ndim)), xb.amax(dim=block_dims(x.ndim))
    if mapping == "symmetric":
        scale = torch.maximum(-mn, mx) / ((t.qmax - t.qmin) / 2)
    elif zero_point_domain == "int":
        mn, mx = mn.clamp(max=0), mx.clamp(min=0)  # keep 0 exactly representable
        scale = (mx - mn) / (t.qmax - t.qmin)
    else:
        scale = (mx - mn) / (t.qmax - t.qmin)
    scale = scale.clamp(min=eps).to(scale_dtype)
    s = scale.float()
    if zero_point_domain == "none":
        return scale, x.new_empty(0, dtype=torch.int8)
    if mapping == "symmetric":
        zp = torch.full_like(s, t.mid if zero_point_domain == "int" else 0.0)
    elif zero_point_domain == "int":
        zp = (t.qmin - torch.round(mn / s)).clamp(t.qmin, t.qmax)
    else:
        zp = mn + s * (t.mid - t.qmin)
    return scale, zp.to(zp_dtype)


@_choose_qparams_op.register_fake
def _(x, block_size, dtype, mapping, zero_point_domain, zero_point_dtype, scale_dtype, eps):
    _, zp_dtype, _, shape = _check_choose(x, block_size, dtype, mapping, zero_point_domain, zero_point_dtype,
                                          scale_dtype, eps)
    scale = x.new_empty(shape, dtype=scale_dtype)
    if zp_dtype is None:
        return scale, x.new_empty(0, dtype=torch.int8)
    return scale, x.new_empty(shape, dtype=zp_dtype)


def _check_choose(x, block_size, dtype, mapping, zero_point_domain, zero_point_dtype, scale_dtype, eps):
    check_float(x)
    t = int_type(dtype)
    check_float_dtype(scale_dtype, "scale_dtype")
    zp_dtype = resolve_zero_point_dtype(t, mapping, zero_point_domain, zero_point_dtype, scale_dtype)
    if not eps > 0:
        raise fail("eps", "a positive float", eps)
    block, shape = _grid(x, block_size)
    return t, zp_dtype, block, shape


def choose_qparams_affine(x: torch.Tensor, block_size: Sequence[int], dtype: "str | torch.dtype",
                          mapping: str = "asymmetric", zero_point_domain: str = "int",
                          zero_point_dtype: Optional[torch.dtype] = None,
                          scale_dtype: torch.dtype = torch.float32,
                          eps: Optional[float] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Choose a scale and zero point for each block of ``x``.

    Args:
        x: float32, bfloat16 or float16 tensor.
        block_size: one entry per dimension, each dividing it or ``-1`` for all of it.
        dtype: target integer type, ``"int1"`` .. ``"int8"``, ``"uint1"`` .. ``"uint8"``
            or a matching torch dtype.
        mapping: ``"symmetric"`` (scale from ``max|x|``; zero point at the middle of
            the range) or ``"asymmetric"`` (scale from ``max - min``).
        zero_point_domain: ``"int"`` (integer zero point; the range is widened to
            hold 0 exactly), ``"float"`` (tinygemm-style float zero point, range is
            exactly ``[min, max]``) or ``"none"`` (no zero point; symmetric only).
        zero_point_dtype: dtype the zero point is stored in. Defaults to the
            unpacked storage dtype (int domain) or ``scale_dtype`` (float domain).
        scale_dtype: dtype the scale is stored in (float32, bfloat16, float16).
        eps: smallest scale; defaults to ``torch.finfo(torch.float32).eps``.

    Returns:
        ``(scale, zero_point)`` of the block-grid shape ``[d // b ...]``;
        ``zero_point`` is ``None`` when ``zero_point_domain == "none"``.
    """
    eps = torch.finfo(torch.float32).eps if eps is None else eps
    scale, zp = _choose_qparams_op(x, list(block_size), int_type(dtype).name, mapping, zero_point_domain,
                                   zero_point_dtype, scale_dtype, float(eps))
    return scale, (None if zero_point_domain == "none" else zp)


# --- quantize_affine --------------------------------------------------------

@torch.library.custom_op("qcompiler::quantize_affine", mutates_args=())
def _quantize_op(x: torch.Tensor, block_size: Sequence[int], scale: torch.Tensor,
                 zero_point: Optional[torch.Tensor], dtype: str, zero_point_domain: str) -> torch.Tensor:
    t, block = _check_quantize(x, block_size, scale, zero_point, dtype, zero_point_domain)
    xb, s = blocked(x.float(), block), spread(scale.float(), block)
    if zero_point_domain == "int":
        q = torch.round(xb / s) + spread(zero_point.float(), block)
    elif zero_point_domain == "float":
        q = torch.round((xb - spread(zero_point.float(), block)) / s) + t.mid
    else:
        q = torch.round(xb / s) + t.mid
    return q.clamp(t.qmin, t.qmax).to(t.storage).reshape(x.shape)


@_quantize_op.register_fake
def _(x, block_size, scale, zero_point, dtype, zero_point_domain):
    t, _ = _check_quantize(x, block_size, scale, zero_point, dtype, zero_point_domain)
    return x.new_empty(x.shape, dtype=t.storage)


def _check_quantize(x, block_size, scale, zero_point, dtype, domain):
    check_float(x)
    t = int_type(dtype)
    check_domain(domain)
    block, shape = _grid(x, block_size)
    _check_qparams(shape, scale, zero_point, domain)
    return t, block


def quantize_affine(x: torch.Tensor, block_size: Sequence[int], scale: torch.Tensor,
                    zero_point: Optional[torch.Tensor], dtype: "str | torch.dtype",
                    zero_point_domain: str = "int") -> torch.Tensor:
    """Quantize ``x`` block by block to unpacked integers (int8 for signed types, uint8 otherwise).

    ``scale`` and ``zero_point`` have the block-grid shape that
    :func:`choose_qparams_affine` returns; ``zero_point`` is ``None`` for the
    ``"none"`` domain. See the module docstring for the formulas.
    """
    return _quantize_op(x, list(block_size), scale, zero_point, int_type(dtype).name, zero_point_domain)


# --- dequantize_affine ------------------------------------------------------

@torch.library.custom_op("qcompiler::dequantize_affine", mutates_args=())
def _dequantize_op(q: torch.Tensor, block_size: Sequence[int], scale: torch.Tensor,
                   zero_point: Optional[torch.Tensor], dtype: str, zero_point_domain: str,
                   output_dtype: torch.dtype) -> torch.Tensor:
    t, block = _check_dequantize(q, block_size, scale, zero_point, dtype, zero_point_domain, output_dtype)
    qb, s = blocked(q.float(), block), spread(scale.float(), block)
    if zero_point_domain == "int":
        x = (qb - spread(zero_point.float(), block)) * s
    elif zero_point_domain == "float":
        x = (qb - t.mid) * s + spread(zero_point.float(), block)
    else:
        x = (qb - t.mid) * s
    return x.reshape(q.shape).to(output_dtype)


@_dequantize_op.register_fake
def _(q, block_size, scale, zero_point, dtype, zero_point_domain, output_dtype):
    _check_dequantize(q, block_size, scale, zero_point, dtype, zero_point_domain, output_dtype)
    return q.new_empty(q.shape, dtype=output_dtype)


def _check_dequantize(q, block_size, scale, zero_point, dtype, domain, output_dtype):
    t = int_type(dtype)
    check_storage(q, t)
    check_domain(domain)
    check_float_dtype(output_dtype, "output_dtype")
    block, shape = _grid(q, block_size)
    _check_qparams(shape, scale, zero_point, domain)
    return t, block


def dequantize_affine(q: torch.Tensor, block_size: Sequence[int], scale: torch.Tensor,
                      zero_point: Optional[torch.Tensor], dtype: "str | torch.dtype",
                      zero_point_domain: str = "int",
                      output_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Map unpacked integers back to floats of ``output_dtype`` (float32, bfloat16, float16).

    Takes the same arguments as :func:`quantize_affine`; arithmetic is float32,
    rounded once to ``output_dtype`` at the end.
    """
    return _dequantize_op(q, list(block_size), scale, zero_point, int_type(dtype).name, zero_point_domain, output_dtype)
