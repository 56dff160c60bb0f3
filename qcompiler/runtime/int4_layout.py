"""ATen's packed CPU int4 layout, which depends on the machine: name it, read it, move between machines.

``aten._convert_weight_to_int4pack_for_cpu`` packs an int32 [N, K] weight (values 0..15)
into uint8 bytes whose order depends on the vector ISA ATen dispatches to:

- rows go in blocks of ``block_n`` (32 on AVX2 and plain builds, 64 on AVX-512), stored
  block after block, each block as [K, block_n / 2] bytes;
- a full block on AVX2/AVX-512 pairs row ``d`` (low nibble) with row ``d + block_n/2``
  (high nibble), the ``halves`` style; plain builds and partial tail blocks pair
  neighbouring rows ``2j`` and ``2j + 1``, the ``pairs`` style.

A ``.pt2`` holds its int4 weights in the layout of the machine that packaged it, and
``_weight_int4pack_mm_for_cpu`` reads them in the layout of the machine that runs it:
on a machine whose layout differs the results would be silently wrong. ``native_layout``
names this machine's layout by packing a probe and comparing with each known layout, so
``qcompiler.load`` can refuse a mismatch, or repack where the package carries its int4
weights for that (``qcompiler.package(..., portable=True)``).
"""
import functools
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Int4Layout:
    name: str
    block_n: int
    style: str  # "halves" or "pairs": how a full block pairs rows into bytes


LAYOUTS = (
    Int4Layout("avx2", 32, "halves"),
    Int4Layout("avx512", 64, "halves"),
    Int4Layout("pairs32", 32, "pairs"),
    Int4Layout("pairs16", 16, "pairs"),
    Int4Layout("pairs64", 64, "pairs"),
)
BY_NAME = {layout.name: layout for layout in LAYOUTS}


def _split_rows(n: int, block_n: int):
    """(first row, rows) of each block of ``block_n`` rows, the last one possibly partial."""
    return [(start, min(block_n, n - start)) for start in range(0, n, block_n)]


def _pairing(rows: int, layout: Int4Layout):
    """The rows giving each byte's low and high nibble, within one block of ``rows`` rows."""
    if rows == layout.block_n and layout.style == "halves":
        return torch.arange(rows // 2), torch.arange(rows // 2, rows)
    return torch.arange(0, rows, 2), torch.arange(1, rows, 2)


def pack(u: torch.Tensor, layout: Int4Layout) -> torch.Tensor:
    """int32 [N, K] values 0..15 -> uint8 [N, K/2] in ``layout`` (as ATen packs it there)."""
    n, k = u.shape
    out = []
    for start, rows in _split_rows(n, layout.block_n):
        block = u[start:start + rows].t().to(torch.uint8)  # [K, rows]
        lo, hi = _pairing(rows, layout)
        out.append((block[:, lo] | (block[:, hi] << 4)).reshape(-1))
    return torch.cat(out).reshape(n, k // 2)


def unpack(packed: torch.Tensor, layout: Int4Layout) -> torch.Tensor:
    """uint8 [N, K/2] in ``layout`` -> int32 [N, K] values 0..15; the inverse of :func:`pack`."""
    n, k = packed.shape[0], packed.shape[1] * 2
    flat, out, offset = packed.reshape(-1), [], 0
    for _start, rows in _split_rows(n, layout.block_n):
        block = flat[offset:offset + k * rows // 2].reshape(k, rows // 2)
        offset += block.numel()
        lo, hi = _pairing(rows, layout)
        rows_of = torch.empty(k, rows, dtype=torch.uint8)
        rows_of[:, lo], rows_of[:, hi] = block & 15, block >> 4
        out.append(rows_of.t())
    return torch.cat(out).to(torch.int32)


def _probe() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 16, (144, 8), dtype=torch.int32, generator=g)  # full and partial 64/32/16-row blocks


@functools.lru_cache(maxsize=None)
def native_layout() -> Optional[str]:
    """This machine's int4 layout name (see ``LAYOUTS``), or None when it is none of them."""
    probe = _probe()
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 1)
    return next((lay.name for lay in LAYOUTS if torch.equal(pack(probe, lay), packed)), None)


LAYOUT_OF_ISA = {"avx512": "avx512", "avx2": "avx2", "default": "pairs32"}  # ATen's dispatch ISA -> its layout


def pack_for(u: torch.Tensor, isa: str) -> torch.Tensor:
    """int32 [N, K] values 0..15 packed as ATen's ``isa`` kernels read them (on any machine)."""
    return pack(u, BY_NAME[LAYOUT_OF_ISA[isa]])


def repack(packed: torch.Tensor, layout_name: str) -> torch.Tensor:
    """Bytes packed in ``layout_name`` -> the same weight in this machine's layout."""
    u = unpack(packed, BY_NAME[layout_name])
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.contiguous(), 1)


def int4_weights(program: torch.export.ExportedProgram) -> dict:
    """The packed int4 weights a program's ``_weight_int4pack_mm_for_cpu`` calls read: {constant name: tensor}."""
    sig = program.graph_signature
    names = {**sig.inputs_to_parameters, **sig.inputs_to_buffers, **sig.inputs_to_lifted_tensor_constants}
    values = {**program.state_dict, **program.constants}
    found = {}
    for node in program.graph.nodes:
        if node.target is torch.ops.aten._weight_int4pack_mm_for_cpu.default and node.args[1].name in names:
            name = names[node.args[1].name]
            found[name] = values[name]
    return found
