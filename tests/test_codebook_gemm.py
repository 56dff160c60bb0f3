"""qcompiler::codebook_gemm, the C++ lookup-table kernel: its layout, its values on every path, its errors."""
import pytest
import torch
from kernel_paths import capped_path, run_capped

from qcompiler.runtime import codebook_gemm, native


@pytest.fixture(autouse=True, scope="module")
def kernels_loaded():
    native.load()


# M, N, K; from 64 rows on, the VNNI path decodes each panel to int8 once (130 rows: two work items of rows); from 32,
# where AMX runs, the kernel decodes to bfloat16 and multiplies on tiles (N = 80: a tile panel of 64 and one of 16)
CASES = [(1, 16, 128), (3, 48, 384), (5, 16, 256), (2, 64, 1024), (34, 32, 256), (64, 16, 128), (67, 80, 128),
         (130, 32, 384)]
TOLERANCE = 2e-4  # float rows go in 16 bits: about 2^-16 of a row's largest value per element
TILES_TOLERANCE = 8e-3  # bfloat16 tiles: the rows rounded to 8 significant bits (the int8 entries are exact)


def _tolerance(case) -> float:
    return TILES_TOLERANCE if native.float_rows_path(case[0]) == "amx_bf16" else TOLERANCE


def _case(m, n, k, bits, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 1 << bits, (n, k), generator=g, dtype=torch.uint8)
    table = torch.randint(-127, 128, (n, 1 << bits), generator=g, dtype=torch.int8)
    table[0, 0], table[-1, -1] = -127, 127  # the extremes
    scale = torch.rand(n, generator=g) + 0.01
    a = torch.randn(m, k, generator=g) * 3
    a[1:][-1:] = 0.0  # a row of zeros (where there are two rows or more) must not divide by zero
    return a, idx, table, scale


def _run(a, idx, table, scale, bits):
    return codebook_gemm.OP(a, codebook_gemm.pack(idx, bits), codebook_gemm.table16(table),
                            codebook_gemm.weight_sums(idx, table), scale, bits)


def _max_relative_error(case, bits) -> float:
    a, idx, table, scale = _case(*case, bits)
    y = _run(a, idx, table, scale, bits)
    ref = codebook_gemm.reference(a, idx, table, scale)
    assert y.dtype == torch.float32 and y.shape == (case[0], case[1])
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("bits", codebook_gemm.BITS)
def test_the_packed_layout_is_the_documented_one(bits):
    idx = torch.randint(0, 1 << bits, (32, 256), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    packed = codebook_gemm.pack(idx, bits).reshape(-1)
    assert packed.numel() == 32 * 256 * bits // 8
    for row, k in ((0, 0), (5, 17), (17, 130), (31, 255), (20, 77), (9, 128 + 16 * 7 + 15)):
        panel, block, lane = row // 16, (row % 16) // 4, row % 4
        chunk, sub, i = k // 128, (k % 128) // 16, k % 16
        words = panel * 2 * 256 * bits + chunk * 4 * bits * 64 + block * bits * 64

        def byte(word):
            return int(packed[words + word * 64 + lane * 16 + i])

        if bits == 3:
            value = ((byte(sub // 4) >> (2 * (sub % 4))) & 3) | (((byte(2) >> sub) & 1) << 2)
        else:
            per = 8 // bits
            value = (byte(sub // per) >> (bits * (sub % per))) & ((1 << bits) - 1)
        assert value == int(idx[row, k])


@pytest.mark.parametrize("bits", codebook_gemm.BITS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "m{}-n{}-k{}".format(*c))
def test_the_kernel_matches_its_reference(case, bits):
    assert _max_relative_error(case, bits) < _tolerance(case)


SCRIPT = """
import sys
sys.path.insert(0, "tests")
from qcompiler.runtime import codebook_gemm, native
from test_codebook_gemm import CASES, _max_relative_error, _tolerance
native.load()
print(native.kernel_path(), max(_max_relative_error(c, b) / _tolerance(c) for c in CASES for b in codebook_gemm.BITS),
      *sorted({native.float_rows_path(c[0]) for c in CASES}))
"""


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_every_instruction_set_path_matches_the_reference(capability):
    """ATEN_CPU_CAPABILITY caps the kernel's path: the AVX2 and plain C++ paths run on any machine."""
    path, error, *paths = run_capped(SCRIPT, capability)
    assert path == capped_path(capability) and paths == [path]
    assert float(error) < 1  # every case within its tolerance


def test_without_amx_every_row_count_stays_on_the_integer_path():
    """oneDNN capped below AMX: the VNNI paths (a GEMV under 64 rows, the decoded panels from 64) take every case."""
    if "amx_bf16" not in open("/proc/cpuinfo").read() or torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip("no AMX here: the VNNI paths are this machine's own, tested above")
    path, error, *paths = run_capped(SCRIPT, "avx512", ONEDNN_MAX_CPU_ISA="AVX512_CORE_BF16")
    assert path == paths[0] == "avx512_vnni" and len(paths) == 1 and float(error) < 1


def test_packing_refuses_what_the_kernel_cannot_take():
    with pytest.raises(ValueError, match="N = 40, K = 128: the kernel needs N % 16 == 0, K % 128 == 0"):
        codebook_gemm.pack(torch.zeros(40, 128, dtype=torch.uint8), 4)
    with pytest.raises(ValueError, match="N = 16, K = 96"):
        codebook_gemm.pack(torch.zeros(16, 96, dtype=torch.uint8), 4)
    with pytest.raises(ValueError, match="idx must be uint8 indices below 8"):
        codebook_gemm.pack(torch.full((16, 128), 8, dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match="its indices have 5 bits; the kernel takes 1 to 4"):
        codebook_gemm.pack(torch.zeros(16, 128, dtype=torch.uint8), 5)
    with pytest.raises(ValueError, match=r"table must be entries in \[-127, 127\]"):
        codebook_gemm.table16(torch.full((16, 16), -128, dtype=torch.int8))


@pytest.mark.parametrize("change,message", [
    (lambda args: {**args, "a": args["a"].double()}, "a must be float32 \\[M, K\\]"),
    (lambda args: {**args, "bits": 5}, "bits must be 1, 2, 3 or 4"),
    (lambda args: {**args, "a": args["a"][:, :96]}, "K = 96 must be a multiple of 128"),
    (lambda args: {**args, "scale": args["scale"][:8]}, "scale must be float32 \\[N\\] with N a multiple of 16"),
    (lambda args: {**args, "table": args["table"][:8]}, "table must be int8 \\[N, 16\\] with N = 48"),
    (lambda args: {**args, "w_sums": args["w_sums"].float()}, "w_sums must be int32 \\[N\\] with N = 48"),
    (lambda args: {**args, "w": args["w"][:8]}, "w must be uint8 with N \\* K \\* bits / 8 = 9216 bytes")])
def test_bad_inputs_are_refused_with_what_is_allowed(change, message):
    a, idx, table, scale = _case(3, 48, 384, 4)
    args = dict(a=a, w=codebook_gemm.pack(idx, 4), table=codebook_gemm.table16(table),
                w_sums=codebook_gemm.weight_sums(idx, table), scale=scale, bits=4)
    with pytest.raises(RuntimeError, match=message):
        codebook_gemm.OP(**change(args))
