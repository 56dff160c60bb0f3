"""The CPU rules of the fixed-table kernel (``qcompiler.table_gemm``): a weight that is a b-bit code into one table,
times its block's scale (plus its block's offset), lowered with the codes at their width and the scales as stored.

Two reference patterns are that shape:
- the fixed-table formats (``table_packed``, ``table_bytes``: fp6 / fpx, MXFP4, MXFP8, NVFP4, NF4): the table is
  the grid's values, the scales e8m0, e4m3 or float as stored, NVFP4's per-tensor scale a multiplier of the output
  (folded into the table it would make e2m1's integers floats, and the kernel's integer path decline);
- affine weights at widths the int4 kernel does not take (``weight_only_packed``: intx at 1-3 and 5-7 bits):
  ``(q - z)·s`` is ``table[u]·s + o`` with the table the codes' integer values, ``o = -z·s`` read from the
  stored integer zero point (uint8) in the kernel; ``(q - mid)·s + z`` (a float zero point) has the table
  ``q - mid`` and the offset ``z`` as stored;
- float codebooks shared by every row (``codebook-<b>-float``, ``float_codebook_packed`` / ``_bytes``): the
  codebook is the table, the scales 1;
- symmetric b-bit weights under per-token int8 activations (``dynamic_int8_intx``: int8da-intx): the codes
  re-based to offset binary so the table is ``c - 2^(b-1)`` (the codes themselves are the integer weights), the
  activations quantized per token in the graph and given to the kernel as int8 rows with their scales, zero
  points and the weight's column sums.
The kernel runs AVX-512 (and AMX tiles from 32 rows); on targets without AVX-512 these layers decompose.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from ..runtime import table_gemm
from ..runtime.dtypes import int_type
from ..runtime.numerics import per_token_int8
from .reference_patterns import (dynamic_int8_intx, float_codebook_bytes, float_codebook_packed, layer_name,
                                 per_token_block, rows, stored_inputs, table_bytes, table_packed, weight_only_packed,
                                 with_bias)
from .rules import LoweringRule, Take, on_native

aten, qops = torch.ops.aten, torch.ops.qcompiler

KERNEL = "qcompiler.table_gemm (b-bit codes into a fixed table, block scales read in the kernel)"
_WHY = ("qcompiler's fixed-table GEMM: the codes stay at their bit width and the scales at theirs in the .pt2, "
        "and the table is looked up in registers inside the kernel (AVX-512: integer products where the table "
        "allows; AVX2: integer products for the codes and tables of up to 16 entries, float32 FMAs above; bfloat16 AMX "
        "tiles from 32 rows); "
        "decomposed, Inductor would decode the whole weight on every call")
_WHY_INT8 = ("qcompiler's fixed-table GEMM on int8 rows: the b-bit codes are the integer weights, each int8 row one "
             "operand of VNNI's products (exact int32 sums per group; on AVX2 vpmaddwd's), the codes at "
             "their width in the .pt2; "
             "decomposed, Inductor would decode the whole weight on every call")
NEEDS = frozenset({"avx2"})  # the kernel's AVX2 path and up (AVX-512 VNNI, AMX: chosen where it runs)
QPARAM_DTYPES = (torch.float32, torch.bfloat16)


@dataclass(frozen=True)
class TableForm:
    """A weight as the kernel takes it: codes [N, K] (uint8), the table, one scale (and offset) per block."""

    idx: torch.Tensor
    bits: int
    table: torch.Tensor  # float32 [2^bits]
    block: int
    scale: torch.Tensor  # [N, K / block]: float32, bfloat16, uint8 (e8m0) or float8_e4m3fn
    offset: Optional[torch.Tensor] = None  # [N, K / block]: float32, bfloat16 or uint8 (an integer zero point)
    tensor_scale: Optional[torch.Tensor] = None  # [1]: multiplies the output (NVFP4's), keeping the table integral


def _fits(form: TableForm):
    n, k = form.idx.shape
    return table_gemm.unfit(n, k, form.bits, form.block) or Take(form)


def _float_qparam(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in QPARAM_DTYPES else t.float()


def _grid_form(m, target):
    """A fixed-table format's codes, table, block and stored scales."""
    if not stored_inputs(m, "w_q", "table", "scale", "tensor_scale"):
        return "its codes or scales are computed in the graph, not stored"
    packed = "bits" in m.inputs
    idx = m.value("w_q")
    idx = qops.unpack_int.default(idx, m["bits"], m["n"], False) if packed else idx.view(torch.uint8)
    bits = m["bits"] if packed else 8
    table = m.value("table").float()
    tensor_scale = None if m["tensor_scale"] is None else m.value("tensor_scale").float().reshape(1)
    scale = m.value("scale")
    scale = scale if m["scale_format"] != "float" else _float_qparam(scale)
    block = idx.shape[1] if m["block_size"] == -1 else m["block_size"]
    return _fits(TableForm(idx, bits, table.contiguous(), block, scale.reshape(idx.shape[0], -1),
                           tensor_scale=tensor_scale))


def _affine_form(m, target):
    """An affine packed weight as a fixed table: its codes' integer values (less ``mid`` unless the zero point is
    an integer), the stored scales, and the zero points as the kernel's offsets."""
    if not stored_inputs(m, "w_q", "scale", "zero_point"):
        return "its weight or qparams are computed in the graph, not stored"
    block, bits, domain = list(m["block"]), m["bits"], m["domain"]
    if len(block) != 2 or block[0] != 1:
        return f"its blocks {block} are not along the input dimension"
    t = int_type(m["dtype"])
    u = torch.arange(1 << bits)
    q = u - (1 << bits) * (u >= 1 << (bits - 1)).long() if t.signed else u
    table = (q if domain == "int" else q - t.mid).float()
    idx = qops.unpack_int.default(m.value("w_q"), bits, m["n"], False)
    n, k = idx.shape
    scale = _float_qparam(m.value("scale")).reshape(n, -1)
    offset = None
    if domain == "int":
        z = m.value("zero_point").reshape(n, -1)
        if z.is_floating_point() or int(z.min()) < 0 or int(z.max()) > 255:  # as -z·s in float32
            offset, scale = -z.float() * scale.float(), scale.float()
        else:
            offset = z.to(torch.uint8)
    elif domain == "float":
        offset = _float_qparam(m.value("zero_point")).reshape(n, -1)
    width = k if block[1] == -1 else block[1]
    return _fits(TableForm(idx, bits, table, width, scale, offset))


def _codebook_form(m, target):
    """A float codebook shared by every row (``codebook-<b>-float`` per tensor): the table as it is, scales of 1."""
    if not stored_inputs(m, "w_q", "codebook"):
        return "its indices or codebook are computed in the graph, not stored"
    book = m.value("codebook")
    if book.shape[0] != 1:
        return f"it has {book.shape[0]} codebooks (one per block of rows); the table kernel takes one table"
    packed = "bits" in m.inputs
    idx = qops.unpack_int.default(m.value("w_q"), m["bits"], m["n"], False) if packed else m.value("w_q")
    bits = m["bits"] if packed else 8
    table = torch.zeros(1 << bits)
    table[:book.shape[1]] = book.reshape(-1).float()
    n, k = idx.shape
    return _fits(TableForm(idx, bits, table, k, torch.ones(n, 1)))


def _int8_affine_form(m, target):
    """int8da-intx's weight as a direct table: two's complement codes re-based to ``u = q + 2^(b-1)``, the table
    ``u - 2^(b-1)``, the stored scales."""
    if not per_token_block(m):
        return "its activation scales are not per token"
    if not stored_inputs(m, "w_q", "w_scale"):
        return "its weight or scales are computed in the graph, not stored"
    block, bits = list(m["w_block"]), m["bits"]
    if len(block) != 2 or block[0] != 1:
        return f"its blocks {block} are not along the input dimension"
    codes = qops.unpack_int.default(m.value("w_q"), bits, m["n"], False).long()
    mid = 1 << (bits - 1)
    idx = ((codes + mid) % (1 << bits)).to(torch.uint8)  # two's complement q -> q + mid
    n, k = idx.shape
    table = (torch.arange(1 << bits) - mid).float()
    scale = _float_qparam(m.value("w_scale")).reshape(n, -1)
    return _fits(TableForm(idx, bits, table, k if block[1] == -1 else block[1], scale))


def _stored(m, form: TableForm) -> tuple:
    """The layer's constants for the kernel: codes packed at their width, the table, the scales and offsets."""
    name = layer_name(m)
    w = m.constant(f"{name}_table_gemm", table_gemm.pack(form.idx, form.bits))
    values = m.constant(f"{name}_table_gemm_values", form.table)
    s = m.constant(f"{name}_table_gemm_scale", table_gemm.panel_qparams(form.scale))
    o = None if form.offset is None else m.constant(f"{name}_table_gemm_offset",
                                                    table_gemm.panel_qparams(form.offset))
    return w, values, s, o


def _table_gemm(m, x, out_dtype, b, **_):
    """The codes packed at their width, the table, the scales (and offsets) as stored: ``qcompiler.table_gemm``."""
    form = m.payload
    n_out, k = form.idx.shape
    w, values, s, o = _stored(m, form)
    x2, back = rows(m, x, k, n_out)
    y = qops.table_gemm.default(aten._to_copy.default(x2, dtype=torch.float32), None, None, w, values, s, o, None,
                                form.bits, form.block)
    if form.tensor_scale is not None:  # after the sums: the table stays e2m1's, which the integer path takes
        y = aten.mul.Tensor(y, m.constant(f"{layer_name(m)}_table_gemm_tensor_scale", form.tensor_scale))
    return with_bias(back(aten._to_copy.default(y, dtype=out_dtype)), b)


def _int8_table_gemm(m, x, eps, out_w, b, **_):
    """Per-token asymmetric int8 rows (quantized in the graph) into ``qcompiler.table_gemm`` with their scales,
    zero points and the weight's column sums (the zero points come off after the integer sums)."""
    form = m.payload
    n_out, k = form.idx.shape
    w, values, s, o = _stored(m, form)
    sums = m.constant(f"{layer_name(m)}_table_gemm_sums",
                      table_gemm.weight(form.idx, form.table, form.scale.float()).sum(1).float())
    x2, back = rows(m, x, k, n_out)
    q, xs, xz = per_token_int8(x2, "asymmetric", eps)
    y = qops.table_gemm.default(aten._to_copy.default(q, dtype=torch.int8), aten.reshape.default(xs, [-1]),
                                aten.reshape.default(xz, [-1]), w, values, s, o, sums, form.bits, form.block)
    return with_bias(back(aten._to_copy.default(y, dtype=out_w)), b)


def int8_activation_rules() -> tuple:
    """The rule of int8 activations on the table kernel, which the CPU table tries with the other int8-activation
    rules, before any weight-only pattern (the weight alone would match one, the dequantized rows its input)."""
    return (LoweringRule("int8da-intx", dynamic_int8_intx, _int8_table_gemm, KERNEL, _WHY_INT8, NEEDS,
                         on_native(_int8_affine_form)),)


def rules() -> tuple:
    """The fixed-table weight-only rules, in the order the CPU table tries them (after the int4 kernel's)."""
    return (LoweringRule("fixed table", table_packed, _table_gemm, KERNEL, _WHY, NEEDS, on_native(_grid_form)),
            LoweringRule("fixed table (8-bit codes)", table_bytes, _table_gemm, KERNEL, _WHY, NEEDS,
                         on_native(_grid_form)),
            LoweringRule("intx", weight_only_packed, _table_gemm, KERNEL, _WHY, NEEDS, on_native(_affine_form)),
            LoweringRule("codebook (float, per tensor)", float_codebook_packed, _table_gemm, KERNEL, _WHY, NEEDS,
                         on_native(_codebook_form)),
            LoweringRule("codebook-8 (float, per tensor)", float_codebook_bytes, _table_gemm, KERNEL, _WHY, NEEDS,
                         on_native(_codebook_form)))
