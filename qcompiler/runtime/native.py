"""qcompiler's own C++ CPU kernels (``runtime/csrc``): compiled once per machine where programs are lowered
and packaged; carried inside every ``.pt2`` that calls them.

The ops' schemas and fake implementations are defined in Python (so programs that call them
can be traced, lowered and packaged anywhere). Their CPU implementations are built from ``csrc/*.cpp``
with ``torch.utils.cpp_extension`` (a C++ compiler, which AOTInductor needs anyway) into PyTorch's
extension cache, once per machine and source version, and serve two uses:

    native.load()            # the dispatcher's kernels in this process: runs a lowered program eagerly
                             # (done by a kernel's first eager call; lowering never builds)
    native.unavailable()     # None, or why the library could not be built or loaded here (builds)
    native.cannot_build()    # the same question without building (a compiler and ninja found?)
    native.archive()         # the same kernels as a static library of C shims (``csrc/shims.cpp``)
    native.shim_options(ops) # the AOTInductor options that link that library into a model's .so

Packaging links the archive into the model's shared library, and the generated code calls each kernel
as a C function: the ``.pt2`` then runs where only torch is installed, in Python or C++
(``AOTIModelPackageLoader``), with nothing compiled or registered at load. The kernels (``int8_int4_gemm``,
``int8_gemm``, ``int8_tile_gemm``, ``codebook_gemm``, ``table_gemm``, ``additive_gemm``, ``cache_attention``) pick
their instruction set per call (AMX for the larger calls, AVX512-VNNI, AVX2, plain C++) from the CPU and
``ATEN_CPU_CAPABILITY``, so one build, and one file, serves every x86 machine.
"""
import contextlib
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils._pytree import tree_leaves

log = logging.getLogger(__name__)

CSRC = Path(__file__).parent / "csrc"
# The longest compiles first (ninja starts jobs in this order), so a 2-core build's jobs end together.
SLOWEST = ("table_gemm.cpp", "int8_int4_gemm.cpp", "table_gemm_int.cpp")
SOURCES = sorted(CSRC.glob("*.cpp"),
                 key=lambda s: (SLOWEST.index(s.name) if s.name in SLOWEST else len(SLOWEST), s.name))
HEADERS = sorted(CSRC.glob("*.h"))
LIBRARY = "qcompiler_cpu_kernels"
ARCHIVE = "libqcompiler_cpu_kernels_shims.a"
REGISTRATION = "register.cpp"  # the dispatcher's registrations: in the eager library, never in a model's .so
CFLAGS = ("-O3", "-fopenmp", "-fvisibility=hidden", "-fvisibility-inlines-hidden")


def _native_ops() -> tuple:
    from . import additive_gemm, cache_attention, codebook_gemm, int8_gemm, int8_int4, int8_tile_gemm, table_gemm
    return (int8_int4.OP, int8_gemm.OP, codebook_gemm.OP, table_gemm.OP, additive_gemm.OP, int8_tile_gemm.OP,
            int8_tile_gemm.DQ_OP, int8_tile_gemm.REQUANT_OP, cache_attention.OP)


@functools.lru_cache(maxsize=None)
def _build() -> Optional[str]:
    """Compile (or find in the cache) and load the library; None, or the reason it failed."""
    from torch.utils import cpp_extension
    start = time.perf_counter()
    log.debug("loading qcompiler's C++ CPU kernels (%s; built once per machine and source version)",
              ", ".join(s.name for s in SOURCES))
    try:
        cpp_extension.load(name=LIBRARY, sources=[str(s) for s in SOURCES], extra_ldflags=["-fopenmp"],
                           extra_cflags=[*CFLAGS, f"-DQC_HEADERS_HASH={_headers_hash()}"],
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


def cannot_build() -> Optional[str]:
    """Why qcompiler's C++ CPU kernels could not be built here, without building anything: the build's outcome
    where this process has tried it, else None where a C++ compiler and ninja are found (what
    ``torch.utils.cpp_extension`` and AOTInductor's packaging need). Lowering asks this; the build itself waits
    for the first eager call of a kernel (:func:`load`) or for packaging."""
    if _build.cache_info().currsize:
        return _build()
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler}) on PATH"
    from torch.utils import cpp_extension
    if not cpp_extension.is_ninja_available():
        return "no ninja on PATH"
    return None


def load() -> None:
    """Build and load qcompiler's C++ CPU kernels, or raise saying why they are not available."""
    reason = unavailable()
    if reason:
        raise RuntimeError(f"qcompiler: its C++ CPU kernels could not be built here ({reason}); a C++ compiler "
                           "(the one AOTInductor uses) is needed once per machine")


@functools.lru_cache(maxsize=None)
def archive() -> Path:
    """The kernels and their C shims as a static library (``-fPIC`` objects of the same build, less the
    dispatcher's registrations), which packaging links into a model's ``.so``; built once per build."""
    load()
    from torch.utils import cpp_extension
    folder = Path(cpp_extension._get_build_directory(LIBRARY, verbose=False))
    objects = [folder / f"{s.stem}.o" for s in SOURCES if s.name != REGISTRATION]
    absent = [o.name for o in objects if not o.is_file()]
    if absent:
        raise RuntimeError(f"qcompiler: the kernels' build in {folder} lacks {', '.join(absent)}")
    out = folder / ARCHIVE
    if not out.is_file() or out.stat().st_mtime < max(o.stat().st_mtime for o in objects):
        tool = shutil.which("gcc-ar") or shutil.which("ar")
        if tool is None:
            raise RuntimeError("qcompiler: no 'ar' to archive its C++ kernels (binutils, installed with the compiler)")
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run([tool, "rcs", str(tmp), *map(str, objects)], check=True, capture_output=True)
        os.replace(tmp, out)
    return out


_C_TYPES = {"Tensor": "AtenTensorHandle", "Optional[Tensor]": "AtenTensorHandle*", "int": "int64_t", "float": "double"}


def c_declaration(op: torch._ops.OpOverload) -> str:
    """The C function AOTInductor's generated code calls for ``op`` (``aoti_torch_cpu_<name>``): the schema's
    arguments in order (Tensor as a handle, Tensor? as a pointer to one, int as int64_t, float as double), the result
    last."""
    args = []
    for a in op._schema.arguments:
        kind = str(a.type)
        if kind not in _C_TYPES:
            raise TypeError(f"qcompiler: {op} has an argument {a.name} of type {kind}, which its C shim cannot take")
        args.append(f"{_C_TYPES[kind]} {a.name}")
    if [str(r.type) for r in op._schema.returns] != ["Tensor"]:
        raise TypeError(f"qcompiler: {op} must return one Tensor to have a C shim")
    name = op._schema.name.split("::")[-1]
    return f"AOTITorchError aoti_torch_cpu_{name}({', '.join(args)}, AtenTensorHandle* ret0)"


def shim_options(ops) -> dict:
    """AOTInductor options that make a model's generated code call ``ops`` (native ops, by name) through their C
    shims, linked from :func:`archive` into the model's ``.so``; ``{}`` for no ops. Use with :func:`linkable`."""
    chosen = [op for op in NATIVE_OPS if op._schema.name in set(ops)]
    if not chosen:
        return {}
    return {"aot_inductor.custom_ops_to_c_shims": {op: [c_declaration(op)] for op in chosen},
            "aot_inductor.custom_op_libs": [f":{archive().name}"]}


@contextlib.contextmanager
def linkable():
    """While packaging: the linker finds :func:`archive` (its folder on ``LIBRARY_PATH``, restored after)."""
    before = os.environ.get("LIBRARY_PATH")
    folder = str(archive().parent)
    os.environ["LIBRARY_PATH"] = folder if not before else f"{folder}{os.pathsep}{before}"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LIBRARY_PATH", None)
        else:
            os.environ["LIBRARY_PATH"] = before


def kernel_path() -> str:
    """The instruction set ``int8_int4_gemm`` runs with in this process: ``avx512_vnni``, ``avx2`` or ``scalar``
    (``int8_gemm`` has no VNNI path: it runs its AVX2 one where this says either)."""
    load()
    return torch.ops.qcompiler_native.int8_int4_gemm_path()


def float_rows_path(rows: int) -> str:
    """Where ``rows`` float32 rows go in the weight-only kernels (``int8_int4_gemm``, which takes its int8 rows there
    too, and ``int8_tile_gemm``) in this process: ``amx_bf16`` (weights decoded to bfloat16 and multiplied on AMX
    tiles, from 32 rows on an AMX machine), else :func:`kernel_path`'s answer."""
    load()
    return torch.ops.qcompiler_native.float_rows_path(rows)


def tile_gemm_path(rows: int) -> str:
    """The path ``int8_tile_gemm`` takes for ``rows`` rows in this process: ``amx`` (AMX-INT8 tiles through
    oneDNN's brgemm, for enough rows), ``avx512_vnni``, ``avx2`` or ``scalar``."""
    load()
    return torch.ops.qcompiler_native.int8_tile_gemm_path(rows)


def native_ops(program: torch.export.ExportedProgram) -> list:
    """The qcompiler ops with C++ kernels that ``program`` calls (sorted names; empty when none)."""
    return sorted({node.target._schema.name for node in program.graph.nodes
                   if node.op == "call_function" and node.target in NATIVE_OPS})


NATIVE_OPS = _native_ops()


def _loads_then_calls(op: torch._ops.OpOverload) -> Callable:
    """The kernel ``op`` has until the C++ library is loaded: it loads it (building once per machine), whose
    CPU kernel then takes the call, and every later one (the dispatcher prefers a backend's own kernel)."""
    def first_call(*args, **kwargs):
        devices = {t.device.type for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        if devices - {"cpu"}:
            raise NotImplementedError(f"{op}: qcompiler's C++ kernel runs on the CPU, not {sorted(devices - {'cpu'})}")
        load()
        if not torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CPU"):
            raise RuntimeError(f"qcompiler: its C++ library loaded without a CPU kernel for {op}")
        return op(*args, **kwargs)
    return first_call


# a registry: each native op's first-call loader (CompositeExplicitAutograd: used until a CPU kernel exists)
_LOADERS = torch.library.Library("qcompiler", "IMPL")
for _op in NATIVE_OPS:
    _LOADERS.impl(_op._schema.name.split("::")[-1], _loads_then_calls(_op), "CompositeExplicitAutograd")
