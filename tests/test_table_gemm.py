"""qcompiler::table_gemm, the C++ fixed-table kernel: its layout, its values for every code width, scale and offset
format on every path, its errors."""
import pytest
import torch
from kernel_paths import run_capped

import qcompiler as qc
from qcompiler.runtime import native, table_gemm, tables


@pytest.fixture(autouse=True, scope="module")
def kernels_loaded():
    native.load()


# M, N, K, block: 9 rows are a tile of 8 and one of 1; one row over blocks of 256 spreads its sums over 4 chains on the
# integer path; from 32 rows, where AMX runs, the kernel decodes to bfloat16 tiles (N = 80: a tile panel of 64 and
# one of 16; K = 8256: two slices of k, the second added to the first)
CASES = [(1, 16, 64, 16), (1, 16, 512, 256), (3, 48, 256, 32), (5, 32, 128, 128), (9, 16, 512, 64),
         (34, 32, 256, 32), (67, 80, 128, 16), (33, 16, 8256, 32)]
LONG_BLOCK = (3, 16, 768, 768)  # one block per row: AVX2's integer path sums it in segments of 256 k
# (scale format, offset format): uint8 scales are e8m0, uint8 offsets integer zero points
FORMATS = [(torch.float32, None), (torch.bfloat16, torch.bfloat16), (torch.uint8, None),
           (torch.float8_e4m3fn, None), (torch.bfloat16, torch.uint8), (torch.float32, torch.float32)]
TOLERANCE = 1e-5  # float32 sums
INT_TOLERANCE = 2e-4  # an integer table: the rows in 16 bits, about 2^-16 of a row's largest value per element
TILES_TOLERANCE = 8e-3  # bfloat16 tiles: rows and decoded weights rounded to 8 significant bits


# The kinds of table, each a path of its own below the tiles. On AVX-512 VNNI the rows go to 16 bits and:
# - direct: integers c - z times a unit (intx's kind): the codes themselves are the integer weights;
# - shuffled: int8 entries at a power-of-two scale (e2m1's kind), looked up by vpshufb (<= 4 bits; from 5 bits
#   they run as wide);
# - wide: 16-bit integers at a power-of-two scale (e3m2's kind): each entry's high and low bytes looked up (vpshufb,
#   or vpermb / vpermi2b on AVX512-VBMI for 5-8 bits);
# - float: any finite values (nf4's kind), rounded to 16 bits of the largest, then as wide;
# - grid: a float grid of 7-8 bits times a constant (e4m3's kind), rounded as float.
# Tables with an infinite entry (never chosen) and 5-8-bit tables on CPUs without VBMI sum in float32 instead:
# - float-inf: a vpermps of the table in registers (or a gather from L1 above 6 bits);
# - grid-inf: the grid decoded with shifts.
# On AVX2 the integer path (vpmaddwd on the rows' 16 bits) takes direct tables and the others of up to 4 bits (int8
# entries, 16-bit ones as two bytes); tables of 5-8-bit entries and infinite entries sum in float32 there.
KINDS = ("float", "shuffled", "wide", "direct", "grid", "float-inf", "grid-inf")
FLOAT32_KINDS = ("float-inf", "grid-inf")


def _kinds(bits: int) -> list:
    return [kind for kind in KINDS if not kind.startswith("grid") or bits >= 7]


def _avx2_integer(kind: str, bits: int) -> bool:
    return kind == "direct" or (bits <= 4 and kind in ("shuffled", "wide", "float"))


def _tolerance(m: int, kind: str = "float", capped: str = "", bits: int = 4) -> float:
    """The tolerance for ``m`` rows on a table of ``kind``: on this machine's own path, or where ATEN_CPU_CAPABILITY
    is ``capped`` ("avx2": integer or float32 by kind; "default": plain C++ in float32)."""
    if capped:
        return INT_TOLERANCE if capped == "avx2" and _avx2_integer(kind, bits) else TOLERANCE
    if native.float_rows_path(m) == "amx_bf16":
        return TILES_TOLERANCE
    return TOLERANCE if kind in FLOAT32_KINDS else INT_TOLERANCE


def _table(kind: str, bits: int, g) -> torch.Tensor:
    n = 1 << bits
    if kind == "shuffled":
        return torch.randint(-127, 128, (n,), generator=g) / 8.0
    if kind == "wide":
        return torch.randint(-32639, 32640, (n,), generator=g) / 64.0
    if kind == "direct":
        return (torch.arange(n) - 3) * 0.25
    table = tables.grid_values("e4m3" if bits == 8 else "e3m3") * 0.37 if kind.startswith("grid") else \
        torch.randn(n, generator=g)
    if kind.endswith("-inf"):
        table[-1] = float("inf")
    return table


def _qparams(fmt, shape, g, offset: bool, bits: int):
    """Stored scales or offsets in ``fmt`` and their float values (a zero point's value is z itself)."""
    if fmt == torch.uint8 and offset:
        z = torch.randint(0, 1 << bits, shape, generator=g, dtype=torch.uint8)
        return z, z.double()
    if fmt == torch.uint8:  # e8m0: 2^(e - 127)
        e = torch.randint(122, 132, shape, generator=g, dtype=torch.uint8)
        return e, torch.exp2(e.double() - 127)
    v = (torch.rand(shape, generator=g) + 0.05) if not offset else torch.randn(shape, generator=g)
    stored = v.to(fmt)
    return stored, stored.double()


def _case(m, n, k, block, bits, formats, seed=0, kind="float"):
    """A problem with a table of ``kind``."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 1 << bits, (n, k), generator=g, dtype=torch.uint8)
    table = _table(kind, bits, g)
    idx = torch.where(table[idx.long()].isfinite(), idx, idx - 1)  # NaN (e4m3's) and infinite codes never chosen
    scale, s = _qparams(formats[0], (n, k // block), g, False, bits)
    offset, o = (None, None) if formats[1] is None else _qparams(formats[1], (n, k // block), g, True, bits)
    if formats[1] == torch.uint8:
        o = -o * s
    a = torch.randn(m, k, generator=g) * 3
    return a, idx, table, scale, s, offset, o


def _max_relative_error(case, bits, formats, kind="float") -> float:
    m, n, k, block = case
    a, idx, table, scale, s, offset, o = _case(m, n, k, block, bits, formats, kind=kind)
    y = table_gemm.OP(a, None, None, table_gemm.pack(idx, bits), table, table_gemm.panel_qparams(scale),
                      None if offset is None else table_gemm.panel_qparams(offset), None, bits, block)
    ref = table_gemm.reference(a, idx, table, s, o)
    assert y.dtype == torch.float32 and y.shape == (m, n)
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("bits", table_gemm.BITS)
def test_the_packed_layout_is_the_documented_one(bits):
    idx = torch.randint(0, 1 << bits, (32, 96), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    packed = table_gemm.pack(idx, bits).reshape(-1)
    assert packed.numel() == 32 * 96 * bits // 8
    for col, k in ((0, 0), (5, 17), (17, 70), (31, 95), (20, 33), (9, 63)):
        stripe = packed[(col // 16) * 2 * 96 * bits + (k // 32) * 64 * bits:][:64 * bits]
        value, word = 0, 0
        for width, first in table_gemm.PLANES[bits]:
            per = 32 // width  # codes a lane holds; code i of the lane at bit 8·(i % 4) + width·(i // 4)
            at = (word + (k % 32) // per) * 64 + (col % 16) * 4
            lane = int.from_bytes(bytes(stripe[at:at + 4].tolist()), "little")
            i = k % 32 % per
            value |= ((lane >> (8 * (i % 4) + width * (i // 4))) & ((1 << width) - 1)) << first
            word += width
        assert value == int(idx[col, k])


@pytest.mark.parametrize("bits", table_gemm.BITS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "m{}-n{}-k{}-b{}".format(*c))
def test_the_kernel_matches_its_reference_in_every_format(case, bits):
    for formats in FORMATS:
        for kind in _kinds(bits):
            assert _max_relative_error(case, bits, formats, kind) < _tolerance(case[0], kind), (formats, kind)


def _int8_rows(m: int, k: int, g):
    """Per-token asymmetric int8 activations: the int8 rows, their scales and zero points, and their float values."""
    q = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    a_scale = torch.rand(m, generator=g) + 0.01
    a_zero = torch.randint(-128, 128, (m,), generator=g).float()
    return q, a_scale, a_zero, a_scale[:, None] * (q.float() - a_zero[:, None])


@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("case", CASES[:7], ids=lambda c: "m{}-n{}-k{}-b{}".format(*c))
def test_int8_rows_match_the_reference_on_every_kind_of_table(case, bits):
    """int8 activations: one int8 row each on intx's integers, two (their 16 bits) on other tables, floats below."""
    for formats in (FORMATS[0], FORMATS[4]):
        for kind in INT8_ROW_KINDS:
            for zero in (True, False):
                assert _int8_rows_error(case, bits, formats, kind, zero) < _tolerance(case[0], kind), (formats, kind)


INT8_ROW_KINDS = ("direct", "shuffled", "float")


def _int8_rows_error(case, bits, formats, kind, zero) -> float:
    m, n, k, block = case
    _, idx, table, scale, s, offset, o = _case(m, n, k, block, bits, formats, kind=kind)
    q, a_scale, a_zero, x = _int8_rows(m, k, torch.Generator().manual_seed(bits))
    w = table_gemm.weight(idx, table, s, o)
    y = table_gemm.OP(q, a_scale, a_zero if zero else None, table_gemm.pack(idx, bits), table,
                      table_gemm.panel_qparams(scale), None if offset is None else table_gemm.panel_qparams(offset),
                      w.sum(1).float() if zero else None, bits, block)
    x = x if zero else a_scale[:, None] * q.float()
    ref = x.double() @ w.t()
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


SCRIPT = """
import os, sys
sys.path.insert(0, "tests")
from qcompiler.runtime import native, table_gemm
from test_table_gemm import (CASES, FORMATS, INT8_ROW_KINDS, LONG_BLOCK, _int8_rows_error, _kinds, _max_relative_error,
                             _tolerance)
native.load()
EXTRA = [LONG_BLOCK] if CAPPED else []
capped = os.environ.get("ATEN_CPU_CAPABILITY", "") if CAPPED else ""
print(max(_max_relative_error(c, b, f, kind) / _tolerance(c[0], kind, capped, b) for c in CASES[:4] + EXTRA
          for b in table_gemm.BITS for f in FORMATS for kind in _kinds(b)))
if CAPPED:  # int8 rows (int8da-intx's layers)
    print(max(_int8_rows_error(c, b, f, kind, zero) / _tolerance(c[0], kind, capped, b) for c in CASES[:4] + EXTRA
              for b in (1, 3, 4, 8) for f in (FORMATS[0], FORMATS[4]) for kind in INT8_ROW_KINDS
              for zero in (True, False)))
"""


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_the_avx2_and_plain_cpp_paths_match_the_reference(capability):
    """Below AVX-512 (ATEN_CPU_CAPABILITY capped): on AVX2 the integer path for codes and int8 entries, float32 FMAs
    for the other tables (vpermps up to 16 entries, gathered above); plain C++ below: every kind of table, right on
    any machine."""
    errors = run_capped(SCRIPT.replace("CAPPED", "True"), capability)
    assert len(errors) == 2 and all(float(e) < 1 for e in errors), errors  # float rows, int8 rows: within tolerance


ROWS_SCRIPT = """
import sys
sys.path.insert(0, "tests")
import torch
from qcompiler.runtime import native, table_gemm
from qcompiler.runtime.numerics import int16_rows
from test_table_gemm import FORMATS, _case
native.load()
for kind, bits, block in KINDS:
    a, idx, table, scale, s, _, _ = _case(2, 16, 512, block, bits, FORMATS[0], kind=kind)
    a[:, 0] = 1e4  # the rows' 16-bit step (1e4 / 32639) is then a tenth of the other values
    y = table_gemm.OP(a, None, None, table_gemm.pack(idx, bits), table, table_gemm.panel_qparams(scale), None, None,
                      bits, block).double()
    rest = table_gemm.reference(torch.cat([0 * a[:, :1], a[:, 1:]], 1), idx, table, s, None).abs().max()
    q, row_scale = int16_rows(a)
    for rows in (q * row_scale, a):  # in 16 bits, as they are
        print(((y - table_gemm.reference(rows, idx, table, s, None)).abs().max() / rest).item())
"""


@pytest.mark.parametrize("capability,kinds", [
    ("avx512", [("direct", 3, 64), ("shuffled", 4, 16), ("direct", 8, 256)]),
    ("avx2", [("direct", 3, 64), ("shuffled", 4, 16), ("direct", 8, 256), ("direct", 5, 512), ("wide", 3, 32),
              ("wide", 4, 512)]),
    ("avx2", [("float-inf", 4, 32), ("shuffled", 6, 32), ("wide", 5, 512)])], ids=["vnni", "avx2", "avx2-float"])
def test_integer_tables_take_the_rows_in_16_bits_on_the_integer_paths(capability, kinds, request):
    """Which path ran, seen in the numbers: the integer paths (AVX-512 VNNI, AVX2) round each row to 16 bits and are
    exact from there; AVX2's float32 path (5-8-bit entries, infinite ones) takes the rows as they are. Errors are
    relative to the output without the row's one large value, which the 16-bit step is sized by."""
    if capability == "avx512" and not {"avx512", "vnni"} <= qc.Target.host().capabilities:
        pytest.skip("no AVX-512 VNNI here: this machine's integer path is AVX2's, tested capped")
    errors = [float(e) for e in run_capped(ROWS_SCRIPT.replace("KINDS", repr(kinds)), capability)]
    rounded, as_they_are = errors[0::2], errors[1::2]
    if request.node.callspec.id == "avx2-float":
        rounded, as_they_are = as_they_are, rounded
    assert max(rounded) < 1e-3 and min(as_they_are) > 5e-3, errors


def test_without_amx_many_rows_stay_on_the_avx512_path():
    if "amx_bf16" not in open("/proc/cpuinfo").read() or torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip("no AMX here: the AVX-512 path is this machine's own for every row count, tested above")
    script = SCRIPT.replace("CAPPED", "False").replace("CASES[:4]", "CASES").replace(
        "_tolerance(c[0], kind, capped, b)", "_tolerance(1, kind)").replace(
        "for f in FORMATS", "for f in FORMATS[::2]")
    (error,) = run_capped(script, "avx512", ONEDNN_MAX_CPU_ISA="AVX512_CORE_BF16")
    assert float(error) < 1


def test_packing_refuses_what_the_kernel_cannot_take():
    with pytest.raises(ValueError, match="N = 40, K = 64: the kernel needs N % 16 == 0 and K % 32 == 0"):
        table_gemm.pack(torch.zeros(40, 64, dtype=torch.uint8), 4)
    with pytest.raises(ValueError, match="idx must be uint8 codes below 8"):
        table_gemm.pack(torch.full((16, 64), 8, dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match="its codes have 9 bits; the kernel takes 1 to 8"):
        table_gemm.pack(torch.zeros(16, 64, dtype=torch.uint8), 9)
    assert table_gemm.unfit(16, 160, 4, 40) == ("its blocks of 40 along K = 160: the kernel takes blocks of a multiple "
                                               "of 16 dividing K")


@pytest.mark.parametrize("change,message", [
    (lambda args: {**args, "a": args["a"].double()}, "a must be float32 or int8 \\[M, K\\]"),
    (lambda args: {**args, "a": args["a"].to(torch.int8)}, "int8 rows need a_scale, float32 with one value per row"),
    (lambda args: {**args, "a_scale": torch.ones(3)}, "float32 rows take no a_scale, a_zero or w_sums"),
    (lambda args: {**args, "a": args["a"].to(torch.int8), "a_scale": torch.ones(3), "a_zero": torch.ones(3)},
     "a_zero and w_sums go together"),
    (lambda args: {**args, "a": args["a"].to(torch.int8), "a_scale": torch.ones(3), "a_zero": torch.ones(3),
                   "w_sums": torch.ones(5)}, "w_sums must be float32 with one value per column \\(48\\)"),
    (lambda args: {**args, "bits": 9}, "bits must be 1 to 8"),
    (lambda args: {**args, "a": args["a"][:, :80]}, "K = 80 must be a positive multiple of 32"),
    (lambda args: {**args, "block": 24}, "block = 24 must be a multiple of 16 dividing K = 256"),
    (lambda args: {**args, "table": args["table"][:8]}, "table must be float32 \\[2\\^bits\\] = \\[16\\]"),
    (lambda args: {**args, "scale": args["scale"].half()}, "scale must be float32, bfloat16, uint8 \\(e8m0\\)"),
    (lambda args: {**args, "scale": args["scale"][:1]}, "scale must hold one value per column and block \\(384\\)"),
    (lambda args: {**args, "offset": args["scale"].to(torch.float8_e4m3fn)}, "offset must be float32, bfloat16 or"),
    (lambda args: {**args, "w": args["w"][:8]}, "w must be uint8 with a multiple of 2 \\* K \\* bits = 2048 bytes")])
def test_bad_inputs_are_refused_with_what_is_allowed(change, message):
    a, idx, table, scale, *_ = _case(3, 48, 256, 32, 4, FORMATS[0])
    args = dict(a=a, a_scale=None, a_zero=None, w=table_gemm.pack(idx, 4), table=table,
                scale=table_gemm.panel_qparams(scale), offset=None, w_sums=None, bits=4, block=32)
    with pytest.raises(RuntimeError, match=message):
        table_gemm.OP(**change(args))
