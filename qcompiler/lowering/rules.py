"""A backend is a table of lowering rules: match a reference pattern, replace it with a fused kernel.

Rules are tried in order (specific patterns first). A linear no rule matches keeps its
reference pattern; ``mark_unfused`` names its kernel ``decomposed``, since ``qcompiler.lower``
then decomposes its qcompiler ops into ATen for Inductor.
"""
import json
from dataclasses import dataclass
from typing import Callable, Optional

from torch.fx import GraphModule

from ..passes.pattern import Match, prune, rewrite
from ..passes.reference import REPORT_KEY


@dataclass(frozen=True)
class LoweringRule:
    """``pattern`` (an example function), ``where`` (which matches), ``replace`` (emits the kernel), ``kernel`` (its name)."""

    name: str
    pattern: Callable
    replace: Callable
    kernel: str
    where: Optional[Callable[[Match], bool]] = None


def _with_kernel(custom: dict, kernel: str, stored_bytes: int = 0) -> dict:
    """The report record with its kernel, and the bytes the kernel's weights take where it stored new ones."""
    if REPORT_KEY not in custom:
        return custom
    record = {**json.loads(custom[REPORT_KEY]), "kernel": kernel}
    if stored_bytes:
        record["bytes_after"] = stored_bytes
    return {**custom, REPORT_KEY: json.dumps(record)}


DECOMPOSED = "decomposed"  # the kernel of a layer no rule fused: its ops decomposed into ATen for Inductor


def mark_unfused(gm: GraphModule, kernel: str = DECOMPOSED) -> int:
    """Set ``kernel`` on every quantized linear still in reference form; return how many."""
    count = 0
    for node in gm.graph.nodes:
        custom = node.meta.get("custom") or {}
        if REPORT_KEY in custom and json.loads(custom[REPORT_KEY]).get("kernel") == "reference":
            node.meta["custom"] = _with_kernel(custom, kernel)
            count += 1
    return count


def apply_rules(gm: GraphModule, rules) -> dict:
    """Apply each rule in order; return how many linears each rule lowered."""
    counts = {}
    for rule in rules:
        def replacement(m: Match, _rule=rule, **inputs):
            out = _rule.replace(m, **inputs)
            out.node.meta["custom"] = _with_kernel(m.anchor.meta.get("custom") or {}, _rule.kernel, m.stored_bytes)
            return out

        counts[rule.name] = len(rewrite(gm, rule.pattern, replacement, where=rule.where))
    prune(gm)
    return counts
