"""The CPU backend: reference patterns -> ATen's packed CPU kernels, weights prepacked here.

| scheme | kernel |
| --- | --- |
| int8wo | ``aten._weight_int8pack_mm`` (per-channel scales) |
| int4wo, every zero-point domain | ``aten._convert_weight_to_int4pack_for_cpu`` + ``aten._weight_int4pack_mm_for_cpu`` |

The int4 kernel computes ``w = (u - 8)·scale + zero`` for ``u`` in [0, 15], with scales and
zeros in the activation dtype: the float zero-point domain as it is. The int domain
converts exactly (``zero = (8 - z)·s``) where the activation dtype holds that product
exactly (always in float32; checked per layer in bfloat16/float16, reference otherwise);
symmetric int4 is ``u = q + 8``, ``zero = 0``.

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


def _weight_only_4bit(x, w_q, bits, n, signed, block, scale, zero_point, dtype, domain, out_dtype, b):
    q = qops.unpack_int.default(w_q, bits, n, signed)
    return aten.linear.default(x, qops.dequantize_affine.default(q, block, scale, zero_point, dtype, domain, out_dtype), b)


def _int4_scales_and_zeros(m):
    """The kernel's (K/g, N, 2) scales and zeros for this match, or None where no exact form exists."""
    s, dtype = m.value("scale").float(), m["out_dtype"]
    if m["domain"] == "float":
        zero = m.value("zero_point").float()
    elif m["domain"] == "int":
        zero = (8 - m.value("zero_point").float()) * s
    else:
        zero = torch.zeros_like(s)
    if not (torch.equal(s.to(dtype).float(), s) and torch.equal(zero.to(dtype).float(), zero)):
        return None
    return torch.stack([s, zero], dim=-1).transpose(0, 1).contiguous().to(dtype)


def _int4_groups(m) -> bool:
    ok = (m["bits"] == 4 and (m["dtype"], m["domain"]) in (("uint4", "float"), ("uint4", "int"), ("int4", "none"))
          and len(m["block"]) == 2 and m["block"][0] == 1 and m["block"][1] in (32, 64, 128, 256)
          and m["w_q"].op == "get_attr" and m["out_dtype"] in (torch.float32, torch.bfloat16, torch.float16))
    return ok and _int4_scales_and_zeros(m) is not None


def _int4_weight_only(m, x, w_q, bits, n, signed, block, scale, zero_point, dtype, domain, out_dtype, b):
    u = qops.unpack_int(m.value("w_q"), 4, n, signed).to(torch.int32) + (8 if signed else 0)
    name = m["w_q"].target.removesuffix("_q")
    packed = m.constant(f"{name}_int4pack", aten._convert_weight_to_int4pack_for_cpu(u.contiguous(), 1))
    sz = m.constant(f"{name}_int4pack_scales_zeros", _int4_scales_and_zeros(m))
    x2, back = _rows(m, x, n, u.shape[0])
    y = back(aten._weight_int4pack_mm_for_cpu.default(x2, packed, block[1], sz))
    return y if b is None else y + b


RULES = (
    LoweringRule("int4wo", _weight_only_4bit, _int4_weight_only, "aten._weight_int4pack_mm_for_cpu", _int4_groups),
    LoweringRule("int8wo", _weight_only_8bit, _int8_weight_only, "aten._weight_int8pack_mm", _int8_per_channel),
)
