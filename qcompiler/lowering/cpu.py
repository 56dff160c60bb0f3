"""The CPU backend: reference patterns -> ATen's packed CPU kernels, weights prepacked here.

| scheme | kernel |
| --- | --- |
| int8wo | ``aten._weight_int8pack_mm`` (per-channel scales) |
| int4wo, every zero-point domain | ``aten._convert_weight_to_int4pack_for_cpu`` + ``aten._weight_int4pack_mm_for_cpu`` |
| int8dq | per-token int8 quantization in ATen ops; the integers ``q`` into ``aten._weight_int8pack_mm``; times the row scale |
| int8da-int4w | per-token int8 quantization; the integers ``q - zp`` into ``aten._weight_int4pack_mm_for_cpu``; times the row scale |
| codebook on an int8 grid (the default) | its int8 entries gathered into int8 weights, per-row scales: ``aten._weight_int8pack_mm`` |

Dynamic activations: integers with ``|q| <= 255`` are exact in bfloat16, so the packed
kernels compute ``sum q·ŵ`` exactly up to their float32 accumulation and bf16 output
rounding, and the row scale multiplies after. ``torch._int_mm`` is exact too but about
8x slower than the int8 pack kernel on AVX2 machines without VNNI (measured 8.3 ms vs
1.04 ms, 4096x4096, M=1), so it is not used.

Kernel limits, checked per layer (else the layer is decomposed): the bfloat16 int8 kernel
needs K % 8 == 0 (it returns wrong values otherwise on AVX2); the int4 packer needs
N % 16 == 0.

ATen's packed kernels are many times slower with float32 activations than with bfloat16
ones in torch 2.13 (int4 at M=1: about 29x; int8: about 3x), so float32 activations run
through them in bfloat16 (cast in, kernel, cast out): results agree with the reference
within bfloat16 rounding.

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

from .patterns import (dynamic_int8_int4, dynamic_int8_int8, grid_codebook_bytes, grid_codebook_packed, per_token_block,
                       per_token_int8, rows, stored_inputs, weight_name, weight_only_packed, weight_only_unpacked,
                       with_bias)
from .rules import LoweringRule

aten, qops = torch.ops.aten, torch.ops.qcompiler


def _int8_kernel_fits(w) -> bool:
    return w.shape[1] % 8 == 0


def _int4_kernel_fits(n_out: int, k: int) -> bool:
    return n_out % 16 == 0 and k % 2 == 0


def _int8_per_channel(m) -> bool:
    return (m["dtype"] == "int8" and m["domain"] == "none" and list(m["block"]) == [1, -1]
            and stored_inputs(m, "w_q") and _int8_kernel_fits(m.value("w_q")))


def _kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """The activation dtype the packed kernels run in: float32 goes through bfloat16."""
    return torch.bfloat16 if dtype == torch.float32 else dtype


def _in_kernel_dtype(x, dtype):
    kd = _kernel_dtype(dtype)
    return x if kd == dtype else aten._to_copy.default(x, dtype=kd)


def _out_of_kernel_dtype(y, dtype):
    return y if _kernel_dtype(dtype) == dtype else aten._to_copy.default(y, dtype=dtype)


def _int8_kernel(m, x, w8: torch.Tensor, row_scale: torch.Tensor, name: str, out_dtype, b):
    """``x @ (w8·s)ᵀ (+ b)`` on ``_weight_int8pack_mm``, ``w8`` int8 [N, K] and ``s`` [N] stored as constants."""
    x2, back = rows(m, x, w8.shape[1], w8.shape[0])
    s = m.constant(f"{name}_int8pack_scale", row_scale.reshape(-1).to(_kernel_dtype(out_dtype)))
    y = aten._weight_int8pack_mm.default(_in_kernel_dtype(x2, out_dtype), m.constant(f"{name}_int8pack", w8.contiguous()), s)
    y = back(_out_of_kernel_dtype(y, out_dtype))
    return with_bias(y, b)


def _int8_weight_only(m, x, w_q, block, scale, zero_point, dtype, domain, out_dtype, b):
    return _int8_kernel(m, x, m.value("w_q"), m.value("scale"), weight_name(m), out_dtype, b)


def _int8_grid_codebook(m) -> bool:
    k = m["n"] if "bits" in m.inputs else m.value("w_q").shape[1]
    return stored_inputs(m, "w_q", "cb_q", "cb_scale") and k % 8 == 0


def _int8_grid_codebook_kernel(m, x, out_dtype, b, **_):
    """Each weight is its codebook's int8 entry times the codebook's scale: int8 weights, per-row scales."""
    idx = m.value("w_q")
    if "bits" in m.inputs:
        idx = qops.unpack_int(idx, m["bits"], m["n"], False)
    cb_q, cb_s = m.value("cb_q"), m.value("cb_scale").reshape(-1)
    block_of_row = torch.arange(idx.shape[0]) // (idx.shape[0] // cb_q.shape[0])
    w8 = cb_q[block_of_row[:, None], idx.long()]
    return _int8_kernel(m, x, w8, cb_s[block_of_row], weight_name(m), out_dtype, b)


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


def _int4_groups(m) -> bool:
    ok = (m["bits"] == 4 and (m["dtype"], m["domain"]) in (("uint4", "float"), ("uint4", "int"), ("int4", "none"))
          and len(m["block"]) == 2 and m["block"][0] == 1 and m["block"][1] in (32, 64, 128, 256)
          and stored_inputs(m, "w_q") and m["out_dtype"] in (torch.float32, torch.bfloat16, torch.float16))
    return ok and _int4_kernel_fits(m.value("w_q").shape[0], m["n"]) and _int4_scales_and_zeros(m) is not None


def _int4_weight_only(m, x, w_q, bits, n, signed, block, scale, zero_point, dtype, domain, out_dtype, b):
    u = qops.unpack_int(m.value("w_q"), 4, n, signed).to(torch.int32) + (8 if signed else 0)
    name = weight_name(m)
    packed = m.constant(f"{name}_int4pack", aten._convert_weight_to_int4pack_for_cpu(u.contiguous(), 1))
    sz = m.constant(f"{name}_int4pack_scales_zeros", _int4_scales_and_zeros(m))
    x2, back = rows(m, x, n, u.shape[0])
    y = aten._weight_int4pack_mm_for_cpu.default(_in_kernel_dtype(x2, out_dtype), packed, block[1], sz)
    y = back(_out_of_kernel_dtype(y, out_dtype))
    return with_bias(y, b)


def _int8dq(m) -> bool:
    return (per_token_block(m) and list(m["w_block"]) == [1, -1] and stored_inputs(m, "w_q")
            and _int8_kernel_fits(m.value("w_q")))


def _int8_dynamic_int8(m, x, block, eps, out_x, w_q, w_block, w_scale, out_w, b):
    w = m.value("w_q")
    n, k = w.shape
    name = weight_name(m)
    x2, back = rows(m, x, k, n)
    q, s, _ = per_token_int8(x2, "symmetric", eps)
    w_s = m.constant(f"{name}_int8pack_scale", m.value("w_scale").reshape(-1).to(torch.bfloat16))
    acc = aten._weight_int8pack_mm.default(aten._to_copy.default(q, dtype=torch.bfloat16), m.constant(f"{name}_int8pack", w.contiguous()), w_s)
    y = back(aten._to_copy.default(aten.mul.Tensor(aten._to_copy.default(acc, dtype=torch.float32), s), dtype=out_w))
    return with_bias(y, b)


def _int8da_int4w(m) -> bool:
    wb = list(m["w_block"])
    return (per_token_block(m) and len(wb) == 2 and wb[0] == 1 and wb[1] in (32, 64, 128, 256)
            and stored_inputs(m, "w_q") and m["out_w"] in (torch.float32, torch.bfloat16, torch.float16)
            and _int4_kernel_fits(m.value("w_q").shape[0], m["n"])
            and torch.equal(m.value("w_scale").to(torch.bfloat16).float(), m.value("w_scale").float()))


def _int8_dynamic_int4(m, x, block, eps, out_x, w_q, n, w_block, w_scale, out_w, b):
    u = qops.unpack_int(m.value("w_q"), 4, n, True).to(torch.int32) + 8
    name = weight_name(m)
    s = m.value("w_scale").float()
    sz = torch.stack([s, torch.zeros_like(s)], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    x2, back = rows(m, x, n, u.shape[0])
    q, xs, xz = per_token_int8(x2, "asymmetric", eps)
    xi = aten._to_copy.default(aten.sub.Tensor(q, xz), dtype=torch.bfloat16)  # |q - zp| <= 255: exact
    packed = m.constant(f"{name}_int4pack", aten._convert_weight_to_int4pack_for_cpu(u.contiguous(), 1))
    acc = aten._weight_int4pack_mm_for_cpu.default(xi, packed, w_block[1], m.constant(f"{name}_int4pack_scales_zeros", sz))
    y = back(aten._to_copy.default(aten.mul.Tensor(aten._to_copy.default(acc, dtype=torch.float32), xs), dtype=out_w))
    return with_bias(y, b)


RULES = (
    LoweringRule("int8dq", dynamic_int8_int8, _int8_dynamic_int8, "aten._weight_int8pack_mm (int8 activations)", _int8dq),
    LoweringRule("int8da-int4w", dynamic_int8_int4, _int8_dynamic_int4,
                 "aten._weight_int4pack_mm_for_cpu (int8 activations)", _int8da_int4w),
    LoweringRule("int4wo", weight_only_packed, _int4_weight_only, "aten._weight_int4pack_mm_for_cpu", _int4_groups),
    LoweringRule("int8wo", weight_only_unpacked, _int8_weight_only, "aten._weight_int8pack_mm", _int8_per_channel),
    LoweringRule("codebook (int8 grid)", grid_codebook_packed, _int8_grid_codebook_kernel,
                 "aten._weight_int8pack_mm (int8-grid codebook)", _int8_grid_codebook),
    LoweringRule("codebook-8 (int8 grid)", grid_codebook_bytes, _int8_grid_codebook_kernel,
                 "aten._weight_int8pack_mm (int8-grid codebook)", _int8_grid_codebook),
)
