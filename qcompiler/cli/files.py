"""Opening what the command line writes: a ``.pt2`` package or a saved (reference) program."""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..report import Report, report
from ..runtime.inputs import describe_inputs
from ..runtime.artifact import file_kind, package_metadata


@dataclass(frozen=True)
class Artifact:
    """A file and what it holds: its kind, per-layer report, input description and (if loaded) a callable."""

    path: Path
    kind: str  # "package" or "program"
    report: Report
    inputs: Optional[dict]
    metadata: dict
    run: Optional[Callable] = None

    @property
    def size(self) -> int:
        return os.path.getsize(self.path)


def open_artifact(path, load: bool = True, allow_imports: Sequence[str] = ()) -> Artifact:
    """Read ``path``'s report and inputs; with ``load``, also a callable that runs it (``allow_imports``: modules a
    package's input and output types may be imported from, as ``qcompiler.load`` takes them)."""
    path = Path(path).resolve()
    kind = file_kind(path)
    if kind == "package":
        from ..package import load as load_package
        run = load_package(path, allow_imports=allow_imports) if load else None  # checks the file and reads its metadata once
        metadata = run.metadata if load else package_metadata(path)
        return Artifact(path, kind, Report.from_dict(metadata.get("report", [])), metadata.get("inputs"), metadata, run)
    program = _load_program(path)
    meta = {"torch": torch.__version__}
    return Artifact(path, kind, report(program), describe_inputs(program), meta, program.module() if load else None)


def _load_program(path: Path) -> torch.export.ExportedProgram:
    try:  # qcompiler's ops, the CUDA backend's Triton ones included, are registered by importing qcompiler
        return torch.export.load(str(path))
    except Exception as e:
        raise ValueError(f"qcompiler: cannot load the program in {path}: {e}") from e
