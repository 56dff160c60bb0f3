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
shape, stride, offset, size), the sizes add up to the blob, and every weight is a strided tensor. oneDNN's
prepacked weights (int8 and float linears after freezing) are opaque: a file holding one loads through
AOTInductor's loader, as does anything else that does not check out, with the reason at DEBUG level.
"""
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


class Unmappable(Exception):
    """Why a package's weights cannot be mapped (it loads through AOTInductor's loader instead)."""


def _ints(text: str) -> Tuple[int, ...]:
    return tuple(int(v) for v in text.strip("{} ").split(",") if v.strip())


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
        if "layout_strided" not in f.get("layout", ""):
            raise Unmappable(f"weight {f.get('name', index)} has layout {f.get('layout')} (oneDNN's prepacked "
                             "weights are opaque)")
        try:
            size = int(f["data_size"])
            out.append(Constant(f["name"].strip('"'), _dtype(f["dtype"]), _ints(f["shape"]), _ints(f["stride"]),
                                int(f["offset"]), start, size))
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
    return one(".wrapper.so"), one("_weights.blob"), one(".wrapper.cpp")


class MappedModel:
    """A model whose weights view a mapping of its ``.pt2``: call it as ``aoti_load_package``'s result."""

    def __init__(self, runner, mapping: torch.Tensor, weights: Dict[str, torch.Tensor]):
        self.loader = runner  # what qcompiler's loader reads the call spec from, as AOTICompiledModel's
        self._mapping, self._weights = mapping, weights  # AOTInductor holds pointers into them: keep them alive

    def __call__(self, *args, **kwargs):
        spec = self.loader.get_call_spec()
        in_spec, out_spec = (torch.utils._pytree.treespec_loads(s) for s in spec)
        from torch.export.pt2_archive._package import reorder_kwargs
        flat = torch.utils._pytree.tree_flatten((args, reorder_kwargs(kwargs, in_spec)))[0]
        outputs = self.loader.run([x for x in flat if isinstance(x, torch.Tensor)])
        return torch.utils._pytree.tree_unflatten(outputs, out_spec)


def _view(mapping: torch.Tensor, byte: int, c: Constant) -> torch.Tensor:
    """``c`` as a tensor over ``mapping``'s storage, its first element at ``byte`` of the file."""
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
        try:
            library = os.path.join(folder, "model.so")
            with z.open(so) as src, open(library, "wb") as dst:
                shutil.copyfileobj(src, dst)
            runner = torch._C._aoti.AOTIModelContainerRunnerCpu(library, 1)
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
