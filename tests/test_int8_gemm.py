"""qcompiler::int8_gemm, the C++ int8-weight GEMM for machines without VNNI: layout, values on every path, errors."""
import pytest
import torch
from kernel_paths import run_capped

from qcompiler.runtime import int8_gemm, native


@pytest.fixture(autouse=True, scope="module")
def kernels_loaded():
    native.load()


CASES = [  # M, N, K, activations: int8 ("zero": with a zero point per row, "zero1": one for all rows) or float32
    (1, 64, 64, "int8"), (5, 48, 128, "zero"), (37, 1040, 256, "zero"), (70, 208, 512, "int8"), (13, 24, 1030, "zero1"),
    (3, 8, 2, "zero"), (7, 16, 66000, "int8"), (1, 64, 64, "float"), (70, 208, 512, "float"), (13, 24, 1030, "float"),
    (9, 40, 70000, "float")]
FLOAT_TOLERANCE = 1e-4  # float32 rows go in 16 bits: about 2^-16 of a row's largest value per element


def _case(m, n, k, kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    w_scale = torch.rand(n, generator=g) + 0.01
    if kind == "float":  # a row of zeros must not divide by zero
        a = torch.randn(m, k, generator=g) * 3
        a[1:][-1:] = 0.0
        return a, None, None, w, w_scale
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    a[0, :2] = -128  # the extremes: |a - a_zero| up to 255 against w = -128
    w[:, :2] = -128
    zero = {"int8": None, "zero": torch.randint(-128, 128, (m,), generator=g).float(), "zero1": torch.tensor([127.0])}
    return a, torch.rand(m, generator=g) + 0.1, zero[kind], w, w_scale


def _max_relative_error(case) -> float:
    a, a_scale, a_zero, w, w_scale = _case(*case)
    y = torch.ops.qcompiler.int8_gemm(a, a_scale, a_zero, int8_gemm.pack(w), w_scale)
    ref = int8_gemm.reference(a, a_scale, a_zero, w, w_scale)
    assert y.dtype == torch.float32 and y.shape == (case[0], case[1])
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


def _tolerance(case) -> float:
    return FLOAT_TOLERANCE if case[-1] == "float" else 1e-6  # int8 rows: exact sums, float32 scaling


@pytest.mark.parametrize("case", CASES, ids=lambda c: "m{}-n{}-k{}-{}".format(*c))
def test_the_kernel_matches_its_reference(case):
    assert _max_relative_error(case) < _tolerance(case)


def test_the_packed_layout_is_the_documented_one():
    w = torch.randint(-128, 128, (24, 10), generator=torch.Generator().manual_seed(1), dtype=torch.int8)
    packed = int8_gemm.pack(w).reshape(-1)
    for row, k in ((0, 0), (5, 3), (9, 4), (23, 9), (16, 1)):
        block, lane, pair, i = row // 8, row % 8, k // 2, k % 2
        assert packed[block * 8 * 10 + pair * 16 + lane * 2 + i] == w[row, k]


def test_packing_refuses_what_the_kernel_cannot_take():
    with pytest.raises(ValueError, match=r"weight must be an int8 \[N, K\] weight with N % 8 == 0 and even K; "
                                         r"got 'torch.int8 \[12, 64\]'"):
        int8_gemm.pack(torch.zeros(12, 64, dtype=torch.int8))
    with pytest.raises(ValueError, match="got 'torch.int32 \\[8, 64\\]'"):
        int8_gemm.pack(torch.zeros(8, 64, dtype=torch.int32))


def test_float_rows_are_taken_in_16_bits_not_8():
    """The 16-bit rounding of float rows is far finer than int8's: the same rows rounded to int8 per row miss."""
    case = (37, 1040, 256, "float")
    a, _, _, w, w_scale = _case(*case)
    s8 = a.abs().amax(-1).clamp_min(1e-30) / 127
    y8 = torch.ops.qcompiler.int8_gemm(torch.round(a / s8[:, None]).to(torch.int8), s8, None,
                                       int8_gemm.pack(w), w_scale)
    ref = int8_gemm.reference(a, None, None, w, w_scale)
    assert _max_relative_error(case) < ((y8.double() - ref).abs().max() / ref.abs().max()).item() / 50


SCRIPT = """
import sys
sys.path.insert(0, "tests")
from qcompiler.runtime import native
from test_int8_gemm import CASES, _max_relative_error, _tolerance
native.load()
print(max(_max_relative_error(c) / _tolerance(c) for c in CASES))
"""


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_every_instruction_set_path_matches_the_reference(capability):
    """ATEN_CPU_CAPABILITY caps the kernel's path: the AVX2 and plain C++ paths run on any machine."""
    assert float(run_capped(SCRIPT, capability)[0]) < 1  # every case within its tolerance


@pytest.mark.parametrize("change,message", [
    (lambda args: {**args, "a": args["a"].to(torch.int16)}, "a must be int8 or float32"),
    (lambda args: {**args, "a": args["a"].float()}, "float32 a takes no a_scale or a_zero"),
    (lambda args: {**args, "a": args["a"][:, :127]}, "K = 127 must be even"),
    (lambda args: {**args, "w_scale": args["w_scale"][:44]}, "w_scale must be float32 \\[N\\] with N a multiple of 8"),
    (lambda args: {**args, "w": args["w"][:8]}, "w must be int8 with N\\*K = 6144 elements"),
    (lambda args: {**args, "a_scale": args["a_scale"][:2]}, "a_scale must be float32 with M = 5 elements"),
    (lambda args: {**args, "a_zero": args["a_zero"][:2]}, "a_zero must be float32 with M = 5 elements or one")])
def test_bad_inputs_are_refused_with_what_is_allowed(change, message):
    a, a_scale, a_zero, w, w_scale = _case(5, 48, 128, "zero")
    args = dict(a=a, a_scale=a_scale, a_zero=a_zero, w=int8_gemm.pack(w), w_scale=w_scale)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.qcompiler.int8_gemm(**change(args))
