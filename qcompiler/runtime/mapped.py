"""Loading a CPU ``.pt2`` with its weights mapped from the file instead of copied into memory.

AOTInductor's package loader copies every weight on the CPU: it maps the weights blob, copies it into
memory it allocates and unmaps it, so loading peaks at twice the file. Where a package allows it,
:func:`load_mapped` builds the model from its shared library alone and hands AOTInductor the weights as
tensors that view a private (copy-on-write) mapping of the ``.pt2`` itself (``user_managed`` constants,
which AOTInductor uses as they are; a buffer the model writes, such as an LM's KV cache, becomes private
memory page by page as it is written, and the file never changes). The weights are then read from the
page cache as the model runs, as llama.cpp reads its mapped file: resident memory grows to about 1x the
weights, and never holds two copies.

It allows it where the weights are one blob stored uncompressed at a 64-byte boundary of the ``.pt2``,
the generated source describes each weight (``constants_info_`` in the wrapper's ``.cpp``: name, dtype,
shape, stride, offset, size, layout), and the sizes add up to the blob. oneDNN's prepacked weights (int8 and
float linears after freezing) are opaque tensors: they are made over the mapping as AOTInductor makes them
over its copy, with its own C function (``aoti_torch_create_tensor_from_blob_v2`` with the ``_mkldnn``
layout and the descriptor the generated code holds; oneDNN wraps the bytes without copying them). Anything
that does not check out loads through AOTInductor's loader, with the reason at DEBUG level.
"""
import ctypes
import functools
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

log = logging.getLogger(__name__)

_FIELD = re.compile(r"constants_info_\[(\d+)\]\.(\w+) = (.*);")
ALIGNMENT = 64  # bytes: AOTInductor's constant alignment, and the .pt2 writer's record alignment


@dataclass(frozen=True)
class Constant:
    """One weight as the generated code describes it, where it lies in the blob."""

    name: str
    dtype: torch.dtype
    shape: Tuple[int, ...]
    stride: Tuple[int, ...]
    offset: int  # storage offset, in elements
    start: int  # first byte in the blob
    size: int  # bytes
    opaque: Optional[bytes] = None  # oneDNN's descriptor of a prepacked weight (layout _mkldnn); None: strided


class Unmappable(Exception):
    """Why a package's weights cannot be mapped (it loads through AOTInductor's loader instead)."""


def _ints_text(text: str) -> List[str]:
    return [v.strip() for v in text.strip("{} ").split(",") if v.strip()]


def _ints(text: str) -> Tuple[int, ...]:
    return tuple(int(v.rstrip("L")) for v in _ints_text(text))


def _dtype(text: str) -> torch.dtype:
    name = text.removeprefix("cached_torch_dtype_")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise Unmappable(f"a weight has dtype {text}")
    return dtype


def constants(source: str) -> List[Constant]:
    """The weights a wrapper's generated C++ reads from its blob, in order (folded constants are computed)."""
    fields: Dict[int, Dict[str, str]] = {}
    for index, field, value in _FIELD.findall(source):
        fields.setdefault(int(index), {})[field] = value.strip()
    out, start = [], 0
    for index in sorted(fields):
        f = fields[index]
        if f.get("from_folded") == "true":
            continue
        layout = f.get("layout", "")
        if "layout_strided" not in layout and "layout__mkldnn" not in layout:
            raise Unmappable(f"weight {f.get('name', index)} has layout {layout}")
        try:
            size = int(f["data_size"])
            opaque = bytes(int(v.rstrip("L")) for v in _ints_text(f["opaque_metadata"])) \
                if "layout__mkldnn" in layout else None
            out.append(Constant(f["name"].strip('"'), _dtype(f["dtype"]), _ints(f["shape"]), _ints(f["stride"]),
                                int(f["offset"]), start, size, opaque))
        except (KeyError, ValueError) as e:
            raise Unmappable(f"the generated code describes weight {index} in a form not known here ({e})") from e
        start += size
    return out


def _data_start(path: Path, info: zipfile.ZipInfo) -> int:
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    if header[:4] != b"PK\x03\x04":
        raise Unmappable(f"member {info.filename} has no local header where the directory says")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length


def _members(z: zipfile.ZipFile) -> Tuple[zipfile.ZipInfo, zipfile.ZipInfo, zipfile.ZipInfo]:
    def one(suffix: str) -> zipfile.ZipInfo:
        found = [i for i in z.infolist() if i.filename.endswith(suffix) and "/data/aotinductor/model/" in i.filename]
        if len(found) != 1:
            raise Unmappable(f"it has {len(found)} members ending in {suffix}, not one")
        return found[0]
    try:
        device = json.loads(z.read(one(".wrapper_metadata.json"))).get("AOTI_DEVICE_KEY")
    except ValueError as e:
        raise Unmappable(f"its AOTInductor metadata does not read ({e})") from e
    if device != "cpu":
        raise Unmappable(f"it runs on {device}, not the CPU")
    return one(".wrapper.so"), one("_weights.blob"), one(".wrapper.cpp")


class MappedModel:
    """A model whose weights view a mapping of its ``.pt2``: call it as ``aoti_load_package``'s result."""

    def __init__(self, runner, mapping: torch.Tensor, weights: Dict[str, torch.Tensor]):
        self.loader = runner  # what qcompiler's loader reads the call spec from, as AOTICompiledModel's
        self._mapping, self._weights = mapping, weights  # AOTInductor holds pointers into them: keep them alive
        # parsed once: a decoder calls this once a token
        self._in_spec, self._out_spec = (torch.utils._pytree.treespec_loads(s) for s in runner.get_call_spec())

    def __call__(self, *args, **kwargs):
        from torch.export.pt2_archive._package import reorder_kwargs
        flat = torch.utils._pytree.tree_flatten((args, reorder_kwargs(kwargs, self._in_spec)))[0]
        outputs = self.loader.run([x for x in flat if isinstance(x, torch.Tensor)])
        return torch.utils._pytree.tree_unflatten(outputs, self._out_spec)


@functools.lru_cache(maxsize=None)
def _shim() -> ctypes.CDLL:
    """AOTInductor's C functions, in libtorch_cpu (loaded with torch)."""
    lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    lib.aoti_torch_create_tensor_from_blob_v2.restype = ctypes.c_int32
    lib.aoti_torch_create_tensor_from_blob_v2.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64), ctypes.c_int64,
        ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int32,
        ctypes.POINTER(ctypes.c_uint8), ctypes.c_int64]
    for name in ("aoti_torch_device_type_cpu", "aoti_torch_layout__mkldnn"):
        getattr(lib, name).restype = ctypes.c_int32
    return lib


_capsule = ctypes.pythonapi.PyCapsule_New
_capsule.restype, _capsule.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


def _dtype_code(lib: ctypes.CDLL, dtype: torch.dtype) -> int:
    function = getattr(lib, f"aoti_torch_dtype_{str(dtype).removeprefix('torch.')}", None)
    if function is None:
        raise Unmappable(f"AOTInductor has no dtype code for {dtype}")
    function.restype = ctypes.c_int32
    return function()


def _opaque(mapping: torch.Tensor, byte: int, c: Constant) -> torch.Tensor:
    """A oneDNN prepacked weight over ``mapping`` at ``byte``, made as AOTInductor makes it over its copy."""
    if byte % ALIGNMENT:
        raise Unmappable(f"oneDNN weight {c.name} starts at byte {byte}, not at a multiple of {ALIGNMENT}")
    lib, n = _shim(), len(c.shape)
    sizes, strides = (ctypes.c_int64 * n)(*c.shape), (ctypes.c_int64 * n)(*c.stride)
    meta = (ctypes.c_uint8 * len(c.opaque)).from_buffer_copy(c.opaque)
    handle = ctypes.c_void_p()
    failed = lib.aoti_torch_create_tensor_from_blob_v2(
        mapping.data_ptr() + byte, n, sizes, strides, c.offset, _dtype_code(lib, c.dtype),
        lib.aoti_torch_device_type_cpu(), 0, ctypes.byref(handle), lib.aoti_torch_layout__mkldnn(), meta, len(c.opaque))
    if failed or not handle.value:
        raise Unmappable(f"oneDNN weight {c.name} could not be made over the mapping")
    capsule = _capsule(ctypes.c_void_p(handle.value), None, None)  # the handle, as the binding takes it
    return torch._C._aoti.alloc_tensor_by_stealing_from_void_ptr(capsule)


def _view(mapping: torch.Tensor, byte: int, c: Constant) -> torch.Tensor:
    """``c`` as a tensor over ``mapping``'s storage, its first element at ``byte`` of the file."""
    if c.opaque is not None:
        return _opaque(mapping, byte, c)
    itemsize = torch.empty(0, dtype=c.dtype).element_size()
    if byte % itemsize:
        raise Unmappable(f"weight {c.name} starts at byte {byte}, not a multiple of its {itemsize}-byte elements")
    extent = 1 + sum((n - 1) * s for n, s in zip(c.shape, c.stride)) if all(c.shape) else 0
    if (c.offset + extent) * itemsize > c.size:
        raise Unmappable(f"weight {c.name}'s shape and stride reach past its {c.size} bytes")
    return torch.empty(0, dtype=c.dtype).set_(mapping.untyped_storage(), byte // itemsize + c.offset, c.shape, c.stride)


def load_mapped(path: Path) -> MappedModel:
    """The package at ``path`` (already verified) with its weights mapped; :class:`Unmappable` saying why not."""
    with zipfile.ZipFile(path) as z:
        so, blob, source = _members(z)
        if blob.compress_type != zipfile.ZIP_STORED:
            raise Unmappable("its weights are compressed")
        weights = constants(z.read(source).decode())
        if sum(c.size for c in weights) != blob.file_size:
            raise Unmappable(f"its weights add up to {sum(c.size for c in weights):,} bytes, the blob holds "
                             f"{blob.file_size:,}")
        start = _data_start(path, blob)
        if start % ALIGNMENT:
            raise Unmappable(f"its weights start at byte {start}, not at a multiple of {ALIGNMENT}")
        folder = tempfile.mkdtemp(prefix="qcompiler-load-")
        try:  # the model's files but its weights (the library, and the op list a proxy executor reads beside it)
            model = so.filename.rsplit("/", 1)[0] + "/"
            for info in z.infolist():
                if info.filename.startswith(model) and info is not blob and not info.is_dir():
                    with z.open(info) as src, open(os.path.join(folder, info.filename[len(model):]), "wb") as dst:
                        shutil.copyfileobj(src, dst)
            runner = torch._C._aoti.AOTIModelContainerRunnerCpu(os.path.join(folder, so.filename[len(model):]), 1)
        finally:  # the library stays mapped once loaded
            shutil.rmtree(folder, ignore_errors=True)
    expected = set(runner.get_constant_names_to_original_fqns())
    if not {c.name for c in weights} <= expected:
        raise Unmappable("the generated code and the library name different weights")
    mapping = torch.from_file(str(path), shared=False, size=path.stat().st_size, dtype=torch.uint8)
    tensors = {c.name: _view(mapping, start + c.start, c) for c in weights}
    runner.update_constant_buffer(tensors, False, True, True)  # use_inactive, validate_full_updates, user_managed
    return MappedModel(runner, mapping, tensors)


def try_load_mapped(path: Path) -> Optional[MappedModel]:
    """:func:`load_mapped`, or None (logged) where the package's weights cannot be mapped."""
    try:
        return load_mapped(path)
    except Unmappable as e:
        log.debug("qcompiler: %s loads with AOTInductor's loader (weights copied): %s", path.name, e)
        return None
