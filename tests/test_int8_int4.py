"""qcompiler::int8_int4_gemm, the C++ int8 x int4 kernel: its layout, its values on every path, its errors."""
import pytest
import torch
from kernel_paths import capped_path, run_capped

from qcompiler.runtime import int8_int4, native


@pytest.fixture(autouse=True, scope="module")
def kernels_loaded():
    native.load()


CASES = [  # M, N, K, group, weight offset, activation zero point, activation bits
    (1, 64, 64, 32, False, False, 8), (5, 48, 128, 64, True, True, 8), (37, 1040, 256, 128, True, False, 8),
    (130, 16, 512, 256, False, True, 8), (3, 32, 96, 32, True, True, 8), (9, 80, 64, 32, False, False, 8),
    (70, 208, 128, 64, True, True, 8), (1, 64, 64, 32, True, False, 16), (5, 48, 128, 64, False, True, 16),
    (37, 1040, 256, 128, True, False, 16), (70, 208, 256, 256, True, True, 16), (3, 32, 96, 32, False, False, 16),
    (1, 64, 64, 32, True, False, 32), (37, 1040, 256, 128, False, False, 32), (70, 208, 512, 256, True, False, 32),
    # the tiles that span a panel's 4 blocks for a few rows (VNNI): up to 4 int8 rows, then 6 at a time up to 16
    (2, 64, 128, 64, True, False, 16), (8, 80, 128, 32, False, True, 16), (16, 80, 64, 32, True, True, 8),
    (2, 208, 64, 32, True, False, 32), (4, 1040, 256, 128, True, False, 32), (7, 64, 128, 64, False, False, 32)]
FLOAT_TOLERANCE = 2e-4  # float32 rows go in 16 bits: about 2^-16 of a row's largest value per element
AMX_TOLERANCE = 8e-3  # bfloat16 tiles: weights (and float rows) rounded to 8 significant bits, 2^-9 each


def _case(m, n, k, group, offset, zero, bits=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-8, 8, (n, k), generator=g)
    top = int8_int4.INT16_MAX + 1 if bits == 16 else 128  # int16 activations: what the kernel takes unsaturated
    a = torch.randint(-top, top, (m, k), generator=g, dtype=torch.int16 if bits == 16 else torch.int8)
    if bits == 16:  # the extremes, where the high and low bytes' split is at its edges
        a[0, :4] = torch.tensor([-32768, int8_int4.INT16_MAX, -129, 128], dtype=torch.int16)
    a_scale = torch.rand(m, generator=g) + 0.1
    if bits == 32:  # float rows: the kernel quantizes them; a row of zeros must not divide by zero
        a, a_scale = torch.randn(m, k, generator=g) * 3, None
        a[1:][-1:] = 0.0  # (the last row, when there are two or more)
    a_zero = torch.randint(-128, 128, (m,), generator=g).float() if zero else None
    w_scale = torch.rand(k // group, n, generator=g) + 0.01
    w_offset = torch.randn(k // group, n, generator=g) if offset else None
    return q, a, a_scale, a_zero, w_scale, w_offset


def _max_relative_error(case, scale_dtype=torch.float32) -> float:
    """The kernel against its float64 reference, with the weight's scales and offsets in ``scale_dtype``."""
    m, n, k, group, offset, zero, bits = case
    q, a, a_scale, a_zero, w_scale, w_offset = _case(*case)
    w_scale, w_offset = [None if t is None else t.to(scale_dtype) for t in (w_scale, w_offset)]
    y = torch.ops.qcompiler.int8_int4_gemm(a, a_scale, a_zero, int8_int4.pack(q), w_scale, w_offset,
                                           int8_int4.weight_sums(q, w_scale, w_offset), group)
    ref = int8_int4.reference(a, a_scale, a_zero, q, w_scale, w_offset, group)
    assert y.dtype == torch.float32 and y.shape == (m, n)
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


def test_the_packed_layout_is_the_documented_one():
    q = torch.randint(-8, 8, (80, 16), generator=torch.Generator().manual_seed(1))
    packed = int8_int4.pack(q).reshape(-1)
    u = q + 8
    # rows 0..63 form a panel of 4 blocks, rows 64..79 a panel of one; 64 bytes per (chunk, block)
    for row, k in ((0, 0), (5, 3), (17, 4), (63, 15), (64, 9), (79, 12)):
        panel, width = (0, 4) if row < 64 else (64 * 8, 1)
        block, lane, chunk, i = (row % 64) // 16, row % 16, k // 8, k % 4
        byte = int(packed[panel + (chunk * width + block) * 64 + lane * 4 + i])
        assert (byte >> 4 if k % 8 >= 4 else byte & 0xF) == int(u[row, k])


def test_packing_refuses_shapes_and_values_the_kernel_cannot_take():
    with pytest.raises(ValueError, match=r"weight must be an \[N, K\] int4 weight with N % 16 == 0"):
        int8_int4.pack(torch.zeros(40, 64, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"weight must be int4 values in \[-8, 7\]"):
        int8_int4.pack(torch.full((16, 64), 8))


def _tolerance(case) -> float:
    """The case's tolerance on the path its rows take here: bfloat16 tiles (AMX), or exact integer sums."""
    m, bits = case[0], case[-1]
    if bits != 16 and native.float_rows_path(m) == "amx_bf16":
        return AMX_TOLERANCE
    return FLOAT_TOLERANCE if bits == 32 else 1e-5


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16], ids=["f32-scales", "bf16-scales"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "m{}-n{}-k{}-g{}-off{:d}-zero{:d}-bits{}".format(*c))
def test_the_kernel_matches_its_reference(case, scale_dtype):
    assert _max_relative_error(case, scale_dtype) < _tolerance(case)


def test_float_rows_are_taken_in_16_bits_not_8():
    """The 16-bit rounding of float rows is far finer than int8's: the same rows rounded to int8 per row miss.
    (Rows fewer than AMX_MIN_ROWS: more take bfloat16 tiles where AMX runs.)"""
    case = (9, 1040, 256, 128, False, False, 32)
    q, a, _, _, w_scale, w_offset = _case(*case)
    s8 = a.abs().amax(-1, keepdim=True).clamp_min(1e-30) / 127
    a8 = torch.round(a / s8).to(torch.int8)
    y8 = torch.ops.qcompiler.int8_int4_gemm(a8, s8.reshape(-1), None, int8_int4.pack(q), w_scale, w_offset, None, 128)
    ref = int8_int4.reference(a, None, None, q, w_scale, w_offset, 128)
    int8_error = ((y8.double() - ref).abs().max() / ref.abs().max()).item()
    assert _max_relative_error(case) < int8_error / 50


SCRIPT = """
import sys
sys.path.insert(0, "tests")
from qcompiler.runtime import native
import torch
from test_int8_int4 import CASES, _max_relative_error, _tolerance
native.load()
print(native.kernel_path(), max(_max_relative_error(c, d) / _tolerance(c) for c in CASES
                                for d in (torch.float32, torch.bfloat16)))
"""


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_every_instruction_set_path_matches_the_reference(capability):
    """ATEN_CPU_CAPABILITY caps the kernel's path: the AVX2 and plain C++ paths run on any machine."""
    path, error = run_capped(SCRIPT, capability)
    assert path == capped_path(capability)
    assert float(error) < 1  # every case within its tolerance


def _cpu_flags() -> set:
    return set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())


VNNI = torch.backends.cpu.get_cpu_capability() == "AVX512" and "avx512_vnni" in _cpu_flags()
AMX = VNNI and "amx_bf16" in _cpu_flags() and torch.backends.mkldnn.is_available()


def test_this_machine_takes_its_fastest_path():
    capability = torch.backends.cpu.get_cpu_capability()
    assert native.kernel_path() == ("avx512_vnni" if VNNI else "avx2" if capability in ("AVX2", "AVX512") else "scalar")
    assert native.float_rows_path(int8_int4.AMX_MIN_ROWS - 1) == native.kernel_path()
    assert native.float_rows_path(4096) == ("amx_bf16" if AMX else native.kernel_path())


def _amx_or_skip():
    if not AMX:
        pytest.skip("no AMX-BF16 here (cpuinfo's amx_bf16 with ATen's AVX512 capability and oneDNN): the bfloat16 "
                    "tile path is not reachable on this machine")


@pytest.mark.parametrize("bits", [8, 32], ids=["int8-rows", "float-rows"])
def test_amx_takes_the_larger_calls_in_bfloat16_and_the_smaller_stay_exact(bits):
    """From AMX_MIN_ROWS rows the kernel decodes the weight to bfloat16 and multiplies on tiles: the same rows give
    the exact path's values below that and values within bfloat16's rounding of them from it."""
    _amx_or_skip()
    m = int8_int4.AMX_MIN_ROWS
    q, a, a_scale, a_zero, w_scale, w_offset = _case(m + 9, 208, 256, 64, True, bits == 8, bits)
    sums = int8_int4.weight_sums(q, w_scale, w_offset)
    args = (int8_int4.pack(q), w_scale, w_offset, sums, 64)
    tiles = torch.ops.qcompiler.int8_int4_gemm(a, a_scale, a_zero, *args)
    head = [None if t is None else t[:m - 1] for t in (a, a_scale, a_zero)]
    exact = torch.ops.qcompiler.int8_int4_gemm(*head, *args)
    ref = int8_int4.reference(a, a_scale, a_zero, q, w_scale, w_offset, 64)
    error = ((tiles.double() - ref).abs().max() / ref.abs().max()).item()
    assert 1e-5 < error < AMX_TOLERANCE  # bfloat16's rounding, not the exact path's
    assert ((exact.double() - ref[:m - 1]).abs().max() / ref.abs().max()).item() < _tolerance((1, 0, 0, 0, 0, 0, bits))


def test_int16_rows_keep_the_exact_path_at_every_size():
    _amx_or_skip()
    case = (int8_int4.AMX_MIN_ROWS + 40, 208, 256, 256, True, True, 16)
    assert _max_relative_error(case) < 1e-5


def test_without_amx_every_case_takes_the_exact_vnni_path():
    """oneDNN capped below AMX: the cases the tiles take here run the exact integer path, within its tolerances."""
    _amx_or_skip()
    path, error = run_capped(SCRIPT, "avx512", ONEDNN_MAX_CPU_ISA="AVX512_CORE_BF16")
    assert path == "avx512_vnni" and float(error) < 1


def test_capping_onednn_below_amx_keeps_the_vnni_path():
    """ONEDNN_MAX_CPU_ISA below AMX (or torch.backends.mkldnn off) leaves every call on the integer path."""
    _amx_or_skip()
    script = "from qcompiler.runtime import native; print(native.float_rows_path(4096))"
    assert run_capped(script, "avx512", ONEDNN_MAX_CPU_ISA="AVX512_CORE_BF16") == ["avx512_vnni"]


@pytest.mark.parametrize("change,message", [
    (lambda args: {**args, "a": args["a"].to(torch.uint8)}, "a must be int8, int16 or float32"),
    (lambda args: {**args, "a": args["a"].float()}, "float32 a takes no a_scale or a_zero"),
    (lambda args: {**args, "a_scale": None}, "a_scale must be float32 with M = 5 elements for integer a"),
    (lambda args: {**args, "group": 48}, "group 48 must be a multiple of 8 dividing K = 128"),
    (lambda args: {**args, "w": args["w"][:8]}, "w must be uint8 with N\\*K/2 = 3072 bytes"),
    (lambda args: {**args, "w_sums": None}, "an a_zero needs w_sums"),
    (lambda args: {**args, "w_scale": args["w_scale"].half()}, "w_scale must be float32 or bfloat16"),
    (lambda args: {**args, "w_offset": args["w_offset"].bfloat16()}, "w_offset must be Float \\(as w_scale\\)"),
    (lambda args: {**args, "a_scale": args["a_scale"][:2]}, "a_scale must be float32 with M = 5 elements")])
def test_bad_inputs_are_refused_with_what_is_allowed(change, message):
    q, a, a_scale, a_zero, w_scale, w_offset = _case(5, 48, 128, 64, True, True)
    args = dict(a=a, a_scale=a_scale, a_zero=a_zero, w=int8_int4.pack(q), w_scale=w_scale, w_offset=w_offset,
                w_sums=int8_int4.weight_sums(q, w_scale, w_offset), group=64)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.qcompiler.int8_int4_gemm(**change(args))


def test_int16_activations_refuse_groups_whose_int32_sums_could_overflow():
    q = torch.zeros(16, 2048, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="group 2048 must be at most 1024 with 16-bit activations"):
        torch.ops.qcompiler.int8_int4_gemm(torch.ones(1, 2048, dtype=torch.int16), torch.ones(1), None,
                                           int8_int4.pack(q), torch.ones(1, 16), None, None, 2048)
