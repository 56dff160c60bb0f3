"""Embeddings: find the table lookups of a graph, and rewrite a quantized one to gather rows, then dequantize.

    embedding(w, ids)  ->  dequantize_*(embedding(w_q, ids), embedding(scale, ids), ...)   # rows first

Only what a recipe names (by module name, regex or type) is quantized: a plain config, or a
predicate, means linears. A table takes a weight-only scheme whose stored tensors are indexed by
row (int8wo: int8 rows with a scale each; int4wo-<g>; float8wo): a lookup then reads its tokens'
rows and their scales, never the whole table. What a table cannot take is reported with the reason.
"""
from dataclasses import dataclass
from typing import Optional

import torch
from torch.fx import GraphModule, Node

from .linears import module_of
from .pattern import Match, attr_target, find, replace_all, stored, stored_arg
from .record import LayerRecord, write
from .reference import nbytes, sqnr_db
from .spec import AffineWeight, Float8Weight

aten = torch.ops.aten


@dataclass(frozen=True)
class EmbeddingSite:
    """One lookup in a stored table: its module name and type, and the table's attribute and shape."""

    node: Node
    name: str
    module_type: str
    weight: str
    rows: int
    dim: int


def embedding_sites(gm: GraphModule) -> list:
    """Every ``aten.embedding`` whose table is a stored 2-d tensor, in graph order."""
    sites = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target != aten.embedding.default:
            continue
        weight = attr_target(node.args[0])
        if weight is None or stored(gm, weight).ndim != 2:
            continue
        name, typ = module_of(node)
        rows, dim = stored(gm, weight).shape
        sites.append(EmbeddingSite(node, name or weight.rsplit(".", 1)[0], typ, weight, int(rows), int(dim)))
    return sites


def unfit(spec, table: torch.Tensor) -> Optional[str]:
    """Why ``spec`` cannot quantize an embedding table (None if it can)."""
    if spec.activation is not None or spec.algorithm is not None:
        return "an embedding takes a weight-only scheme without an algorithm (e.g. int8wo: int8 rows)"
    if not isinstance(spec.weight, (AffineWeight, Float8Weight)):
        return "an embedding takes a scheme with a scale per row or per group of a row (int8wo, int4wo-<g>, float8wo)"
    if not table.is_floating_point():
        return f"table dtype {table.dtype} is not floating point"
    return spec.weight.unfit(tuple(table.shape))


def _embedding(w, ids):
    return aten.embedding.default(w, ids)


def _embedding_padded(w, ids, padding_idx):  # padding_idx only changes gradients: dropped
    return aten.embedding.default(w, ids, padding_idx)


def rewrite_embeddings(gm: GraphModule, names: dict) -> int:
    """Rewrite every embedding with a ``qspec`` to gather quantized rows and dequantize them; record skipped ones."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target == aten.embedding.default and "qskip" in node.meta:
            write(node, LayerRecord(names[node], skipped=node.meta["qskip"]))

    def replacement(m: Match, w, ids, padding_idx=None):
        spec, name, table = m.anchor.meta["qspec"], names[m.anchor], stored_arg(gm, m.anchor, 0)
        tensors = spec.weight.quantize(table)
        w_hat = spec.weight.dequantize(tensors, table.shape[1], torch.float32)
        sizes = [aten.sym_size.int(ids, d) for d in range(ids.node.meta["val"].ndim)]
        flat = aten.reshape.default(ids, [-1])
        rows = {k: aten.embedding.default(m.attr(m.store(f"{name}.{k}", v)), flat) for k, v in tensors.items()}
        out = aten.reshape.default(spec.weight.dequantize(rows, table.shape[1], table.dtype), [*sizes, table.shape[1]])
        write(out.node, LayerRecord(name, spec.scheme, "reference", nbytes(table), sum(map(nbytes, tensors.values())),
                                    sqnr_db(table, w_hat), weight=attr_target(m["w"]),
                                    kernel_reason="an embedding: its rows are gathered, then dequantized"))
        return out

    def chosen(m: Match) -> bool:
        return "qspec" in m.anchor.meta and attr_target(m["w"]) is not None

    done = 0
    for pattern in (_embedding, _embedding_padded):
        done += len(replace_all(gm, find(gm, pattern, chosen, literals="any"), replacement))
    return done
