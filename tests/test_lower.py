"""Lowering to the CPU backend: each rule against the reference program, dynamic shapes, reporting."""
import os
import subprocess
import sys

import pytest
import torch

import qcompiler as qc
from qcompiler.runtime import native

DIMS = ({0: torch.export.Dim("batch", max=256), 1: torch.export.Dim("seq", max=256)},)


def model(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(),
                               torch.nn.Linear(96, 32, bias=False)).eval().to(dtype)


# Kernel choices depend on the target, named explicitly: the same choices on any machine running the tests
VNNI, AVX2, PLAIN = qc.Target.parse("cpu:avx2+vnni"), qc.Target.parse("cpu:avx2"), qc.Target.parse("cpu:none")
INT_MM, INT8PACK = "aten._int_mm (u8s8, VNNI)", "aten._weight_int8pack_mm"
INT8_GEMM = "qcompiler.int8_gemm (int16 pairs, no VNNI needed)"
AMX = qc.Target.parse("cpu:avx2+avx512+vnni+amx")
TILE = "qcompiler.int8_tile_gemm (s8s8 AMX tiles from 4 rows, VNNI GEMV below)"
REQUANT = ("qcompiler.int8_tile_gemm_requant (s8s8 AMX tiles, bias, activation and the next layer's int8 in the "
           "kernel)")
FLOAT_ROWS = " (bfloat16 activations from 256 rows, 16-bit below)"  # weight-only layers on the tile GEMM
INT8_INT4, INT4PACK = "qcompiler.int8_int4_gemm (int8 x int4, int32 per group)", "aten._weight_int4pack_mm_for_cpu"


def kernels(prog):
    return [r.kernel for r in qc.report(prog).quantized]


def call_targets(prog) -> set:
    return {str(n.target) for n in prog.graph.nodes if n.op == "call_function"}


def no_reference_ops(prog) -> bool:
    """Whether the program calls no qcompiler op besides the C++ kernels."""
    return not any(str(n.target).startswith("qcompiler.") and n.target not in native.NATIVE_OPS
                   for n in prog.graph.nodes if n.op == "call_function")


# float32 activations run through the packed kernel in bfloat16: agreement within bf16 rounding;
# the VNNI form splits activations into 16 bits as two int8 rows, the AVX2 one takes them in 16 bits:
# both far closer to the reference
@pytest.mark.parametrize("target,kernel,tol", [(PLAIN, INT8PACK, 2e-2),
                                               (AVX2, INT8_GEMM + " (16-bit activations)", 1e-3),
                                               (VNNI, INT_MM + " (16-bit activations)", 1e-3)],
                         ids=["plain", "avx2", "vnni"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_weight_only_lowers_to_the_targets_kernel(target, kernel, tol, dtype):
    m = model(dtype)
    prog = qc.quantize(m, (torch.randn(2, 3, 64, dtype=dtype),), qc.Int8WeightOnlyConfig(), dynamic_shapes=DIMS)
    low = qc.lower(prog, target)
    assert kernels(low) == [kernel] * 2
    assert no_reference_ops(low)
    if target is PLAIN:
        mm = next(n for n in low.graph.nodes if str(n.target) == "aten._weight_int8pack_mm.default")
        assert mm.args[0].meta["val"].dtype == torch.bfloat16  # the fast form for either activation dtype
    elif target is AVX2:
        gemm = next(n for n in low.graph.nodes if str(n.target) == "qcompiler.int8_gemm.default")
        assert gemm.args[0].meta["val"].dtype == torch.float32  # the float rows: the kernel takes them in 16 bits
    else:
        assert "aten._int_mm.default" in call_targets(low)
    tol = max(tol, 2e-2) if dtype == torch.bfloat16 else tol  # bf16 outputs round at 2^-8
    for shape in ((2, 3, 64), (1, 1, 64), (7, 5, 64)):
        x = torch.randn(shape, dtype=dtype)
        torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=tol, atol=tol)


def test_16_bit_activations_stay_within_their_bound_where_rows_have_outliers():
    # the split's error per element is at most max|x_row| / 64770: a row with a 1000x outlier
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 64).eval()
    prog = qc.quantize(lin, (torch.randn(4, 256),), qc.Int8WeightOnlyConfig())
    x = torch.randn(4, 256)
    x[:, 7] = 1000.0
    ref, got = prog.module()(x), qc.lower(prog, VNNI).module()(x)
    # per output: max|x_row| / 64770 times the (dequantized, within 2% of the float) weight row's 1-norm
    bound = x.abs().amax(-1, keepdim=True) / 64770 * lin.weight.abs().sum(-1) * 1.02 + 1e-4
    assert ((got - ref).abs() <= bound).all()


@pytest.mark.parametrize("config", [qc.CodebookWeightOnlyConfig(4, block_rows=16, grid=None),  # a table per 16 rows
                                    qc.CodebookWeightOnlyConfig(3, block_rows=8, grid=None),
                                    qc.Float8WeightOnlyConfig(), qc.Float8DynamicActivationFloat8WeightConfig()],
                         ids=lambda c: c.alias)
def test_what_no_rule_fuses_is_decomposed_into_aten_and_reported(config):
    m = model(torch.float32)
    prog = qc.quantize(m, (torch.randn(2, 3, 64),), config, dynamic_shapes=DIMS,
                       calibration_data=[torch.randn(4, 5, 64)])
    low = qc.lower(prog, "cpu")
    assert kernels(low) == ["decomposed", "decomposed"]
    assert not any(str(n.target).startswith("qcompiler.") for n in low.graph.nodes if n.op == "call_function")
    for shape in ((2, 3, 64), (5, 1, 64)):
        x = torch.randn(shape)
        torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=0, atol=0)


@pytest.mark.parametrize("config", [qc.CodebookWeightOnlyConfig(4), qc.CodebookWeightOnlyConfig(3, block_rows=32),
                                    qc.CodebookWeightOnlyConfig(8)], ids=lambda c: c.alias)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("target", [PLAIN, AVX2, VNNI], ids=["plain", "avx2", "vnni"])
def test_int8_grid_codebooks_lower_to_the_int8_weight_kernels(config, dtype, target):
    m = model(dtype)
    prog = qc.quantize(m, (torch.randn(2, 3, 64, dtype=dtype),), config, dynamic_shapes=DIMS)
    low = qc.lower(prog, target)
    kernel = {PLAIN: INT8PACK, AVX2: INT8_GEMM + " (16-bit activations)", VNNI: INT_MM + " (16-bit activations)"}
    assert kernels(low) == [kernel[target]] * 2
    # the report counts what the kernel stores: int8 weights and bf16 row scales; int8 weights and float32
    # row scales; or those and the int32 column sums the uint8 shift subtracts
    per_row = {PLAIN: 2, AVX2: 4, VNNI: 4 + 4}[target]
    assert [r.bytes_after for r in qc.report(low).quantized] == [96 * 64 + 96 * per_row, 32 * 96 + 32 * per_row]
    for shape in ((2, 3, 64), (1, 1, 64), (7, 5, 64)):
        x = torch.randn(shape, dtype=dtype)
        torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=2e-2, atol=2e-2)


CODEBOOK_LUT = "qcompiler.codebook_gemm (b-bit indices, table shuffled in the kernel) (16-bit activations)"


@pytest.mark.parametrize("config", [qc.CodebookWeightOnlyConfig(4), qc.CodebookWeightOnlyConfig(3, block_rows=32),
                                    qc.CodebookWeightOnlyConfig(2), qc.CodebookWeightOnlyConfig(1)],
                         ids=lambda c: c.alias)
@pytest.mark.parametrize("target", [PLAIN, AVX2, VNNI], ids=["plain", "avx2", "vnni"])
def test_codebooks_of_up_to_4_bits_keep_their_indices_packed_and_look_up_in_the_kernel(config, target):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(128, 96), torch.nn.ReLU(), torch.nn.Linear(96, 32)).eval()
    prog = qc.quantize(m, (torch.randn(2, 3, 128),), config, dynamic_shapes=DIMS)
    low = qc.lower(prog, target)
    first, second = qc.report(low).quantized
    assert first.kernel == CODEBOOK_LUT and "qcompiler.codebook_gemm.default" in call_targets(low)
    # b-bit indices, a 16-entry int8 table, an int32 weight sum and a float32 scale per row
    assert first.bytes_after == 96 * 128 * config.bits // 8 + 96 * (16 + 4 + 4)
    assert second.kernel != CODEBOOK_LUT and "K % 128 == 0" in second.kernel_reason  # K = 96: an int8 kernel
    assert no_reference_ops(low)
    for shape in ((2, 3, 128), (1, 1, 128), (7, 5, 128)):
        # bfloat16 activations: the second layer's kernel on PLAIN; the lookup kernel from 32 rows where AMX runs
        bf16 = target is PLAIN or native.float_rows_path(shape[0] * shape[1]) == "amx_bf16"
        tol = 2e-2 if bf16 else 1e-3
        x = torch.randn(shape)
        torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=tol, atol=tol)


def test_reference_backend_changes_nothing_and_bad_backends_are_named():
    prog = qc.quantize(model(torch.float32), (torch.randn(2, 3, 64),), qc.Int8WeightOnlyConfig())
    assert kernels(qc.lower(prog, "reference")) == ["reference", "reference"]
    with pytest.raises(ValueError, match="backend must be one of cpu, cuda, reference; got 'tpu'"):
        qc.lower(prog, "tpu")
    with pytest.raises(ValueError, match="capabilities of a 'cpu' target must be among avx2, avx512, vnni, "
                                         "avx512_bf16, amx; got 'sse9'"):
        qc.lower(prog, "cpu:avx2+sse9")


INT4 = [qc.Int4WeightOnlyConfig(32), qc.Int4WeightOnlyConfig(32, zero_point_domain="int"),
        qc.Int4WeightOnlyConfig(32, zero_point_domain="none"),
        qc.Int4WeightOnlyConfig(32, zero_point_domain="int", zero_point_dtype=torch.int32, scale_dtype=torch.float32)]


@pytest.mark.parametrize("config", INT4,
                         ids=lambda c: f"{c.alias}-{c.zero_point_domain}-{c.scale_dtype}".replace("torch.", ""))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-3), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("target", [qc.Target.host(), AVX2], ids=["host", "avx2"])
def test_int4_weight_only_lowers_to_the_integer_int4_kernel(config, dtype, tol, target):
    """Every int4 form, on any target: the kernel's weight layout is the same everywhere."""
    m = model(dtype)
    prog = qc.quantize(m, (torch.randn(2, 3, 64, dtype=dtype),), config, dynamic_shapes=DIMS)
    low = qc.lower(prog, target)
    assert kernels(low) == [INT8_INT4 + " (16-bit activations)"] * 2
    for shape in ((2, 3, 64), (1, 1, 64), (4, 7, 64)):
        x = torch.randn(shape, dtype=dtype)
        torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=tol, atol=tol)


@pytest.mark.parametrize("config", INT4,
                         ids=lambda c: f"{c.alias}-{c.zero_point_domain}-{c.scale_dtype}".replace("torch.", ""))
def test_int4_weight_only_falls_back_to_atens_kernel_without_qcompilers(config, monkeypatch):
    monkeypatch.setattr(native, "cannot_build", lambda: "no compiler")
    m = model(torch.float32)
    prog = qc.quantize(m, (torch.randn(2, 3, 64),), config, dynamic_shapes=DIMS)
    low = qc.lower(prog, "cpu")
    got = kernels(low)
    if config.zero_point_domain == "int":
        # (8 - z)·s rarely fits bfloat16 exactly: such layers keep the exact reference form
        assert set(got) <= {INT4PACK, "decomposed"}
    else:
        assert got == [INT4PACK] * 2
    reason = qc.report(low).quantized[0].kernel_reason
    assert "qcompiler's C++ kernels cannot be built here (no compiler)" in reason
    x = torch.randn(4, 7, 64)
    torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=5e-2, atol=5e-2)


LAZY = """
import torch, qcompiler as qc
from qcompiler.runtime import native
m = torch.nn.Linear(64, 64).eval()
x = torch.randn(3, 64)
low = qc.lower(qc.quantize(m, (x,), qc.Int8DynamicActivationInt4WeightConfig()), "cpu")
print(native._build.cache_info().currsize, qc.report(low).quantized[0].kernel.split()[0])
low.module()(x)
print(native._build.cache_info().currsize)
"""


def test_lowering_builds_nothing_and_the_first_eager_call_loads_the_kernels():
    out = subprocess.run([sys.executable, "-c", LAZY], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "qcompiler.int8_int4_gemm", "1"]


def test_a_native_kernels_loader_refuses_other_devices_by_name():
    first_call = native._loads_then_calls(torch.ops.qcompiler.int8_gemm.default)  # what a CUDA call would reach
    w = torch.zeros(8, 8, dtype=torch.int8, device="meta")
    with pytest.raises(NotImplementedError, match=r"runs on the CPU, not \['meta'\]"):
        first_call(w, None, None, w, w)


@pytest.mark.parametrize("config,target,kernel", [
    (qc.Int8DynamicActivationInt8WeightConfig(), PLAIN, "aten._weight_int8pack_mm (int8 activations)"),
    (qc.Int8DynamicActivationInt8WeightConfig(), AVX2, INT8_GEMM + " (int8 activations)"),
    (qc.Int8DynamicActivationInt8WeightConfig(), VNNI, INT_MM + " (int8 activations)"),
    (qc.Int8DynamicActivationInt4WeightConfig(32), AVX2, INT8_INT4 + " (int8 activations)")],
    ids=["int8dq-plain", "int8dq-avx2", "int8dq-vnni", "int8da-int4w"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 5e-2), (torch.bfloat16, 5e-2)])
def test_dynamic_activation_schemes_lower(config, target, kernel, dtype, tol):
    m = model(dtype)
    prog = qc.quantize(m, (torch.randn(2, 3, 64, dtype=dtype),), config, dynamic_shapes=DIMS)
    low = qc.lower(prog, target)
    assert kernels(low) == [kernel] * 2
    assert no_reference_ops(low)
    for shape in ((2, 3, 64), (1, 1, 64), (4, 7, 64)):
        x = torch.randn(shape, dtype=dtype)
        torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=tol, atol=tol)


@pytest.mark.parametrize("target,kernel,tol", [(PLAIN, "aten._weight_int8pack_mm (int8 activations)", 2e-2),
                                               (AVX2, INT8_GEMM + " (int8 activations)", 1e-4),
                                               (VNNI, INT_MM + " (int8 activations)", 1e-4)],
                         ids=["plain", "avx2", "vnni"])
def test_static_int8_runs_integer_activations_through_the_targets_kernel(target, kernel, tol):
    m = model(torch.float32)
    calib = [torch.randn(4, 5, 64) for _ in range(3)]
    prog = qc.quantize(m, (torch.randn(2, 3, 64),), qc.Int8StaticActivationInt8WeightConfig(), dynamic_shapes=DIMS,
                       calibration_data=calib)
    low = qc.lower(prog, target)
    assert kernels(low) == [kernel] * 2
    assert no_reference_ops(low)
    x = torch.randn(3, 2, 64)
    torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=tol, atol=tol)


def test_layers_outside_the_kernels_limits_are_decomposed_not_miscomputed():
    torch.manual_seed(0)
    dims = ({0: torch.export.Dim("batch", max=64)},)
    # int8: K = 100 is not a multiple of 8, where the bf16 int8 kernel returns wrong values
    m = torch.nn.Sequential(torch.nn.Linear(100, 64), torch.nn.ReLU(), torch.nn.Linear(64, 48)).eval()
    prog = qc.quantize(m, (torch.randn(3, 100),), qc.Int8WeightOnlyConfig(), dynamic_shapes=dims)
    low = qc.lower(prog, PLAIN)
    assert kernels(low) == ["decomposed", "aten._weight_int8pack_mm"]
    first = qc.report(low).quantized[0]
    assert first.kernel_reason == (f"no kernel took it: {TILE}{FLOAT_ROWS}: "
                                   "target cpu:none lacks amx, vnni; "
                                   "onednn.qlinear_pointwise (u8s8, VNNI, prepacked) "
                                   "(16-bit activations): target cpu:none lacks vnni; "
                                   "aten._int_mm (u8s8, VNNI) (16-bit activations): target cpu:none lacks vnni; "
                                   f"{INT8_GEMM} (16-bit activations): target cpu:none lacks avx2; "
                                   "aten._weight_int8pack_mm: K = 100 is not a multiple of 8 "
                                   "(the bfloat16 int8 kernel needs that)")
    x = torch.randn(5, 100)
    torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=2e-2, atol=2e-2)
    assert kernels(qc.lower(prog, VNNI)) == [INT_MM + " (16-bit activations)"] * 2  # the integer GEMMs take any K
    assert kernels(qc.lower(prog, AVX2)) == [INT8_GEMM + " (16-bit activations)"] * 2
    # qcompiler.int8_gemm packs 8 rows at a time: N = 44 is not a multiple of 8
    odd = qc.quantize(torch.nn.Linear(64, 44).eval(), (torch.randn(3, 64),), qc.Int8DynamicActivationInt8WeightConfig())
    only = qc.report(qc.lower(odd, AVX2)).quantized[0]
    assert only.kernel == "aten._weight_int8pack_mm (int8 activations)"
    assert "N = 44, K = 64: its packer needs N % 8 == 0 and even K" in only.kernel_reason
    # int4: N = 40 is not a multiple of 16, which the int4 packer needs
    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 40)).eval()
    prog = qc.quantize(m, (torch.randn(3, 64),), qc.Int4WeightOnlyConfig(32), dynamic_shapes=dims)
    low = qc.lower(prog, "cpu")
    assert kernels(low) == [INT8_INT4 + " (16-bit activations)", "decomposed"]
    assert "N = 40, K = 64: the int4 packer needs N % 16 == 0" in qc.report(low).quantized[1].kernel_reason
    x = torch.randn(5, 64)
    torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("scheme", ["int8wo", "int8dq", "int4wo-32", "int8da-int4w-32", "int8static"])
@pytest.mark.parametrize("target", [PLAIN, AVX2, VNNI], ids=["plain", "avx2", "vnni"])
def test_back_to_back_linears_lower(scheme, target):
    # the second layer's input is the first layer's freshly emitted kernel output
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 32)).eval()
    x = torch.randn(2, 3, 64)
    prog = qc.quantize(m, (x,), qc.config_from_string(scheme), calibration_data=[(x,)])
    low = qc.lower(prog, target)
    assert "decomposed" not in kernels(low)
    torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=5e-2, atol=5e-2)


HOST_SCHEMES = [qc.Int8WeightOnlyConfig(), qc.Int8DynamicActivationInt8WeightConfig(),
                qc.Int8StaticActivationInt8WeightConfig(), qc.CodebookWeightOnlyConfig(8)]  # codebook-8: int8 kernels


@pytest.mark.parametrize("config", HOST_SCHEMES, ids=lambda c: c.alias)
def test_on_this_machine_vnni_takes_onednn_prepacked_for_large_weights_and_agrees_with_the_portable_gemm(config):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 64)).eval()
    dims = ({0: torch.export.Dim("batch", max=64)},)
    prog = qc.quantize(m, (torch.randn(3, 2048),), config, dynamic_shapes=dims, calibration_data=[torch.randn(8, 2048)])
    host = qc.Target.host()
    low = qc.lower(prog, host)
    suffix = " (16-bit activations)" if config.alias in ("int8wo", "codebook-8") else " (int8 activations)"
    tile_suffix = FLOAT_ROWS if config.alias in ("int8wo", "codebook-8") else " (int8 activations)"
    first, second = qc.report(low).quantized
    if not host.has("vnni"):
        assert first.kernel.startswith(INT8_GEMM) and "lacks vnni" in first.kernel_reason
        return
    if host.has("amx"):  # AMX takes the tile GEMM before the prepacked call: that rule is for VNNI hosts only
        static = config.alias == "int8static"  # its first layer writes the second's int8 rows (requantize.py)
        assert (first.kernel, second.kernel) == (REQUANT if static else TILE + tile_suffix, TILE + tile_suffix)
    else:  # 2048x2048 reaches the size where the prepacked call pays; 64x2048 stays on torch._int_mm
        assert (first.kernel, second.kernel) == ("onednn.qlinear_pointwise (u8s8, VNNI, prepacked)" + suffix,
                                                 INT_MM + suffix)
        assert "its weight (64x2048) has under 4,194,304 elements" in second.kernel_reason
    portable = qc.lower(prog, "cpu:vnni")  # never this machine: the plain-weight integer GEMM for both
    assert kernels(portable) == [INT_MM + suffix] * 2
    assert "target cpu:vnni is not this machine" in qc.report(portable).quantized[0].kernel_reason
    # the same exact integer sums, scaled in float32; weight-only on AMX hosts: two 16-bit splits of the float rows
    tol = 1e-3 if host.has("amx") and tile_suffix == FLOAT_ROWS else 1e-5
    for rows in (1, 2, 7):
        x = torch.randn(rows, 2048)
        torch.testing.assert_close(low.module()(x), portable.module()(x), rtol=tol, atol=tol)


def test_unquantized_parts_run_in_bfloat16_only_when_asked_and_the_target_has_it():
    m = model(torch.float32)
    prog = qc.quantize(m, (torch.randn(2, 3, 64),), qc.Recipe([("0", qc.Int8WeightOnlyConfig())]), dynamic_shapes=DIMS)
    bf16_target = qc.Target.parse("cpu:avx512+vnni+avx512_bf16")
    plain, low = qc.lower(prog, bf16_target), qc.lower(prog, bf16_target, unquantized_dtype=torch.bfloat16)
    assert qc.report(plain).unquantized_dtype is None
    rep = qc.report(low)
    assert (rep.unquantized_dtype, rep.unquantized_ops) == ("bfloat16", 1)
    assert "unquantized matmuls, linears, convolutions and attention (1) run in bfloat16" in rep.table()
    assert kernels(low) == kernels(plain)  # the quantized layer is untouched
    linear = next(n for n in low.graph.nodes if n.target == torch.ops.aten.linear.default)
    assert [a.meta["val"].dtype for a in linear.args] == [torch.bfloat16] * 2  # x and the weight (no bias)
    x = torch.randn(4, 5, 64)
    torch.testing.assert_close(low.module()(x), plain.module()(x), rtol=3e-2, atol=3e-2)
    assert low.module()(x).dtype == torch.float32
    with pytest.raises(ValueError, match=r"needs a target with native bfloat16 \(avx512_bf16 or amx\); cpu:avx2 has"):
        qc.lower(prog, AVX2, unquantized_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"unquantized_dtype must be None or torch.bfloat16; got torch.float16"):
        qc.lower(prog, bf16_target, unquantized_dtype=torch.float16)


def test_lowering_shows_no_warning_of_torchs_own():
    """The library logs; torch's warnings from calls qcompiler makes (run_decompositions' LeafSpec deprecation in
    torch 2.13) are not passed on to the user."""
    import warnings
    model = torch.nn.Sequential(torch.nn.Linear(64, 64)).eval()
    program = qc.quantize(model, (torch.randn(2, 64),), qc.Int4WeightOnlyConfig(group_size=32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qc.lower(program, "cpu")


@pytest.mark.parametrize("config,note,tol", [
    (qc.Int8DynamicActivationInt8WeightConfig(), " (int8 activations)", 1e-4),
    (qc.Int8StaticActivationInt8WeightConfig(), " (int8 activations)", 1e-4),
    (qc.Int8WeightOnlyConfig(), FLOAT_ROWS, 1e-2)], ids=["int8dq", "int8static", "int8wo"])
def test_int8_schemes_take_the_tile_gemm_on_amx_targets_and_agree_at_every_row_count(config, note, tol):
    """On a target with AMX the int8 schemes lower to qcompiler.int8_tile_gemm (its AMX path from 4 rows where the
    machine has AMX-INT8, its VNNI, AVX2 or plain path otherwise: tests/test_int8_tile_gemm.py checks each), the
    same values as the reference program at 1 row (GEMV) and at many (tiles)."""
    m = model(torch.float32)
    calib = [torch.randn(4, 5, 64) for _ in range(3)]
    prog = qc.quantize(m, (torch.randn(2, 3, 64),), config, dynamic_shapes=DIMS, calibration_data=calib)
    low = qc.lower(prog, AMX)
    static = isinstance(config, qc.Int8StaticActivationInt8WeightConfig)  # its first layer writes the second's int8
    assert kernels(low) == [REQUANT if static else TILE + note, TILE + note]
    assert "the target has AMX" in qc.report(low).quantized[0].kernel_reason
    fused = "qcompiler.int8_tile_gemm_dq.default" in call_targets(low)  # int8dq quantizes its rows in the kernel
    assert fused == isinstance(config, qc.Int8DynamicActivationInt8WeightConfig)
    assert no_reference_ops(low)
    for shape in ((1, 1, 64), (2, 3, 64), (8, 40, 64)):
        x = torch.randn(shape)
        torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=tol, atol=tol)


class _Block(torch.nn.Module):
    """A feed-forward block: fc2(activation(fc1(x))), and with ``residual`` fc1's output read again after."""

    def __init__(self, activation, residual: bool):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = torch.nn.Linear(64, 96), torch.nn.Linear(96, 96)
        self.act, self.residual = activation, residual

    def forward(self, x):
        h = self.fc1(x)
        y = self.fc2(self.act(h))
        return y + h if self.residual else y


@pytest.mark.parametrize("activation,residual,fused", [
    (torch.nn.GELU(), False, True), (torch.nn.ReLU(), False, True), (torch.nn.Identity(), False, True),
    (torch.nn.GELU(approximate="tanh"), False, False), (torch.nn.GELU(), True, False)],
    ids=["gelu", "relu", "none", "gelu-tanh", "read-again"])
def test_int8static_layers_write_the_next_layers_int8_on_amx_targets(activation, residual, fused):
    """On AMX targets an int8static layer whose output goes, through its bias and a GELU or ReLU, only into the next
    int8static layer's quantization becomes one int8_tile_gemm_requant call (the report says so), with the
    reference program's values; where anything else reads the float output, or the activation is one the kernel
    lacks, the layers stay apart."""
    block = _Block(activation, residual).eval()
    calib = [torch.randn(4, 5, 64) for _ in range(3)]
    prog = qc.quantize(block, (torch.randn(2, 3, 64),), qc.Int8StaticActivationInt8WeightConfig(), dynamic_shapes=DIMS,
                       calibration_data=calib)
    low = qc.lower(prog, AMX)
    assert ("qcompiler.int8_tile_gemm_requant.default" in call_targets(low)) == fused
    assert kernels(low) == [REQUANT if fused else TILE + " (int8 activations)", TILE + " (int8 activations)"]
    assert no_reference_ops(low)
    for shape in ((1, 1, 64), (2, 3, 64), (8, 40, 64)):
        x = torch.randn(shape)
        # GELU's erf in the kernel may put a rounding tie of fc2's input one step away: a step of fc2's input scale
        torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=2e-2, atol=2e-2)


def test_the_old_backend_keyword_still_lowers_with_a_deprecation_warning():
    """``qc.lower(program, backend=...)``, the spelling before ``target``, works for a release and says what to use."""
    m = torch.nn.Sequential(torch.nn.Linear(64, 64)).eval()
    prog = qc.quantize(m, (torch.randn(2, 64),), qc.Int8WeightOnlyConfig())
    with pytest.warns(DeprecationWarning, match=r"pass the target instead: qcompiler.lower\(program, 'reference'\)"):
        old = qc.lower(prog, backend="reference")
    assert kernels(old) == kernels(qc.lower(prog, "reference"))
    with pytest.raises(ValueError, match="not both"):
        qc.lower(prog, "cpu", backend="reference")


AGREE = """
import qcompiler as qc
from qcompiler.runtime import native
print(qc.Target.host(), native.kernel_path(), native.tile_gemm_path(64))
"""


@pytest.mark.parametrize("isa", ["native", "avx2", "default"])
def test_the_target_and_the_kernels_agree_on_what_vnni_and_amx_are(isa):
    """The host target names vnni (and amx) exactly where qcompiler's C++ kernels take their VNNI (and AMX) paths."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": isa} if isa != "native" else dict(os.environ)
    target, path, tile = subprocess.run([sys.executable, "-c", AGREE], capture_output=True, text=True, check=True,
                                        env=env).stdout.split()
    caps = set(target.split(":")[1].split("+")) - {"none"}
    assert ("vnni" in caps) == (path == "avx512_vnni")
    assert ("amx" in caps) == (tile == "amx")
    if isa != "native":
        assert caps <= {"avx2"}  # a capped ATen counts as a machine without the AVX-512 extensions


def test_a_weight_only_pattern_is_traced_from_the_graph_its_spec_emits():
    """The rules' patterns are the spec's own dequantization graphs in a linear: what convert emits, by construction."""
    import inspect

    from qcompiler.lowering.reference_patterns import weight_only, weight_only_packed
    from qcompiler.passes import spec
    from qcompiler.passes.pattern import find

    assert weight_only(spec.affine_packed) is weight_only_packed  # one pattern per graph: rules group by it
    graph_params = list(inspect.signature(spec.affine_packed).parameters)
    assert list(inspect.signature(weight_only_packed).parameters) == ["x", *graph_params, "b"]
    lin = torch.nn.Linear(64, 16).eval()
    prog = qc.quantize(lin, (torch.randn(2, 64),), qc.Int4WeightOnlyConfig(32, zero_point_domain="int"))
    (m,) = find(prog.module(), weight_only_packed)
    assert (m["bits"], m["n"], m["signed"], list(m["block"]), m["dtype"], m["domain"]) == (4, 64, False, [1, 32],
                                                                                            "uint4", "int")
