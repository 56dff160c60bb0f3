"""Running a kernel test script with ATen's CPU capability capped: every instruction-set path, on any machine."""
import os
import subprocess
import sys


def run_capped(script: str, capability: str, **env: str) -> list:
    """The words ``script`` prints, run in a fresh process with ``ATEN_CPU_CAPABILITY=capability`` (and ``env``)."""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd(), "ATEN_CPU_CAPABILITY": capability, **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split()


def capped_path(capability: str) -> str:
    """The path qcompiler's kernels take under ``capability`` ("avx2" or "default") on this machine."""
    return "avx2" if capability == "avx2" and " avx2 " in open("/proc/cpuinfo").read() else "scalar"
