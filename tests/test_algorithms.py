"""GPTQ, HQQ, AWQ and SmoothQuant: each beats round-to-nearest where it applies, is deterministic,
keeps the storage format, lowers, and refuses combinations it does not support."""
import logging

import pytest
import torch

import qcompiler as qc
from small_models import Block


def outlier_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, 128, generator=g)
    x[..., :4] *= 20  # a few activation channels much larger than the rest, as in real transformers
    return x


def toy():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.LayerNorm(128), Block(128), torch.nn.LayerNorm(128),
                               torch.nn.Linear(128, 256)).eval()


CALIB = [(outlier_data(4, i),) for i in range(6)]
HELD_OUT = outlier_data(4, 100)


def output_sqnr(program, model):
    with torch.no_grad():
        ref, y = model(HELD_OUT), program.module()(HELD_OUT)
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - y).pow(2).sum()))


def quantize(scheme, model=None):
    return qc.quantize(model or toy(), (CALIB[0][0],), qc.config_from_string(scheme), calibration_data=CALIB)


@pytest.mark.parametrize("base,algorithm", [
    ("int4wo-64", "gptq"), ("int4wo-64", "hqq"), ("int4wo-64", "awq"), ("int8wo", "gptq"), ("codebook-3", "gptq"),
    ("codebook-4-float", "gptq"), ("int8dq", "smoothquant"), ("int8static", "smoothquant")])
def test_algorithm_beats_round_to_nearest_on_held_out_inputs(base, algorithm):
    model = toy()
    rtn, better = output_sqnr(quantize(base, model), model), output_sqnr(quantize(f"{base}+{algorithm}", model), model)
    assert better > rtn + 0.2, (rtn, better)


@pytest.mark.parametrize("scheme", ["int4wo-64+gptq", "codebook-3+gptq", "int4wo-64+awq", "int8static+smoothquant"])
def test_deterministic_and_stored_like_round_to_nearest(scheme):
    a, b = quantize(scheme), quantize(scheme)
    rtn = quantize(scheme.split("+")[0])
    stored = {k: v for k, v in a.state_dict.items() if "smoothed" not in k}
    for k, v in stored.items():
        assert torch.equal(v, b.state_dict[k]), k
    shapes = {k: (v.shape, v.dtype) for k, v in a.state_dict.items() if k.endswith((".q", ".scale", ".zero_point"))}
    assert shapes == {k: (v.shape, v.dtype) for k, v in rtn.state_dict.items()
                      if k.endswith((".q", ".scale", ".zero_point"))}


def test_gptq_act_order_keeps_groups_contiguous():
    model = toy()
    prog = qc.quantize(model, (CALIB[0][0],), qc.Int4WeightOnlyConfig(64, algorithm=qc.GPTQ(act_order=True)),
                       calibration_data=CALIB)
    assert output_sqnr(prog, model) > output_sqnr(quantize("int4wo-64", model), model)


def test_codebook_gptq_refits_its_tables_to_its_assignments():
    model = toy()

    def gptq(**settings):  # without coordinate descent, which also makes up for tables that do not move
        config = qc.CodebookWeightOnlyConfig(3, algorithm=qc.GPTQ(descend=0, **settings))
        return qc.quantize(model, (CALIB[0][0],), config, calibration_data=CALIB)

    fixed, refit = gptq(refit=0), gptq()
    assert output_sqnr(refit, model) > output_sqnr(fixed, model) + 0.2
    tables = {k: v for k, v in refit.state_dict.items() if k.endswith("_codebook")}
    assert tables and any(not torch.equal(v, fixed.state_dict[k]) for k, v in tables.items())


def test_gptq_damps_codebooks_more_than_affine_weights_by_default():
    from qcompiler.passes.gptq import DEFAULT_DAMP
    from qcompiler.passes.spec import AffineWeight, CodebookWeight
    assert DEFAULT_DAMP[AffineWeight] == 0.1 and DEFAULT_DAMP[CodebookWeight] == 0.3
    model = toy()
    default = quantize("codebook-3+gptq", model)
    explicit = qc.quantize(model, (CALIB[0][0],), qc.CodebookWeightOnlyConfig(3, algorithm=qc.GPTQ(damp=0.3)),
                           calibration_data=CALIB)
    assert all(torch.equal(v, explicit.state_dict[k]) for k, v in default.state_dict.items())


def test_codebook_descent_never_raises_the_error_and_its_blocks_are_exact():
    from qcompiler.passes.gptq import CodebookColumns
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(64, 48, generator=g), torch.randn(12, 48, generator=g)
    x[:, :3] *= 10
    h = x.T @ x
    rows = torch.sort(torch.randn(12, 8, generator=g), 1).values

    def error(cols):
        r = w - rows.gather(1, cols.idx.long())
        return float(((r @ h) * r).sum())

    def descended(sweeps, block):
        cols = CodebookColumns(rows).start(48)
        cols.idx = (rows[:, :, None] - w[:, None, :]).abs().argmin(1).to(torch.uint8)  # nearest entries
        cols.descend(w, h, sweeps, block)
        return cols

    errors = [error(descended(sweeps, 16)) for sweeps in (0, 1, 2)]
    assert errors[2] <= errors[1] < 0.9 * errors[0]
    assert torch.equal(descended(2, 16).idx, descended(2, 1).idx)  # a block's deferred updates change nothing


def two_subspaces(batches, seed):
    """Rows 3 mod 4 (the ones GPTQ holds back) use only the last 64 input channels, the others only the first 64."""
    x = torch.randn(batches, 16, 128, generator=torch.Generator().manual_seed(seed))
    held = torch.arange(16) % 4 == 3
    x[:, held, :64] = 0
    x[:, ~held, 64:] = 0
    return x


def test_gptq_never_keeps_a_layer_worse_than_round_to_nearest_on_rows_it_did_not_fit():
    # fitted on rows that never use half the inputs, error feedback moves all the error there
    torch.manual_seed(0)
    model, calibration, x = torch.nn.Linear(128, 64).eval(), [(two_subspaces(4, 0),)], two_subspaces(4, 9)

    def sqnr(algorithm):
        prog = qc.quantize(model, (calibration[0][0],), qc.CodebookWeightOnlyConfig(4, algorithm=algorithm),
                           calibration_data=calibration)
        with torch.no_grad():
            ref, out = model(x), prog.module()(x)
        return float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum())), prog
    rtn, _ = sqnr(None)
    (guarded, prog), (unguarded, _) = sqnr(qc.GPTQ(damp=0.1)), sqnr(qc.GPTQ(damp=0.1, guard=False))
    assert unguarded < rtn - 1 and guarded >= rtn
    note = qc.report(prog).quantized[0].algorithm_note
    assert note.startswith("round to nearest kept: GPTQ's error on held-back calibration rows was ")
    assert "with damp 0.1" in note and "with damp 0.5" in note and note.endswith("(64 rows for 128 inputs)")
    assert note in qc.report(prog).table()


def test_the_held_back_hessian_is_every_fourth_row():
    from qcompiler.passes.observe import RangeObserver
    obs = RangeObserver(features=8, hessian=True, held_out=True)
    x, more = torch.randn(3, 5, 8), torch.randn(7, 8)
    obs(x)
    obs(more)
    rows = torch.cat([x.reshape(-1, 8), more])
    torch.testing.assert_close(obs.hessian, rows.t() @ rows)
    torch.testing.assert_close(obs.hessian_held, rows[3::4].t() @ rows[3::4])
    assert obs.hessian_rows == 22 and obs.hessian_bytes == 2 * 8 * 8 * 4


def test_smoothing_folds_into_a_layer_norm_read_only_by_the_linear():
    prog = quantize("int8dq+smoothquant")
    muls = [n for n in prog.graph.nodes if n.target == torch.ops.aten.mul.Tensor]
    # both LayerNorms feed only a linear: 1/s went into their weight and bias; GELU's output takes a multiply
    assert [m.args[0].target for m in muls] == [torch.ops.aten.gelu.default]
    norms = [n for n in prog.graph.nodes if n.target == torch.ops.aten.layer_norm.default]
    assert len(norms) == 2 and all("smoothed" in n.args[2].target for n in norms)


def test_smoothing_inserts_a_multiply_where_the_input_is_read_elsewhere_too():
    class Residual(torch.nn.Module):  # post-norm: the norm's output feeds the residual as well
        def __init__(self):
            super().__init__()
            self.norm, self.fc = torch.nn.LayerNorm(128), torch.nn.Linear(128, 128)

        def forward(self, x):
            h = self.norm(x)
            return h + self.fc(h)
    torch.manual_seed(0)
    model = Residual().eval()
    prog = qc.quantize(model, (CALIB[0][0],), qc.config_from_string("int8dq+smoothquant"), calibration_data=CALIB)
    assert sum(n.target == torch.ops.aten.mul.Tensor for n in prog.graph.nodes) == 1
    assert output_sqnr(prog, model) > output_sqnr(quantize("int8dq", model), model)


@pytest.mark.parametrize("scheme", ["int4wo-64+gptq", "int8dq+smoothquant", "int4wo-64+awq", "codebook-4+gptq"])
def test_algorithm_programs_lower_for_the_cpu(scheme):
    prog = quantize(scheme)
    low = qc.lower(prog, "cpu")
    assert all(r.kernel != "decomposed" for r in qc.report(low).quantized)  # a fused kernel took every layer
    with torch.no_grad():
        ref, y = prog.module()(HELD_OUT), low.module()(HELD_OUT)
    assert ((ref - y).norm() / ref.norm()) < 2e-2  # the CPU kernels run in bf16: int8dq is 1.2% off with or without it


@pytest.mark.parametrize("make,message", [
    (lambda: qc.Int4WeightOnlyConfig(64, algorithm=qc.SmoothQuant()),
     r"SmoothQuant does not apply to int4wo-64\+smoothquant"),
    (lambda: qc.Int8DynamicActivationInt8WeightConfig(algorithm=qc.GPTQ()), r"GPTQ does not apply to int8dq"),
    (lambda: qc.config_from_string("fp8wo+gptq"),
     r"GPTQ does not apply to fp8wo; it supports int8wo, int4wo, codebook"),
    (lambda: qc.config_from_string("int4wo-64+magic"), r"algorithm must be one of gptq, hqq, awq, smoothquant"),
    (lambda: qc.Int4WeightOnlyConfig(64, "int", algorithm=qc.HQQ()), r"HQQ optimizes a float zero point"),
    (lambda: qc.GPTQ(damp=2.0), r"damp must be"),
    (lambda: qc.SmoothQuant(alpha=1.5), r"alpha must be"),
    (lambda: qc.Int8WeightOnlyConfig(algorithm="gptq"), r"algorithm must be None or one of"),
])
def test_bad_combinations_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("scheme,message", [("int4wo-64+gptq", "uses GPTQ, which needs calibration"),
                                            ("int8dq+smoothquant", "SmoothQuant needs calibration")])
def test_missing_calibration_is_a_clear_error(scheme, message):
    with pytest.raises(ValueError, match=message):
        qc.quantize(toy(), (CALIB[0][0],), qc.config_from_string(scheme))


def test_linears_sharing_an_input_must_share_the_smoothing():
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(128, 64), torch.nn.Linear(128, 64)

        def forward(self, x):
            return self.a(x) + self.b(x)
    recipe = qc.Recipe([("a", qc.Int8DynamicActivationInt8WeightConfig(algorithm=qc.SmoothQuant())),
                        ("b", qc.Int8DynamicActivationInt8WeightConfig())])
    with pytest.raises(ValueError, match="give them all the same algorithm"):
        qc.quantize(Two().eval(), (CALIB[0][0],), recipe, calibration_data=CALIB)


@pytest.mark.parametrize("scheme", ["int4wo-64+gptq", "int4wo-64+awq", "codebook-3+gptq"])
def test_hessian_windows_bound_memory_and_give_the_same_weights(scheme, caplog):
    """A budget below one Hessian: one pass over the data per observed input, each solved and freed."""
    config = qc.config_from_string(scheme)
    whole = quantize(scheme)
    prepared = qc.prepare(qc.capture(toy(), (CALIB[0][0],)), config)
    with caplog.at_level(logging.INFO, logger="qcompiler"):
        qc.calibrate(prepared, CALIB, hessian_budget_mb=0.01)
    assert "Hessian window 3/3" in caplog.text
    windowed = qc.convert(prepared)
    for k, v in whole.state_dict.items():
        assert torch.allclose(v.float(), windowed.state_dict[k].float(), atol=1e-6), k


def test_an_algorithm_is_one_class_implementing_the_protocol(monkeypatch):
    """A new algorithm: a frozen dataclass subclassing Algorithm, registered; configs and quantize take it by name."""
    import dataclasses
    from typing import ClassVar

    from qcompiler.passes.algorithm import REGISTRY, Algorithm, register

    @dataclasses.dataclass(frozen=True)
    class Clip(Algorithm):  # round to nearest after clipping each row at 90% of its range
        name: ClassVar[str] = "clip"

        def unsupported(self, spec):  # what it serves, by what the spec is: per-channel affine weights
            weight = spec.weight
            if spec.activation is None and getattr(weight, "group_size", 0) is None:
                return None
            return "Clip clips the rows of per-channel affine weights of weight-only schemes"

        def quantize_weight(self, spec, w, stats):
            top = 0.9 * w.abs().amax(1, keepdim=True)
            return spec.quantize(torch.maximum(torch.minimum(w, top), -top))

    monkeypatch.setitem(REGISTRY, "clip", Clip)
    config = qc.config_from_string("int8wo+clip")
    assert config.algorithm == Clip() and not qc.needs_calibration(config)
    lin = torch.nn.Linear(32, 16).eval()
    prog = qc.quantize(lin, (torch.randn(2, 32),), config)
    rtn = qc.quantize(lin, (torch.randn(2, 32),), qc.Int8WeightOnlyConfig())
    clipped, plain = ([v for v in p.state_dict.values() if v.dtype == torch.int8] for p in (prog, rtn))
    assert len(clipped) == 1 and not torch.equal(clipped[0], plain[0])  # Clip chose the stored values
    with pytest.raises(ValueError, match="Clip does not apply to int4wo-64.*; it applies to int8wo$"):
        qc.Int4WeightOnlyConfig(64, algorithm=Clip())
    with pytest.raises(TypeError, match="must subclass Algorithm and set a name"):
        register(type("Nameless", (Algorithm,), {}))
