"""Lowering: a backend's rule table turns reference Q/DQ patterns into fused kernels.

``lower(program, backend)`` applies the table of ``lowering/<backend>.py`` to the
program and re-exports it. What no rule matches stays in reference form and the
report says so (``kernel: reference``).
"""
import torch
from torch.export import ExportedProgram

from ..runtime.dtypes import fail
from . import cpu
from .rules import LoweringRule, apply_rules

BACKENDS = {"cpu": cpu.RULES, "reference": ()}


def lower_graph(gm: torch.fx.GraphModule, backend: str) -> dict:
    """Apply ``backend``'s rules to a graph module in place; return how many linears each rule lowered."""
    if backend not in BACKENDS:
        raise fail("backend", f"one of {', '.join(BACKENDS)}", backend)
    gm.graph.eliminate_dead_code()  # e.g. an unused zero point of a symmetric choose_qparams
    gm.recompile()
    with torch.no_grad():
        return apply_rules(gm, BACKENDS[backend])


__all__ = ["BACKENDS", "LoweringRule", "lower_graph", "ExportedProgram"]
