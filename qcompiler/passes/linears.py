"""Find the linears of a graph: ``aten.linear``, and the ``mm``/``addmm``/``matmul`` forms of a linear.

``canonicalize_linears`` rewrites ``mm(x, t(w))``, ``matmul(x, t(w))`` and
``addmm(b, x, t(w))`` against a stored weight into ``aten.linear`` (written with
the pattern API), so every later pass sees one form. ``linear_sites`` describes each.
"""
from dataclasses import dataclass
from typing import Optional

import torch
from torch.fx import GraphModule, Node

from .pattern import Match, attr_target, rewrite, stored

aten = torch.ops.aten


@dataclass(frozen=True)
class LinearSite:
    """One call of a linear: its module name and type, and its weight (``None`` if computed at run time)."""

    node: Node
    name: str
    module_type: str
    weight: Optional[str]
    out_features: int
    in_features: int


def _stored(m: Match) -> bool:
    return attr_target(m["w"]) is not None


def _mm(x, w):
    return aten.mm.default(x, aten.t.default(w))


def _matmul(x, w):
    return aten.matmul.default(x, aten.t.default(w))


def _addmm(b, x, w):
    return aten.addmm.default(b, x, aten.t.default(w))


def _to_linear(m, x, w, b=None):
    return aten.linear.default(x, w, b)


def canonicalize_linears(gm: GraphModule) -> int:
    """Rewrite the matmul forms of a linear into ``aten.linear``; return how many were rewritten."""
    done = 0
    for pattern in (_addmm, _mm, _matmul):
        done += len(rewrite(gm, pattern, _to_linear, where=_stored))
    return done


def module_of(node: Node):
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None, ""
    name, typ = list(stack.values())[-1]
    return name, typ if isinstance(typ, str) else f"{typ.__module__}.{typ.__qualname__}"


def linear_sites(gm: GraphModule) -> list:
    """Every ``aten.linear`` call in graph order."""
    sites = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target != aten.linear.default:
            continue
        w = node.args[1]
        weight = attr_target(w)
        shape = w.meta["val"].shape if isinstance(w, Node) and "val" in w.meta else \
            (stored(gm, weight).shape if weight else (0, 0))
        name, typ = module_of(node)
        name = name or (weight.rsplit(".", 1)[0] if weight else node.name)
        sites.append(LinearSite(node, name, typ, weight, int(shape[0]), int(shape[-1])))
    return sites
