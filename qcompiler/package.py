"""Package: a lowered (or reference) program into an AOTInductor ``.pt2``; load one back."""
import io
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from . import __version__
from .report import Report, report
from .runtime.dtypes import fail
from .runtime.inputs import describe_inputs
from .runtime.int4_layout import BY_NAME, int4_weights, native_layout, repack
from .runtime.package import load_package, read_member, write_package


def package(program: torch.export.ExportedProgram, path: Union[str, Path], portable: bool = False) -> Path:
    """Compile ``program`` with AOTInductor into ``path`` (must end in .pt2); return the path.

    The per-layer report travels inside the package (``qcompiler.load(path).report``
    and ``qcompiler inspect``). Nothing is left behind if compilation fails.

    ATen's packed int4 CPU weights are laid out for this machine's vector ISA (AVX2,
    AVX-512, ...). The package records that layout, and :func:`load` refuses to run it
    where ATen expects another. ``portable=True`` also stores the int4 weights beside
    the model (the package grows by their size), so that :func:`load` repacks them for
    the machine it runs on instead.
    """
    if not isinstance(program, torch.export.ExportedProgram):
        raise fail("program", "a torch.export.ExportedProgram (from qcompiler.convert or qcompiler.lower)", type(program).__name__)
    start = time.perf_counter()
    print(f"packaging {Path(path).name} with AOTInductor ...", file=sys.stderr, flush=True)
    metadata = {"qcompiler": __version__, "torch": torch.__version__, "report": report(program).to_dict(),
                "inputs": describe_inputs(program)}
    int4 = int4_weights(program)
    members = {}
    if int4:
        metadata["cpu_int4"] = {"layout": native_layout(), "weights": sorted(int4), "portable": portable}
        if portable:
            members[INT4_MEMBER] = _tensor_bytes(int4)
    out = write_package(program, path, metadata, members)
    print(f"packaged {out} ({out.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return out


class Loaded:
    """A loaded ``.pt2``: call it like the original program; ``.report`` is its per-layer report."""

    def __init__(self, path: Path, run: Callable, metadata: dict):
        self.path, self._run, self.metadata = path, run, metadata

    def __call__(self, *args, **kwargs):
        return self._run(*args, **kwargs)

    @property
    def report(self) -> Report:
        return Report.from_dict(self.metadata.get("report", []))


def load(path: Union[str, Path]) -> Loaded:
    """Load a ``.pt2`` written by :func:`package` (or any AOTInductor package) into a callable.

    A missing file raises FileNotFoundError; a truncated or foreign file raises
    ValueError; both messages name the file.
    """
    path = Path(path).resolve()
    run, metadata = load_package(path)
    _fit_int4_layout(path, run, metadata.get("cpu_int4"))
    return Loaded(path, run, metadata)


INT4_MEMBER = "int4_weights.pt"


def _tensor_bytes(tensors: dict) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in tensors.items()}, buf)
    return buf.getvalue()


def _fit_int4_layout(path: Path, run, int4: Optional[dict]) -> None:
    """Repack a package's int4 weights where this machine's ATen lays them out otherwise (or refuse)."""
    here = native_layout()
    if not int4 or int4["layout"] == here:
        return
    if not int4["portable"] or here is None or int4["layout"] not in BY_NAME:
        why = "ATen's int4 layout here is unknown" if here is None else f"this machine's ATen reads int4 weights in the {here!r} layout"
        raise ValueError(f"qcompiler: cannot run {path} here: its int4 weights were packed in the {int4['layout']!r} layout "
                         f"and {why}; re-package it on a machine like this one, or with qcompiler.package(..., portable=True)")
    stored = torch.load(io.BytesIO(read_member(path, INT4_MEMBER)), weights_only=True)
    print(f"repacking {len(stored)} int4 weights of {path.name} from the {int4['layout']!r} to the {here!r} layout",
          file=sys.stderr, flush=True)
    run.load_constants({name: repack(w, int4["layout"]) for name, w in stored.items()}, check_full_update=False)
