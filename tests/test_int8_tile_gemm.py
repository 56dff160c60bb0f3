"""qcompiler::int8_tile_gemm, the int8 x int8 kernel with an AMX path: its layout, exact sums and the same bits on
every path, its errors."""
import hashlib

import pytest
import torch
from kernel_paths import capped_path, run_capped

from qcompiler.runtime import int8_tile_gemm, native


@pytest.fixture(autouse=True, scope="module")
def kernels_loaded():
    native.load()


ROWS = (1, 2, 3, 4, 5, 8, 15, 16, 17, 31, 32, 33, 64, 128, 200)
SHAPES = ((64, 64), (100, 130), (70, 7), (130, 1030), (384, 384), (16, 1), (200, 2502), (64, 9000))  # N, K
VARIANTS = ((None, False), (-128.0, True), (127.0, False), (3.0, True))  # a_zero, with a_scale and w_scale


def _cpu_flags() -> set:
    return {f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split(":")[1].split()}


AVX512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
VNNI = AVX512 and "avx512_vnni" in _cpu_flags()
AMX = VNNI and "amx_int8" in _cpu_flags() and torch.backends.mkldnn.is_available()


def _case(m, n, k, seed=0):
    """Full-range int8 rows and weights, with the extremes: a row of -128 against a column of -128 (and 127)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    a[0], w[0], w[-1] = -128, -128, 127
    return a, w


def mismatches_and_digest() -> tuple:
    """Over every shape, row count and variant: how many outputs differ from the exact integer sums scaled in
    float32 as the kernel documents (float(sum)·a_scale·w_scale), and a digest of all the outputs' bits."""
    bad, digest = 0, hashlib.sha256()
    for n, k in SHAPES:
        for m in ROWS:
            a, w = _case(m, n, k, seed=m)
            packed, a64, w64 = int8_tile_gemm.pack(w), a.double(), w.double().t()
            g = torch.Generator().manual_seed(m)
            for zero, scaled in VARIANTS:
                a_scale, w_scale = (torch.rand(m, generator=g) + 0.1, torch.rand(n, generator=g) + 0.01) if scaled \
                    else (None, torch.ones(n))
                a_zero = None if zero is None else torch.tensor([zero])
                # exact in float64 (integers below 2^31 throughout), then rounded once to float32
                exact = ((a64 - (zero or 0.0)) @ w64).float()
                y = int8_tile_gemm.OP(a, a_scale, a_zero, packed, w_scale)
                expected = exact * a_scale[:, None] * w_scale if scaled else exact
                bad += not torch.equal(y, expected)
                digest.update(y.numpy().tobytes())
    return bad, digest.hexdigest()[:16]


@pytest.fixture(scope="module")
def here():
    """This process's paths (AMX for the larger calls where the machine has it, else VNNI, AVX2 or plain)."""
    return mismatches_and_digest()


def test_every_sum_is_exact(here):
    assert here[0] == 0


def test_the_float64_reference_agrees():
    a, w = _case(33, 100, 130)
    a_scale, a_zero, w_scale = torch.rand(33) + 0.1, torch.tensor([-7.0]), torch.rand(100) + 0.01
    y = int8_tile_gemm.OP(a, a_scale, a_zero, int8_tile_gemm.pack(w), w_scale)
    ref = int8_tile_gemm.reference(a, a_scale, a_zero, w, w_scale)
    assert ((y.double() - ref).abs().max() / ref.abs().max()).item() < 1e-6


def test_this_machine_takes_its_fastest_path():
    avx2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    fast = "avx512_vnni" if VNNI else "avx2" if avx2 else "scalar"
    assert native.tile_gemm_path(1) == native.tile_gemm_path(int8_tile_gemm.AMX_MIN_ROWS - 1) == fast
    assert native.tile_gemm_path(int8_tile_gemm.AMX_MIN_ROWS) == native.tile_gemm_path(4096) == (
        "amx" if AMX else fast)


def test_the_amx_path_takes_the_larger_calls():
    if not AMX:
        pytest.skip("no AMX-INT8 here (cpuinfo's amx_int8 with ATen's AVX512 capability and oneDNN)")
    assert [native.tile_gemm_path(m) for m in ROWS] == [
        "amx" if m >= int8_tile_gemm.AMX_MIN_ROWS else "avx512_vnni" for m in ROWS]


SCRIPT = """
import sys
sys.path.insert(0, "tests")
from qcompiler.runtime import native
from test_int8_tile_gemm import ROWS, mismatches_and_digest
native.load()
print(",".join(sorted({native.tile_gemm_path(m) for m in ROWS})), *mismatches_and_digest())
"""


@pytest.mark.parametrize("capability,env", [("avx2", {}), ("default", {}),
                                            ("avx512", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"})],
                         ids=["avx2", "plain", "vnni-only"])
def test_every_path_gives_the_same_bits(here, capability, env):
    """ATEN_CPU_CAPABILITY caps the kernel's path (AVX2, plain C++); capping oneDNN below AMX leaves VNNI for every
    row count. Each path's sums are exact, and its outputs are this process's, bit for bit."""
    if env and not VNNI:
        pytest.skip("no AVX512-VNNI here")
    path, bad, digest = run_capped(SCRIPT, capability, **env)
    assert path == ("avx512_vnni" if env else capped_path(capability))
    assert (int(bad), digest) == (0, here[1])


FLOAT_ROWS = (1, 5, 40, int8_tile_gemm.FLOAT_TILE_ROWS - 1, int8_tile_gemm.FLOAT_TILE_ROWS)


def _float_tiles(m: int) -> bool:
    """Whether ``m`` float rows take the bfloat16 tiles in this process."""
    return m >= int8_tile_gemm.FLOAT_TILE_ROWS and native.float_rows_path(m) == "amx_bf16"


def _float_error(m: int, n: int = 200, k: int = 130) -> float:
    """Weight-only use: float rows against ``x @ (w·w_scale)ᵀ`` in float64, relative to the output's range."""
    g = torch.Generator().manual_seed(m)
    x, w = torch.randn(m, k, generator=g) * 3, _case(1, n, k)[1]
    w_scale = torch.rand(n, generator=g) + 0.01
    y = int8_tile_gemm.OP(x, None, None, int8_tile_gemm.pack(w), w_scale)
    ref = x.double() @ (w.double() * w_scale.double()[:, None]).t()
    assert y.dtype == torch.float32 and y.shape == (m, n)
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("m", FLOAT_ROWS)
def test_float_rows_go_in_16_bits_or_on_bfloat16_tiles(m):
    """Below FLOAT_TILE_ROWS (or without AMX) the rows go in 16 bits, two int8 rows each; from it, where AMX runs,
    on bfloat16 tiles: bfloat16's rounding, far coarser than 16 bits and far finer than the int8 weight's."""
    error = _float_error(m)
    if _float_tiles(m):
        assert 1e-5 < error < 8e-3
    else:
        assert error < 1e-4


def test_float_rows_take_the_tiles_from_float_tile_rows_where_amx_runs():
    assert [_float_tiles(m) for m in FLOAT_ROWS] == [AMX and m >= int8_tile_gemm.FLOAT_TILE_ROWS for m in FLOAT_ROWS]
    assert native.float_rows_path(int8_tile_gemm.FLOAT_TILE_ROWS) == ("amx_bf16" if AMX else native.kernel_path())


FLOAT_SCRIPT = """
import sys
sys.path.insert(0, "tests")
from qcompiler.runtime import native
from test_int8_tile_gemm import FLOAT_ROWS, _float_error
native.load()
print(max(_float_error(m) for m in FLOAT_ROWS), *sorted({native.float_rows_path(m) for m in FLOAT_ROWS}))
"""


@pytest.mark.parametrize("capability,env", [("avx2", {}), ("default", {}),
                                            ("avx512", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"})],
                         ids=["avx2", "plain", "vnni-only"])
def test_float_rows_go_in_16_bits_on_every_integer_path(capability, env):
    """Capped below AMX (ATen's capability, or oneDNN's ISA), every row count takes the 16-bit integer form."""
    if env and not VNNI:
        pytest.skip("no AVX512-VNNI here")
    error, *paths = run_capped(FLOAT_SCRIPT, capability, **env)
    assert paths == ["avx512_vnni" if env else capped_path(capability)] and float(error) < 1e-4


def test_float_rows_refuse_activation_scales():
    w = int8_tile_gemm.pack(torch.zeros(64, 32, dtype=torch.int8))
    with pytest.raises(RuntimeError, match="float32 a takes no a_scale or a_zero"):
        int8_tile_gemm.OP(torch.ones(2, 32), torch.ones(2), None, w, torch.ones(64))


DQ_SCRIPT = """
import sys
sys.path.insert(0, "tests")
from qcompiler.runtime import native
from test_int8_tile_gemm import dq_mismatches
native.load()
print(native.kernel_path(), dq_mismatches())
"""


def dq_mismatches() -> int:
    """Outputs of int8_tile_gemm_dq that differ, bit for bit, from int8_tile_gemm on int8dq's own quantized rows."""
    bad = 0
    for m, n, k in ((1, 64, 64), (3, 100, 130), (40, 200, 384), (300, 70, 96)):
        g = torch.Generator().manual_seed(m)
        x, w = torch.randn(m, k, generator=g) * 3, _case(1, n, k)[1]
        x[0, :3] = torch.tensor([2.5, -0.5, 0.0])  # ties that round half to even
        w_scale, packed = torch.rand(n, generator=g) + 0.01, int8_tile_gemm.pack(w)
        eps = torch.finfo(torch.float32).eps
        q, s = int8_tile_gemm.quantize_rows(x, eps)
        y = int8_tile_gemm.DQ_OP(x, torch.tensor([eps]), packed, w_scale)
        bad += int((y != int8_tile_gemm.OP(q, s, None, packed, w_scale)).sum())
        # scales below 2^-100 (max|x| above the kernel's floor of 1e-30): the kernel divides there (its quotient
        # correction needs normal floats)
        tiny = x * 1e-30
        q, s = int8_tile_gemm.quantize_rows(tiny, 1e-38)
        y = int8_tile_gemm.DQ_OP(tiny, torch.tensor([1e-38]), packed, w_scale)
        bad += int((y != int8_tile_gemm.OP(q, s, None, packed, w_scale)).sum())
    return bad


@pytest.mark.parametrize("capability", [None, "avx2", "default"], ids=["here", "avx2", "plain"])
def test_int8dq_in_one_call_quantizes_its_rows_as_the_reference_does(capability):
    """int8_tile_gemm_dq: each row quantized in the kernel to int8dq's q and s (the same floats), then the product:
    the same bits as quantizing in torch ops and calling int8_tile_gemm, on this machine's path and the others."""
    if capability is None:
        assert dq_mismatches() == 0
    else:
        path, bad = run_capped(DQ_SCRIPT, capability)
        assert path == capped_path(capability) and int(bad) == 0


def test_int8dq_in_one_call_refuses_what_it_cannot_take():
    w = int8_tile_gemm.pack(torch.zeros(64, 32, dtype=torch.int8))
    with pytest.raises(RuntimeError, match="x must be float32"):
        int8_tile_gemm.DQ_OP(torch.ones(2, 32, dtype=torch.int8), torch.tensor([1e-6]), w, torch.ones(64))
    with pytest.raises(RuntimeError, match="eps must be one float32"):
        int8_tile_gemm.DQ_OP(torch.ones(2, 32), torch.tensor([1e-6, 1.0]), w, torch.ones(64))


REQUANT_SCRIPT = """
import sys
sys.path.insert(0, "tests")
from qcompiler.runtime import native
from test_int8_tile_gemm import requant_mismatches
native.load()
print(native.kernel_path(), *requant_mismatches())
"""


def requant_mismatches() -> tuple:
    """(outputs of int8_tile_gemm_requant that differ from its reference graph, the largest difference, outputs
    compared); exact for no activation and relu, the GELU's approximated erf may put a rounding tie one step away."""
    bad, worst, total = {"none": 0, "relu": 0, "gelu": 0}, 0, 0
    for m, n, k in ((1, 64, 64), (3, 100, 130), (40, 200, 384), (300, 1536, 96)):
        g = torch.Generator().manual_seed(m)
        a, w = _case(m, n, k, seed=m)
        w_scale, bias, packed = torch.rand(n, generator=g) * 1e-3, torch.randn(n, generator=g), int8_tile_gemm.pack(w)
        one = lambda v: torch.tensor([v])  # noqa: E731
        for act, code in int8_tile_gemm.ACTIVATIONS.items():
            for b in (bias, None):
                args = (a, one(0.02), one(3.0), packed, w_scale, b)
                got = int8_tile_gemm.REQUANT_OP(*args, code, one(0.05), one(-10.0))
                diff = (got.int() - int8_tile_gemm.requantized(*args, act, one(0.05), one(-10.0)).int()).abs()
                bad[act] += int((diff > 0).sum())
                worst, total = max(worst, int(diff.max())), total + diff.numel()
        # outputs far past int8's range, infinities and overflowing quotients saturate as the reference's do (GELU
        # of -inf is NaN in torch: finite extremes there)
        for act, code in int8_tile_gemm.ACTIVATIONS.items():
            extreme = bias.clone()
            big = [3e38, -3e38, 1e30, -1e30] if act == "gelu" else [3e38, -3e38, float("inf"), -float("inf")]
            extreme[:4] = torch.tensor(big)
            args = (a, one(0.02), one(3.0), packed, w_scale, extreme)
            got = int8_tile_gemm.REQUANT_OP(*args, code, one(0.05), one(-10.0))
            diff = (got.int() - int8_tile_gemm.requantized(*args, act, one(0.05), one(-10.0)).int()).abs()
            bad[act] += int((diff[:, :4] > 0).sum()) * 1000  # any miss at the extremes fails the exact bound
            bad[act] += int((diff[:, 4:] > 0).sum())
            worst, total = max(worst, int(diff.max())), total + diff.numel()
    return bad["none"] + bad["relu"], bad["gelu"], worst, total


@pytest.mark.parametrize("capability", [None, "avx2", "default"], ids=["here", "avx2", "plain"])
def test_the_requantizing_epilogue_writes_the_reference_graphs_int8(capability):
    """int8_tile_gemm_requant: the product, a_scale, bias, activation and the next layer's quantization in one call,
    the reference graph's int8 on every path (GELU: at most one step, on a handful of rounding ties)."""
    if capability is None:
        path, results = native.kernel_path(), requant_mismatches()
    else:
        path, *results = run_capped(REQUANT_SCRIPT, capability)
        assert path == capped_path(capability)
    exact_bad, gelu_bad, worst, total = (int(r) for r in results)
    assert exact_bad == 0 and worst <= 1 and gelu_bad <= total * 1e-4, (path, results)


def test_the_requantizing_epilogue_refuses_what_it_cannot_take():
    w, one = int8_tile_gemm.pack(torch.zeros(64, 32, dtype=torch.int8)), torch.ones(1)
    a = torch.ones(2, 32, dtype=torch.int8)
    with pytest.raises(RuntimeError, match="a must be int8"):
        int8_tile_gemm.REQUANT_OP(a.float(), one, one, w, torch.ones(64), None, 2, one, one)
    with pytest.raises(RuntimeError, match="out_scale must be one float32"):
        int8_tile_gemm.REQUANT_OP(a, one, one, w, torch.ones(64), None, 2, torch.ones(2), one)
    with pytest.raises(RuntimeError, match="activation = 7 must be 0"):
        int8_tile_gemm.REQUANT_OP(a, one, one, w, torch.ones(64), None, 7, one, one)
    with pytest.raises(RuntimeError, match="out_zero = 0.5 must be an integer"):
        int8_tile_gemm.REQUANT_OP(a, one, one, w, torch.ones(64), None, 2, one, torch.tensor([0.5]))
    with pytest.raises(RuntimeError, match="out_scale = .* must be finite and at least 2\\^-100"):
        int8_tile_gemm.REQUANT_OP(a, one, one, w, torch.ones(64), None, 2, torch.tensor([1e-35]), one)
    with pytest.raises(RuntimeError, match="bias must be float32 with N = 64"):
        int8_tile_gemm.REQUANT_OP(a, one, one, w, torch.ones(64), torch.ones(63), 2, one, one)


def test_the_packed_layout_is_the_documented_one():
    w = torch.randint(-128, 128, (70, 10), generator=torch.Generator().manual_seed(1), dtype=torch.int8)
    packed = int8_tile_gemm.pack(w)
    assert packed.dtype == torch.int8 and packed.shape == (2, 3 + 1, 64, 4) and packed.is_contiguous()
    for n, k in ((0, 0), (5, 3), (63, 9), (64, 4), (69, 7)):
        assert packed[n // 64, k // 4, n % 64, k % 4] == w[n, k]
    padded = torch.zeros(128, 12, dtype=torch.int8)
    padded[:70, :10] = w
    assert torch.equal(packed[:, :3].transpose(1, 2).reshape(128, 12), padded)
    sums = packed[:, 3].reshape(-1).view(torch.int32)
    assert torch.equal(sums, padded.sum(1, dtype=torch.int32))


def test_packing_refuses_what_the_kernel_cannot_take():
    with pytest.raises(ValueError, match=r"weight must be an int8 \[N, K\] weight with 0 < K <= 65536; "
                                         r"got 'torch.int32 \[8, 64\]'"):
        int8_tile_gemm.pack(torch.zeros(8, 64, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"got 'torch.int8 \[8, 65537\]'"):
        int8_tile_gemm.pack(torch.zeros(8, 65537, dtype=torch.int8))


def test_the_fake_implementation_gives_the_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        y = int8_tile_gemm.OP(torch.empty(7, 130, dtype=torch.int8), None, None,
                              torch.empty(2, 34, 64, 4, dtype=torch.int8), torch.empty(100))
    assert y.shape == (7, 100) and y.dtype == torch.float32


def test_a_packaged_program_calls_it_linked_in(tmp_path):
    """torch.export traces the op (its fake implementation); qc.package links the kernel into the .pt2's .so."""
    import qcompiler as qc
    a, w = _case(5, 100, 130)

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w", int8_tile_gemm.pack(w))
            self.register_buffer("w_scale", torch.rand(100) + 0.01)
            self.register_buffer("a_zero", torch.tensor([-3.0]))

        def forward(self, x):
            return int8_tile_gemm.OP(x, None, self.a_zero, self.w, self.w_scale)

    model = Linear()
    program = torch.export.export(model, (a,), dynamic_shapes=({0: torch.export.Dim("rows", max=4096)},))
    assert native.native_ops(program) == ["qcompiler::int8_tile_gemm"]
    loaded = qc.load(qc.package(program, tmp_path / "linear.pt2"))
    assert loaded.metadata["native_ops_linked"] is True
    for m in (1, 5, int8_tile_gemm.AMX_MIN_ROWS + 24):  # both sides of the AMX threshold
        x = _case(m, 100, 130, seed=m)[0]
        assert torch.equal(program.module()(x), model(x)) and torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("change,message", [
    (lambda args: {**args, "a": args["a"].to(torch.int16)}, r"a must be int8 or float32 \[M, K\], got Short"),
    (lambda args: {**args, "a": args["a"][:, :120]}, r"w must be int8_tile_gemm.pack's int8 \[2, 31, 64, 4\] for "
                                                      r"N = 100, K = 120, got Char \[2, 34, 64, 4\]"),
    (lambda args: {**args, "w": args["w"].view(torch.uint8)}, r"w must be .* got Byte \[2, 34, 64, 4\]"),
    (lambda args: {**args, "w": args["w"].reshape(-1)}, r"w must be .* got Char \[17408\]"),
    (lambda args: {**args, "w_scale": args["w_scale"][:60]}, r"w must be .*\[1, 34, 64, 4\] for N = 60, K = 130"),
    (lambda args: {**args, "w_scale": args["w_scale"].double()}, r"w_scale must be float32 \[N\], got Double"),
    (lambda args: {**args, "a_scale": args["a_scale"][:2]}, "a_scale must be float32 with M = 5 elements"),
    (lambda args: {**args, "a_zero": torch.tensor([1.0, 2.0])}, "a_zero must be one float32"),
    (lambda args: {**args, "a_zero": torch.tensor([0.5])}, r"a_zero = 0.5 must be an integer in \[-128, 127\]"),
    (lambda args: {**args, "a_zero": torch.tensor([128.0])}, r"a_zero = 128 must be an integer in \[-128, 127\]")])
def test_bad_inputs_are_refused_with_what_is_allowed(change, message):
    a, w = _case(5, 100, 130)
    args = dict(a=a, a_scale=torch.rand(5), a_zero=torch.tensor([3.0]), w=int8_tile_gemm.pack(w),
                w_scale=torch.rand(100))
    with pytest.raises(RuntimeError, match="int8_tile_gemm: " + message):
        int8_tile_gemm.OP(**change(args))


def test_k_beyond_the_exact_range_is_refused():
    with pytest.raises(RuntimeError, match=r"int8_tile_gemm: K = 65537 must be in \[1, 65536\]"):
        int8_tile_gemm.OP(torch.zeros(1, 65537, dtype=torch.int8), None, None,
                          torch.zeros(1, 16386, 64, 4, dtype=torch.int8), torch.ones(64))
