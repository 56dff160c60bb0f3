"""Packaging with AOTInductor, and loading a ``.pt2`` back into a callable.

A package is AOTInductor's zip archive plus ``<name>/qcompiler/metadata.json``
(the per-layer report and what made it), which the AOTInductor loader ignores.
Writing goes to a temporary file beside the target, renamed into place at the end,
so a failure never leaves a half-written package. Loading checks the file first,
so a missing, truncated or foreign file fails with a message naming it.
"""
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import torch

METADATA = "qcompiler/metadata.json"


def _writable_target(path: Path) -> None:
    if path.suffix != ".pt2":
        raise ValueError(f"qcompiler: package path must end in .pt2; got {str(path)!r}")
    if not path.parent.is_dir():
        raise ValueError(f"qcompiler: cannot write {path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"qcompiler: cannot write {path}: permission denied")


def write_package(program: torch.export.ExportedProgram, path: Union[str, Path], metadata: dict,
                  members: Optional[Dict[str, bytes]] = None) -> Path:
    """AOTInductor-compile ``program`` into ``path`` (.pt2) with ``metadata`` (and ``members``) beside the model."""
    path = Path(path).resolve()
    _writable_target(path)
    fd, tmp = tempfile.mkstemp(suffix=".pt2", prefix=f".{path.stem}.", dir=path.parent)
    os.close(fd)
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=tmp)
        with zipfile.ZipFile(tmp, "a") as z:
            root = z.namelist()[0].split("/", 1)[0]
            z.writestr(f"{root}/{METADATA}", json.dumps(metadata, indent=1))
            for name, data in (members or {}).items():
                z.writestr(f"{root}/qcompiler/{name}", data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _check_package(path: Path) -> dict:
    """Check ``path`` is an intact AOTInductor package; return its qcompiler metadata ({} if none)."""
    if not path.is_file():
        raise FileNotFoundError(f"qcompiler: cannot load {path}: no such file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"qcompiler: cannot load {path}: not a .pt2 package (not a zip archive: truncated, or another kind of file)")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        if not any("/data/aotinductor/" in n for n in names):
            hint = " (a torch.export.save file? load it with torch.export.load)" if any(n.endswith("models/model.json") for n in names) else ""
            raise ValueError(f"qcompiler: cannot load {path}: it holds no AOTInductor model{hint}")
        bad = z.testzip()
        if bad is not None:
            raise ValueError(f"qcompiler: cannot load {path}: member {bad} is corrupt")
        meta = [n for n in names if n.endswith(METADATA)]
        return json.loads(z.read(meta[0])) if meta else {}


def load_package(path: Union[str, Path]) -> Tuple[Callable, dict]:
    """Check and load a ``.pt2``: a callable taking the program's inputs, and the qcompiler metadata."""
    path = Path(path).resolve()
    metadata = _check_package(path)
    try:
        return torch._inductor.aoti_load_package(str(path)), metadata
    except Exception as e:  # the loader raises RuntimeError for any broken archive
        raise ValueError(f"qcompiler: cannot load {path}: {e}") from e


def read_member(path: Union[str, Path], name: str) -> Optional[bytes]:
    """The bytes of ``qcompiler/<name>`` stored by :func:`write_package` in ``path``, or None."""
    with zipfile.ZipFile(path) as z:
        found = [n for n in z.namelist() if n.endswith(f"/qcompiler/{name}")]
        return z.read(found[0]) if found else None
