"""The CPU backend: reference patterns -> integer GEMMs on VNNI machines, ATen's packed kernels elsewhere.

| scheme | target with ``vnni`` | other targets |
| --- | --- | --- |
| int8dq | per-token int8 ``x`` as uint8 (``q + 128``) -> ``torch._int_mm`` with the int8 weight, exact int32, minus ``128·Σw`` | ``q`` in bfloat16 -> ``aten._weight_int8pack_mm`` |
| int8static | per-tensor ``q`` as uint8 -> ``torch._int_mm``, minus ``(128 + z)·Σw`` | ``q - z`` in bfloat16 -> ``aten._weight_int8pack_mm`` |
| int8wo, codebook on an int8 grid | 16-bit activations as two int8 rows each (below) -> ``torch._int_mm`` | ``x`` in bfloat16 -> ``aten._weight_int8pack_mm`` |
| int4wo, every zero-point domain | ``aten._weight_int4pack_mm_for_cpu`` (bfloat16 ``x``) | the same |
| int8da-int4w | per-token ``q - zp`` in bfloat16 -> ``aten._weight_int4pack_mm_for_cpu`` | the same |

Integer GEMMs: ``torch._int_mm(uint8 [M, K], int8 [K, N])`` runs on oneDNN's VNNI kernels;
the weight is stored [N, K] and passed as its transposed view (5x faster than a contiguous
[K, N]). Shifting int8 activations by 128 makes them uint8; the shift's contribution,
``128·Σ_k w[n, k]``, is a constant subtracted from the int32 result. Sums are exact.
Without VNNI the same GEMM is about 8x slower than the bf16 packed kernel, so those
targets feed the integer activations (exact in bfloat16 while ``|q| <= 255``) to it.

Weight-only int8 on VNNI: each row of ``x`` is split into ``x ≈ s·(hi + lo/255)`` with
``s = max|x_row| / 127`` and ``hi``, ``lo`` int8 (16 bits of the row's range), each
through ``_int_mm`` (two calls: oneDNN's M = 1 path is about 4x faster than M = 2..8). The error is at most
``max|x_row| / 64770`` per element, against bfloat16's ``|x| / 256`` on the packed path;
the weight's own quantization error is far above either. It is one kernel for every
batch size: the packed kernel's time grows linearly with the rows (it is a GEMV), the
integer GEMM's does not.

Kernel limits, checked per layer (the rule declines with the reason, and the next rule,
or decomposition, takes the layer): the bfloat16 int8 kernel needs K % 8 == 0 (it
returns wrong values otherwise on AVX2); the int4 packer needs N % 16 == 0.

ATen's packed kernels are many times slower with float32 activations than with bfloat16
ones in torch 2.13 (int4 at M=1: about 29x; int8: about 3x), so float32 activations run
through them in bfloat16 (cast in, kernel, cast out).

Packed int4 weights are laid out for the target's vector ISA (``runtime/int4_layout.py``),
whatever machine lowers them. The int4 kernel computes ``w = (u - 8)·scale + zero`` for
``u`` in [0, 15], with scales and zeros in the activation dtype: the float zero-point domain
as it is. The int domain converts exactly (``zero = (8 - z)·s``) where the activation dtype
holds that product exactly (always in float32; checked per layer otherwise); symmetric
int4 is ``u = q + 8``, ``zero = 0``.
"""
from functools import partial

import torch

from ..runtime.int4_layout import pack_for
from .patterns import (dynamic_int8_int4, dynamic_int8_int8, grid_codebook_bytes, grid_codebook_packed, per_token_block,
                       per_token_int8, rows, static_int8_int8, stored_inputs, weight_name, weight_only_packed,
                       weight_only_unpacked, with_bias)
from .rules import LoweringRule

aten, qops = torch.ops.aten, torch.ops.qcompiler
VNNI = frozenset({"vnni"})


def _unless(ok: bool, reason: str):
    return None if ok else reason


# --- what each rule takes ---------------------------------------------------------------------

def _k8(k: int):
    return _unless(k % 8 == 0, f"K = {k} is not a multiple of 8 (the bfloat16 int8 kernel needs that)")


def _int4_fits(n_out: int, k: int):
    return _unless(n_out % 16 == 0 and k % 2 == 0, f"N = {n_out}, K = {k}: the int4 packer needs N % 16 == 0 and even K")


def _stored(m, *names):
    return _unless(stored_inputs(m, *names), "its weight or qparams are computed in the graph, not stored")


def _int8_per_channel(m, target, need_k8: bool):
    if (m["dtype"], m["domain"], list(m["block"])) != ("int8", "none", [1, -1]):
        return f"weight is {m['dtype']} ({m['domain']} zero point, block {list(m['block'])}), not symmetric int8 per channel"
    return _stored(m, "w_q") or (_k8(m.value("w_q").shape[1]) if need_k8 else None)


def _grid_codebook(m, target, need_k8: bool, packed: bool):
    return _stored(m, "w_q", "cb_q", "cb_scale") or (_k8(m["n"] if packed else m.value("w_q").shape[1]) if need_k8 else None)


def _per_channel_int8_weight(m):
    return _unless(list(m["w_block"]) == [1, -1], f"weight block {list(m['w_block'])} is not per channel")


def _int8dq(m, target, need_k8: bool):
    return (_unless(per_token_block(m), "activation scales are not per token") or _per_channel_int8_weight(m)
            or _stored(m, "w_q") or (_k8(m.value("w_q").shape[1]) if need_k8 else None))


def _int8static(m, target, need_k8: bool):
    return (_stored(m, "scale", "zero_point", "w_q") or _per_channel_int8_weight(m)
            or _unless(m.value("scale").numel() == 1, "activation qparams are not per tensor")
            or (_k8(m.value("w_q").shape[1]) if need_k8 else None))


def _int4_scales_and_zeros(m):
    """The kernel's (K/g, N, 2) scales and zeros for this match, or None where no exact form exists."""
    s, dtype = m.value("scale").float(), _kernel_dtype(m["out_dtype"])
    if m["domain"] == "float":
        zero = m.value("zero_point").float()
    elif m["domain"] == "int":
        zero = (8 - m.value("zero_point").float()) * s
    else:
        zero = torch.zeros_like(s)
    if not (torch.equal(s.to(dtype).float(), s) and torch.equal(zero.to(dtype).float(), zero)):
        return None
    return torch.stack([s, zero], dim=-1).transpose(0, 1).contiguous().to(dtype)


def _int4_groups(m, target):
    kind = (m["bits"], m["dtype"], m["domain"])
    if kind not in ((4, "uint4", "float"), (4, "uint4", "int"), (4, "int4", "none")):
        return f"weight is {m['bits']}-bit {m['dtype']} ({m['domain']} zero point), not one of the int4 kernel's forms"
    block = list(m["block"])
    if not (len(block) == 2 and block[0] == 1 and block[1] in (32, 64, 128, 256)):
        return f"group size {block[-1]} is not 32, 64, 128 or 256"
    if m["out_dtype"] not in (torch.float32, torch.bfloat16, torch.float16):
        return f"activations are {m['out_dtype']}"
    return (_stored(m, "w_q") or _int4_fits(m.value("w_q").shape[0], m["n"])
            or _unless(_int4_scales_and_zeros(m) is not None, "its int zero points have no exact float form in the "
                                                                f"{_kernel_dtype(m['out_dtype'])} scales the kernel reads"))


def _int8da_int4w(m, target):
    wb = list(m["w_block"])
    return (_unless(per_token_block(m), "activation scales are not per token")
            or _unless(len(wb) == 2 and wb[0] == 1 and wb[1] in (32, 64, 128, 256), f"group size {wb[-1]} is not 32-256")
            or _stored(m, "w_q") or _int4_fits(m.value("w_q").shape[0], m["n"])
            or _unless(torch.equal(m.value("w_scale").to(torch.bfloat16).float(), m.value("w_scale").float()),
                       "its weight scales are not exact in bfloat16"))


# --- kernels ----------------------------------------------------------------------------------

def _kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """The activation dtype the packed kernels run in: float32 goes through bfloat16."""
    return torch.bfloat16 if dtype == torch.float32 else dtype


def _in_kernel_dtype(x, dtype):
    kd = _kernel_dtype(dtype)
    return x if kd == dtype else aten._to_copy.default(x, dtype=kd)


def _out_of_kernel_dtype(y, dtype):
    return y if _kernel_dtype(dtype) == dtype else aten._to_copy.default(y, dtype=dtype)


def _f32(t):
    return aten._to_copy.default(t, dtype=torch.float32)


def _int8pack(m, x2, w8: torch.Tensor, row_scale: torch.Tensor, name: str, dtype):
    """``x2 @ (w8·s)ᵀ`` on ``_weight_int8pack_mm`` in ``dtype``'s kernel dtype, returned in ``dtype``."""
    s = m.constant(f"{name}_int8pack_scale", row_scale.reshape(-1).to(_kernel_dtype(dtype)))
    y = aten._weight_int8pack_mm.default(_in_kernel_dtype(x2, dtype), m.constant(f"{name}_int8pack", w8.contiguous()), s)
    return _out_of_kernel_dtype(y, dtype)


def _u8s8_operands(m, w8: torch.Tensor, name: str, zero=None):
    """The stored int8 weight [N, K] and the int32 constant ``(128 + zero)·Σ_k w[n, k]`` that :func:`_u8s8` subtracts."""
    shift = 128 + (0 if zero is None else zero.reshape(()).to(torch.int32))
    return (m.constant(f"{name}_int8", w8.contiguous()),
            m.constant(f"{name}_int8_comp", (shift * w8.to(torch.int32).sum(1)).to(torch.int32)))


def _u8s8(q, operands):
    """``Σ_k (q - zero)·w`` exactly, int32 [rows, N], for float integers ``q`` in [-128, 127] ([rows, K]):
    ``q + 128`` as uint8 through ``torch._int_mm`` with the weight's transposed view."""
    w, comp = operands
    u = aten._to_copy.default(aten.add.Tensor(q, 128), dtype=torch.uint8)
    return aten.sub.Tensor(aten._int_mm.default(u, aten.t.default(w)), comp)


def _int16_rows(x2):
    """Each row of ``x2`` as ``s·(hi + lo/255)``: ``hi``, ``lo`` float integers in [-128, 127], ``s`` [rows, 1]."""
    xf = _f32(x2)
    s = aten.clamp_min.default(aten.div.Tensor(aten.amax.default(aten.abs.default(xf), [-1], True), 127.0), 1e-30)
    r = aten.div.Tensor(xf, s)
    hi = aten.round.default(r)
    lo = aten.clamp.default(aten.round.default(aten.mul.Tensor(aten.sub.Tensor(r, hi), 255.0)), -128, 127)
    return hi, lo, s


def _int8_weight_int_mm(m, x, w8, row_scale, out_dtype, b):
    n, k = w8.shape
    x2, back = rows(m, x, k, n)
    hi, lo, s = _int16_rows(x2)
    operands = _u8s8_operands(m, w8, weight_name(m))
    # two calls, not one on stacked rows: oneDNN's M = 1 path is 4x faster than its M = 2..8 one
    acc_hi, acc_lo = _f32(_u8s8(hi, operands)), _f32(_u8s8(lo, operands))
    w_s = m.constant(f"{weight_name(m)}_int8_scale", row_scale.reshape(-1).float())
    y = aten.mul.Tensor(aten.mul.Tensor(aten.add.Tensor(acc_hi, aten.div.Tensor(acc_lo, 255.0)), s), w_s)
    return with_bias(back(aten._to_copy.default(y, dtype=out_dtype)), b)


def _int8_weight_packed(m, x, w8, row_scale, out_dtype, b):
    n, k = w8.shape
    x2, back = rows(m, x, k, n)
    return with_bias(back(_int8pack(m, x2, w8, row_scale, weight_name(m), out_dtype)), b)


def _int8_weight_only(kernel, m, x, out_dtype, b, **_):
    return kernel(m, x, m.value("w_q"), m.value("scale"), out_dtype, b)


def _grid_codebook_weight(kernel, m, x, out_dtype, b, packed: bool = False, **_):
    """Each weight is its codebook's int8 entry times the codebook's scale: int8 weights, per-row scales."""
    idx = m.value("w_q")
    if packed:
        idx = qops.unpack_int(idx, m["bits"], m["n"], False)
    cb_q, cb_s = m.value("cb_q"), m.value("cb_scale").reshape(-1)
    block_of_row = torch.arange(idx.shape[0]) // (idx.shape[0] // cb_q.shape[0])
    return kernel(m, x, cb_q[block_of_row[:, None], idx.long()], cb_s[block_of_row], out_dtype, b)


def _int8_activations(m, x, quantize, zero, b, int_mm: bool):
    """``(q - zero)·scale @ (w·w_scale)ᵀ (+ b)`` where ``quantize(x2)`` gives ``x``'s integers ``q`` and ``scale``.

    ``zero``: None, or the stored activation zero point (a 0-d tensor)."""
    w = m.value("w_q")
    name = weight_name(m)
    x2, back = rows(m, x, w.shape[1], w.shape[0])
    q, scale = quantize(x2)
    if int_mm:
        w_s = m.constant(f"{name}_int8_scale", m.value("w_scale").reshape(-1).float())
        y = aten.mul.Tensor(aten.mul.Tensor(_f32(_u8s8(q, _u8s8_operands(m, w, name, zero))), scale), w_s)
    else:  # |q - zero| <= 255: exact in bfloat16
        qz = q if zero is None else aten.sub.Tensor(q, float(zero))
        y = aten.mul.Tensor(_f32(_int8pack(m, aten._to_copy.default(qz, dtype=torch.bfloat16), w, m.value("w_scale"),
                                           name, torch.bfloat16)), scale)
    return with_bias(back(aten._to_copy.default(y, dtype=m["out_w"])), b)


def _int8_dynamic_int8(int_mm: bool, m, x, eps, b, **_):
    def quantize(x2):
        q, s, _ = per_token_int8(x2, "symmetric", eps)
        return q, s

    return _int8_activations(m, x, quantize, None, b, int_mm)


def _int8_static_int8(int_mm: bool, m, x, b, **_):
    name = weight_name(m)
    z = m.value("zero_point").reshape(())
    s = m.constant(f"{name}_input_scale", m.value("scale").reshape(()).float())

    def quantize(x2):
        q = aten.clamp.default(aten.add.Tensor(aten.round.default(aten.div.Tensor(_f32(x2), s)), float(z)), -128, 127)
        return q, s

    return _int8_activations(m, x, quantize, z, b, int_mm)


def _int4_pack(m, u: torch.Tensor, name: str, target_isa: str):
    return m.constant(f"{name}_int4pack", pack_for(u.contiguous(), target_isa))


def _int4_weight_only(target_isa, m, x, n, signed, block, out_dtype, b, **_):
    u = qops.unpack_int(m.value("w_q"), 4, n, signed).to(torch.int32) + (8 if signed else 0)
    name = weight_name(m)
    packed = _int4_pack(m, u, name, target_isa)
    sz = m.constant(f"{name}_int4pack_scales_zeros", _int4_scales_and_zeros(m))
    x2, back = rows(m, x, n, u.shape[0])
    y = aten._weight_int4pack_mm_for_cpu.default(_in_kernel_dtype(x2, out_dtype), packed, block[1], sz)
    return with_bias(back(_out_of_kernel_dtype(y, out_dtype)), b)


def _int8_dynamic_int4(target_isa, m, x, eps, n, w_block, out_w, b, **_):
    u = qops.unpack_int(m.value("w_q"), 4, n, True).to(torch.int32) + 8
    name = weight_name(m)
    s = m.value("w_scale").float()
    sz = torch.stack([s, torch.zeros_like(s)], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    x2, back = rows(m, x, n, u.shape[0])
    q, xs, xz = per_token_int8(x2, "asymmetric", eps)
    xi = aten._to_copy.default(aten.sub.Tensor(q, xz), dtype=torch.bfloat16)  # |q - zp| <= 255: exact
    acc = aten._weight_int4pack_mm_for_cpu.default(xi, _int4_pack(m, u, name, target_isa), w_block[1],
                                                   m.constant(f"{name}_int4pack_scales_zeros", sz))
    y = back(aten._to_copy.default(aten.mul.Tensor(_f32(acc), xs), dtype=out_w))
    return with_bias(y, b)


# --- the table --------------------------------------------------------------------------------

INT_MM = "aten._int_mm (u8s8, VNNI)"
INT8PACK = "aten._weight_int8pack_mm"
INT4PACK = "aten._weight_int4pack_mm_for_cpu"
_WHY_INT_MM = "the target has VNNI: an exact int32 GEMM, the fastest at every batch size measured"
_WHY_PACKED = "ATen's packed kernel, the fastest form without VNNI (the integer GEMM is about 8x slower there)"
_WHY_INT16 = ("the target has VNNI: 16-bit activations as two int8 rows through the integer GEMM, faster than the "
              "packed GEMV at every batch size measured")


def _int8_weight_rules(name: str, pattern, replace, check, **kw) -> tuple:
    """The VNNI rule and the packed-kernel rule for one int8-weight pattern."""
    return (LoweringRule(name, pattern, partial(replace, _int8_weight_int_mm, **kw), INT_MM + " (16-bit activations)",
                         _WHY_INT16, VNNI, partial(check, need_k8=False, **kw)),
            LoweringRule(name, pattern, partial(replace, _int8_weight_packed, **kw), INT8PACK, _WHY_PACKED,
                         check=partial(check, need_k8=True, **kw)))


def _activation_rules(name: str, pattern, replace, check) -> tuple:
    """The VNNI rule and the packed-kernel rule for one integer-activation pattern."""
    return (LoweringRule(name, pattern, partial(replace, True), INT_MM + " (int8 activations)", _WHY_INT_MM, VNNI,
                         partial(check, need_k8=False)),
            LoweringRule(name, pattern, partial(replace, False), INT8PACK + " (int8 activations)", _WHY_PACKED,
                         check=partial(check, need_k8=True)))


def rules(target_isa: str) -> tuple:
    """The CPU rule table; packed int4 weights are laid out for ``target_isa``."""
    return (
        *_activation_rules("int8dq", dynamic_int8_int8, _int8_dynamic_int8, _int8dq),
        *_activation_rules("int8static", static_int8_int8, _int8_static_int8, _int8static),
        LoweringRule("int8da-int4w", dynamic_int8_int4, partial(_int8_dynamic_int4, target_isa),
                     INT4PACK + " (int8 activations)", "the only int4 CPU kernel (no int8 x int4 integer kernel in ATen)",
                     check=_int8da_int4w),
        LoweringRule("int4wo", weight_only_packed, partial(_int4_weight_only, target_isa), INT4PACK,
                     "the only int4 CPU kernel", check=_int4_groups),
        *_int8_weight_rules("int8wo", weight_only_unpacked, _int8_weight_only, _int8_per_channel),
        *_int8_weight_rules("codebook (int8 grid)", grid_codebook_packed, _grid_codebook_weight, _grid_codebook,
                            packed=True),
        *_int8_weight_rules("codebook-8 (int8 grid)", grid_codebook_bytes, _grid_codebook_weight, _grid_codebook,
                            packed=False),
    )
