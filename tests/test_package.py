"""Packaging with AOTInductor and loading: one round trip in a fresh process (packaging is slow), bad files."""
import json
import logging
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

import qcompiler as qc
import qcompiler.stages.package
from qcompiler.runtime import digests, native
from qcompiler.runtime.int4_layout import native_layout


def _quantized_mlp():
    """int4wo, int8wo and int8dq layers; the last one's 2048x2048 weight is large enough for oneDNN's prepacked
    kernel where this machine has VNNI (the others take torch._int_mm or ATen's packed kernels)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2048), torch.nn.ReLU(),
                                torch.nn.Linear(2048, 2048)).eval()
    recipe = qc.Recipe([("0", qc.Int4WeightOnlyConfig(group_size=32)), ("2", qc.Int8WeightOnlyConfig()),
                        ("4", qc.Int8DynamicActivationInt8WeightConfig())])
    dims = ({0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("seq", max=512)},)
    return qc.quantize(model, (torch.randn(2, 8, 64),), recipe, dynamic_shapes=dims)


def _lowered_with_atens_int4(program, target):
    """Lowered without qcompiler's C++ kernels: the int4 layer takes ATen's, whose weight layout depends on the
    machine, and the package runs with torch alone."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(native, "cannot_build", lambda: "switched off for this test")
        return qc.lower(program, target)


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    lowered = _lowered_with_atens_int4(_quantized_mlp(), "cpu")
    path = qc.package(lowered, tmp_path_factory.mktemp("pkg") / "mlp.pt2", portable=True)
    return lowered, path


def _run_script(script: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.getcwd(), **env})


def test_lowered_package_runs_in_a_fresh_process_that_imports_only_torch(packaged, tmp_path):
    prog, path = packaged
    xs = [torch.randn(b, t, 64) for b, t in ((2, 8), (1, 1), (33, 5), (3, 200))]  # batch and sequence stay dynamic
    torch.save({"xs": xs, "ys": [prog.module()(x) for x in xs]}, tmp_path / "io.pt")
    out = _run_script(f"""
        import sys, torch
        run = torch._inductor.aoti_load_package({str(path)!r})
        io = torch.load({str(tmp_path / 'io.pt')!r})
        for x, y in zip(io["xs"], io["ys"]):
            torch.testing.assert_close(run(x), y, rtol=1e-2, atol=1e-2)  # within bf16 rounding
        assert "qcompiler" not in sys.modules
        print("ok")
    """)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


@pytest.fixture(scope="module")
def packaged_for_any_x86(tmp_path_factory):
    """The same program lowered for a plain x86-64 target: scalar int4 layout, no vector ISA needed."""
    prog = _quantized_mlp()
    lowered = _lowered_with_atens_int4(prog, qc.Target("cpu"))
    return prog, qc.package(lowered, tmp_path_factory.mktemp("plain") / "mlp.pt2", portable=True)


def test_a_package_for_another_target_runs_there_and_is_repacked_here(packaged_for_any_x86, tmp_path, caplog):
    prog, path = packaged_for_any_x86
    meta = qc.load(path).metadata
    assert meta["target"] == {"backend": "cpu", "capabilities": []} and meta["needs"] == []
    assert meta["inductor_options"]["cpp.march"] == "x86-64" and meta["cpu_int4"]["layout"] == "pairs32"
    x = torch.randn(7, 4, 64)
    # here: ATen reads int4 weights in this machine's layout, so load repacks them (and logs it)
    with caplog.at_level(logging.INFO, logger="qcompiler"):
        torch.testing.assert_close(qc.load(path)(x), prog.module()(x), rtol=2e-2, atol=2e-2)
    if native_layout() != "pairs32":
        assert (f"repacking 1 int4 weights of mlp.pt2 from the 'pairs32' to the {native_layout()!r} layout"
                in caplog.text)
    # on a machine like the target (ATen without vector kernels): runs as packed
    torch.save({"x": x, "y": prog.module()(x)}, tmp_path / "io.pt")
    out = _run_script(f"""
        import torch, qcompiler as qc
        from qcompiler.runtime.int4_layout import native_layout
        assert native_layout() == "pairs32", native_layout()
        io = torch.load({str(tmp_path / 'io.pt')!r})
        torch.testing.assert_close(qc.load({str(path)!r})(io["x"]), io["y"], rtol=2e-2, atol=2e-2)
        print("ok")
    """, ATEN_CPU_CAPABILITY="default")
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
    assert "repacking" not in out.stderr


def test_qc_load_refuses_a_package_whose_code_this_machine_cannot_run(packaged):
    # packaged for this machine: -march=native code needs its vector ISA; ATen without it stands for an older machine
    _, path = packaged
    needs = qc.load(path).metadata["needs"]
    assert "avx2" in needs and set(needs) == set(qc.Target.host().capabilities)
    out = _run_script(f"""
        import qcompiler as qc
        qc.load({str(path)!r})
    """, ATEN_CPU_CAPABILITY="default")
    assert out.returncode != 0
    assert f"cannot run {path} here: it was compiled for {qc.Target.host()} and needs avx2" in out.stderr
    assert "which this machine lacks (it is cpu:none); lower and package it for a target this machine has" in out.stderr


def test_qc_load_refuses_int4_weights_packed_for_another_layout(packaged, tmp_path, monkeypatch):
    _, path = packaged
    meta = qc.load(path).metadata
    assert meta["cpu_int4"] == {"layout": native_layout(), "weights": ["0_int4pack"], "portable": True}
    moved = tmp_path / "moved.pt2"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(moved, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("qcompiler/metadata.json"):
                data = json.dumps({**meta, "cpu_int4": {**meta["cpu_int4"], "layout": "avx512", "portable": False}})
            if not item.filename.endswith(digests.DIGESTS):
                dst.writestr(item, data)
    digests.write_digests(moved)  # as packaged on that machine
    monkeypatch.setattr(qcompiler.stages.package, "native_layout", lambda: "avx2")
    with pytest.raises(ValueError, match=r"cannot run .*moved.pt2 here: its int4 weights were packed in the 'avx512' "
                                         r"layout and this machine's ATen reads int4 weights in the 'avx2' layout; "
                                         r"re-package it .* portable=True"):
        qc.load(moved)


def test_qc_load_runs_it_and_carries_the_report(packaged):
    prog, path = packaged
    run = qc.load(path)
    x = torch.randn(5, 3, 64)
    torch.testing.assert_close(run(x), prog.module()(x), rtol=1e-2, atol=1e-2)
    assert run.report == qc.report(prog)  # the kernels chosen for this machine, and why
    assert run.report.quantized[0].kernel == "aten._weight_int4pack_mm_for_cpu"
    vnni = qc.Target.host().has("vnni")  # oneDNN's prepacked weight, folded at packaging, stored once
    assert run.report.quantized[2].kernel == ("onednn.qlinear_pointwise (u8s8, VNNI, prepacked) (int8 activations)"
                                              if vnni else "aten._weight_int8pack_mm (int8 activations)")
    assert path.stat().st_size < 2048 * 2048 + 3_000_000  # the 4 MB int8 weight once, beside ~2 MB of code
    assert run.report.targets == (str(qc.Target.host()),)
    assert run.metadata["torch"] == torch.__version__


def test_packaging_leaves_no_copy_of_the_library_in_inductors_cache(packaged):
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    with zipfile.ZipFile(packaged[1]) as z:
        libraries = [Path(n).name for n in z.namelist() if n.endswith(".wrapper.so")]
    assert libraries
    left = [p for name in libraries for p in Path(cache_dir()).glob(f"*/{name}")]
    assert not left, f"AOTInductor's build folders were left behind: {left}"


def test_packaging_hands_aotinductor_the_weights_themselves_not_copies():
    """AOTInductor clones every buffer it lifts (for mutation); packaging re-registers the ones never written as
    parameters over the same storage, so no weight is held twice. A written buffer (a KV cache) stays a buffer."""
    from qcompiler.runtime import torch_warnings
    from qcompiler.runtime.artifact import _buffers_as_parameters, written_buffers

    class Cached(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Module()
            self.inner.register_buffer("codes", torch.randint(-8, 8, (4, 4), dtype=torch.int8))
            self.register_buffer("cache", torch.zeros(4))

        def forward(self, x):
            self.cache.add_(1)
            return x @ self.inner.codes.float() + self.cache

    exported = torch.export.export(Cached(), (torch.randn(2, 4),))
    with torch_warnings.held():
        functional = exported.run_decompositions()
    for program in (exported, functional):  # the write in place, and functional
        assert written_buffers(program) == {"cache"}
    gm = program.module(check_guards=False)
    codes = gm.inner.codes
    _buffers_as_parameters(gm, written_buffers(program))
    assert [n for n, _ in gm.named_parameters()] == ["inner.codes"]
    assert [n for n, _ in gm.named_buffers()] == ["cache"]
    assert gm.inner.codes.data_ptr() == codes.data_ptr() and not gm.inner.codes.requires_grad
    x, cache = torch.randn(2, 4), gm.cache.clone()
    assert torch.equal(gm(x), x @ codes.float() + cache + 1)


def test_the_loaded_report_says_where_unquantized_parts_run_in_another_dtype(tmp_path):
    meta = {"report": [], "unquantized": {"dtype": "bfloat16", "ops": 3}}
    rep = qc.Loaded(tmp_path / "m.pt2", None, meta).report
    assert (rep.unquantized_dtype, rep.unquantized_ops) == ("bfloat16", 3)
    assert qc.Loaded(tmp_path / "m.pt2", None, {"report": []}).report.unquantized_dtype is None  # older packages


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cannot load .*nothing.pt2: no such file"):
        qc.load(tmp_path / "nothing.pt2")


def test_truncated_file(packaged, tmp_path):
    _, path = packaged
    cut = tmp_path / "cut.pt2"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cannot load .*cut.pt2: not a .pt2 package"):
        qc.load(cut)


def test_foreign_files(tmp_path):
    text = tmp_path / "notes.pt2"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"cannot load .*notes.pt2: not a .pt2 package"):
        qc.load(text)
    other = tmp_path / "other.pt2"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("x/readme.txt", "not a model")
    with pytest.raises(ValueError, match=r"cannot load .*other.pt2: it holds no AOTInductor model"):
        qc.load(other)


def test_an_exported_program_file_is_named_as_such(tmp_path):
    saved = tmp_path / "program.pt2"
    torch.export.save(torch.export.export(torch.nn.Linear(4, 4), (torch.randn(1, 4),)), saved)
    with pytest.raises(ValueError, match=r"holds no AOTInductor model \(a torch.export.save file\? "
                                         r"load it with torch.export.load\)"):
        qc.load(saved)


def test_bad_package_paths(tmp_path):
    prog = qc.capture(torch.nn.Linear(4, 4), (torch.randn(1, 4),))
    with pytest.raises(ValueError, match="output path must end in .pt2"):
        qc.package(prog, tmp_path / "model.zip")
    with pytest.raises(ValueError, match=r"cannot write .*: folder .*missing does not exist"):
        qc.package(prog, tmp_path / "missing" / "model.pt2")


def test_a_failed_compile_leaves_nothing_behind(tmp_path, monkeypatch):
    prog = qc.capture(torch.nn.Linear(4, 4), (torch.randn(1, 4),))

    def broken(*args, **options):
        raise RuntimeError("compiler crashed")

    monkeypatch.setattr(torch._inductor, "aot_compile", broken)
    with pytest.raises(RuntimeError, match="compiler crashed"):
        qc.package(prog, tmp_path / "model.pt2")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_while_writing_the_archive_leaves_nothing_behind(tmp_path, monkeypatch):
    from qcompiler.runtime import artifact
    prog = qc.capture(torch.nn.Linear(4, 4), (torch.randn(1, 4),))
    store = artifact._store

    def disk_full(z, name, src, size):
        if name.endswith(".wrapper.so"):
            z.fp.write(b"partial")
            raise OSError("no space left on device")
        store(z, name, src, size)

    monkeypatch.setattr(artifact, "_store", disk_full)
    with pytest.raises(OSError, match="no space left"):
        qc.package(prog, tmp_path / "model.pt2")
    assert list(tmp_path.iterdir()) == []


def test_a_file_packaged_before_the_kernels_travelled_inside_still_loads_where_they_build(tmp_path, monkeypatch,
                                                                                          caplog):
    """Files from qcompiler 0.x called its kernels through the dispatcher (made here by packaging without the C
    shims): ``qc.load`` builds the kernels for them, with a warning to re-package, or refuses naming the file."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64)).eval()
    recipe = qc.Recipe([("0", qc.Int4WeightOnlyConfig(group_size=32)), ("2", qc.CodebookWeightOnlyConfig(4))])
    dims = ({0: torch.export.Dim("batch", max=128)},)
    lowered = qc.lower(qc.quantize(model, (torch.randn(2, 64),), recipe, dynamic_shapes=dims), "cpu")
    with monkeypatch.context() as patch:
        patch.setattr(native, "shim_options", lambda ops: {})
        path = qc.package(lowered, tmp_path / "old.pt2")
    with caplog.at_level(logging.WARNING, logger="qcompiler"):
        run = qc.load(path)
    assert run.metadata["native_ops_linked"] is False and "re-package it" in caplog.text
    x = torch.randn(5, 64)
    torch.testing.assert_close(run(x), lowered.module()(x), rtol=1e-5, atol=1e-5)
    plain = subprocess.run([sys.executable, "-c", f"import torch; torch._inductor.aoti_load_package({str(path)!r})"],
                           capture_output=True, text=True)  # a process that imports torch alone
    assert plain.returncode != 0 and "qcompiler::" in plain.stderr  # names the op it lacks
    monkeypatch.setattr(native, "unavailable", lambda: "no compiler")
    with pytest.raises(ValueError, match=r"cannot run .*old.pt2 here: it was packaged by qcompiler .*, and calls "
                                         r"qcompiler::codebook_gemm, qcompiler::int8_int4_gemm through PyTorch's "
                                         r"dispatcher; qcompiler's C\+\+ CPU kernels could not be built here "
                                         r"\(no compiler\). Re-package it"):
        qc.load(path)


class _Spec:
    """What ``_register_pytree_types`` reads of a loaded package: its call spec, naming a type."""

    class loader:
        @staticmethod
        def get_call_spec():
            return ['{"type": "registers_a_pytree_type.Pair", "context": "null", "children_spec": []}', "{}"]


def test_loading_imports_a_named_type_only_from_modules_the_caller_allows(tmp_path, monkeypatch):
    from qcompiler.runtime.artifact import _register_pytree_types
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.delitem(sys.modules, "registers_a_pytree_type", raising=False)
    path = tmp_path / "m.pt2"
    for allowed in ((), ("transformers", "registers_a_pytre")):  # a prefix of the name is not its module
        with pytest.raises(ValueError, match=r"cannot load .*m.pt2: its inputs or outputs are a "
                                             r"registers_a_pytree_type.Pair, which is not registered .*; import the "
                                             r"module that defines it first, or .*"
                                             r"allow_imports=\['registers_a_pytree_type'\]"):
            _register_pytree_types(path, _Spec, allowed)
        assert "registers_a_pytree_type" not in sys.modules  # the file chose nothing to import
    _register_pytree_types(path, _Spec, ("registers_a_pytree_type",))
    assert "registers_a_pytree_type.Pair" in torch.utils._pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE
    _register_pytree_types(path, _Spec, ())  # registered now: nothing to import


HOLD = """
import warnings
from qcompiler.runtime import torch_warnings
warnings.simplefilter("error", DeprecationWarning)
with torch_warnings.held():
    import torch._inductor.compile_fx
"""


@pytest.mark.parametrize("held", [True, False])
def test_inductors_import_warning_is_held_back(held):
    """Inductor's first import in a process (packaging's) raises torch's own torch.jit.script_method
    DeprecationWarning; held() drops it. A fresh process each: which test imports Inductor first in a worker is
    up to the scheduler. Unheld it must still warn (else qcompiler imports Inductor early, or torch dropped it)."""
    code = HOLD if held else HOLD.replace("with torch_warnings.held():", "if True:")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if held:
        assert done.returncode == 0, done.stderr[-2000:]
    else:
        assert done.returncode != 0 and "torch.jit.script_method" in done.stderr


def test_packaging_compiles_inside_the_hold(monkeypatch):
    """qc.package's AOTInductor call runs with torch's known warnings held back (the hold above)."""
    import warnings
    from qcompiler.runtime import artifact, torch_warnings

    seen = []

    def fake_aot_compile(gm, args, kwargs, options):
        seen.append({(message, category) for category, message in torch_warnings.KNOWN} <=
                    {(f[1].pattern if f[1] else None, f[2]) for f in warnings.filters if f[0] == "ignore"})
        return []

    monkeypatch.setattr(torch._inductor, "aot_compile", fake_aot_compile)
    program = torch.export.export(torch.nn.Linear(16, 16).eval(), (torch.randn(2, 16),))
    assert artifact._aot_compile(program, {}) == [] and seen == [True]
