"""Lowering to the CPU backend: each rule against the reference program, dynamic shapes, reporting."""
import pytest
import torch

import qcompiler as qc

DIMS = ({0: torch.export.Dim("batch", max=256), 1: torch.export.Dim("seq", max=256)},)


def model(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 32, bias=False)).eval().to(dtype)


def kernels(prog):
    return [r.kernel for r in qc.report(prog).quantized]


# float32 activations run through the packed kernels in bfloat16: agreement within bf16 rounding
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-2), (torch.bfloat16, 2e-2)])
def test_int8_weight_only_lowers_to_the_int8_pack_kernel(dtype, tol):
    m = model(dtype)
    prog = qc.quantize(m, (torch.randn(2, 3, 64, dtype=dtype),), qc.Int8WeightOnlyConfig(), dynamic_shapes=DIMS)
    low = qc.lower(prog, "cpu")
    assert kernels(low) == ["aten._weight_int8pack_mm"] * 2
    targets = {str(n.target) for n in low.graph.nodes if n.op == "call_function"}
    assert "aten._weight_int8pack_mm.default" in targets and not any(t.startswith("qcompiler.") for t in targets)
    mm = next(n for n in low.graph.nodes if str(n.target) == "aten._weight_int8pack_mm.default")
    assert mm.args[0].meta["val"].dtype == torch.bfloat16  # the fast form for either activation dtype
    for shape in ((2, 3, 64), (1, 1, 64), (7, 5, 64)):
        x = torch.randn(shape, dtype=dtype)
        torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=tol, atol=tol)


@pytest.mark.parametrize("config", [qc.CodebookWeightOnlyConfig(4, grid=None),
                                    qc.CodebookWeightOnlyConfig(3, block_rows=32, grid=None), qc.Float8WeightOnlyConfig(), qc.Float8DynamicActivationFloat8WeightConfig()],
                         ids=lambda c: c.alias)
def test_what_no_rule_fuses_is_decomposed_into_aten_and_reported(config):
    m = model(torch.float32)
    prog = qc.quantize(m, (torch.randn(2, 3, 64),), config, dynamic_shapes=DIMS, calibration_data=[torch.randn(4, 5, 64)])
    low = qc.lower(prog, "cpu")
    assert kernels(low) == ["decomposed", "decomposed"]
    assert not any(str(n.target).startswith("qcompiler.") for n in low.graph.nodes if n.op == "call_function")
    for shape in ((2, 3, 64), (5, 1, 64)):
        x = torch.randn(shape)
        torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=0, atol=0)


@pytest.mark.parametrize("config", [qc.CodebookWeightOnlyConfig(4), qc.CodebookWeightOnlyConfig(3, block_rows=32),
                                    qc.CodebookWeightOnlyConfig(8)], ids=lambda c: c.alias)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_grid_codebooks_lower_to_the_int8_pack_kernel(config, dtype):
    m = model(dtype)
    prog = qc.quantize(m, (torch.randn(2, 3, 64, dtype=dtype),), config, dynamic_shapes=DIMS)
    low = qc.lower(prog, "cpu")
    assert kernels(low) == ["aten._weight_int8pack_mm (int8-grid codebook)"] * 2
    # the report counts what the kernel stores: int8 weights and bf16 row scales
    assert [r.bytes_after for r in qc.report(low).quantized] == [96 * 64 + 96 * 2, 32 * 96 + 32 * 2]
    for shape in ((2, 3, 64), (1, 1, 64), (7, 5, 64)):
        x = torch.randn(shape, dtype=dtype)
        torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=2e-2, atol=2e-2)


def test_reference_backend_changes_nothing_and_bad_backends_are_named():
    prog = qc.quantize(model(torch.float32), (torch.randn(2, 3, 64),), qc.Int8WeightOnlyConfig())
    assert kernels(qc.lower(prog, "reference")) == ["reference", "reference"]
    with pytest.raises(ValueError, match="backend must be one of cpu, cuda, reference; got 'tpu'"):
        qc.lower(prog, "tpu")


INT4 = [qc.Int4WeightOnlyConfig(32), qc.Int4WeightOnlyConfig(32, zero_point_domain="int"),
        qc.Int4WeightOnlyConfig(32, zero_point_domain="none"),
        qc.Int4WeightOnlyConfig(32, zero_point_domain="int", zero_point_dtype=torch.int32, scale_dtype=torch.float32)]


@pytest.mark.parametrize("config", INT4, ids=lambda c: f"{c.alias}-{c.zero_point_domain}-{c.scale_dtype}".replace("torch.", ""))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 5e-2), (torch.bfloat16, 5e-2)])
def test_int4_weight_only_lowers_to_the_int4_pack_kernel(config, dtype, tol):
    m = model(dtype)
    prog = qc.quantize(m, (torch.randn(2, 3, 64, dtype=dtype),), config, dynamic_shapes=DIMS)
    low = qc.lower(prog, "cpu")
    got = kernels(low)
    if config.zero_point_domain == "int":
        # (8 - z)·s rarely fits bfloat16 exactly: such layers keep the exact reference form
        assert set(got) <= {"aten._weight_int4pack_mm_for_cpu", "decomposed"}
    else:
        assert got == ["aten._weight_int4pack_mm_for_cpu"] * 2
    for shape in ((2, 3, 64), (1, 1, 64), (4, 7, 64)):
        x = torch.randn(shape, dtype=dtype)
        torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=tol, atol=tol)


@pytest.mark.parametrize("config,kernel", [(qc.Int8DynamicActivationInt8WeightConfig(), "aten._weight_int8pack_mm (int8 activations)"),
                                           (qc.Int8DynamicActivationInt4WeightConfig(32), "aten._weight_int4pack_mm_for_cpu (int8 activations)")],
                         ids=["int8dq", "int8da-int4w"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 5e-2), (torch.bfloat16, 5e-2)])
def test_dynamic_activation_schemes_lower(config, kernel, dtype, tol):
    m = model(dtype)
    prog = qc.quantize(m, (torch.randn(2, 3, 64, dtype=dtype),), config, dynamic_shapes=DIMS)
    low = qc.lower(prog, "cpu")
    assert kernels(low) == [kernel] * 2
    assert not any(str(n.target).startswith("qcompiler.") for n in low.graph.nodes if n.op == "call_function")
    for shape in ((2, 3, 64), (1, 1, 64), (4, 7, 64)):
        x = torch.randn(shape, dtype=dtype)
        torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=tol, atol=tol)


def test_static_int8_fuses_its_weight_and_decomposes_its_activation_quantization():
    m = model(torch.float32)
    calib = [torch.randn(4, 5, 64) for _ in range(3)]
    prog = qc.quantize(m, (torch.randn(2, 3, 64),), qc.Int8StaticActivationInt8WeightConfig(), dynamic_shapes=DIMS,
                       calibration_data=calib)
    low = qc.lower(prog, "cpu")
    assert kernels(low) == ["aten._weight_int8pack_mm"] * 2
    assert not any(str(n.target).startswith("qcompiler.") for n in low.graph.nodes if n.op == "call_function")
    x = torch.randn(3, 2, 64)
    torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=2e-2, atol=2e-2)


def test_layers_outside_the_kernels_limits_are_decomposed_not_miscomputed():
    torch.manual_seed(0)
    dims = ({0: torch.export.Dim("batch", max=64)},)
    # int8: K = 100 is not a multiple of 8, where the bf16 int8 kernel returns wrong values
    m = torch.nn.Sequential(torch.nn.Linear(100, 64), torch.nn.ReLU(), torch.nn.Linear(64, 48)).eval()
    prog = qc.quantize(m, (torch.randn(3, 100),), qc.Int8WeightOnlyConfig(), dynamic_shapes=dims)
    low = qc.lower(prog, "cpu")
    assert kernels(low) == ["decomposed", "aten._weight_int8pack_mm"]
    x = torch.randn(5, 100)
    torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=2e-2, atol=2e-2)
    # int4: N = 40 is not a multiple of 16, which the int4 packer needs
    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 40)).eval()
    prog = qc.quantize(m, (torch.randn(3, 64),), qc.Int4WeightOnlyConfig(32), dynamic_shapes=dims)
    low = qc.lower(prog, "cpu")
    assert kernels(low) == ["aten._weight_int4pack_mm_for_cpu", "decomposed"]
    x = torch.randn(5, 64)
    torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("scheme", ["int8wo", "int8dq", "int4wo-32", "int8da-int4w-32", "int8static"])
def test_back_to_back_linears_lower(scheme):
    # the second layer's input is the first layer's freshly emitted kernel output
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 32)).eval()
    x = torch.randn(2, 3, 64)
    prog = qc.quantize(m, (x,), qc.config_from_string(scheme), calibration_data=[(x,)])
    low = qc.lower(prog, "cpu")
    assert "decomposed" not in kernels(low)
    torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=5e-2, atol=5e-2)
