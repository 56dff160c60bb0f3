"""quantize / capture / prepare / convert end to end on small models, for every config."""
import io
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import qcompiler as qc
from small_models import mixed_case, mlp_case

CONFIGS = [qc.Int8WeightOnlyConfig(), qc.Int8DynamicActivationInt8WeightConfig(), qc.Int4WeightOnlyConfig(32),
           qc.Int4WeightOnlyConfig(64, zero_point_domain="int"), qc.Int4WeightOnlyConfig(32, zero_point_domain="none"),
           qc.Int8DynamicActivationInt4WeightConfig(32), qc.CodebookWeightOnlyConfig(4),
           qc.CodebookWeightOnlyConfig(3, block_rows=16), qc.Float8WeightOnlyConfig(),
           qc.Float8DynamicActivationFloat8WeightConfig(), qc.Int8StaticActivationInt8WeightConfig()]
MIN_COSINE = {"codebook-3-16": 0.97, "int8wo": 0.9999, "int8dq": 0.999, "int8static": 0.999,
              "fp8wo": 0.999, "fp8dq": 0.998}


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), 0).item()


def qcompiler_ops(prog):
    return [str(n.target) for n in prog.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("qcompiler.")]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.alias + getattr(c, "zero_point_domain", ""))
def test_every_config_end_to_end_with_dynamic_shapes(config):
    model, args, dyn = mlp_case()
    calib = [(torch.randn(8, 64),) for _ in range(4)]
    prog = qc.quantize(model, args, config, dynamic_shapes=dyn, calibration_data=calib)
    assert isinstance(prog, torch.export.ExportedProgram)
    assert qcompiler_ops(prog), "the reference pattern reads qcompiler:: ops"
    for batch in (4, 1, 17):
        x = torch.randn(batch, 64)
        assert cosine(prog.module()(x), model(x)) > MIN_COSINE.get(config.alias, 0.99)
    rep = qc.report(prog)
    assert [r.name for r in rep.quantized] == ["0.fc1", "0.fc2", "2"]
    assert all(r.scheme == config.alias and r.kernel == "reference" and r.sqnr_db > 10 for r in rep.quantized)
    assert all(r.bytes_after < r.bytes_before / 1.9 for r in rep.quantized)
    # the float weights are gone from the program: only quantized forms are stored
    float_weights = [k for k, v in prog.state_dict.items() if k.endswith("weight")]
    assert float_weights == []


def test_weights_are_stored_packed_in_quantized_form():
    model, args, dyn = mlp_case()
    prog = qc.quantize(model, args, qc.Int4WeightOnlyConfig(32), dynamic_shapes=dyn)
    stored = {k: (tuple(v.shape), v.dtype) for k, v in {**prog.state_dict, **prog.constants}.items()}
    assert stored["0_fc1_q"] == ((128, 32), torch.uint8)  # 128 x 64 int4 -> two per byte
    assert stored["0_fc1_scale"] == ((128, 2), torch.bfloat16)
    assert stored["0_fc1_zero_point"] == ((128, 2), torch.bfloat16)


def test_mixed_model_skips_with_reasons_and_stores_shared_weights_once():
    model, args, dyn = mixed_case()
    prog = qc.quantize(model, args, qc.Int4WeightOnlyConfig(32), dynamic_shapes=dyn)
    rep = qc.report(prog)
    names = {r.name: r for r in rep.layers}
    assert names["odd"].skipped == "int4wo-32: input size 48 is not a multiple of group size 32"
    assert ([r.skipped for r in rep.skipped if r.skipped.endswith("run time")]
            == ["int4wo-32: weight is computed at run time"])
    assert names["shared"].scheme == "int4wo-32"  # called twice, one row, one stored weight
    assert sum(1 for k in prog.state_dict if k.startswith("shared_q")) == 1
    assert names["head"].scheme == "int4wo-32"
    # the head's float weight is tied to the embedding, which still reads it: it stays, once
    assert sum(1 for v in prog.state_dict.values() if tuple(v.shape) == (96, 64)) == 1
    for batch, seq in ((2, 8), (3, 5)):
        ids = torch.randint(0, 96, (batch, seq))
        assert cosine(prog.module()(ids), model(ids)) > 0.99
    text = rep.table()
    assert "blocks.0.fc1" in text and "skipped odd: int4wo-32: input size 48" in text


def test_tied_weights_used_only_by_linears_are_stored_once():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(64, 64)
            self.b = torch.nn.Linear(64, 64)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    model = Tied().eval()
    prog = qc.quantize(model, (torch.randn(2, 64),), qc.Int8WeightOnlyConfig())
    assert [k for k in prog.state_dict if k.endswith("_q")] == ["a_q"]
    assert [r.name for r in qc.report(prog).quantized] == ["a, b"]
    x = torch.randn(2, 64)  # captured without dynamic shapes: batch 2 only
    assert cosine(prog.module()(x), model(x)) > 0.9999


def test_static_config_needs_calibration():
    model, args, dyn = mlp_case()
    prepared = qc.prepare(qc.capture(model, args, dynamic_shapes=dyn), qc.Int8StaticActivationInt8WeightConfig())
    with pytest.raises(ValueError, match="needs calibration, but its observer saw no data"):
        qc.convert(prepared)


@pytest.mark.parametrize("observer", ["minmax", "moving_average"])
def test_stages_one_by_one_with_calibration(observer):
    model, args, dyn = mlp_case()
    program = qc.capture(model, args, dynamic_shapes=dyn)
    prepared = qc.prepare(program, qc.Int8StaticActivationInt8WeightConfig(observer=observer))
    data = [torch.randn(8, 64) for _ in range(5)]
    for x in data:
        prepared(x)  # calibrate by calling it
    observers = [m for n, m in prepared.named_modules() if n.startswith("qcompiler_observer_")]
    assert len(observers) == 3 and all(o.calibrated for o in observers)
    lo = min(x.min() for x in data)
    assert (observers[0].lo.item() == pytest.approx(lo.item()) if observer == "minmax"
            else observers[0].lo.item() > lo.item())
    prog = qc.convert(prepared)
    assert not any("observer" in n.name for n in prog.graph.nodes)
    x = torch.randn(8, 64)
    assert cosine(prog.module()(x), model(x)) > 0.999


def test_calibration_items_may_carry_keyword_arguments():
    class KW(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 64)

        def forward(self, x, *, scale):
            return self.fc(x) * scale

    model = KW().eval()
    prog = qc.quantize(model, (torch.randn(2, 64),), qc.Int8StaticActivationInt8WeightConfig(),
                       example_kwargs={"scale": torch.tensor(2.0)},
                       calibration_data=[((torch.randn(2, 64),), {"scale": torch.tensor(2.0)})])
    x = torch.randn(2, 64)
    assert cosine(prog.module()(x, scale=torch.tensor(2.0)), model(x, scale=torch.tensor(2.0))) > 0.999


def test_save_and_load_in_a_fresh_process(tmp_path):
    model, args, dyn = mixed_case()
    prog = qc.quantize(model, args, qc.Int4WeightOnlyConfig(32), dynamic_shapes=dyn)
    path = tmp_path / "mixed.pt2"
    torch.export.save(prog, path)
    ids = torch.randint(0, 96, (3, 6))
    torch.save({"ids": ids, "out": prog.module()(ids)}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import torch, qcompiler as qc
        prog = torch.export.load({str(path)!r})
        io = torch.load({str(tmp_path / 'io.pt')!r})
        assert torch.equal(prog.module()(io["ids"]), io["out"])
        rep = qc.report(prog)
        assert any(r.name == "blocks.0.fc1" and r.scheme == "int4wo-32" for r in rep.layers), rep.table()
        assert any(r.skipped for r in rep.layers)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_int4_file_is_small():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 1024, bias=False), torch.nn.Linear(1024, 1024, bias=False)).eval()
    prog = qc.quantize(model, (torch.randn(1, 1024),), qc.Int4WeightOnlyConfig(128))
    buf = io.BytesIO()
    torch.export.save(prog, buf)
    bits_per_weight = len(buf.getvalue()) * 8 / (2 * 1024 * 1024)
    # 4 bits + (bf16 scale + bf16 zero point) / 128 = 4.25 bits, plus the program's own bytes
    assert 4.25 <= bits_per_weight < 4.5, bits_per_weight


def test_matmul_and_addmm_forms_of_a_linear_are_quantized():
    class Forms(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = torch.nn.Parameter(torch.randn(64, 64) * 0.1)
            self.w2 = torch.nn.Parameter(torch.randn(64, 64) * 0.1)
            self.b2 = torch.nn.Parameter(torch.randn(64) * 0.1)
            self.w3 = torch.nn.Parameter(torch.randn(32, 64) * 0.1)

        def forward(self, x):
            x = torch.mm(x, self.w1.t())
            x = torch.addmm(self.b2, x, self.w2.t())
            return torch.matmul(x, self.w3.t())

    model = Forms().eval()
    prog = qc.quantize(model, (torch.randn(4, 64),), qc.Int8WeightOnlyConfig())
    assert len(qc.report(prog).quantized) == 3
    assert all(k.endswith(("_q", "_scale", "b2")) for k in prog.state_dict)
    x = torch.randn(4, 64)
    assert cosine(prog.module()(x), model(x)) > 0.9999


def test_progress_is_logged_every_tenth_of_the_work_and_never_printed(caplog, capsys):
    from qcompiler.passes.progress import progress
    with caplog.at_level(logging.INFO, logger="qcompiler.progress"):
        assert list(progress(range(20), "work")) == list(range(20))
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [f"work: {i}/20" for i in (1, *range(2, 21, 2))]
    assert capsys.readouterr() == ("", "")


def test_each_layer_carries_one_typed_record_that_the_report_reads_and_lowering_updates():
    from qcompiler.passes import record
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16)).eval()
    prog = qc.quantize(m, (torch.randn(2, 64),), qc.Recipe([("0", qc.Int8WeightOnlyConfig())]))
    records = [r for r in (record.read(n) for n in prog.graph.nodes) if r is not None]
    assert [(r.name, r.kernel, r.skipped is None) for r in records] == [("0", "reference", True), ("2", None, False)]
    assert all(record.LayerRecord.from_json(r.to_json()) == r for r in records)
    assert qc.report(prog).layers == (records[0], records[1])  # the report's rows are the records
    lowered = [r for r in (record.read(n) for n in qc.lower(prog, "cpu:avx2").graph.nodes) if r is not None]
    assert lowered[0] == records[0].updated(kernel=lowered[0].kernel, kernel_reason=lowered[0].kernel_reason,
                                            target="cpu:avx2", bytes_after=lowered[0].bytes_after)
    assert lowered[0].kernel != "reference" and lowered[1] == records[1]
    # programs saved before the record was typed wrote "layer" and a "shared" flag
    old = record.LayerRecord.from_json('{"layer": "fc", "scheme": "int8wo", "kernel": "reference", "shared": true}')
    assert old == record.LayerRecord("fc", "int8wo", "reference")
