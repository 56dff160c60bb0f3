"""The weight formats users compare us on (issue #32): intx now; each against a float64 reference."""
import pytest
import torch

import qcompiler as qc


def _intx_reference(w: torch.Tensor, bits: int, group: int):
    """torchao's asymmetric integer-zero-point formula in float64 (the scale rounded to bfloat16 as stored):
    ``s = (max(hi, 0) - min(lo, 0)) / (2^b - 1)``, ``z = clamp(-round(lo / s))``, ``q = clamp(round(w / s) + z)``."""
    g = w.double().reshape(w.shape[0], -1, group)
    lo, hi = g.amin(-1, keepdim=True).clamp(max=0), g.amax(-1, keepdim=True).clamp(min=0)
    qmax = 2 ** bits - 1
    s = ((hi - lo) / qmax).clamp(min=torch.finfo(torch.float32).eps).bfloat16().double()
    z = (-torch.round(lo / s)).clamp(0, qmax)
    q = (torch.round(g / s) + z).clamp(0, qmax)
    return q.reshape(w.shape), ((q - z) * s).reshape(w.shape)


@pytest.mark.parametrize("bits", range(1, 8))
@pytest.mark.parametrize("group", [32, 128])
def test_intx_is_the_affine_formula_at_its_bit_width(bits, group):
    """intx-<b>-<g> against the formula in float64, stored at b bits: the same levels but where float32 and float64
    round a tie apart (at most 1 in 1,000)."""
    torch.manual_seed(bits)
    w = torch.randn(16, 256) * torch.logspace(-2, 1, 16)[:, None]
    spec = qc.config_from_string(f"intx-{bits}-{group}").spec().weight
    t = spec.quantize(w)
    assert t["q"].dtype == torch.uint8 and t["q"].shape == (16, 256 * bits // 8)  # packed at the bit width
    q_ref, w_ref = _intx_reference(w, bits, group)
    q = qc.unpack_int(t["q"], bits, 256, signed=False).double()
    assert float((q != q_ref).double().mean()) <= 1e-3
    w_hat = spec.dequantize(t, 256, torch.float32).double()
    same = q == q_ref
    torch.testing.assert_close(w_hat[same], w_ref[same], rtol=1e-6, atol=1e-7)


def test_intx_aliases_configs_and_algorithms():
    assert qc.config_from_string("intx-3-64") == qc.IntxWeightOnlyConfig(3, 64)
    assert qc.config_from_string("intx-2-32-float+hqq") == qc.IntxWeightOnlyConfig(2, 32, "float", algorithm=qc.HQQ())
    assert qc.config_from_string("intx-5-128+gptq").algorithm == qc.GPTQ()
    with pytest.raises(ValueError, match="HQQ optimizes a float zero point"):
        qc.config_from_string("intx-3-64+hqq")
    with pytest.raises(ValueError, match="bits must be an integer from 1 to 7; got 8"):
        qc.IntxWeightOnlyConfig(8)
    with pytest.raises(ValueError, match="group_size must be one of 32, 64, 128, 256; got 48"):
        qc.IntxWeightOnlyConfig(3, 48)


AVX512 = qc.Target.parse("cpu:avx2+avx512+vnni")  # the fixed-table kernel's integer path (AVX2: float32)
TABLE_GEMM, INT8_INT4, CODEBOOK = "qcompiler.table_gemm", "qcompiler.int8_int4_gemm", "qcompiler.codebook_gemm"


def kernels(low) -> list:
    return [r.kernel.split(" (")[0] for r in qc.report(low).quantized]


def two_layers(alias: str, target=AVX512) -> tuple:
    """A 128 -> 64 -> 32 model quantized with ``alias`` and lowered for ``target``: (reference, lowered, input)."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32)).eval()
    x = torch.randn(5, 128)
    prog = qc.quantize(m, (x,), qc.config_from_string(alias))
    return prog, qc.lower(prog, target), x


@pytest.mark.parametrize("alias,kernel", [("intx-3-64", TABLE_GEMM), ("intx-6-32-float", TABLE_GEMM),
                                          ("intx-4-32", INT8_INT4)])
def test_intx_lowers_to_its_kernel_and_runs_as_its_reference_program(alias, kernel):
    """intx at 4 bits takes the int4 kernel; the other widths the fixed-table kernel, the table the codes' integers
    (less the middle for a float zero point) and the zero points read in the kernel."""
    prog, low, x = two_layers(alias)
    assert kernels(low) == [kernel] * 2
    torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=1e-3, atol=1e-3)
    assert all(r.scheme == alias for r in qc.report(low).quantized)


@pytest.mark.parametrize("alias", ["int8da-intx-3-32", "int8da-intx-5-64", "int8da-intx-7-32", "int8da-intx-1-32"])
def test_int8_activation_intx_runs_on_int8_rows_as_its_reference_program(alias):
    """Per-token asymmetric int8 activations times symmetric b-bit weights: the table kernel takes the int8 rows as
    they are (the codes re-based so that they are the integer weights), the zero points off after the sums."""
    prog, low, x = two_layers(alias)
    assert kernels(low) == [TABLE_GEMM] * 2
    gemm = next(n for n in low.graph.nodes if n.target == torch.ops.qcompiler.table_gemm.default)
    assert gemm.args[0].meta["val"].dtype == torch.int8
    torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=1e-4, atol=1e-4)
    assert all(r.scheme == alias for r in qc.report(low).quantized)


def test_int8_activation_intx_is_torchaos_config_and_decomposes_below_avx2():
    bits, group = 3, 32
    config = qc.config_from_string(f"int8da-intx-{bits}-{group}")
    assert config == qc.Int8DynamicActivationIntxWeightConfig(bits, group)
    spec = config.spec()
    assert (spec.weight.dtype, spec.weight.mapping, spec.activation.mapping) == ("int3", "symmetric", "asymmetric")
    assert qc.config_from_dict(qc.config_to_dict(config)) == config
    with pytest.raises(ValueError, match="bits must be an integer from 1 to 7; got 9"):
        qc.Int8DynamicActivationIntxWeightConfig(9)
    prog, low, x = two_layers("int8da-intx-3-32", qc.Target.parse("cpu:none"))
    assert kernels(low) == ["decomposed"] * 2
    torch.testing.assert_close(low.module()(x), prog.module()(x))


TABLE_SCHEMES = ["fp6", "fpx-2-3", "fpx-2-1", "mxfp4", "mxfp8", "nvfp4", "nf4"]


def test_a_grid_declared_by_its_values_makes_a_scheme_of_one_file():
    """nf4 is schemes/nf4.py alone: its grid registered by its 16 values, its config; the table kernel runs it."""
    from qcompiler.runtime import tables

    assert {"nf4", "nf4-<32|64|128|256>"} <= set(qc.scheme_forms())
    assert qc.config_from_string("nf4-128") == qc.NF4WeightOnlyConfig(128)
    assert tables.grid_bits("nf4") == 4 and tables.grid_max("nf4") == 1.0
    v = torch.tensor([-2.0, -0.6, 0.03, 0.04, 0.99])  # 0.04 is nearer 0.0796 than 0; saturating at -1
    assert tables.grid_values("nf4")[tables.nearest_code(v, "nf4").long()].tolist() == pytest.approx(
        [-1.0, -0.5250731, 0.0, 0.0795803, 1.0])
    with pytest.raises(ValueError, match="values must be 2, 4, ..., 256 distinct finite values"):
        tables.register_grid("three", [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="name must be a grid name not registered with other values"):
        tables.register_grid("nf4", [float(i) for i in range(16)])
    with pytest.raises(ValueError, match="name must be a grid name other than the e<E>m<M> float grids"):
        tables.register_grid("e2m1", [float(i) for i in range(16)])


def test_the_grids_are_the_formats_values():
    from qcompiler.runtime import tables

    assert tables.grid_values("e2m1").tolist() == [0, .5, 1, 1.5, 2, 3, 4, 6, -0.0, -.5, -1, -1.5, -2, -3, -4, -6]
    e3m2 = tables.grid_values("e3m2")[:32].tolist()  # fp6 e3m2 (bias 3): subnormals m/16, then (1 + m/4)·2^(e-3)
    assert e3m2[:5] == [0, 0.0625, 0.125, 0.1875, 0.25] and e3m2[-1] == 28.0 and tables.grid_max("e2m3") == 7.5
    codes = torch.arange(256, dtype=torch.uint8)
    fp8 = codes.view(torch.float8_e4m3fn).float()
    torch.testing.assert_close(tables.grid_values("e4m3"), fp8, equal_nan=True)  # float8_e4m3fn, code by code


def test_rounding_to_a_grid_is_a_float_cast_ties_to_even():
    """On e4m3 the nearest code is torch's own float8_e4m3fn cast, midpoints (the ties) and saturation included."""
    from qcompiler.runtime import tables

    mags = torch.tensor(tables._grid("e4m3")[1])
    v = torch.cat([torch.randn(20000) * 50, mags, (mags[1:] + mags[:-1]) / 2, -(mags[1:] + mags[:-1]) / 2,
                   torch.tensor([500.0, -1e4])])
    ours = tables.grid_values("e4m3")[tables.nearest_code(v, "e4m3").long()]
    assert torch.equal(ours, v.clamp(-448, 448).to(torch.float8_e4m3fn).float())


@pytest.mark.parametrize("alias", TABLE_SCHEMES)
def test_table_formats_store_each_weight_as_its_nearest_grid_value_under_its_block_scale(alias):
    """Against float64: every stored code is a nearest grid value of w / s (s as stored, saturating at the grid's
    largest value), the codes at the grid's bit width, and the dequantized weight is table[code]·s."""
    from qcompiler.runtime import tables

    torch.manual_seed(0)
    w = torch.randn(32, 256) * torch.logspace(-3, 1, 32)[:, None]
    spec = qc.config_from_string(alias).spec().weight
    t = spec.quantize(w)
    bits = tables.grid_bits(spec.grid)
    assert t["q"].shape == (32, 256 * bits // 8)
    codes = t["q"] if bits == 8 else qc.unpack_int(t["q"], bits, 256, signed=False)
    s = tables.table_scale(t["scale"], spec.scale_format, t.get("tensor_scale")).double()
    block = 256 if spec.block_size == -1 else spec.block_size
    s = s.repeat_interleave(block, dim=1)
    grid = tables.grid_values(spec.grid).double()
    finite = grid[~grid.isnan()]
    v = (w.double() / s).clamp(-float(finite.max()), float(finite.max()))
    best = (v[..., None] - finite).abs().amin(-1)
    chosen = (v - grid[codes.long()]).abs()
    assert bool((chosen <= best + 1e-9 * v.abs() + 1e-12).all())
    torch.testing.assert_close(spec.dequantize(t, 256, torch.float32).double(), grid[codes.long()] * s, rtol=1e-6,
                               atol=0)


def test_block_scales_follow_each_format():
    from qcompiler.runtime import tables

    torch.manual_seed(1)
    w = torch.randn(4, 64) * 3
    mx = qc.config_from_string("mxfp4").spec().weight.quantize(w)
    amax = w.abs().reshape(4, 2, 32).amax(-1)
    assert mx["scale"].dtype == torch.uint8  # e8m0: 2^(floor(log2 amax) - 2), e2m1's emax being 2
    assert torch.equal(mx["scale"].long() - 127, torch.floor(torch.log2(amax)).long() - 2)
    nv = qc.config_from_string("nvfp4").spec().weight.quantize(w)
    assert nv["scale"].dtype == torch.float8_e4m3fn and nv["tensor_scale"].shape == (1,)
    torch.testing.assert_close(nv["tensor_scale"], (w.abs().max() / (6 * 448)).reshape(1))
    block = w.abs().reshape(4, 4, 16).amax(-1) / 6 / nv["tensor_scale"]
    assert torch.equal(nv["scale"].float(), block.to(torch.float8_e4m3fn).float())
    fp6 = qc.config_from_string("fp6").spec().weight.quantize(w)
    assert fp6["scale"].dtype == torch.float16 and fp6["scale"].shape == (4, 1)
    torch.testing.assert_close(fp6["scale"], (w.abs().amax(1, keepdim=True) / 28).half())
    assert tables.grid_bits("e3m2") == 6


@pytest.mark.parametrize("alias", TABLE_SCHEMES)
def test_table_formats_lower_to_the_table_kernel_and_run_as_their_reference_program(alias):
    """Every fixed-table format on qcompiler.table_gemm (per-row grids of at most 4 bits on the codebook kernel,
    below), within the 16-bit rows of an int8 table (e2m1's values times 2) or float32 sums."""
    prog, low, x = two_layers(alias)
    # fpx-2-1 per row: the codebook kernel where K % 128 == 0 (the first layer), the table kernel for the other
    assert kernels(low) == ([CODEBOOK, TABLE_GEMM] if alias == "fpx-2-1" else [TABLE_GEMM] * 2)
    torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=1e-3, atol=1e-3)
    assert [r.scheme for r in qc.report(low).quantized] == [alias, alias]


def test_a_packaged_file_keeps_table_codes_at_their_width(every_kernel):
    """Packaging (freezing) must not fold the dequantization into float32 weights: the file conftest packages holds
    its nvfp4, mxfp8 and fp6 layers' codes as packed (4, 8 and 6 bits a weight), byte for byte, in its weights'
    blob; tests/test_cpp_runner.py and tests/test_deploy.py run it against the lowered program."""
    import zipfile

    path, io = every_kernel
    codes = torch.load(io)["table_codes"]
    d = 128
    assert sorted(t.numel() for t in codes.values()) == [d * d * 4 // 8, d * d * 6 // 8, d * d * 8 // 8]
    with zipfile.ZipFile(path) as z:
        blob = z.read(next(name for name in z.namelist() if name.endswith("_weights.blob")))
    for name, t in codes.items():
        assert t.numpy().tobytes() in blob, name


@pytest.mark.parametrize("alias", ["fpx-2-1", "fpx-3-0", "fpx-1-1"])
def test_per_row_fp4_and_below_run_on_the_lookup_table_kernel(alias):
    """A per-row grid of at most 4 bits whose values are integers at some power-of-two scale (e2m1 times 2) is a
    per-row int8 table: qcompiler.codebook_gemm runs it, as the reference computes it up to 16-bit activations."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64)).eval()  # K % 128
    x = torch.randn(5, 128)
    prog = qc.quantize(m, (x,), qc.config_from_string(alias))
    low = qc.lower(prog, "cpu")
    kernels = [r.kernel for r in qc.report(low).quantized]
    assert all(k.startswith("qcompiler.codebook_gemm") for k in kernels), kernels
    torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("alias", ["codebook-3-float", "codebook-8-float"])
def test_a_float_codebook_shared_by_every_row_runs_on_the_table_kernel(alias):
    """One float codebook for the whole tensor is a fixed table with scales of 1 (one per block of rows is not)."""
    prog, low, x = two_layers(alias)
    assert kernels(low) == [TABLE_GEMM] * 2
    torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=1e-4, atol=1e-4)
    _, blocks, _ = two_layers("codebook-4-16-float")
    assert "the table kernel takes one table" in qc.report(blocks).quantized[0].kernel_reason


def test_nvfp4_keeps_e2m1_as_its_table_and_scales_the_output_by_its_tensor_scale():
    """Folded into the table, NVFP4's tensor scale would turn e2m1's integers (times 2) into floats, which the
    kernel's integer path declines: the table stays the grid and the output is scaled."""
    from qcompiler.runtime import tables

    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 64).eval()
    x = torch.randn(3, 128)
    prog = qc.quantize(lin, (x,), qc.config_from_string("nvfp4"))
    low = qc.lower(prog, AVX512)
    gemm = next(n for n in low.graph.nodes if n.target == torch.ops.qcompiler.table_gemm.default)
    sig = low.graph_signature
    stored = {**sig.inputs_to_buffers, **sig.inputs_to_lifted_tensor_constants}[gemm.args[4].name]
    assert torch.equal({**low.state_dict, **low.constants}[stored], tables.grid_values("e2m1"))
    assert [n for n in gemm.users][0].target == torch.ops.aten.mul.Tensor
    torch.testing.assert_close(low.module()(x), prog.module()(x), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("alias", ["fpx-2-1", "mxfp4"])
def test_without_a_compiler_table_formats_decompose_and_say_why(alias, monkeypatch):
    """A check that takes a match with a payload (the per-row grid's int8 table, the fixed-table form) must still
    decline where qcompiler's kernels cannot be built."""
    from qcompiler.runtime import native

    monkeypatch.setattr(native, "cannot_build", lambda: "no compiler")
    prog, low, x = two_layers(alias)
    assert kernels(low) == ["decomposed"] * 2
    assert "qcompiler's C++ kernels cannot be built here (no compiler)" in qc.report(low).quantized[0].kernel_reason
    torch.testing.assert_close(low.module()(x), prog.module()(x))


def test_without_avx2_block_scaled_tables_decompose_and_say_why():
    lin = torch.nn.Linear(128, 64).eval()
    x = torch.randn(2, 128)
    prog = qc.quantize(lin, (x,), qc.config_from_string("mxfp4"))
    assert kernels(qc.lower(prog, qc.Target.parse("cpu:avx2"))) == [TABLE_GEMM]  # its AVX2 path
    low = qc.lower(prog, qc.Target.parse("cpu:none"))
    (r,) = qc.report(low).quantized
    assert r.kernel == "decomposed" and "block scales need the lookup-table kernel" in r.kernel_reason
    assert "target cpu:none lacks avx2" in r.kernel_reason
    torch.testing.assert_close(low.module()(x), prog.module()(x))
