"""The reference patterns convert emits (``passes/reference.py``), as example functions for the backends' rules.

Parameters bind graph nodes or literal arguments (dtype names, block sizes), so a rule's
``where`` reads them from the match. ``rows`` reshapes a linear's input to 2-D and back.
"""
import torch

aten, qops = torch.ops.aten, torch.ops.qcompiler


def weight_name(m) -> str:
    """The matched layer's name, from its stored weight ``<name>_q``: the prefix of the constants a rule stores."""
    return m["w_q"].target.removesuffix("_q")


def stored_inputs(m, *names) -> bool:
    """Whether each named pattern input is a stored tensor (or absent, like a symmetric zero point)."""
    return all(m[name] is None or m[name].op == "get_attr" for name in names)


def per_token_block(m) -> bool:
    """Whether the matched activation quantization has one scale per token (row)."""
    block = list(m["block"])
    return block[-1] == -1 and all(v == 1 for v in block[:-1])


def with_bias(y, b):
    return y if b is None else y + b


def rows(m, x, k, n):
    """x as (rows, k), and a function giving an (rows, n) result x's leading dimensions back."""
    ndim = x.node.meta["val"].ndim
    lead = [aten.sym_size.int(x, i) for i in range(ndim - 1)]
    return aten.reshape.default(x, [-1, k]), lambda y: aten.reshape.default(y, lead + [n])


def weight_only_unpacked(x, w_q, block, scale, zero_point, dtype, domain, out_dtype, b):
    return aten.linear.default(
        x, qops.dequantize_affine.default(w_q, block, scale, zero_point, dtype, domain, out_dtype), b)


def weight_only_packed(x, w_q, bits, n, signed, block, scale, zero_point, dtype, domain, out_dtype, b):
    q = qops.unpack_int.default(w_q, bits, n, signed)
    return aten.linear.default(
        x, qops.dequantize_affine.default(q, block, scale, zero_point, dtype, domain, out_dtype), b)


def _grid_codebook(idx, cb_q, cb_scale, block_rows, out_dtype):
    cb = qops.dequantize_affine.default(cb_q, [1, -1], cb_scale, None, "int8", "none", torch.float32)
    return qops.dequantize_codebook.default(idx, cb, block_rows, out_dtype)


def grid_codebook_packed(x, w_q, bits, n, cb_q, cb_scale, block_rows, out_dtype, b):
    idx = qops.unpack_int.default(w_q, bits, n, False)
    return aten.linear.default(x, _grid_codebook(idx, cb_q, cb_scale, block_rows, out_dtype), b)


def grid_codebook_bytes(x, w_q, cb_q, cb_scale, block_rows, out_dtype, b):  # 8-bit indices are stored unpacked
    return aten.linear.default(x, _grid_codebook(w_q, cb_q, cb_scale, block_rows, out_dtype), b)


def float_codebook_packed(x, w_q, bits, n, codebook, block_rows, out_dtype, b):
    idx = qops.unpack_int.default(w_q, bits, n, False)
    return aten.linear.default(x, qops.dequantize_codebook.default(idx, codebook, block_rows, out_dtype), b)


def float_codebook_bytes(x, w_q, codebook, block_rows, out_dtype, b):  # 8-bit indices are stored unpacked
    return aten.linear.default(x, qops.dequantize_codebook.default(w_q, codebook, block_rows, out_dtype), b)


def additive(x, codes, codebooks, scale, out_dtype, b):  # AQLM
    return aten.linear.default(x, qops.dequantize_additive.default(codes, codebooks, scale, out_dtype), b)


def dynamic_int8_int8(x, block, eps, out_x, w_q, w_block, w_scale, out_w, b):
    s = qops.choose_qparams_affine.default(x, block, "int8", "symmetric", "none", None, torch.float32, eps)[0]
    xq = qops.quantize_affine.default(x, block, s, None, "int8", "none")
    xd = qops.dequantize_affine.default(xq, block, s, None, "int8", "none", out_x)
    return aten.linear.default(
        xd, qops.dequantize_affine.default(w_q, w_block, w_scale, None, "int8", "none", out_w), b)


def dynamic_int8_int4(x, block, eps, out_x, w_q, n, w_block, w_scale, out_w, b):
    sz = qops.choose_qparams_affine.default(x, block, "int8", "asymmetric", "int", None, torch.float32, eps)
    s, z = sz[0], sz[1]
    xd = qops.dequantize_affine.default(qops.quantize_affine.default(x, block, s, z, "int8", "int"),
                                        block, s, z, "int8", "int", out_x)
    w = qops.dequantize_affine.default(qops.unpack_int.default(w_q, 4, n, True),
                                       w_block, w_scale, None, "int4", "none", out_w)
    return aten.linear.default(xd, w, b)


def static_int8_int8(x, block, scale, zero_point, out_x, w_q, w_block, w_scale, out_w, b):
    xq = qops.quantize_affine.default(x, block, scale, zero_point, "int8", "int")
    xd = qops.dequantize_affine.default(xq, block, scale, zero_point, "int8", "int", out_x)
    return aten.linear.default(
        xd, qops.dequantize_affine.default(w_q, w_block, w_scale, None, "int8", "none", out_w), b)
