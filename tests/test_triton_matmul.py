"""The Triton weight-decoding matmul against the reference dequantization (Triton's interpreter without a GPU).

Small shapes: M = 1 and odd M, N and K that are not multiples of the blocks, every
affine zero-point domain and bit width the schemes use, and codebooks per tensor,
per block of rows and per row (int8 grid).
"""
import pytest
import torch

import qcompiler as qc
from qcompiler.runtime import triton_matmul as tm
from qcompiler.runtime.triton_matmul import additive_matmul, affine_scale_zero, dq_matmul, wo_matmul
from qcompiler.passes.spec import AffineWeight, CodebookWeight

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(1, 48, 64), (3, 50, 96), (17, 33, 128)]

AFFINE = [
    AffineWeight("int8"),                                              # int8wo: per channel, symmetric
    AffineWeight("int4", group_size=32),                               # symmetric int4 (int8da-int4w's weight)
    AffineWeight("uint4", 32, "asymmetric", "float", torch.bfloat16),  # tinygemm float zero point
    AffineWeight("uint4", 32, "asymmetric", "int", torch.uint8),       # integer zero point
    AffineWeight("uint4", 32, "asymmetric", "int", torch.bfloat16, torch.bfloat16),
    AffineWeight("uint2", 32, "asymmetric", "int"),
    AffineWeight("uint1", 32, "asymmetric", "int"),                    # every width that divides a byte
    AffineWeight("uint3", 32, "asymmetric", "int"),                    # and one that does not
]


def _x(m, k, dtype):
    return torch.randn(m, k, dtype=dtype, device=DEVICE)


def _affine_case(spec, n, k):
    w = torch.randn(n, k)
    stored = spec.quantize(w)
    it = qc.int_type(spec.dtype)
    s, z = affine_scale_zero(stored["scale"], stored.get("zero_point"), spec.dtype, spec.zero_point_domain)
    groups = k // (spec.group_size or k)
    return stored, it, s.reshape(n, groups), z.reshape(n, groups)


@pytest.mark.parametrize("spec", AFFINE, ids=lambda s: f"{s.dtype}-{s.zero_point_domain}-{s.group_size}")
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_affine_weights_decode_in_the_kernel(spec, m, n, k):
    torch.manual_seed(0)
    stored, it, s, z = _affine_case(spec, n, k)
    x = _x(m, k, torch.float32)
    ref = x @ spec.dequantize(stored, k, torch.float32).to(DEVICE).t()
    y = wo_matmul(x, stored["q"].to(DEVICE), it.bits, k, it.signed, scale=s.to(DEVICE), zero=z.to(DEVICE))
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec", [CodebookWeight(2), CodebookWeight(3, block_rows=16), CodebookWeight(4, grid=None),
                                  CodebookWeight(4, block_rows=8, grid=None)], ids=repr)
@pytest.mark.parametrize("m,n,k", [(1, 48, 64), (5, 32, 70)])
def test_codebook_weights_look_up_in_the_kernel(spec, m, n, k):
    torch.manual_seed(0)
    stored = spec.quantize(torch.randn(n, k))
    table = spec._entries(stored)
    x = _x(m, k, torch.float32)
    ref = x @ spec.dequantize(stored, k, torch.float32).to(DEVICE).t()
    y = wo_matmul(x, stored["q"].to(DEVICE), spec.bits, k, table=table.to(DEVICE))
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("m,n,k,codebooks,bits,group", [(1, 48, 64, 2, 8, 8), (5, 33, 72, 1, 16, 8),
                                                        (3, 20, 60, 3, 4, 4)])
def test_aqlm_weights_decode_in_the_kernel(m, n, k, codebooks, bits, group):
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 1 << bits, (n, k // group, codebooks), generator=g, dtype=torch.int32)
    codes[0, 0, 0] = (1 << bits) - 1  # the last vector: with 16 bits, stored as the int16 -1
    codes = codes.to(torch.uint8 if bits <= 8 else torch.int16)
    books, scale = torch.randn(codebooks, 1 << bits, group, generator=g).half(), torch.rand(n, 1, generator=g) + 0.5
    x = _x(m, k, torch.float32)
    ref = x @ qc.dequantize_additive(codes, books, scale).to(DEVICE).t()
    y = additive_matmul(x, codes.to(DEVICE), books.to(DEVICE), scale.to(DEVICE))
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("alias", ["mxfp4", "nvfp4", "mxfp8", "fp6", "nf4-32"])
@pytest.mark.parametrize("m,n,k", [(1, 48, 64), (5, 33, 96)])
def test_fixed_table_weights_decode_with_their_block_scales_as_stored(alias, m, n, k):
    """The grid as a one-row table, the scales read at their width: e8m0 and e4m3 decoded in the kernel."""
    torch.manual_seed(0)
    spec = qc.config_from_string(alias).spec().weight
    stored = spec.quantize(torch.randn(n, k))
    table = stored["table"].float() * (stored["tensor_scale"].float() if "tensor_scale" in stored else 1.0)
    x = _x(m, k, torch.float32)
    ref = x @ spec.dequantize(stored, k, torch.float32).to(DEVICE).t()
    scale_format = tm.SCALE_FORMATS.index(spec.scale_format)
    y = wo_matmul(x, stored["q"].to(DEVICE), spec.bits, k, scale=stored["scale"].to(DEVICE),
                  table=table.reshape(1, -1).to(DEVICE), scale_format=scale_format)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_activations_match_the_reference_in_that_dtype(dtype):
    torch.manual_seed(0)
    spec = AffineWeight("uint4", 32, "asymmetric", "float", torch.bfloat16)
    stored, it, s, z = _affine_case(spec, 64, 128)
    x = _x(16, 128, dtype)
    ref = (x.float() @ spec.dequantize(stored, 128, dtype).to(DEVICE).float().t())
    y = wo_matmul(x, stored["q"].to(DEVICE), it.bits, 128, it.signed, scale=s.to(DEVICE), zero=z.to(DEVICE))
    assert y.dtype == dtype
    # the kernel rounds v·s + zero, the reference (v - mid)·s + z, to the half dtype: weights differ by
    # at most an ulp, which averages out over K; the output is then rounded once. Triton's interpreter
    # converts float32 to bfloat16 by truncation (checked: |bf16(x)| <= |x| always), which biases both
    # roundings toward zero, so it gets a looser bound there
    interpreted_bf16 = DEVICE == "cpu" and dtype == torch.bfloat16
    assert ((y.float() - ref).norm() / ref.norm()).item() < (1.5e-2 if interpreted_bf16 else 5e-3)


# The CUDA rule table, applied to the converted graph and run eagerly (the kernel interpreted on the CPU).
# Export of a lowered CUDA program needs a GPU: Triton's interpreter cannot be traced.
@pytest.mark.parametrize("scheme,kernel", [
    ("int8wo", "affine"), ("int4wo-32", "affine"), ("codebook-4", "codebook"), ("codebook-3-16-float", "codebook"),
    ("codebook-8", "codebook"), ("int8dq", "dq"), ("int8da-int4w-32", "dq"), ("intx-3-32", "affine"),
    ("mxfp4", "fixed table"), ("nvfp4", "fixed table"), ("mxfp8", "fixed table"), ("fp6", "fixed table"),
    ("nf4-32", "fixed table"), ("int8da-intx-5-32", "dq"), ("int8da-intx-2-32", "dq")])
def test_cuda_rules_lower_weight_only_patterns_to_the_triton_kernel(scheme, kernel):
    from qcompiler.lowering import lower_graph
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 64)).eval().to(DEVICE)
    x = torch.randn(2, 3, 64, device=DEVICE)
    gm = qc.quantize(model, (x,), qc.config_from_string(scheme)).module()
    ref = gm(x)
    lower_graph(gm, "cuda")
    quantized = qc.report(gm).quantized
    name = ("qcompiler::triton_dq_matmul (int8 activations)" if kernel == "dq"
            else f"qcompiler::triton_wo_matmul ({kernel})")
    assert quantized and all(r.kernel == name for r in quantized)
    torch.testing.assert_close(gm(x), ref, rtol=1e-4, atol=1e-4)


def test_the_cuda_rule_lowers_aqlm_to_its_triton_kernel():
    from qcompiler.lowering import lower_graph
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 64)).eval().to(DEVICE)
    x = torch.randn(2, 3, 64, device=DEVICE)
    data = [(torch.randn(2, 3, 64, device=DEVICE),) for _ in range(2)]
    gm = qc.quantize(model, (x,), qc.AQLMWeightOnlyConfig(2, 6, 8, rounds=1), calibration_data=data).module()
    ref = gm(x)
    lower_graph(gm, "cuda")
    assert [r.kernel for r in qc.report(gm).quantized] == ["qcompiler::triton_additive_matmul (AQLM)"] * 2
    torch.testing.assert_close(gm(x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("m,n,k,bits,group,asymmetric", [
    (1, 48, 64, 8, 64, False), (5, 33, 70, 8, 70, False), (3, 40, 128, 4, 32, True), (17, 64, 256, 4, 128, True),
    (2, 16, 96, 4, 32, False)])
def test_int8_activation_kernel_is_exact_integer_arithmetic_then_scales(m, n, k, bits, group, asymmetric):
    torch.manual_seed(0)
    v = torch.randint(-(1 << bits - 1), 1 << bits - 1, (n, k), dtype=torch.int8)
    q = qc.pack_int(v, bits) if bits < 8 else v
    w_scale = torch.rand(n, k // group) / 10
    xq = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    x_scale = torch.rand(m) / 10
    x_zero = torch.randint(-20, 20, (m,), dtype=torch.int32) if asymmetric else None
    y = dq_matmul(xq.to(DEVICE), x_scale.to(DEVICE), None if x_zero is None else x_zero.to(DEVICE),
                  q.to(DEVICE), bits, k, w_scale.to(DEVICE), torch.float32)
    x_hat = (xq.float() - (x_zero.float()[:, None] if asymmetric else 0)) * x_scale[:, None]
    ref = x_hat @ (v.float() * w_scale.repeat_interleave(group, 1)).t()
    torch.testing.assert_close(y.cpu(), ref, rtol=1e-5, atol=1e-4)


ALL_CONFIGS = [(kind, c) for kind in ("decode", "prefill") for c in tm.configs(kind)]


@pytest.mark.parametrize("kind,config", ALL_CONFIGS, ids=lambda v: v if isinstance(v, str) else
                         "x".join(str(v.kwargs[b]) for b in ("BM", "BN", "BK")) + f"-w{v.num_warps}s{v.num_stages}")
@pytest.mark.parametrize("k,group", [(150, 50), (320, 64)])  # scales read per value; once a tile (any BK vs 64)
def test_every_autotune_config_computes_the_same_product(kind, config, k, group):
    """Each config the autotuner may pick, run explicitly on shapes that none of its tiles divide. On a GPU in
    bfloat16 (float32 tiles of the largest configs overflow shared memory; the autotuner skips those)."""
    torch.manual_seed(0)
    m = 1 if kind == "decode" else 19
    n = 37
    spec = AffineWeight("uint4", group, "asymmetric", "int")
    stored, it, s, z = _affine_case(spec, n, k)
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    x = _x(m, k, dtype)
    w = spec.dequantize(stored, k, torch.float32).to(DEVICE)
    y = tm.wo_launch(x, stored["q"].to(DEVICE), 4, k, scale=s.to(DEVICE), zero=z.to(DEVICE)).run_config(config)
    ref = x.float() @ w.to(dtype).float().t()
    tol = 1e-4 if dtype == torch.float32 else 1e-2  # bfloat16: the output's one rounding
    torch.testing.assert_close(y.float(), ref, rtol=tol, atol=tol)
    k, group = 288, 96  # K tiles are capped at 32, the largest power of two dividing the group
    v = torch.randint(-8, 8, (n, k), dtype=torch.int8)
    xq = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    launch = tm.dq_launch(xq.to(DEVICE), torch.ones(m, device=DEVICE), None, qc.pack_int(v, 4).to(DEVICE), 4, k,
                          torch.ones(n, k // group, device=DEVICE), torch.float32)
    capped = tm.configs(kind, launch.max_bk)[0]
    y = launch.run_config(type(config)({**config.kwargs, "BK": capped.kwargs["BK"]}, num_warps=config.num_warps,
                                       num_stages=config.num_stages))
    torch.testing.assert_close(y.cpu(), xq.float() @ v.float().t(), rtol=0, atol=0)


def test_symbolic_batch_launches_both_variants_with_one_of_them_empty():
    """Under export the batch is a SymInt: no guard on it, and exactly one variant gets programs."""
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    from torch._dynamo.source import ConstantSource
    env = ShapeEnv()
    m = env.create_symintnode(env.create_symbol(5, ConstantSource("m")), hint=5)
    (decode_kind, decode), (prefill_kind, prefill) = tm._variants(m)
    assert (decode_kind, prefill_kind) == ("decode", "prefill")
    sym = m.node.expr
    for rows in (1, 5, tm.DECODE_MAX_M, tm.DECODE_MAX_M + 1, 2048, 1 << 31):
        want = int(rows <= tm.DECODE_MAX_M)
        assert (int(decode.node.expr.subs(sym, rows)), int(prefill.node.expr.subs(sym, rows))) == (want, 1 - want)
    assert not env.guards
    assert tm._variants(3) == [("decode", 1)] and tm._variants(17) == [("prefill", 1)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_lowering_for_cuda_without_a_gpu_says_so():
    prog = qc.quantize(torch.nn.Linear(64, 32), (torch.randn(2, 64),), qc.Int8WeightOnlyConfig())
    with pytest.raises(ValueError, match="backend 'cuda' needs a CUDA device"):
        qc.lower(prog, "cuda")


def test_a_program_captured_on_the_cpu_is_named_as_off_the_gpu():
    from qcompiler.stages.lower import off_device
    prog = qc.quantize(torch.nn.Linear(64, 32), (torch.randn(2, 64),), qc.Int8WeightOnlyConfig())
    assert off_device(prog, "cpu") == []
    assert set(off_device(prog, "cuda")) == set(prog.state_dict) | set(prog.constants) and off_device(prog, "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none)")
@pytest.mark.parametrize("scheme", ["int8wo", "int4wo-128", "codebook-4", "int8dq", "int8da-int4w-128"])
def test_cuda_pt2_round_trip_at_full_size(scheme, tmp_path):
    torch.manual_seed(0)
    model = (torch.nn.Sequential(torch.nn.Linear(4096, 4096), torch.nn.Linear(4096, 1024))
             .eval().to("cuda", torch.bfloat16))
    x = torch.randn(3, 4096, device="cuda", dtype=torch.bfloat16)
    prog = qc.quantize(model, (x,), qc.config_from_string(scheme),
                       dynamic_shapes=({0: torch.export.Dim("m", min=1, max=2048)},))
    low = qc.lower(prog, "cuda")
    assert all(r.kernel.startswith("qcompiler::triton_") for r in qc.report(low).quantized)
    run = qc.load(qc.package(low, tmp_path / f"{scheme}.pt2"))
    for m in (1, 16, 129):
        xm = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
        ref = prog.module()(xm).float()
        assert ((run(xm).float() - ref).norm() / ref.norm()).item() < 1e-2


def test_cuda_benchmark_runs_in_smoke_mode_without_a_gpu():
    """The GPU benchmark (benchmarks/bench_cuda_layers.py) stays runnable for the session that gets a GPU."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    bench = Path(__file__).parent.parent / "benchmarks"
    env = {**os.environ, "TRITON_INTERPRET": "1"} if not torch.cuda.is_available() else os.environ
    out = subprocess.run([sys.executable, "bench_cuda_layers.py", "--smoke", "--schemes", "int4wo-64", "int8dq"],
                         cwd=bench, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "int4wo-64" in out.stdout and "int8dq" in out.stdout and "M=17" in out.stdout


def test_every_kernel_variant_compiles_for_the_h100():
    """Triton's compiler, not its interpreter: each variant to an sm_90 cubin with Triton's own ptxas (no GPU needed;
    tests/compile_for_hopper.py). The interpreter passed kernels that the first GPU refused to compile."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # Triton's current default, set to keep its notice quiet
    out = subprocess.run([sys.executable, str(Path(__file__).parent / "compile_for_hopper.py")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "every variant compiled for sm_90" in out.stdout
