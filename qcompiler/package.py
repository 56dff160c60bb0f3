"""Package: a lowered (or reference) program into an AOTInductor ``.pt2``; load one back."""
import sys
import time
from pathlib import Path
from typing import Callable, Union

import torch

from . import __version__
from .report import Report, report
from .runtime.dtypes import fail
from .runtime.package import load_package, write_package


def package(program: torch.export.ExportedProgram, path: Union[str, Path]) -> Path:
    """Compile ``program`` with AOTInductor into ``path`` (must end in .pt2); return the path.

    The per-layer report travels inside the package (``qcompiler.load(path).report``
    and ``qcompiler inspect``). Nothing is left behind if compilation fails.
    """
    if not isinstance(program, torch.export.ExportedProgram):
        raise fail("program", "a torch.export.ExportedProgram (from qcompiler.convert or qcompiler.lower)", type(program).__name__)
    start = time.perf_counter()
    print(f"packaging {Path(path).name} with AOTInductor ...", file=sys.stderr, flush=True)
    metadata = {"qcompiler": __version__, "torch": torch.__version__, "report": report(program).to_dict()}
    out = write_package(program, path, metadata)
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
    return Loaded(path, run, metadata)
