"""The artifact format: packaging with AOTInductor, and loading a ``.pt2`` back into a callable.

A package is AOTInductor's zip archive plus ``<name>/qcompiler/metadata.json``
(the per-layer report and what made it), which the AOTInductor loader ignores.
Writing goes to a temporary file beside the target, renamed into place at the end,
so a failure never leaves a half-written package. Loading checks the file first,
so a missing, truncated or foreign file fails with a message naming it.
"""
import contextlib
import gc
import importlib
import io
import json
import logging
import os
import re
import shutil
import struct
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch._inductor.runtime.cache_dir_utils import cache_dir
from torch.export.pt2_archive.constants import (
    AOTINDUCTOR_DIR,
    ARCHIVE_FORMAT_PATH,
    ARCHIVE_FORMAT_VALUE,
    ARCHIVE_VERSION_PATH,
    ARCHIVE_VERSION_VALUE,
    CONSTANTS_DIR,
    CUSTOM_OBJ_FILENAME_PREFIX,
)

from . import torch_warnings
from .digests import DIGESTS, MAX_METADATA_BYTES, verify, write_digests
from .mapped import try_load_mapped

METADATA = "qcompiler/metadata.json"

log = logging.getLogger(__name__)


def check_writable(path: Union[str, Path]) -> Path:
    """``path`` resolved, if a ``.pt2`` can be written there; else ValueError saying why."""
    path = Path(path).resolve()
    if path.suffix != ".pt2":
        raise ValueError(f"qcompiler: output path must end in .pt2; got {str(path)!r}")
    if not path.parent.is_dir():
        raise ValueError(f"qcompiler: cannot write {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise ValueError(f"qcompiler: cannot write {path}: it is a folder")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"qcompiler: cannot write {path}: permission denied")
    return path


@contextlib.contextmanager
def atomic_write(path: Union[str, Path]) -> Iterator[str]:
    """Yield a temporary file name beside ``path``; rename it to ``path`` if the block succeeds,
    remove it if not, so a failure never leaves a half-written file."""
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(suffix=".pt2", prefix=f".{path.stem}.", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_package(program: torch.export.ExportedProgram, path: Union[str, Path], metadata: dict,
                  members: Optional[Dict[str, bytes]] = None, inductor_options: Optional[dict] = None) -> Path:
    """AOTInductor-compile ``program`` (with ``inductor_options``) into ``path`` (.pt2), with ``metadata``
    (and ``members``) beside the model.

    What ``torch._inductor.aoti_compile_and_package`` does, in two steps of our own: ``aot_compile`` writes
    the model's files, then :func:`_write_archive` streams them into the archive. torch's packager reads
    each file whole into memory to write it (the weights blob: 1x the model, while the compiler's buffer of
    serialized weights could still be held: packaging a 7B-shaped int4 model added 2.4x its file)."""
    with atomic_write(path) as tmp:
        files = _aot_compile(program, inductor_options or {})
        gc.collect()  # the compiler's serialized weights, should a reference cycle still hold them
        _write_archive(tmp, files, Path(path).stem)
        with zipfile.ZipFile(tmp, "a") as z:
            _remove_build_folders(z.namelist())
            root = z.namelist()[0].split("/", 1)[0]
            for name, data in {METADATA: json.dumps(metadata, indent=1).encode(),
                               **{f"qcompiler/{n}": d for n, d in (members or {}).items()}}.items():
                _store(z, f"{root}/{name}", io.BytesIO(data), len(data))
        write_digests(tmp)
    return Path(path).resolve()


def _aot_compile(program: torch.export.ExportedProgram, options: dict) -> list:
    """AOTInductor's files for ``program`` (paths), as ``aoti_compile_and_package`` compiles them."""
    gm = program.module(check_guards=False)
    _buffers_as_parameters(gm, written_buffers(program))
    args, kwargs = program.example_inputs
    with torch_warnings.held():
        files = torch._inductor.aot_compile(gm, args, kwargs, options={**options, "aot_inductor.package": True})
    odd = [f for f in files if not isinstance(f, str)]
    if odd:
        raise ValueError(f"qcompiler: AOTInductor returned {type(odd[0]).__name__} among its files; qcompiler packages "
                         "files only (package_constants_on_disk_format='pickle_weights' is not supported)")
    return [f for f in files if f]


def written_buffers(program: torch.export.ExportedProgram) -> set:
    """The buffers ``program`` writes: those its signature says it mutates (a functional graph), and those an
    in-place op takes as a mutable argument (a graph export left in-place)."""
    signature = program.graph_signature
    written = set(signature.buffers_to_mutate.values())
    for node in program.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None or not schema.is_mutable:
            continue
        for arg, value in zip(schema.arguments, node.args):
            if arg.is_write and isinstance(value, torch.fx.Node) and value.name in signature.inputs_to_buffers:
                written.add(signature.inputs_to_buffers[value.name])
    return written


def _buffers_as_parameters(gm: torch.nn.Module, mutated: set) -> None:
    """Re-register ``gm``'s buffers that the program never writes as parameters over the same storage.

    AOTInductor clones every buffer it lifts, to keep the initial value of one the program mutates
    (``compile_fx._unlift_graph``); it clones no parameter. Our weights are buffers (integer tensors), so
    packaging held a second copy of every weight until the end (+1x the file, measured on an int4 MLP).
    Frozen either way, the compiled model is the same; mutated buffers (an LM's KV cache) stay buffers."""
    for name, buffer in list(gm.named_buffers()):
        if name in mutated:
            continue
        owner, _, attr = name.rpartition(".")
        module = gm.get_submodule(owner)
        del module._buffers[attr]
        module._non_persistent_buffers_set.discard(attr)
        module.register_parameter(attr, torch.nn.Parameter(buffer, requires_grad=False))


def _write_archive(path: str, files: Sequence[str], root: str) -> None:
    """The PT2 archive torch's ``package_aoti`` writes, every member stored, streamed from its file and aligned
    at 64 bytes (the weights can be mapped in place), under the folder ``root`` (torch's: the final file's name
    without .pt2, not the temporary file's). An empty weights blob (a model with no weights) is left out:
    AOTInductor's loader cannot map 0 bytes, and loads a model without one as a model without weights."""
    with zipfile.ZipFile(path, "w") as z:
        for name, text in ((ARCHIVE_FORMAT_PATH, ARCHIVE_FORMAT_VALUE), (ARCHIVE_VERSION_PATH, ARCHIVE_VERSION_VALUE),
                           (".data/version", "6\n"), ("byteorder", sys.byteorder)):
            _store(z, f"{root}/{name}", io.BytesIO(text.encode()), len(text.encode()))
        for file in files:
            base, size = os.path.basename(file), os.path.getsize(file)
            if base.endswith("_weights.blob") and size == 0:
                continue
            folder = CONSTANTS_DIR if base.startswith(CUSTOM_OBJ_FILENAME_PREFIX) else f"{AOTINDUCTOR_DIR}model/"
            with open(file, "rb") as src:
                _store(z, f"{root}/{folder}{base}", src, size)


ALIGNMENT = 64  # bytes: where each member's data starts, as torch's PyTorchFileWriter aligns them
_PADDING_ID = 0x4246  # an extra field of padding before the data ("FB", as torch's writer uses)


def _store(z: zipfile.ZipFile, name: str, src, size: int) -> None:
    """Append ``size`` bytes read from ``src`` as member ``name``, stored, its data at a multiple of ALIGNMENT."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    zip64 = size > zipfile.ZIP64_LIMIT
    fixed = 30 + len(name.encode()) + 4 + (20 if zip64 else 0)  # local header, name, our field's header, zip64's
    pad = -(z.fp.tell() + fixed) % ALIGNMENT
    info.extra = struct.pack("<HH", _PADDING_ID, pad) + bytes(pad)
    with z.open(info, "w", force_zip64=zip64) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def _remove_build_folders(names: Sequence[str]) -> None:
    """Remove the folders AOTInductor built the package's shared library in.

    AOTInductor compiles into a folder of Inductor's cache (``TORCHINDUCTOR_CACHE_DIR``) and copies the
    result into the archive, leaving the library and its constants behind: as large as the package
    itself, every time. Only folders holding this package's own ``*.wrapper.so`` go; the rest of the
    cache (compiled kernels, precompiled headers) stays for the next compile."""
    wrappers = {n.rsplit("/", 1)[-1] for n in names if n.endswith(".wrapper.so")}
    root = Path(cache_dir())
    for folder in root.iterdir() if root.is_dir() else ():
        if folder.is_dir() and any((folder / w).exists() for w in wrappers):
            shutil.rmtree(folder, ignore_errors=True)
            log.debug("removed AOTInductor's build folder %s", folder)


def save_program(program: torch.export.ExportedProgram, path: Union[str, Path]) -> Path:
    """``torch.export.save`` ``program`` to ``path`` (.pt2), all or nothing."""
    with atomic_write(path) as tmp:
        torch.export.save(program, tmp)
    return Path(path).resolve()


def _holds_package(names: list) -> bool:
    return any("/data/aotinductor/" in n for n in names)


def _holds_program(names: list) -> bool:
    return any(n.endswith("models/model.json") for n in names)


def file_kind(path: Union[str, Path]) -> str:
    """``"package"`` (AOTInductor) or ``"program"`` (``torch.export.save``); ValueError naming the file
    for anything else, FileNotFoundError if there is none."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"qcompiler: cannot read {path}: no such file")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if _holds_package(names):
            return "package"
        if _holds_program(names):
            return "program"
    raise ValueError(f"qcompiler: {path} is neither a .pt2 package nor a saved program "
                     "(truncated, or another kind of file)")


def package_metadata(path: Union[str, Path]) -> dict:
    """Check ``path`` is an intact AOTInductor package; return its qcompiler metadata ({} if none).

    A package written by qcompiler is checked member by member against the digests recorded when it was
    packaged (:func:`qcompiler.runtime.digests.verify`); one that records none (packaged by an earlier
    qcompiler, or not by qcompiler) only against its zip CRCs, with a warning."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"qcompiler: cannot load {path}: no such file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"qcompiler: cannot load {path}: not a .pt2 package "
                         "(not a zip archive: truncated, or another kind of file)")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if not _holds_package(names):
        hint = " (a torch.export.save file? load it with torch.export.load)" if _holds_program(names) else ""
        raise ValueError(f"qcompiler: cannot load {path}: it holds no AOTInductor model{hint}")
    if any(n.endswith(f"/{DIGESTS}") for n in names):
        verify(path)
        return _read_metadata(path)
    with zipfile.ZipFile(path) as z:
        bad = z.testzip()
    if bad is not None:
        raise ValueError(f"qcompiler: cannot load {path}: member {bad} is corrupt")
    metadata = _read_metadata(path)
    if metadata.get("digests"):
        raise ValueError(f"qcompiler: cannot load {path}: member {DIGESTS}, which it was packaged with, is missing")
    log.warning("qcompiler: %s records no digests of its members (packaged before qcompiler recorded them, or not "
                "by qcompiler): only its zip CRCs were checked", path)
    return metadata


def _read_metadata(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        meta = [i for i in z.infolist() if i.filename.endswith(f"/{METADATA}")]
        if not meta:
            return {}
        if meta[0].file_size > MAX_METADATA_BYTES:
            raise ValueError(f"qcompiler: cannot load {path}: member {METADATA} holds {meta[0].file_size:,} bytes, "
                             "more than metadata can")
        try:
            return json.loads(z.read(meta[0]))
        except (ValueError, zipfile.BadZipFile) as e:
            raise ValueError(f"qcompiler: cannot load {path}: member {METADATA} is damaged ({e})") from e


def load_package(path: Union[str, Path], allow_imports: Sequence[str] = (), map_weights: bool = True,
                 check: Callable[[dict], None] = lambda metadata: None) -> Tuple[Callable, dict]:
    """Check and load a ``.pt2``: a callable taking the program's inputs, and the qcompiler metadata.

    ``allow_imports``: modules (and their submodules) that may be imported to register the input and output
    types the package's call spec names; see :func:`_register_pytree_types`. ``map_weights``: a CPU
    package's weights view a mapping of the file where they can (:mod:`.mapped`), else they are copied.
    ``check(metadata)`` runs once the file is verified, before its library is loaded (it may raise)."""
    path = Path(path).resolve()
    metadata = package_metadata(path)
    check(metadata)
    mappable = map_weights and "cpu_int4" not in metadata  # ATen int4 weights may be repacked: copied
    try:
        run = (mappable and try_load_mapped(path)) or _aoti_load(path)
    except Exception as e:  # the loader raises RuntimeError for any broken archive
        raise ValueError(f"qcompiler: cannot load {path}: {e}") from e
    _register_pytree_types(path, run, tuple(allow_imports))
    return run, metadata


def _aoti_load(path: Path):
    """AOTInductor's C++ package loader, called as ``torch._inductor.aoti_load_package`` ends up calling it.

    ``aoti_load_package`` first compiles small probe programs to compare this machine's vector ISA with the
    package's (and, with no compiler, logs "Loading outdated pt2 file" and falls back to this same loader);
    :func:`qcompiler.load` checks the target from the metadata instead, so nothing is compiled at load."""
    from torch.export.pt2_archive._package import AOTICompiledModel
    return AOTICompiledModel(torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1))


_TYPE = re.compile(r'"type": "([\w.]+)"')


def _allowed(module: str, allow_imports: tuple) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allow_imports)


def _register_pytree_types(path: Path, run, allow_imports: tuple) -> None:
    """Make sure the input/output types the package's call spec names (e.g. a transformers ``ModelOutput``) are
    registered with ``torch.utils._pytree``, so that its first call does not fail on an unknown type.

    A file must not choose which installed code runs when it is loaded: a type not registered yet is imported
    only from a module under one of ``allow_imports``; otherwise loading is refused, naming the type."""
    known = torch.utils._pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE
    for name in sorted(set(_TYPE.findall("".join(run.loader.get_call_spec())))):
        parts = name.split(".")
        for end in range(len(parts) - 1, 0, -1):
            module = ".".join(parts[:end])
            if name in known:
                break
            if not _allowed(module, allow_imports):
                continue
            try:
                importlib.import_module(module)
            except ImportError:
                continue
        if name not in known:
            allowed = f" (allowed imports: {', '.join(allow_imports)})" if allow_imports else ""
            raise ValueError(f"qcompiler: cannot load {path}: its inputs or outputs are a {name}, which is not "
                             f"registered with torch.utils._pytree{allowed}; import the module that defines it first, "
                             f"or let load import it: allow_imports=[{'.'.join(parts[:1])!r}] (CLI: --allow-import "
                             f"{'.'.join(parts[:1])})")


def read_member(path: Union[str, Path], name: str) -> Optional[bytes]:
    """The bytes of ``qcompiler/<name>`` stored by :func:`write_package` in ``path``, or None."""
    with zipfile.ZipFile(path) as z:
        found = [n for n in z.namelist() if n.endswith(f"/qcompiler/{name}")]
        return z.read(found[0]) if found else None
