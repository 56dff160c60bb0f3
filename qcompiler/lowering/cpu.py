"""The CPU backend: reference patterns -> ATen's packed CPU kernels, weights prepacked here.

| scheme | kernel |
| --- | --- |
| int8wo | ``aten._weight_int8pack_mm`` (per-channel scales) |

Each rule matches the reference pattern convert emits (``passes/reference.py``);
parameters of a pattern also bind literal arguments (dtype names, block sizes), so
``where`` reads them from the match.
"""
import torch

from .rules import LoweringRule

aten, qops = torch.ops.aten, torch.ops.qcompiler


def _weight_only_8bit(x, w_q, block, scale, zero_point, dtype, domain, out_dtype, b):
    return aten.linear.default(x, qops.dequantize_affine.default(w_q, block, scale, zero_point, dtype, domain, out_dtype), b)


def _int8_per_channel(m) -> bool:
    return m["dtype"] == "int8" and m["domain"] == "none" and list(m["block"]) == [1, -1] and m["w_q"].op == "get_attr"


def _rows(m, x, k, n):
    """x as (rows, k), and a function giving an (rows, n) result x's leading dimensions back."""
    ndim = m["x"].meta["val"].ndim
    lead = [aten.sym_size.int(x, i) for i in range(ndim - 1)]
    return aten.reshape.default(x, [-1, k]), lambda y: aten.reshape.default(y, lead + [n])


def _int8_weight_only(m, x, w_q, block, scale, zero_point, dtype, domain, out_dtype, b):
    w = m.value("w_q")
    x2, back = _rows(m, x, w.shape[1], w.shape[0])
    name = m["w_q"].target.removesuffix("_q")
    s = m.constant(f"{name}_int8pack_scale", m.value("scale").reshape(-1).to(out_dtype))
    y = back(aten._weight_int8pack_mm.default(x2, m.constant(f"{name}_int8pack", w.contiguous()), s))
    return y if b is None else y + b


RULES = (
    LoweringRule("int8wo", _weight_only_8bit, _int8_weight_only, "aten._weight_int8pack_mm", _int8_per_channel),
)
