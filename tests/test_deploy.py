"""Deployment: a .pt2 runs where only torch is installed, as a user's machine would run it (no compiler on PATH,
empty extension and Inductor caches, a process that imports nothing but torch)."""
import subprocess
import sys
import textwrap

import pytest
import torch

import qcompiler as qc
from qcompiler.runtime import native


def _bare_env(tmp_path, **extra) -> dict:
    """An environment with no compiler on PATH, empty caches and a fresh HOME: a deploy machine with torch alone."""
    for name in ("bin", "home", "inductor", "extensions"):
        (tmp_path / name).mkdir(exist_ok=True)
    return {"PATH": str(tmp_path / "bin"), "HOME": str(tmp_path / "home"),
            "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions"),
            **extra}


def _run_bare(script: str, env: dict) -> subprocess.CompletedProcess:
    # -I: no PYTHONPATH, no user site, not the current folder: only what is installed
    return subprocess.run([sys.executable, "-I", "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          env=env, cwd=env["HOME"], timeout=300)


def test_every_kernel_runs_with_torch_alone_and_no_compiler(every_kernel, tmp_path):
    path, io = every_kernel
    meta = qc.load(path).metadata
    ours = {"qcompiler::additive_gemm", "qcompiler::codebook_gemm", "qcompiler::int8_int4_gemm"}
    if qc.Target.host().has("avx2"):  # nvfp4's fixed-table kernel (decomposed below AVX2)
        ours.add("qcompiler::table_gemm")
    # int8dq and int8static take qcompiler::int8_gemm where the target has no VNNI (AVX2 machines); where it has AMX,
    # int8dq qcompiler::int8_tile_gemm_dq and the int8static pair int8_tile_gemm_requant then int8_tile_gemm; an ATen
    # GEMM elsewhere
    tile = {"qcompiler::int8_tile_gemm", "qcompiler::int8_tile_gemm_dq", "qcompiler::int8_tile_gemm_requant"}
    assert ours <= set(meta["native_ops"]) <= ours | {"qcompiler::int8_gemm"} | tile
    if qc.Target.host().has("amx"):
        assert tile <= set(meta["native_ops"])
    assert meta["native_ops_linked"] is True
    env = _bare_env(tmp_path)
    out = _run_bare(f"""
        import os, shutil, sys, torch
        assert not any(shutil.which(c) for c in ("cc", "gcc", "g++", "c++", "clang", "ninja")), "a compiler is here"
        run = torch._inductor.aoti_load_package({str(path)!r})
        io = torch.load({str(io)!r})
        for x, y in zip(io["xs"], io["ys"]):
            assert torch.equal(run(x), y), (x.shape, (run(x) - y).abs().max())
        assert "qcompiler" not in sys.modules
        assert not os.listdir({env["TORCH_EXTENSIONS_DIR"]!r}), "something was built"
        print("ok")
    """, env)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_the_kernels_inside_a_file_choose_their_instruction_set_where_it_runs(every_kernel, tmp_path, capability):
    """One file, every ISA path of its kernels: capped by ATEN_CPU_CAPABILITY in the deploying process."""
    if capability == "avx2" and torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip(f"this machine's ATen capability is {torch.backends.cpu.get_cpu_capability()}: no AVX2")
    path, io = every_kernel
    # the outputs were computed here: where this machine has AMX, int4 calls of 32 rows or more took bfloat16 tiles
    tolerances = [2e-2 if native.float_rows_path(len(x)) == "amx_bf16" else 1e-3 for x in torch.load(io)["xs"]]
    out = _run_bare(f"""
        import torch
        run = torch._inductor.aoti_load_package({str(path)!r})
        io = torch.load({str(io)!r})
        for x, y, tol in zip(io["xs"], io["ys"], {tolerances!r}):
            torch.testing.assert_close(run(x), y, rtol=tol, atol=tol)
        print(torch.backends.cpu.get_cpu_capability())
    """, _bare_env(tmp_path, ATEN_CPU_CAPABILITY=capability))
    assert out.returncode == 0 and out.stdout.strip() == capability.upper(), out.stderr[-3000:]


def test_c_declarations_follow_the_schemas_and_each_symbol_is_in_the_archive():
    if native.unavailable():
        pytest.skip(f"qcompiler's C++ kernels cannot be built here: {native.unavailable()}")
    symbols = subprocess.run(["nm", "--defined-only", str(native.archive())], capture_output=True, text=True,
                             check=True).stdout
    for op in native.NATIVE_OPS:
        declaration = native.c_declaration(op)
        name = declaration.split("(")[0].split()[-1]
        assert f" T {name}\n" in symbols, name
    assert native.c_declaration(native.NATIVE_OPS[0]) == (
        "AOTITorchError aoti_torch_cpu_int8_int4_gemm(AtenTensorHandle a, AtenTensorHandle* a_scale, "
        "AtenTensorHandle* a_zero, AtenTensorHandle w, AtenTensorHandle w_scale, AtenTensorHandle* w_offset, "
        "AtenTensorHandle* w_sums, int64_t group, AtenTensorHandle* ret0)")
    assert "register" not in subprocess.run(["ar", "t", str(native.archive())], capture_output=True, text=True,
                                            check=True).stdout
