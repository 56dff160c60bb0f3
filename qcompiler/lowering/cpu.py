"""The CPU backend: reference patterns -> integer GEMMs on VNNI machines, ATen's packed kernels elsewhere.

On a target with ``amx``, int8dq, int8static and int8wo (and int8-grid codebooks of 5-8 bits) take
``qcompiler.int8_tile_gemm`` (``runtime/int8_tile_gemm.py``): the integer GEMM below on AMX tiles from 4 rows
and a VNNI GEMV under that, choosing per call, its weight packed at lowering in one layout every x86 machine
reads (so the file holds each weight once and packaging prepacks nothing). Weight-only layers hand it their
float rows: from 256 rows it decodes the int8 weight to bfloat16 and multiplies on AMX's bfloat16 tiles (the
rows rounded to bfloat16), below it takes them in 16 bits as two int8 rows. Otherwise, per scheme, on a target
with ``vnni``; then on an ``avx2`` target without ``vnni``:

- int8dq (on ``amx`` targets: ``qcompiler.int8_tile_gemm_dq``, which quantizes the rows itself, the same floats):
  per-token int8 ``x`` as uint8 (``q + 128``) -> an integer GEMM with the int8 weight, exact int32;
  without ``vnni``, ``q`` as int8 -> ``qcompiler.int8_gemm``, exact int32.
- int8static: per-tensor ``q`` as uint8 -> an integer GEMM, zero point ``128 + z``; without ``vnni``,
  ``q`` as int8 -> ``qcompiler.int8_gemm``, zero point taken off in the kernel.
- codebook on an int8 grid, 1-4 bits: the float rows -> ``qcompiler.codebook_gemm``, which keeps the indices
  at their bit width and shuffles each row's int8 table into weights inside the kernel (VNNI, AVX2 or plain
  C++ where it runs; ``runtime/codebook_gemm.py``), taking the rows in 16 bits; the same without ``vnni``.
- int8wo, codebook on an int8 grid of 5-8 bits (or shapes the lookup kernel does not take): 16-bit
  activations as two int8 rows each (below) -> an integer GEMM; without ``vnni``, the float rows ->
  ``qcompiler.int8_gemm``, which takes them in 16 bits.
- int4wo, every zero-point domain: the float rows -> ``qcompiler.int8_int4_gemm``, which takes them in
  16 bits (two int8 rows); the same without ``vnni``.
- int8da-int4w: per-token asymmetric int8 -> ``qcompiler.int8_int4_gemm`` (zero point taken off in the
  kernel); the same without ``vnni``.
- int8da-intx (symmetric 1-7-bit weights): per-token asymmetric int8 -> ``qcompiler.table_gemm`` on int8 rows, the
  codes the integer weights (``cpu_tables.py``), on targets with ``avx512`` and ``vnni``; decomposed below.
- aqlm: the float rows -> ``qcompiler.additive_gemm`` with the codes as stored and the float16 codebooks
  (``runtime/additive_gemm.py``); the same without ``vnni``.
- fixed tables (fp6 / fpx, mxfp4, mxfp8, nvfp4, nf4) and intx at widths the int4 kernel does not take: the float
  rows -> ``qcompiler.table_gemm`` with the codes and block scales as stored, on targets with ``avx512`` and
  ``vnni`` (``cpu_tables.py``); per-row grids of at most 4 bits take ``codebook_gemm`` first, where it fits.
  Decomposed below AVX-512.

Where qcompiler's C++ kernels cannot be built (no C++ compiler), or the target lacks AVX2, int8
weights go to ATen's packed bfloat16 kernel (``aten._weight_int8pack_mm``), with the integer
activations (exact in bfloat16 while ``|q| <= 255``) or ``x`` in bfloat16: a GEMV, about half
the speed of ``qcompiler.int8_gemm`` at prefill shapes.

int4 runs on qcompiler's own C++ kernel (``runtime/int8_int4.py``): exact int32 sums per
group of int4 weights on int8 rows, its weight layout the same on every machine, its
instruction set (AVX512-VNNI, AVX2, plain C++) chosen where it runs; on a machine with AMX,
calls of 32 rows or more decode the weight to bfloat16 and multiply on AMX tiles (the same
op and weight: the choice is made per call, so one ``.pt2`` decodes on VNNI and prefills on AMX). Where that kernel
cannot be built (no C++ compiler), int4 takes ATen's int4 kernel (a bfloat16 GEMV,
2-5x slower from 2 rows on) with bfloat16 activations, as below.

The integer GEMM, fastest first:

- ``onednn.qlinear_pointwise`` (what PT2E's x86 path reaches) where the target is this
  machine and the weight has at least 4M elements (below that its ~25 µs per call leaves
  it no faster than ``_int_mm``): the graph calls ``onednn.qlinear_prepack`` on the stored
  int8 weight, which packaging with freezing folds into a constant in oneDNN's blocked
  layout *for the machine that packages*; so a named target that is not this machine takes
  the next form. Activations go in as uint8 ``q + 128`` with zero point ``128 + z``
  (oneDNN's signed-activation path is a reference loop, hundreds of times slower).
- ``torch._int_mm(uint8 [M, K], int8 [K, N])`` on a plain weight stored [N, K] and passed
  as its transposed view (5x faster than a contiguous [K, N]); the shift's contribution
  ``(128 + z)·Σ_k w[n, k]`` is a constant subtracted from the int32 result. On large
  weights 1.5-3x slower than the prepacked form at 4..32 rows, faster at one row.

Without VNNI ``torch._int_mm`` is about 8x slower than ATen's bf16 packed kernel and oneDNN's
AVX2 int8 path saturates on full-range operands, so those targets take ``qcompiler.int8_gemm``
(``runtime/int8_gemm.py``): int16 rows times the int8 weight widened to int16 (``vpmaddwd``),
exact int32 sums, the same speed for 8- and 16-bit activations. Sums are exact in every form.

Weight-only int8 on VNNI: each row of ``x`` is quantized to 16 bits, ``x ≈ s·(256·hi + lo)`` with
``s = max|x_row| / 32639`` and ``hi``, ``lo`` int8 (the one 16-bit encoding, ``runtime/numerics.py``, which the
C++ kernels use too): the hi and lo rows go through one prepacked call stacked (oneDNN's 2-row GEMM costs what its
1-row one does), or through two ``_int_mm`` calls. The error is at most
``max|x_row| / 65278`` per element, against bfloat16's ``|x| / 256`` on the packed path;
the weight's own quantization error is far above either. It is one kernel for every
batch size: the packed kernel's time grows linearly with the rows (it is a GEMV), the
integer GEMM's does not.

Kernel limits, checked per layer (the rule declines with the reason, and the next rule,
or decomposition, takes the layer): the bfloat16 int8 kernel needs K % 8 == 0 (it
returns wrong values otherwise on AVX2); both int4 packers need N % 16 == 0.

ATen's packed kernels are many times slower with float32 activations than with bfloat16
ones in torch 2.13 (int4 at M=1: about 29x; int8: about 3x), so float32 activations run
through them in bfloat16 (cast in, kernel, cast out).

ATen's packed int4 weights are laid out for the target's vector ISA (``runtime/int4_layout.py``),
whatever machine lowers them. The int4 kernel computes ``w = (u - 8)·scale + zero`` for
``u`` in [0, 15], with scales and zeros in the activation dtype: the float zero-point domain
as it is. The int domain converts exactly (``zero = (8 - z)·s``) where the activation dtype
holds that product exactly (always in float32; checked per layer otherwise); symmetric
int4 is ``u = q + 8``, ``zero = 0``.
"""
from functools import partial

import torch

from ..runtime import additive_gemm, codebook_gemm, int8_gemm, int8_int4, int8_tile_gemm
from ..runtime.int4_layout import pack_for
from ..runtime.numerics import int16_halves, int16_rows, per_token_int8
from ..runtime.onednn import qlinear_available
from ..runtime.target import Target
from .reference_patterns import (additive, dynamic_int8_int4, dynamic_int8_int8, grid_codebook_bytes,
                                 grid_codebook_packed, per_token_block, rows, static_int8_int8, table_packed,
                                 stored_inputs, layer_name, weight_only_packed, weight_only_unpacked, with_bias)
from . import cpu_tables
from .rules import LoweringRule, Take, on_native

aten, qops, onednn = torch.ops.aten, torch.ops.qcompiler, torch.ops.onednn
VNNI = frozenset({"vnni"})
AMX = frozenset({"amx", "vnni"})


def _unless(ok: bool, reason: str):
    return None if ok else reason


# --- what each rule takes ---------------------------------------------------------------------

def _k8(k: int):
    return _unless(k % 8 == 0, f"K = {k} is not a multiple of 8 (the bfloat16 int8 kernel needs that)")


def _int4_fits(n_out: int, k: int):
    return _unless(n_out % 16 == 0 and k % 2 == 0,
                   f"N = {n_out}, K = {k}: the int4 packer needs N % 16 == 0 and even K")


def _stored(m, *names):
    return _unless(stored_inputs(m, *names), "its weight or qparams are computed in the graph, not stored")


def _int8_per_channel(m, target, need_k8: bool):
    if (m["dtype"], m["domain"], list(m["block"])) != ("int8", "none", [1, -1]):
        return (f"weight is {m['dtype']} ({m['domain']} zero point, block {list(m['block'])}), "
                "not symmetric int8 per channel")
    return _stored(m, "w_q") or (_k8(m.value("w_q").shape[1]) if need_k8 else None)


def _grid_codebook(m, target, need_k8: bool, packed: bool):
    return (_stored(m, "w_q", "cb_q", "cb_scale")
            or (_k8(m["n"] if packed else m.value("w_q").shape[1]) if need_k8 else None))


def _codebook_rows(m):
    """The stored codebook's int8 tables and scales, one per weight row (a table per block of rows repeated)."""
    cb_q, cb_s = m.value("cb_q"), m.value("cb_scale").reshape(-1)
    per = m.value("w_q").shape[0] // cb_q.shape[0]
    return cb_q.repeat_interleave(per, 0), cb_s.repeat_interleave(per, 0)


def _codebook_lut_fits(m, target):
    """What ``qcompiler.codebook_gemm`` takes: stored indices of 1-4 bits, kernel shapes, entries in [-127, 127]."""
    declined = _stored(m, "w_q", "cb_q", "cb_scale") or codebook_gemm.unfit(m.value("w_q").shape[0], m["n"], m["bits"])
    if declined:
        return declined
    low = int(m.value("cb_q").min())
    return _unless(low >= -127, f"a table entry is {low}; the codebook kernel takes entries in [-127, 127]")


def _table_lut_fits(m, target):
    """What ``qcompiler.codebook_gemm`` takes of a fixed-table format: packed codes of 1-4 bits, one float scale per
    row, and a grid whose values times some 2^j are integers in [-127, 127] (e2m1: 2·{0, .5, ..., 6}); the
    payload is that integer table and j."""
    declined = _stored(m, "w_q", "table", "scale")
    if declined:
        return declined
    if m["block_size"] != -1 or m["scale_format"] != "float" or m["tensor_scale"] is not None:
        return "the codebook kernel takes one float scale per row (block scales need the lookup-table kernel)"
    declined = codebook_gemm.unfit(m.value("w_q").shape[0], m["n"], m["bits"])
    if declined:
        return declined
    table = m.value("table").double()
    for j in range(8):
        t = table * 2 ** j
        if bool((t == t.round()).all()) and float(t.abs().max()) <= 127:
            return Take((t.to(torch.int8), j))
    return "the grid's values are no integers in [-127, 127] at any power-of-two scale"


def _additive_fits(m, target):
    """What ``qcompiler.additive_gemm`` takes: stored codes of 8 or 16 bits, codebooks and row scales."""
    return (_stored(m, "codes", "codebooks", "scale")
            or additive_gemm.unfit(m.value("codes"), m.value("codebooks")))


def _per_channel_int8_weight(m):
    return _unless(list(m["w_block"]) == [1, -1], f"weight block {list(m['w_block'])} is not per channel")


def _int8dq(m, target, need_k8: bool):
    return (_unless(per_token_block(m), "activation scales are not per token") or _per_channel_int8_weight(m)
            or _stored(m, "w_q") or (_k8(m.value("w_q").shape[1]) if need_k8 else None))


def _int8static(m, target, need_k8: bool):
    return (_stored(m, "scale", "zero_point", "w_q") or _per_channel_int8_weight(m)
            or _unless(m.value("scale").numel() == 1, "activation qparams are not per tensor")
            or (_k8(m.value("w_q").shape[1]) if need_k8 else None))


def _int4_scale_offset(m, stored_dtype: bool = False):
    """Each int4 weight as ``scale·q + offset`` for ``q = u - 8`` in [-8, 7]: [K/g, N] each; the offset is None for
    symmetric int4 (the float zero-point domain is ``(u - 8)·s + z``; the int domain ``(u - z)·s``). float32, or with
    ``stored_dtype`` the stored scales' dtype where that form is exact (a float or no zero point, stored in float32 or
    bfloat16 alike): bfloat16 scales and offsets are half the bytes a kernel reads per group."""
    s = m.value("scale")
    if m["domain"] == "int":
        s = s.float()
        offset = (8 - m.value("zero_point").float()) * s
    else:
        offset = m.value("zero_point") if m["domain"] == "float" else None
        same = offset is None or offset.dtype == s.dtype
        if not (stored_dtype and same and s.dtype in (torch.float32, torch.bfloat16)):
            s, offset = s.float(), (None if offset is None else offset.float())
    return s.t().contiguous(), (None if offset is None else offset.t().contiguous())


def _int4_scales_and_zeros(m):
    """ATen's int4 kernel's (K/g, N, 2) scales and zeros for this match, or None where no exact form exists."""
    scale, offset = _int4_scale_offset(m)
    sz = torch.stack([scale, torch.zeros_like(scale) if offset is None else offset], dim=-1)
    kernel = sz.to(_kernel_dtype(m["out_dtype"]))
    return kernel if torch.equal(kernel.float(), sz) else None




def _int4_form(m, target):
    """What both int4 weight-only kernels take: the int4 forms, groups, activation dtypes and shapes."""
    kind = (m["bits"], m["dtype"], m["domain"])
    if kind not in ((4, "uint4", "float"), (4, "uint4", "int"), (4, "int4", "none")):
        return f"weight is {m['bits']}-bit {m['dtype']} ({m['domain']} zero point), not one of the int4 kernels' forms"
    block = list(m["block"])
    if not (len(block) == 2 and block[0] == 1 and block[1] in (32, 64, 128, 256)):
        return f"group size {block[-1]} is not 32, 64, 128 or 256"
    if m["out_dtype"] not in (torch.float32, torch.bfloat16, torch.float16):
        return f"activations are {m['out_dtype']}"
    return _stored(m, "w_q") or _int4_fits(m.value("w_q").shape[0], m["n"])


def _int4_groups(m, target):
    """ATen's int4 kernel: also needs the scales and zeros exact in its activation dtype (which it hands on)."""
    declined = _int4_form(m, target)
    if declined:
        return declined
    sz = _int4_scales_and_zeros(m)
    return Take(sz) if sz is not None else (f"its int zero points have no exact float form in the "
                                            f"{_kernel_dtype(m['out_dtype'])} scales the kernel reads")


def _int8da_int4w_form(m, target):
    """What both int8da-int4w kernels take."""
    wb = list(m["w_block"])
    return (_unless(per_token_block(m), "activation scales are not per token")
            or _unless(len(wb) == 2 and wb[0] == 1 and wb[1] in (32, 64, 128, 256),
                       f"group size {wb[-1]} is not 32-256")
            or _stored(m, "w_q") or _int4_fits(m.value("w_q").shape[0], m["n"]))


def _int8da_int4w(m, target):
    """ATen's int4 kernel: also needs the weight scales exact in bfloat16."""
    return _int8da_int4w_form(m, target) or _unless(
        torch.equal(m.value("w_scale").to(torch.bfloat16).float(), m.value("w_scale").float()),
        "its weight scales are not exact in bfloat16")


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
    y = aten._weight_int8pack_mm.default(_in_kernel_dtype(x2, dtype),
                                         m.constant(f"{name}_int8pack", w8.contiguous()), s)
    return _out_of_kernel_dtype(y, dtype)


def _column_sums(w8: torch.Tensor, zero=None) -> torch.Tensor:
    """``(128 + zero)·Σ_k w[n, k]`` (int32 [N]): what the uint8 shift ``q + 128`` adds to each output, exactly."""
    shift = 128 + (0 if zero is None else zero.reshape(()).to(torch.int32))
    return (shift * w8.to(torch.int32).sum(1)).to(torch.int32)


def _as_uint8(q):
    """Float integers in [-128, 127] as uint8 ``q + 128``: oneDNN's fast int8 GEMMs take unsigned activations
    (its signed-activation path in ``qlinear_pointwise`` is a reference loop, hundreds of times slower)."""
    return aten._to_copy.default(aten.add.Tensor(q, 128), dtype=torch.uint8)


def _qlinear_gemm(m, w8, w_scale, name: str, blocks: list, zero=None) -> list:
    """``Σ_k (q - zero)·w·w_scale`` in float32 for each block ``q`` of float-integer rows ([rows, K], values in
    [-128, 127]), the sums exact in int32: one ``onednn.qlinear_pointwise`` call on the stacked blocks (its 2-row
    GEMM costs what its 1-row one does), ``q + 128`` as uint8 with zero point ``128 + zero``, on the int8 weight
    stored and prepacked in the graph (folded into oneDNN's blocked layout at packaging)."""
    weight = (onednn.qlinear_prepack.default(m.constant(f"{name}_int8", w8.contiguous()), None),
              m.constant(f"{name}_int8_scale", w_scale.reshape(-1).float()),
              m.constant(f"{name}_int8_zero", torch.zeros(w8.shape[0], dtype=torch.int32)))
    zp = 128 + (0 if zero is None else int(zero))
    return _stacked(blocks, lambda q: onednn.qlinear_pointwise.default(_as_uint8(q), 1.0, zp, *weight, None, 1.0, 0,
                                                                       torch.float32, "none", [], ""))


def _stacked(blocks: list, gemm) -> list:
    """``gemm`` once on the blocks stacked by rows (a GEMM reads its weight once for all of them), split back."""
    if len(blocks) == 1:
        return [gemm(blocks[0])]
    acc = gemm(aten.cat.default(blocks))
    parts = aten.split_with_sizes.default(acc, [aten.sym_size.int(b, 0) for b in blocks])
    return [parts[i] for i in range(len(blocks))]


def _int_mm_gemm(m, w8, w_scale, name: str, blocks: list, zero=None) -> list:
    """What :func:`_qlinear_gemm` computes, on ``torch._int_mm(uint8, int8)``: the weight [N, K] stored plain,
    passed as its transposed view, the shift's :func:`_column_sums` subtracted in int32 (exact). One call per
    block: oneDNN's 1-row path here is about 4x faster than its 2..8-row one."""
    w = m.constant(f"{name}_int8", w8.contiguous())
    comp = m.constant(f"{name}_int8_comp", _column_sums(w8, zero))
    w_s = m.constant(f"{name}_int8_scale", w_scale.reshape(-1).float())
    return [aten.mul.Tensor(_f32(aten.sub.Tensor(aten._int_mm.default(_as_uint8(q), aten.t.default(w)), comp)), w_s)
            for q in blocks]


def _tile_weight(m, w8, w_scale, name: str) -> tuple:
    """The int8 weight in ``qcompiler.int8_tile_gemm``'s layout and its per-channel scales, as graph constants."""
    return (m.constant(f"{name}_int8_tile", int8_tile_gemm.pack(w8.contiguous())),
            m.constant(f"{name}_int8_tile_scale", w_scale.reshape(-1).float()))


def _tile_gemm(m, w8, w_scale, name: str, blocks: list, zero=None) -> list:
    """What :func:`_qlinear_gemm` computes, on ``qcompiler.int8_tile_gemm`` (AMX tiles from
    ``int8_tile_gemm.AMX_MIN_ROWS`` rows, a VNNI GEMV below): one call on the stacked blocks (int8, the zero point
    taken off in the kernel), its weight packed here, so that packaging's freezing has nothing to prepack."""
    w, w_s = _tile_weight(m, w8, w_scale, name)
    z = None if zero is None else m.constant(f"{name}_int8_tile_zero", zero.reshape(1).float())
    return _stacked(blocks, lambda q: qops.int8_tile_gemm.default(aten._to_copy.default(q, dtype=torch.int8), None, z,
                                                                  w, w_s))


def _int8_gemm_weight(m, w8, w_scale, name: str) -> tuple:
    return (m.constant(f"{name}_int8_gemm", int8_gemm.pack(w8.contiguous())),
            m.constant(f"{name}_int8_gemm_scale", w_scale.reshape(-1).float()))


def _native_gemm(m, w8, w_scale, name: str, blocks: list, zero=None) -> list:
    """What :func:`_qlinear_gemm` computes, on ``qcompiler.int8_gemm`` (no VNNI needed): each block's rows as
    int8, the zero point taken off in the kernel."""
    w, w_s = _int8_gemm_weight(m, w8, w_scale, name)
    z = None if zero is None else m.constant(f"{name}_int8_gemm_zero", zero.reshape(1).float())
    return [qops.int8_gemm.default(aten._to_copy.default(q, dtype=torch.int8), None, z, w, w_s) for q in blocks]


def _int8_weight_native(m, x, w8, row_scale, out_dtype, b):
    """``x @ (w8·row_scale)ᵀ`` on ``qcompiler.int8_gemm``, which takes ``x``'s float rows in 16 bits."""
    n, k = w8.shape
    x2, back = rows(m, x, k, n)
    y = qops.int8_gemm.default(_f32(x2), None, None, *_int8_gemm_weight(m, w8, row_scale, layer_name(m)))
    return with_bias(back(aten._to_copy.default(y, dtype=out_dtype)), b)


def _int8_weight_tile(m, x, w8, row_scale, out_dtype, b):
    """``x @ (w8·row_scale)ᵀ`` on ``qcompiler.int8_tile_gemm``, which takes ``x``'s float rows itself: on bfloat16
    AMX tiles from 256 rows, in 16 bits (two int8 rows each) on its integer paths below."""
    n, k = w8.shape
    x2, back = rows(m, x, k, n)
    y = qops.int8_tile_gemm.default(_f32(x2), None, None, *_tile_weight(m, w8, row_scale, layer_name(m)))
    return with_bias(back(aten._to_copy.default(y, dtype=out_dtype)), b)


def _int8_weight_int16(gemm, m, x, w8, row_scale, out_dtype, b):
    """``x @ (w8·row_scale)ᵀ`` with ``x``'s rows in 16 bits (``numerics.int16_rows``: ``s·(256·hi + lo)``) through
    an integer ``gemm``, two int8 rows per row."""
    n, k = w8.shape
    x2, back = rows(m, x, k, n)
    q, s = int16_rows(x2)
    acc_hi, acc_lo = gemm(m, w8, row_scale, layer_name(m), list(int16_halves(q)))
    y = aten.mul.Tensor(aten.add.Tensor(aten.mul.Tensor(acc_hi, 256.0), acc_lo), s)
    return with_bias(back(aten._to_copy.default(y, dtype=out_dtype)), b)


def _int8_weight_packed(m, x, w8, row_scale, out_dtype, b):
    n, k = w8.shape
    x2, back = rows(m, x, k, n)
    return with_bias(back(_int8pack(m, x2, w8, row_scale, layer_name(m), out_dtype)), b)


def _int8_weight_only(kernel, m, x, out_dtype, b, **_):
    return kernel(m, x, m.value("w_q"), m.value("scale"), out_dtype, b)


def _grid_codebook_weight(kernel, m, x, out_dtype, b, packed: bool = False, **_):
    """Each weight is its codebook's int8 entry times the codebook's scale: int8 weights, per-row scales."""
    idx = m.value("w_q")
    if packed:
        idx = qops.unpack_int(idx, m["bits"], m["n"], False)
    table, scale = _codebook_rows(m)
    return kernel(m, x, table.gather(1, idx.long()), scale, out_dtype, b)


def _codebook_lut(m, x, out_dtype, b, **_):
    """The b-bit indices stay packed (in the kernel's layout) and each row's table is read inside the matmul."""
    n_out, k, bits = m.value("w_q").shape[0], m["n"], m["bits"]
    idx = qops.unpack_int(m.value("w_q"), bits, k, False)
    table, scale = _codebook_rows(m)
    name = layer_name(m)
    w = m.constant(f"{name}_codebook_lut", codebook_gemm.pack(idx, bits))
    t = m.constant(f"{name}_codebook_lut_table", codebook_gemm.table16(table))
    sums = m.constant(f"{name}_codebook_lut_sums", codebook_gemm.weight_sums(idx, table))
    s = m.constant(f"{name}_codebook_lut_scale", scale.float().contiguous())
    x2, back = rows(m, x, k, n_out)
    y = qops.codebook_gemm.default(_f32(x2), w, t, sums, s, bits)
    return with_bias(back(aten._to_copy.default(y, dtype=out_dtype)), b)


def _table_lut(m, x, out_dtype, b, **_):
    """A per-row fixed-table format on the codebook kernel: every row's table is the grid times 2^j (integers), its
    scale the stored one over 2^j, so the product is the reference's up to the 16-bit activations."""
    grid, j = m.payload
    n_out, k, bits = m.value("w_q").shape[0], m["n"], m["bits"]
    idx = qops.unpack_int(m.value("w_q"), bits, k, False)
    table = grid.reshape(1, -1).expand(n_out, -1)
    name = layer_name(m)
    w = m.constant(f"{name}_table_lut", codebook_gemm.pack(idx, bits))
    t = m.constant(f"{name}_table_lut_table", codebook_gemm.table16(table))
    sums = m.constant(f"{name}_table_lut_sums", codebook_gemm.weight_sums(idx, table))
    s = m.constant(f"{name}_table_lut_scale", (m.value("scale").float().reshape(-1) / 2 ** j).contiguous())
    x2, back = rows(m, x, k, n_out)
    y = qops.codebook_gemm.default(_f32(x2), w, t, sums, s, bits)
    return with_bias(back(aten._to_copy.default(y, dtype=out_dtype)), b)


def _additive(m, x, out_dtype, b, **_):
    """AQLM: the codes as stored (group-major), the float16 codebooks and row scales into ``additive_gemm``."""
    codes, books = m.value("codes"), m.value("codebooks")
    name = layer_name(m)
    c = m.constant(f"{name}_additive_codes", additive_gemm.layout(codes))
    cb = m.constant(f"{name}_additive_codebooks", books.half().contiguous())
    s = m.constant(f"{name}_additive_scale", m.value("scale").float().reshape(-1).contiguous())
    x2, back = rows(m, x, codes.shape[1] * books.shape[2], codes.shape[0])
    y = qops.additive_gemm.default(_f32(x2), c, cb, s)
    return with_bias(back(aten._to_copy.default(y, dtype=out_dtype)), b)


def _int8_activations(gemm, m, x, quantize, zero, b):
    """``(q - zero)·scale @ (w·w_scale)ᵀ (+ b)`` where ``quantize(x2)`` gives ``x``'s integers ``q`` and ``scale``;
    ``gemm`` is an integer GEMM (:func:`_qlinear_gemm`, :func:`_int_mm_gemm`, :func:`_native_gemm`) or None for the
    packed bfloat16 kernel.

    ``zero``: None, or the stored activation zero point (a 0-d tensor)."""
    w = m.value("w_q")
    name = layer_name(m)
    x2, back = rows(m, x, w.shape[1], w.shape[0])
    q, scale = quantize(x2)
    if gemm is not None:
        y = aten.mul.Tensor(gemm(m, w, m.value("w_scale"), name, [q], zero)[0], scale)
    else:  # |q - zero| <= 255: exact in bfloat16
        qz = q if zero is None else aten.sub.Tensor(q, float(zero))
        y = aten.mul.Tensor(_f32(_int8pack(m, aten._to_copy.default(qz, dtype=torch.bfloat16), w, m.value("w_scale"),
                                           name, torch.bfloat16)), scale)
    return with_bias(back(aten._to_copy.default(y, dtype=m["out_w"])), b)


def _int8_dynamic_tile(m, x, eps, b):
    """int8dq in one ``qcompiler.int8_tile_gemm_dq`` call: the kernel quantizes each row as ``per_token_int8`` does
    (the same floats), so no pass over the rows is left to Inductor."""
    w = m.value("w_q")
    name = layer_name(m)
    x2, back = rows(m, x, w.shape[1], w.shape[0])
    eps_c = m.constant(f"{name}_int8_tile_eps", torch.tensor([float(eps)]))
    y = qops.int8_tile_gemm_dq.default(_f32(x2), eps_c, *_tile_weight(m, w, m.value("w_scale"), name))
    return with_bias(back(aten._to_copy.default(y, dtype=m["out_w"])), b)


def _int8_dynamic_int8(gemm, m, x, eps, b, **_):
    if gemm is _tile_gemm:
        return _int8_dynamic_tile(m, x, eps, b)

    def quantize(x2):
        q, s, _ = per_token_int8(x2, "symmetric", eps)
        return q, s

    return _int8_activations(gemm, m, x, quantize, None, b)


def _int8_static_int8(gemm, m, x, b, **_):
    name = layer_name(m)
    z = m.value("zero_point").reshape(())
    s = m.constant(f"{name}_input_scale", m.value("scale").reshape(()).float())

    def quantize(x2):
        q = aten.clamp.default(aten.add.Tensor(aten.round.default(aten.div.Tensor(_f32(x2), s)), float(z)), -128, 127)
        return q, s

    return _int8_activations(gemm, m, x, quantize, z, b)


def _int4_pack(m, u: torch.Tensor, name: str, target_isa: str):
    return m.constant(f"{name}_int4pack", pack_for(u.contiguous(), target_isa))


def _int4_values(m, n: int, signed: bool):
    """The int4 weight [N, K] as ``q = u - 8`` in [-8, 7] (int32)."""
    return qops.unpack_int(m.value("w_q"), 4, n, signed).to(torch.int32) - (0 if signed else 8)


def _int4_weight_only(target_isa, m, x, n, signed, block, out_dtype, b, **_):
    u = _int4_values(m, n, signed) + 8
    name = layer_name(m)
    packed = _int4_pack(m, u, name, target_isa)
    sz = m.constant(f"{name}_int4pack_scales_zeros", m.payload)  # what _int4_groups computed
    x2, back = rows(m, x, n, u.shape[0])
    y = aten._weight_int4pack_mm_for_cpu.default(_in_kernel_dtype(x2, out_dtype), packed, block[1], sz)
    return with_bias(back(_out_of_kernel_dtype(y, out_dtype)), b)


def _int8_dynamic_int4(target_isa, m, x, eps, n, w_block, out_w, b, **_):
    u = _int4_values(m, n, True) + 8
    name = layer_name(m)
    s = m.value("w_scale").float()
    sz = torch.stack([s, torch.zeros_like(s)], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    x2, back = rows(m, x, n, u.shape[0])
    q, xs, xz = per_token_int8(x2, "asymmetric", eps)
    xi = aten._to_copy.default(aten.sub.Tensor(q, xz), dtype=torch.bfloat16)  # |q - zp| <= 255: exact
    acc = aten._weight_int4pack_mm_for_cpu.default(xi, _int4_pack(m, u, name, target_isa), w_block[1],
                                                   m.constant(f"{name}_int4pack_scales_zeros", sz))
    y = back(aten._to_copy.default(aten.mul.Tensor(_f32(acc), xs), dtype=out_w))
    return with_bias(y, b)


def _int8_int4(m, a, a_scale, a_zero, q, scale, offset, group: int):
    """``a_scale·(a - a_zero) @ (scale·q + offset)ᵀ`` in float32 on ``qcompiler.int8_int4_gemm``: ``a`` float
    integers in [-128, 127] ([rows, K]), ``a_scale`` and ``a_zero`` (or None) [rows, 1]; or, with ``a_scale``
    None, ``a`` the float rows themselves, which the kernel takes in 16 bits. The weight is packed and its scales
    stored as constants."""
    name = layer_name(m)
    w = m.constant(f"{name}_int8_int4", int8_int4.pack(q))
    w_scale = m.constant(f"{name}_int8_int4_scale", scale)
    w_offset = None if offset is None else m.constant(f"{name}_int8_int4_offset", offset)
    sums = None if a_zero is None else m.constant(f"{name}_int8_int4_sums", int8_int4.weight_sums(q, scale, offset))
    flat = [None if t is None else aten.reshape.default(_f32(t), [-1]) for t in (a_scale, a_zero)]
    a = _f32(a) if a_scale is None else aten._to_copy.default(a, dtype=torch.int8)
    return qops.int8_int4_gemm.default(a, flat[0], flat[1], w, w_scale, w_offset, sums, group)


def _int4_weight_int16(m, x, n, signed, block, out_dtype, b, **_):
    """int4 weight-only on the integer kernel: ``x``'s rows go in as they are, and the kernel takes them in
    16 bits (each row quantized to ±32639 and run as two int8 rows)."""
    q = _int4_values(m, n, signed)
    scale, offset = _int4_scale_offset(m, stored_dtype=True)
    x2, back = rows(m, x, n, q.shape[0])
    y = _int8_int4(m, x2, None, None, q, scale, offset, block[1])
    return with_bias(back(aten._to_copy.default(y, dtype=out_dtype)), b)


def _int8_dynamic_int4_int8(m, x, eps, n, w_block, out_w, b, **_):
    """int8da-int4w on the integer kernel: per-token asymmetric int8 rows, the zero point taken off in the kernel."""
    q = _int4_values(m, n, True)
    x2, back = rows(m, x, n, q.shape[0])
    a, xs, xz = per_token_int8(x2, "asymmetric", eps)
    acc = _int8_int4(m, a, xs, xz, q, m.value("w_scale").float().t().contiguous(), None, w_block[1])
    return with_bias(back(aten._to_copy.default(acc, dtype=out_w)), b)


# --- the table --------------------------------------------------------------------------------

TILE = "qcompiler.int8_tile_gemm (s8s8 AMX tiles from 4 rows, VNNI GEMV below)"
QLINEAR = "onednn.qlinear_pointwise (u8s8, VNNI, prepacked)"
INT_MM = "aten._int_mm (u8s8, VNNI)"
INT8PACK = "aten._weight_int8pack_mm"
INT4PACK = "aten._weight_int4pack_mm_for_cpu"
INT8_INT4 = "qcompiler.int8_int4_gemm (int8 x int4, int32 per group)"
INT8_GEMM = "qcompiler.int8_gemm (int16 pairs, no VNNI needed)"
ADDITIVE = "qcompiler.additive_gemm (codes decoded in the kernel)"
_WHY_ADDITIVE = ("qcompiler's AQLM GEMM: the codes stay as stored (2 bits a weight for 1x16 and 2x8 over groups of 8) "
                 "and the float16 codebooks are read inside the kernel (a table of each row's dots with the codebook "
                 "vectors under 8 rows, panels decoded for at::mm from 8); decomposed, Inductor would decode the "
                 "whole weight on every call")
CODEBOOK_LUT = "qcompiler.codebook_gemm (b-bit indices, table shuffled in the kernel)"
_WHY_CODEBOOK_LUT = ("qcompiler's lookup-table GEMM: the indices stay at their bit width in the .pt2 and each row's "
                     "int8 table is shuffled into weights inside the kernel (vpshufb), exact int32 sums on 16-bit "
                     "activations; the int8 GEMMs below need the table gathered into an int8 weight, twice the bytes")
_WHY_INT8_INT4 = ("qcompiler's integer GEMM: exact int32 sums per group of int4 weights on int8 rows (VNNI, AVX2 or "
                  "plain C++, chosen where it runs; on AMX machines, from 32 rows, the weight decoded to bfloat16 on "
                  "AMX tiles, about 2x faster there); ATen's int4 kernel is a bfloat16 GEMV, 2-5x slower from 2 rows "
                  "on")
_WHY_QLINEAR = ("the target is this machine and has VNNI, and the weight is large: an int32 GEMM on a weight "
                "prepacked for this machine, 1.5-3x torch._int_mm at 4-32 rows (0.8x at one row)")
_WHY_TILE = ("the target has AMX: qcompiler's int8 GEMM, AMX tiles (oneDNN's brgemm) from 4 rows and a VNNI GEMV at "
             "memory speed below, one layout packed at lowering: 0.9-1.6x the speed of oneDNN's prepacked qlinear and "
             "1.2-4.4x torch._int_mm's at 4-1024 rows, as fast at one row (benchmarks/results/int8_tile_gemm.md), "
             "and any machine reads the file, which holds each weight once")
_WHY_INT_MM = "the target has VNNI: an exact int32 GEMM on a plain weight, which any VNNI machine reads"
_WHY_INT8_GEMM = ("the target has AVX2 but no VNNI: qcompiler's integer GEMM on int16 pairs (vpmaddwd), exact int32 "
                  "sums, about 2x ATen's packed bfloat16 kernel at prefill shapes")
_WHY_PACKED = "ATen's packed kernel, where qcompiler's C++ kernels are not available or the target lacks AVX2"
_IN_16_BITS = " with 16-bit activations as two int8 rows"
_TILE_FLOAT = ("; the float rows go in as they are: from 256 rows on bfloat16 AMX tiles (the int8 weight decoded to "
               "bfloat16), below in 16 bits as two int8 rows")
_FLOAT_IN_16_BITS = " with the float rows taken in 16 bits"
_INT8_ACTS, _INT16_ACTS = " (int8 activations)", " (16-bit activations)"
_FLOAT_ROWS_ACTS = " (bfloat16 activations from 256 rows, 16-bit below)"


QLINEAR_MIN_WEIGHT = 1 << 22  # elements (N·K): below, oneDNN's prepacked call is no faster than torch._int_mm


def _weight_shape(m, packed: bool) -> tuple:
    w = m.value("w_q")
    return w.shape[0], (m["n"] if packed else w.shape[1])


def _prepacked_pays(check, packed: bool = False):
    """``check``, declining first where the target is not this machine, PyTorch lacks oneDNN's int8 linear,
    or the weight is too small for the prepacked call to pay."""
    def checked(m, target):
        if not qlinear_available():
            return "this PyTorch build has no oneDNN int8 linear (onednn.qlinear_pointwise)"
        if target != Target.host():
            return (f"target {target} is not this machine ({Target.host()}): "
                    "oneDNN prepacks for the machine that packages")
        declined = check(m, target)  # before the size: it checks that the weight is stored
        if declined:
            return declined
        n_out, k = _weight_shape(m, packed)
        return _unless(n_out * k >= QLINEAR_MIN_WEIGHT,
                       f"its weight ({n_out}x{k}) has under {QLINEAR_MIN_WEIGHT:,} elements, where oneDNN's "
                       "per-call cost (about 25 µs) leaves its GEMM no faster than torch._int_mm")
    return checked


def _tile_fits(check, packed: bool):
    """``check``, then the K ``qcompiler.int8_tile_gemm`` sums exactly in int32."""
    def checked(m, target):
        declined = check(m, target)
        if declined:
            return declined
        k = _weight_shape(m, packed)[1]
        return _unless(k <= int8_tile_gemm.MAX_K, f"K = {k}: its int32 sums are exact up to K = {int8_tile_gemm.MAX_K}")
    return checked


def _int8_gemm_fits(check, packed: bool):
    """``check``, then the shapes ``qcompiler.int8_gemm`` packs (N % 8 == 0, even K)."""
    def checked(m, target):
        declined = check(m, target)
        if declined:
            return declined
        n_out, k = _weight_shape(m, packed)
        return _unless(n_out % int8_gemm.LANES == 0 and k % 2 == 0,
                       f"N = {n_out}, K = {k}: its packer needs N % {int8_gemm.LANES} == 0 and even K")
    return checked


def _integer_rules(name: str, pattern, replace, check, kernel_note: str, int16: bool, **kw) -> tuple:
    """The rules for one pattern: ``qcompiler.int8_tile_gemm`` (AMX), oneDNN prepacked, ``torch._int_mm`` (both VNNI),
    ``qcompiler.int8_gemm`` (AVX2), ATen's packed kernel."""
    def bind(gemm):
        if not int16:
            return partial(replace, gemm, **kw)
        forms = {None: _int8_weight_packed, _native_gemm: _int8_weight_native, _tile_gemm: _int8_weight_tile}
        return partial(replace, forms.get(gemm) or partial(_int8_weight_int16, gemm), **kw)

    integer = partial(check, need_k8=False, **kw)
    why16 = _IN_16_BITS if int16 else ""
    packed = kw.get("packed", False)
    return (LoweringRule(name, pattern, bind(_tile_gemm), TILE + (_FLOAT_ROWS_ACTS if int16 else kernel_note),
                         _WHY_TILE + (_TILE_FLOAT if int16 else ""), AMX,
                         on_native(_tile_fits(integer, packed))),
            LoweringRule(name, pattern, bind(_qlinear_gemm), QLINEAR + kernel_note, _WHY_QLINEAR + why16, VNNI,
                         _prepacked_pays(integer, packed)),
            LoweringRule(name, pattern, bind(_int_mm_gemm), INT_MM + kernel_note, _WHY_INT_MM + why16, VNNI, integer),
            LoweringRule(name, pattern, bind(_native_gemm), INT8_GEMM + kernel_note,
                         _WHY_INT8_GEMM + (_FLOAT_IN_16_BITS if int16 else ""), frozenset({"avx2"}),
                         on_native(_int8_gemm_fits(integer, packed))),
            LoweringRule(name, pattern, bind(None), INT8PACK + ("" if int16 else kernel_note), _WHY_PACKED,
                         check=partial(check, need_k8=True, **kw)))


def rules(target_isa: str) -> tuple:
    """The CPU rule table; packed int4 weights are laid out for ``target_isa``."""
    return (
        *_integer_rules("int8dq", dynamic_int8_int8, _int8_dynamic_int8, _int8dq, _INT8_ACTS, False),
        *_integer_rules("int8static", static_int8_int8, _int8_static_int8, _int8static, _INT8_ACTS, False),
        LoweringRule("int8da-int4w", dynamic_int8_int4, _int8_dynamic_int4_int8, INT8_INT4 + _INT8_ACTS, _WHY_INT8_INT4,
                     check=on_native(_int8da_int4w_form)),
        LoweringRule("int8da-int4w", dynamic_int8_int4, partial(_int8_dynamic_int4, target_isa),
                     INT4PACK + _INT8_ACTS, "ATen's int4 kernel, where qcompiler's is not available",
                     check=_int8da_int4w),
        *cpu_tables.int8_activation_rules(),
        LoweringRule("int4wo", weight_only_packed, _int4_weight_int16, INT8_INT4 + _INT16_ACTS,
                     _WHY_INT8_INT4 + _IN_16_BITS, check=on_native(_int4_form)),
        LoweringRule("int4wo", weight_only_packed, partial(_int4_weight_only, target_isa), INT4PACK,
                     "ATen's int4 kernel, where qcompiler's is not available", check=_int4_groups),
        *_integer_rules("int8wo", weight_only_unpacked, _int8_weight_only, _int8_per_channel, _INT16_ACTS, True),
        LoweringRule("aqlm", additive, _additive, ADDITIVE, _WHY_ADDITIVE, check=on_native(_additive_fits)),
        LoweringRule("codebook (int8 grid)", grid_codebook_packed, _codebook_lut, CODEBOOK_LUT + _INT16_ACTS,
                     _WHY_CODEBOOK_LUT, check=on_native(_codebook_lut_fits)),
        LoweringRule("fixed table (per row)", table_packed, _table_lut, CODEBOOK_LUT + _INT16_ACTS, _WHY_CODEBOOK_LUT,
                     check=on_native(_table_lut_fits)),
        *cpu_tables.rules(),
        *_integer_rules("codebook (int8 grid)", grid_codebook_packed, _grid_codebook_weight, _grid_codebook,
                        _INT16_ACTS, True, packed=True),
        *_integer_rules("codebook-8 (int8 grid)", grid_codebook_bytes, _grid_codebook_weight, _grid_codebook,
                        _INT16_ACTS, True, packed=False),
    )
