"""The CUDA backend: weight-only reference patterns -> one Triton kernel that decodes weights in its tiles.

| scheme | kernel |
| --- | --- |
| int8wo, int4wo (every zero-point domain), any b-bit affine weight | ``qcompiler::triton_wo_matmul`` (affine) |
| codebook, int8-grid or float, any block of rows | ``qcompiler::triton_wo_matmul`` (table lookup) |
| fixed tables: fp6 / fpx, mxfp4, mxfp8, nvfp4, nf4 | ``qcompiler::triton_wo_matmul`` (fixed table: scales as stored) |
| int8dq, int8da-int4w | per-token int8 quantization in ATen ops, then ``qcompiler::triton_dq_matmul`` |
| aqlm (additive codebooks) | ``qcompiler::triton_additive_matmul`` (codes and float16 codebooks as stored) |

``triton_dq_matmul`` computes an exact int32 dot per group.
The kernel (``runtime/triton_matmul.py``) reads the reference program's packed storage
as it is. Lowering converts the affine qparams to the kernel's float32 ``(scale, zero)``
and codebooks to float32 tables. fp8 and static int8 keep
their reference pattern here, and ``qcompiler.lower`` decomposes them into ATen ops for
Inductor. The kernel is registered with ``torch.library.triton_op``, so AOTInductor
compiles it into a CUDA ``.pt2``.
"""
from functools import partial

import torch

from ..runtime.dtypes import int_type
from ..runtime.numerics import per_token_int8
from .reference_patterns import (additive, dynamic_int8_int4, dynamic_int8_int8, dynamic_int8_intx,
                                 float_codebook_bytes, float_codebook_packed, grid_codebook_bytes, grid_codebook_packed,
                                 per_token_block, rows, stored_inputs, layer_name, table_bytes, table_packed,
                                 weight_only_packed, weight_only_unpacked, with_bias)
from .rules import LoweringRule
from ..runtime.triton_matmul import INT8_DOT_MIN_K, SCALE_FORMATS, affine_scale_zero

aten, qops = torch.ops.aten, torch.ops.qcompiler
triton_wo_matmul, triton_dq_matmul = torch.ops.qcompiler.triton_wo_matmul, torch.ops.qcompiler.triton_dq_matmul
triton_additive_matmul = torch.ops.qcompiler.triton_additive_matmul


def _affine(m) -> bool:
    block = list(m["block"])
    return (stored_inputs(m, "w_q", "scale", "zero_point") and len(block) == 2 and block[0] == 1
            and (block[1] == -1 or block[1] > 0))


def _weight_shape(m):
    """(N, K, bits) of the matched weight."""
    w = m.value("w_q")
    if "n" not in m.inputs:
        return w.shape[0], w.shape[1], 8
    return w.shape[0], m["n"], m.inputs.get("bits", 4)  # dynamic_int8_int4 fixes its weights at int4


def _launch(m, x, b, **qparams):
    n, k, bits = _weight_shape(m)
    name = layer_name(m)
    x2, back = rows(m, x, k, n)
    signed, scale_format = qparams.pop("signed", False), qparams.pop("scale_format", 0)
    consts = {key: m.constant(f"{name}_triton_{key}", t.contiguous()) for key, t in qparams.items()}
    q = m.constant(f"{name}_triton_q", m.value("w_q"))  # the stored weight as it is; counted in the report
    y = back(triton_wo_matmul(x2, q, bits, k, signed, consts.get("scale"), consts.get("zero"), consts.get("table"),
                              scale_format))
    return with_bias(y, b)


def _affine_kernel(m, x, out_dtype, b, **_):
    n, k, _bits = _weight_shape(m)
    s, z = affine_scale_zero(m.value("scale"), m.value("zero_point"), m["dtype"], m["domain"])
    groups = 1 if m["block"][1] == -1 else k // m["block"][1]
    return _launch(m, x, b, signed=int_type(m["dtype"]).signed,
                   scale=s.reshape(n, groups), zero=z.reshape(n, groups))


def _codebook_table(m) -> torch.Tensor:
    """The float32 table the kernel looks up: the int8-grid tables dequantized as the reference does."""
    if "cb_q" in m.inputs:
        return qops.dequantize_affine(m.value("cb_q"), [1, -1], m.value("cb_scale"), None, "int8", "none",
                                      torch.float32)
    return m.value("codebook").float()


def _codebook_kernel(m, x, out_dtype, b, **_):
    return _launch(m, x, b, table=_codebook_table(m))


def _table_kernel(m, x, out_dtype, b, **_):
    """A fixed-table format: the grid's values (times NVFP4's tensor scale) as a table of one row, the block scales
    as stored (e8m0 and e4m3 decoded in the kernel)."""
    n, k, _bits = _weight_shape(m)
    table = m.value("table").float()
    if m["tensor_scale"] is not None:
        table = table * m.value("tensor_scale").float()
    return _launch(m, x, b, table=table.reshape(1, -1), scale=m.value("scale").reshape(n, -1),
                   scale_format=SCALE_FORMATS.index(m["scale_format"]))


def _fixed_table(m) -> bool:
    return stored_inputs(m, "w_q", "table", "scale", "tensor_scale")


def _grid_codebook(m) -> bool:
    return stored_inputs(m, "w_q", "cb_q", "cb_scale")


def _float_codebook(m) -> bool:
    return stored_inputs(m, "w_q", "codebook")


def _additive(m) -> bool:
    return stored_inputs(m, "codes", "codebooks", "scale")


def _additive_kernel(m, x, out_dtype, b, **_):
    """AQLM: the codes, float16 codebooks and row scales as stored, decoded in the kernel's tiles."""
    codes, books = m.value("codes"), m.value("codebooks")
    name = layer_name(m)
    x2, back = rows(m, x, codes.shape[1] * books.shape[2], codes.shape[0])
    consts = [m.constant(f"{name}_triton_{key}", t) for key, t in
              (("codes", codes), ("codebooks", books.half().contiguous()),
               ("scale", m.value("scale").float().reshape(-1).contiguous()))]
    return with_bias(back(triton_additive_matmul(x2, *consts)), b)


def _dynamic(m) -> bool:
    w_block = list(m["w_block"])
    return (per_token_block(m) and len(w_block) == 2 and w_block[0] == 1 and stored_inputs(m, "w_q", "w_scale")
            and (w_block[1] == -1 or w_block[1] % INT8_DOT_MIN_K == 0))  # K tiles stay inside a group


def _dynamic_kernel(mapping: str, m, x, eps, out_w, b, **_):
    """Per-token int8 activations in ATen ops (``mapping``: the matched pattern's), then the exact integer matmul with
    the scales applied after."""
    n, k, bits = _weight_shape(m)
    name = layer_name(m)
    x2, back = rows(m, x, k, n)
    q, s, z = per_token_int8(x2, mapping, eps)
    xq = aten._to_copy.default(q, dtype=torch.int8)
    xz = None if z is None else aten._to_copy.default(aten.reshape.default(z, [-1]), dtype=torch.int32)
    groups = 1 if m["w_block"][1] == -1 else k // m["w_block"][1]
    w_scale = m.constant(f"{name}_triton_scale", m.value("w_scale").float().reshape(n, groups).contiguous())
    y = triton_dq_matmul(xq, aten.reshape.default(s, [-1]), xz, m.constant(f"{name}_triton_q", m.value("w_q")),
                         bits, k, w_scale, out_w)
    return with_bias(back(y), b)


AFFINE_KERNEL = "qcompiler::triton_wo_matmul (affine)"
CODEBOOK_KERNEL = "qcompiler::triton_wo_matmul (codebook)"
TABLE_KERNEL = "qcompiler::triton_wo_matmul (fixed table)"

DYNAMIC_KERNEL = "qcompiler::triton_dq_matmul (int8 activations)"
ADDITIVE_KERNEL = "qcompiler::triton_additive_matmul (AQLM)"

_WHY = "the CUDA backend's one kernel for this pattern"
_BAD_WEIGHTS = "weight blocks or qparams unsupported"
_BAD_QPARAMS = "qparams not stored or block unsupported"
_NO_TABLES = "tables not stored"


def _rule(name, pattern, replace, kernel, ok, what: str) -> LoweringRule:
    return LoweringRule(name, pattern, replace, kernel, _WHY, check=lambda m, target: None if ok(m) else what)


RULES = (
    _rule("int8dq", dynamic_int8_int8, partial(_dynamic_kernel, "symmetric"), DYNAMIC_KERNEL, _dynamic, _BAD_WEIGHTS),
    _rule("int8da-int4w", dynamic_int8_int4, partial(_dynamic_kernel, "asymmetric"), DYNAMIC_KERNEL, _dynamic,
          _BAD_WEIGHTS),
    _rule("int8da-intx", dynamic_int8_intx, partial(_dynamic_kernel, "asymmetric"), DYNAMIC_KERNEL, _dynamic,
          _BAD_WEIGHTS),
    _rule("affine packed", weight_only_packed, _affine_kernel, AFFINE_KERNEL, _affine, _BAD_QPARAMS),
    _rule("affine 8-bit", weight_only_unpacked, _affine_kernel, AFFINE_KERNEL, _affine, _BAD_QPARAMS),
    _rule("codebook (int8 grid)", grid_codebook_packed, _codebook_kernel, CODEBOOK_KERNEL, _grid_codebook, _NO_TABLES),
    _rule("codebook-8 (int8 grid)", grid_codebook_bytes, _codebook_kernel, CODEBOOK_KERNEL, _grid_codebook, _NO_TABLES),
    _rule("codebook (float)", float_codebook_packed, _codebook_kernel, CODEBOOK_KERNEL, _float_codebook, _NO_TABLES),
    _rule("codebook-8 (float)", float_codebook_bytes, _codebook_kernel, CODEBOOK_KERNEL, _float_codebook, _NO_TABLES),
    _rule("fixed table", table_packed, _table_kernel, TABLE_KERNEL, _fixed_table, _NO_TABLES),
    _rule("fixed table (8-bit codes)", table_bytes, _table_kernel, TABLE_KERNEL, _fixed_table, _NO_TABLES),
    _rule("aqlm", additive, _additive_kernel, ADDITIVE_KERNEL, _additive, "codes or codebooks not stored"),
)
