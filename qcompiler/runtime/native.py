"""qcompiler's own C++ CPU kernels (``runtime/csrc``): compiled once per machine, loaded on first use.

The ops' schemas and fake implementations are defined in Python (so programs that call them
can be traced, lowered and packaged anywhere); their CPU implementations live in a library
built from ``csrc/*.cpp`` with ``torch.utils.cpp_extension`` (a C++ compiler, which
AOTInductor needs anyway) into PyTorch's extension cache, and loaded into the process:

    native.load()            # compiles the first time (tens of seconds), then loads from the cache
    native.unavailable()     # None, or why the library could not be built or loaded here

A ``.pt2`` that calls these ops needs them loaded before it runs: ``qcompiler.load`` does it.
The kernels (``int8_int4_gemm``, ``int8_gemm``, ``codebook_gemm``, ``additive_gemm``) pick their instruction
set per call (AVX512-VNNI, AVX2, plain C++) from the CPU and ``ATEN_CPU_CAPABILITY``, so one build serves every
x86 machine.
"""
import functools
import hashlib
import logging
import time
from pathlib import Path
from typing import Optional

import torch

log = logging.getLogger(__name__)

CSRC = Path(__file__).parent / "csrc"
SOURCES = sorted(CSRC.glob("*.cpp"))
HEADERS = sorted(CSRC.glob("*.h"))
LIBRARY = "qcompiler_cpu_kernels"


def _native_ops() -> tuple:
    from . import additive_gemm, codebook_gemm, int8_gemm, int8_int4
    return (int8_int4.OP, int8_gemm.OP, codebook_gemm.OP, additive_gemm.OP)


@functools.lru_cache(maxsize=None)
def _build() -> Optional[str]:
    """Compile (or find in the cache) and load the library; None, or the reason it failed."""
    from torch.utils import cpp_extension
    start = time.perf_counter()
    log.debug("loading qcompiler's C++ CPU kernels (%s; built once per machine and source version)",
              ", ".join(s.name for s in SOURCES))
    try:
        cpp_extension.load(name=LIBRARY, sources=[str(s) for s in SOURCES], extra_ldflags=["-fopenmp"],
                           extra_cflags=["-O3", "-fopenmp", f"-DQC_HEADERS_HASH={_headers_hash()}"],
                           is_python_module=False, verbose=False)
    except Exception as e:  # no compiler, a failed build: the rules that need these kernels decline with this
        text = str(e).strip().splitlines()
        return f"{type(e).__name__}: {text[-1] if text else ''}"[:300]
    seconds = time.perf_counter() - start
    log.log(logging.INFO if seconds > 1 else logging.DEBUG, "qcompiler's C++ CPU kernels ready in %.1f s%s", seconds,
            " (built: once per machine and source version)" if seconds > 1 else " (from the build cache)")
    return None


def _headers_hash() -> str:
    """A hash of the kernels' headers: PyTorch's extension cache rebuilds when sources or flags change, and this
    flag makes a changed header change the flags."""
    return hashlib.sha256(b"".join(h.read_bytes() for h in HEADERS)).hexdigest()[:16]


def unavailable() -> Optional[str]:
    """Why qcompiler's C++ CPU kernels cannot run in this process (None when they can); builds them if needed."""
    return _build()


def load() -> None:
    """Build and load qcompiler's C++ CPU kernels, or raise saying why they are not available."""
    reason = unavailable()
    if reason:
        raise RuntimeError(f"qcompiler: its C++ CPU kernels could not be built here ({reason}); a C++ compiler "
                           "(the one AOTInductor uses) is needed once per machine")


def kernel_path() -> str:
    """The instruction set ``int8_int4_gemm`` runs with in this process: ``avx512_vnni``, ``avx2`` or ``scalar``
    (``int8_gemm`` has no VNNI path: it runs its AVX2 one where this says either)."""
    load()
    return torch.ops.qcompiler_native.int8_int4_gemm_path()


def native_ops(program: torch.export.ExportedProgram) -> list:
    """The qcompiler ops with C++ kernels that ``program`` calls (sorted names; empty when none)."""
    return sorted({node.target._schema.name for node in program.graph.nodes
                   if node.op == "call_function" and node.target in NATIVE_OPS})


NATIVE_OPS = _native_ops()
