"""qcompiler::additive_gemm, the C++ AQLM kernel: its values on every path and instruction set, its errors."""
import pytest
import torch
from kernel_paths import capped_path, run_capped

import qcompiler as qc
from qcompiler.runtime import additive_gemm, native


@pytest.fixture(autouse=True, scope="module")
def kernels_loaded():
    native.load()


# (rows, N, K, codebooks, bits, group): under 8 rows, uint8 codes take the lookup path and 16-bit codes in groups
# of 8 the fused one; from 8 rows, and 16-bit codes in other groups, the decode path. N not a multiple of 16 (or 8)
# leaves a tail for the vector loops; K = 520 spans more than one block of 32 groups. From 32 rows where AMX runs
# (and K % 16 == 0), the tiles: weights and rows rounded to bfloat16.
CASES = [(1, 48, 64, 2, 8, 8), (3, 37, 520, 2, 8, 8), (2, 20, 60, 3, 4, 4), (1, 24, 96, 1, 16, 8),
         (5, 37, 64, 2, 12, 8), (1, 33, 64, 1, 16, 4), (8, 48, 64, 2, 8, 8), (20, 70, 96, 1, 16, 8),
         (130, 37, 64, 1, 6, 8), (40, 70, 96, 2, 8, 8), (33, 130, 256, 1, 16, 8), (50, 20, 60, 3, 4, 4)]


def _tolerance(case) -> float:
    """float32 sums in another order; bfloat16's rounding (2^-9 per weight and row element) on the tiles."""
    return 8e-3 if native.float_rows_path(case[0]) == "amx_bf16" and case[2] % 16 == 0 else 1e-5


def _case(m, n, k, codebooks, bits, group, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (n, k // group, codebooks), generator=g, dtype=torch.int32)
    codes[0, 0, 0] = (1 << bits) - 1  # the last vector (with 16 bits: the int16 code -1)
    books = torch.randn(codebooks, 1 << bits, group, generator=g).half()
    scale, x = torch.rand(n, generator=g) + 0.5, torch.randn(m, k, generator=g)
    return x, codes.to(torch.uint8 if bits <= 8 else torch.int16), books, scale


def _max_relative_error(case) -> float:
    x, codes, books, scale = _case(*case)
    y = additive_gemm.OP(x, additive_gemm.layout(codes), books, scale)
    ref = x.double() @ qc.dequantize_additive(codes, books, scale[:, None]).double().t()
    assert y.dtype == torch.float32 and y.shape == (case[0], case[1])
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}x{c[1]}x{c[2]}-{c[3]}x{c[4]}-g{c[5]}" for c in CASES])
def test_the_kernel_matches_the_reference_decode(case):
    assert _max_relative_error(case) < _tolerance(case)


SCRIPT = """
import sys
sys.path.insert(0, "tests")
from test_additive_gemm import CASES, _max_relative_error, _tolerance, native
native.load()
print(native.kernel_path(), max(_max_relative_error(c) / _tolerance(c) for c in CASES))
"""


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_the_avx2_and_plain_paths_match_the_reference_decode(capability):
    """ATEN_CPU_CAPABILITY caps the kernel's instruction set: the AVX2 and plain C++ loops run on any machine."""
    path, error = run_capped(SCRIPT, capability)
    assert path == capped_path(capability)
    assert float(error) < 1


def test_without_amx_every_row_count_decodes_in_float32():
    """oneDNN capped below AMX: the cases the tiles take here take the float32 decode path, as exact as before."""
    if "amx_bf16" not in open("/proc/cpuinfo").read() or torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip("no AMX here: the paths above are this machine's own")
    path, error = run_capped(SCRIPT, "avx512", ONEDNN_MAX_CPU_ISA="AVX512_CORE_BF16")  # tolerances: 1e-5 there
    assert path == "avx512_vnni" and float(error) < 1


def test_inputs_it_cannot_take_are_named():
    x, codes, books, scale = _case(1, 16, 64, 1, 10, 8)
    with pytest.raises(RuntimeError, match="codes must be .* uint8 for at most 256 vectors"):
        additive_gemm.OP(x, additive_gemm.layout(codes).to(torch.uint8), books, scale)
    with pytest.raises(RuntimeError, match="G \\* g = 8 \\* 8 must equal K = 72"):
        additive_gemm.OP(torch.randn(1, 72), additive_gemm.layout(codes), books, scale)
    with pytest.raises(RuntimeError, match="codebooks must be float16"):
        additive_gemm.OP(x, additive_gemm.layout(codes), books.float(), scale)
    assert additive_gemm.unfit(codes.to(torch.uint8), books) is not None and additive_gemm.unfit(codes, books) is None
