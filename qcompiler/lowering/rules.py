"""A backend is a table of lowering rules: match a reference pattern, replace it with a fused kernel.

Each rule declares what it takes: its ``pattern`` (which fixes the spec kind, bits and
packing it handles), the target capabilities it ``needs``, and a ``check`` that returns
``None`` to take a match or a sentence saying why it declines. Each distinct pattern is
matched once over the graph, and at each match its rules are tried in table order (fastest
kernels first); a rule that declines a layer leaves it to the next one, and the report keeps
every reason. A linear no rule takes keeps its reference pattern;
``mark_unfused`` names its kernel ``decomposed`` (``qcompiler.lower`` then decomposes its
qcompiler ops into ATen for Inductor) with the reasons no kernel took it.
"""
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from torch.fx import GraphModule

from ..passes.pattern import Match, prune, rewrite, stored
from ..passes import record
from ..runtime import native
from ..runtime.target import Target


@dataclass(frozen=True)
class Take:
    """What a rule's check returns to take a match and hand the replacement what it computed (``m.payload``)."""

    payload: Any


def on_native(check: Callable[[Match, Target], Union[None, str, "Take"]]):
    """``check``, then, where it takes the match (None or a :class:`Take`), whether qcompiler's C++ kernels can be
    built here (asked without building: ``native.cannot_build``)."""
    def checked(m: Match, target: Target):
        verdict = check(m, target)
        if isinstance(verdict, str):
            return verdict
        reason = native.cannot_build()
        return f"qcompiler's C++ kernels cannot be built here ({reason})" if reason else verdict
    return checked


@dataclass(frozen=True)
class LoweringRule:
    """``pattern`` (an example function) -> ``replace`` (emits ``kernel``), for targets with ``needs``.

    ``check(m, target)`` returns None (or :class:`Take` with a payload for the replacement) to take a
    match, else why not; ``why`` says why this kernel is the one chosen when it takes a layer (the
    report's ``kernel_reason``).
    """

    name: str
    pattern: Callable
    replace: Callable
    kernel: str
    why: str
    needs: frozenset = field(default_factory=frozenset)
    check: Optional[Callable[[Match, Target], Union[None, str, Take]]] = None

    def verdict(self, m: Match, target: Target) -> Union[None, str, Take]:
        """Why this rule does not take ``m`` on ``target`` (a str); else None or a :class:`Take`."""
        lacking = sorted(self.needs - target.capabilities)
        if lacking:
            return f"target {target} lacks {', '.join(lacking)}"
        return self.check(m, target) if self.check else None


def _stored_bytes(m: Match) -> int:
    """Bytes of the tensors a rule's replacement stored: what the lowered layer keeps."""
    return sum(t.numel() * t.element_size() for t in (stored(m.graph_module, name) for name in m.stored))


DECOMPOSED = "decomposed"  # the kernel of a layer no rule fused: its ops decomposed into ATen for Inductor


def _joined(reasons: list) -> str:
    return "; ".join(dict.fromkeys(reasons))


def mark_unfused(gm: GraphModule, declined: dict, target: Target, kernel: str = DECOMPOSED) -> int:
    """Set ``kernel`` and the reasons no rule took it on every quantized linear still in reference form."""
    count = 0
    for node in gm.graph.nodes:
        rec = record.read(node)
        if rec is not None and rec.kernel == "reference":
            why = _joined(declined.get(node, [])) or f"no {target.backend} rule matches this layer's reference pattern"
            reason = rec.kernel_reason or f"no kernel took it: {why}"  # convert's own, e.g. an embedding's
            record.write(node, rec.updated(kernel=kernel, kernel_reason=reason, target=str(target)))
            count += 1
    return count


def _by_pattern(rules) -> dict:
    """The rules grouped by their pattern, patterns in the order they first appear, rules in table order."""
    groups: dict = {}
    for rule in rules:
        groups.setdefault(rule.pattern, []).append(rule)
    return groups


def apply_rules(gm: GraphModule, rules, target: Target) -> dict:
    """Lower every match of the table's patterns; return how many linears each rule (by name) lowered.

    Each distinct pattern is matched once over the graph; at each match its rules are tried in
    table order (fastest kernel first) and the first that takes it replaces it. The reasons the
    others gave for declining a layer are kept (``declined``: node -> reasons) for the report of
    the rule that takes it and, for layers none takes, for ``mark_unfused``.
    """
    counts, declined = dict.fromkeys((r.name for r in rules), 0), defaultdict(list)
    for pattern, group in _by_pattern(rules).items():
        def where(m: Match, _group=group):
            for rule in _group:
                verdict = rule.verdict(m, target)
                if isinstance(verdict, str):
                    declined[m.anchor].append(f"{rule.kernel}: {verdict}")
                    continue
                return rule, (verdict.payload if isinstance(verdict, Take) else None)  # rides on the match
            return False

        def replacement(m: Match, **inputs):
            rule, m.payload = m.payload  # the rule that took it, and what its check computed
            out = rule.replace(m, **inputs)
            why = rule.why + (f" (declined: {_joined(declined[m.anchor])})" if declined.get(m.anchor) else "")
            out.node.meta["custom"] = dict(m.anchor.meta.get("custom") or {})
            rec = record.read(m.anchor)
            if rec is not None:
                record.write(out.node, rec.updated(kernel=rule.kernel, kernel_reason=why, target=str(target),
                                                   bytes_after=_stored_bytes(m) or None))
            counts[rule.name] += 1
            return out

        rewrite(gm, pattern, replacement, where=where)
    prune(gm)
    if target.backend != "reference":
        counts[DECOMPOSED] = mark_unfused(gm, declined, target)
    return counts
