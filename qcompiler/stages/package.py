"""Package: a lowered (or reference) program into an AOTInductor ``.pt2``; load one back."""
import contextlib
import io
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from .. import __version__
from ..llm.capture_lm import LM_METADATA_KEY, lm_shape
from .report import Report, report
from ..passes.progress import HeldBack
from ..runtime.errors import fail
from ..runtime.inputs import describe_inputs
from ..runtime import native
from ..runtime.int4_layout import BY_NAME, LAYOUT_OF_ISA, int4_weights, native_layout, repack
from ..runtime.artifact import load_package, read_member, write_package
from ..runtime.digests import DIGESTS
from ..runtime.target import Target, code_needs, compile_options, missing

log = logging.getLogger(__name__)
log.addFilter(HeldBack())

# Inductor options every package is compiled with, chosen by measurement (docs/cpu-kernels.md):
# freezing folds weights into the compiled code as constants and lets Inductor prepack them.
INDUCTOR_OPTIONS = {"freezing": True}
# Where a CPU package keeps its weights: one blob beside the model's .so, which the loader maps, copies and unmaps,
# instead of inside the .so, whose mapped pages stayed resident beside the copy (2.16x the file while running
# against 1.17x; benchmarks/bench_deploy.py).
CPU_WEIGHTS = {"aot_inductor.package_constants_in_so": False,
               "aot_inductor.package_constants_on_disk_format": "binary_blob"}


def package(program: torch.export.ExportedProgram, path: Union[str, Path], portable: bool = False,
            inductor_options: Optional[dict] = None) -> Path:
    """Compile ``program`` with AOTInductor into ``path`` (must end in .pt2); return the path.

    The per-layer report travels inside the package (``qcompiler.load(path).report``
    and ``qcompiler inspect``), with the target the program was lowered for and the
    capabilities its kernels need. Nothing is left behind if compilation fails.
    ``inductor_options`` are added to ``INDUCTOR_OPTIONS`` (freezing on); compilation
    runs under ``torch.no_grad()``, without which AOTInductor ignores freezing.

    ATen's packed int4 CPU weights are laid out for the target's vector ISA (AVX2,
    AVX-512, ...). The package records that layout, and :func:`load` refuses to run it
    where ATen expects another. ``portable=True`` also stores the int4 weights beside
    the model (the package grows by their size), so that :func:`load` repacks them for
    the machine it runs on instead.
    """
    if not isinstance(program, torch.export.ExportedProgram):
        raise fail("program", "a torch.export.ExportedProgram (from qcompiler.convert or qcompiler.lower)",
                   type(program).__name__)
    start = time.perf_counter()
    log.info("packaging %s with AOTInductor ...", Path(path).name)
    rep = report(program)
    target = _lowered_for(rep)
    compiled_for = target or Target.host()
    options = {**INDUCTOR_OPTIONS, **(CPU_WEIGHTS if compiled_for.backend == "cpu" else {}),
               **compile_options(compiled_for), **(inductor_options or {})}
    metadata = {"qcompiler": __version__, "torch": torch.__version__, "digests": DIGESTS, "report": rep.to_dict(),
                "unquantized": {"dtype": rep.unquantized_dtype, "ops": rep.unquantized_ops},
                "inputs": describe_inputs(program), "inductor_options": options}
    if target is not None:
        metadata["target"] = target.to_json()
        metadata["needs"] = sorted(code_needs(target))
    lm = lm_shape(program.named_buffers(), program.graph_signature.user_inputs)
    if lm is not None:  # qcompiler.generate reads it from either loader
        metadata["lm"] = lm
        options["aot_inductor.metadata"] = {LM_METADATA_KEY: json.dumps(lm)}
    ops = native.native_ops(program)
    shims = native.shim_options(ops)  # linked into the model's .so as C functions: the file needs torch alone
    if ops:
        metadata["native_ops"] = ops
        metadata["native_ops_linked"] = bool(shims)
    int4 = int4_weights(program)
    members = {}
    if int4:
        isa = Target.from_json(metadata["target"]).aten_isa if "target" in metadata else None
        layout = LAYOUT_OF_ISA[isa] if isa else native_layout()
        metadata["cpu_int4"] = {"layout": layout, "weights": sorted(int4), "portable": portable}
        if portable:
            members[INT4_MEMBER] = _tensor_bytes(int4)
    with torch.no_grad(), native.linkable() if ops else contextlib.nullcontext():
        out = write_package(program, path, metadata, members, {**options, **shims})
    log.info("packaged %s (%.1f MB) in %.0f s", out, out.stat().st_size / 1e6, time.perf_counter() - start)
    return out


def _lowered_for(rep: Report) -> Optional[Target]:
    """The target the program was lowered for (None if it was not lowered)."""
    targets = rep.targets
    if len(targets) > 1:
        raise ValueError(f"qcompiler: the program's layers were lowered for different targets ({', '.join(targets)}); "
                         "lower the whole program once, for one target")
    return Target.parse(targets[0]) if targets else None


class Loaded:
    """A loaded ``.pt2``: call it like the original program; ``.report`` is its per-layer report."""

    def __init__(self, path: Path, run: Callable, metadata: dict):
        self.path, self._run, self.metadata = path, run, metadata

    def __call__(self, *args, **kwargs):
        return self._run(*args, **kwargs)

    @property
    def report(self) -> Report:
        unquantized = self.metadata.get("unquantized") or {}
        return replace(Report.from_dict(self.metadata.get("report", [])), unquantized_dtype=unquantized.get("dtype"),
                       unquantized_ops=unquantized.get("ops", 0))


def load(path: Union[str, Path], *, allow_imports: Sequence[str] = (), map_weights: bool = True) -> Loaded:
    """Load a ``.pt2`` written by :func:`package` (or any AOTInductor package) into a callable.

    Inputs and outputs of a type the package names (e.g. a transformers ``ModelOutput``) must be
    registered with ``torch.utils._pytree`` before loading: import the module that defines them, or
    name it (or a package above it) in ``allow_imports`` and ``load`` imports it. A file never
    chooses on its own which installed code is imported; an unregistered type is refused, named.

    A missing file raises FileNotFoundError; a truncated or foreign file raises
    ValueError; both messages name the file. A package compiled for a target whose
    code this machine cannot run (``needs`` in its metadata: e.g. ``avx512`` for code
    built with ``-march=native`` on an AVX-512 machine) is refused, naming what is
    missing. One whose kernels were chosen for a capability this machine lacks (e.g.
    ``vnni``) runs, slower, with a warning. Packed int4 weights laid out for another
    vector ISA are never run as they are: they are repacked (``portable=True``
    packages) or refused. Every member is checked against the digests recorded at packaging
    before the file's library is loaded.

    ``map_weights`` (default True): a CPU package's weights are read from a private (copy-on-write)
    mapping of the file, as the model runs, instead of copied into memory at load (which peaks at
    twice the file); see :mod:`qcompiler.runtime.mapped`. Don't change a loaded file in place
    (replacing it, as :func:`package` does, is fine).
    """
    path = Path(path).resolve()
    run, metadata = load_package(path, allow_imports, map_weights, check=lambda meta: _check_target(path, meta))
    _load_native_ops(path, metadata)
    _fit_int4_layout(path, run, metadata.get("cpu_int4"))
    return Loaded(path, run, metadata)


def _check_target(path: Path, metadata: dict) -> None:
    if "target" not in metadata:
        return
    target = Target.from_json(metadata["target"])
    here = Target.host(target.backend)
    lacking = missing(target, metadata.get("needs", ()))
    if lacking:
        raise ValueError(f"qcompiler: cannot run {path} here: it was compiled for {target} and needs "
                         f"{', '.join(lacking)}, which this machine lacks (it is {here}); lower and package it "
                         f"for a target this machine has, e.g. qcompiler.lower(program, {str(here)!r})")
    slower = missing(target, target.capabilities)
    if slower:
        log.warning("qcompiler: %s was lowered for %s; this machine lacks %s: its kernels run, slower", path, target,
                    ", ".join(slower))


def _load_native_ops(path: Path, metadata: dict) -> None:
    """A file packaged before qcompiler linked its C++ kernels into the model (0.x: ``native_ops`` without
    ``native_ops_linked``) calls them through the dispatcher: build and load them, or refuse naming the file."""
    ops = metadata.get("native_ops", ())
    if not ops or metadata.get("native_ops_linked"):
        return
    reason = native.unavailable()
    if reason:
        raise ValueError(f"qcompiler: cannot run {path} here: it was packaged by qcompiler "
                         f"{metadata.get('qcompiler', '?')}, and calls {', '.join(ops)} through PyTorch's dispatcher; "
                         f"qcompiler's C++ CPU kernels could not be built here ({reason}). Re-package it with this "
                         "qcompiler: the kernels then travel inside the file")
    log.warning("qcompiler: %s calls qcompiler's C++ kernels through the dispatcher (packaged by qcompiler %s); "
                "re-package it so that it runs with torch alone", path, metadata.get("qcompiler", "?"))


INT4_MEMBER = "int4_weights.pt"


def _tensor_bytes(tensors: dict) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in tensors.items()}, buf)
    return buf.getvalue()


def _fit_int4_layout(path: Path, run, int4: Optional[dict]) -> None:
    """Repack a package's int4 weights where this machine's ATen lays them out otherwise (or refuse)."""
    if not int4:  # most files: no ATen int4 weights, and no probe of ATen's layout (it holds 17 MB after)
        return
    here = native_layout()
    if int4["layout"] == here:
        return
    if not int4["portable"] or here is None or int4["layout"] not in BY_NAME:
        why = ("ATen's int4 layout here is unknown" if here is None
               else f"this machine's ATen reads int4 weights in the {here!r} layout")
        raise ValueError(f"qcompiler: cannot run {path} here: its int4 weights were packed in the "
                         f"{int4['layout']!r} layout and {why}; re-package it on a machine like this one, "
                         f"or with qcompiler.package(..., portable=True)")
    stored = torch.load(io.BytesIO(read_member(path, INT4_MEMBER)), weights_only=True)
    log.info("repacking %d int4 weights of %s from the %r to the %r layout", len(stored), path.name, int4["layout"],
             here)
    run.load_constants({name: repack(w, int4["layout"]) for name, w in stored.items()}, check_full_update=False)
