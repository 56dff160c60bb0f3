"""Files qcompiler writes: save a (reference) program, and open either kind of ``.pt2`` to read what it holds.

A ``.pt2`` is an AOTInductor package (:func:`qcompiler.package`) or a saved program
(:func:`save`, ``torch.export.save``). :func:`open_artifact` tells them apart and returns
the per-layer report, the input description and, if asked, a callable that runs the file.
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from .stages.package import load as load_package
from .stages.report import Report, report
from .runtime.artifact import check_writable, file_kind, package_metadata, save_program
from .runtime.inputs import describe_inputs

__all__ = ["Artifact", "check_writable", "open_artifact", "save"]


def save(program: torch.export.ExportedProgram, path: Union[str, Path]) -> Path:
    """``torch.export.save`` ``program`` to ``path`` (must end in .pt2), all or nothing; return the path.

    Use it for a reference (unlowered) program, which loads anywhere with ``torch.export.load``
    once ``qcompiler`` is imported; :func:`qcompiler.package` compiles a lowered one instead."""
    return save_program(program, path)


@dataclass(frozen=True)
class Artifact:
    """A ``.pt2`` and what it holds: its kind, per-layer report, input description and (if loaded) a callable."""

    path: Path
    kind: str  # "package" or "program"
    report: Report
    inputs: Optional[dict]  # describe_inputs' form; None for packages qcompiler did not write
    metadata: dict
    run: Optional[Callable] = None

    @property
    def size(self) -> int:
        return os.path.getsize(self.path)


def open_artifact(path: Union[str, Path], load: bool = True, allow_imports: Sequence[str] = ()) -> Artifact:
    """Read ``path``'s report and inputs; with ``load``, also a callable that runs it (``allow_imports``: modules a
    package's input and output types may be imported from, as :func:`qcompiler.load` takes them)."""
    path = Path(path).resolve()
    if file_kind(path) == "package":
        run = load_package(path, allow_imports=allow_imports) if load else None  # checks the file, reads metadata once
        metadata = run.metadata if run is not None else package_metadata(path)
        rep = Report.from_dict(metadata.get("report", []))
        return Artifact(path, "package", rep, metadata.get("inputs"), metadata, run)
    program = _load_program(path)
    meta = {"torch": torch.__version__}
    return Artifact(path, "program", report(program), describe_inputs(program), meta,
                    program.module() if load else None)


def _load_program(path: Path) -> torch.export.ExportedProgram:
    try:  # qcompiler's ops, the CUDA backend's Triton ones included, are registered by importing qcompiler
        return torch.export.load(str(path))
    except Exception as e:
        raise ValueError(f"qcompiler: cannot load the program in {path}: {e}") from e
