"""The pattern-rewrite API: find a subgraph given as an example function, replace it.

Every pass of qcompiler is written with it, and it is meant for users' passes too::

    import torch
    from qcompiler.passes import rewrite

    aten = torch.ops.aten

    def pattern(x):                       # an example function, written in ATen ops
        return aten.relu.default(aten.neg.default(x))

    def replacement(m, x):                # same parameter names, plus the match m first
        return aten.clamp.default(x, None, 0.0).neg()   # any torch ops; they become graph nodes

    rewrite(graph_module, pattern, replacement)

A pattern's parameters stand for any node; a parameter absent at a match (an
omitted optional argument, such as a linear's bias) arrives as ``None``.
``where=`` filters matches (``lambda m: ...``). The replacement runs once per
match on ``torch.fx.Proxy`` objects, so it is ordinary PyTorch code; it may add
constants with ``m.constant(name, tensor)``. New nodes inherit the matched
output node's ``nn_module_stack``, ``stack_trace`` and ``custom`` metadata, so
module names and source lines survive the rewrite.
"""
import operator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Optional

import torch
from torch.fx import GraphModule, Node, Proxy
from torch.fx.passes.utils.matcher_utils import SubgraphMatcher

def stored(gm: torch.nn.Module, target: str):
    """The attribute a ``get_attr`` target names (``"blocks.0.fc1.weight"``): parameter, buffer or constant."""
    return operator.attrgetter(target)(gm)


KEPT_META = ("nn_module_stack", "stack_trace", "source_fn_stack")  # to every new node; "custom" to the output only


@lru_cache(maxsize=None)
def pattern_graph(pattern: Callable) -> torch.fx.Graph:
    """Trace an example function, written in ATen (or qcompiler) ops, into a pattern graph."""
    return torch.fx.symbolic_trace(pattern).graph


@dataclass
class Match:
    """One place a pattern matched: its inputs by parameter name, and the node it computes."""

    graph_module: GraphModule
    anchor: Node
    inputs: dict = field(default_factory=dict)
    nodes: tuple = ()
    stored_bytes: int = 0  # bytes of the tensors this match's replacement stored (``store``/``constant``)
    _tracer: object = field(default=None, repr=False)

    @property
    def tracer(self):
        """The one tracer every Proxy of this match's replacement shares."""
        if self._tracer is None:
            self._tracer = torch.fx.proxy.GraphAppendingTracer(self.graph_module.graph)
        return self._tracer

    def __getitem__(self, name: str) -> Optional[Node]:
        return self.inputs[name]

    def value(self, name: str) -> Optional[torch.Tensor]:
        """The stored tensor (parameter, buffer, constant) bound to ``name``; ``None`` if absent."""
        node = self.inputs[name]
        if node is None:
            return None
        if not isinstance(node, Node) or node.op != "get_attr":
            raise ValueError(f"qcompiler: pattern input {name!r} is not a stored tensor at this match; got {node!r}")
        return stored(self.graph_module, node.target)

    def constant(self, name: str, tensor: torch.Tensor) -> Proxy:
        """Store ``tensor`` as a buffer of the module and return a node that reads it."""
        return self.attr(self.store(name, tensor))

    def store(self, name: str, tensor: torch.Tensor) -> str:
        """Store ``tensor`` as a buffer under a free name derived from ``name``; return that name."""
        gm, base = self.graph_module, _attr_name(name)
        unique, i = base, 1
        while hasattr(gm, unique):
            unique, i = f"{base}_{i}", i + 1
        gm.register_buffer(unique, tensor)
        self.stored_bytes += tensor.numel() * tensor.element_size()
        return unique

    def attr(self, target: str) -> Proxy:
        """A node that reads an existing attribute (parameter, buffer, constant) of the module."""
        return Proxy(self.graph_module.graph.get_attr(target), self.tracer)


def _attr_name(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "const"


def find(gm: GraphModule, pattern: Callable, where: Optional[Callable[[Match], bool]] = None,
         literals: str = "equal") -> list:
    """Every non-overlapping place ``pattern`` matches in ``gm``, in graph order, kept by ``where``.

    ``literals="equal"`` (default): the pattern's literal arguments (numbers, strings, dtypes,
    lists) must equal the graph's; ``"any"``: they match anything, and ``where`` may inspect
    the matched nodes' arguments.
    """
    if literals not in ("equal", "any"):
        raise ValueError(f"qcompiler: literals must be 'equal' or 'any'; got {literals!r}")
    pg = pattern_graph(pattern)
    names = [n.target for n in pg.nodes if n.op == "placeholder"]
    matcher = SubgraphMatcher(pg, match_output=False, match_placeholder=False, remove_overlapping_matches=True,
                              ignore_literals=literals == "any")
    found = []
    for internal in matcher.match(gm.graph):
        anchor = internal.returning_nodes[0]
        inputs = dict(zip(names, internal.placeholder_nodes))
        body = tuple(n for p, n in internal.nodes_map.items() if p.op not in ("placeholder", "output"))
        m = Match(gm, anchor, inputs, body)
        if where is None or where(m):
            found.append(m)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    return sorted(found, key=lambda m: order[m.anchor])


def replace(m: Match, replacement: Callable[..., Any]) -> Node:
    """Replace one match by what ``replacement(m, **inputs)`` computes; return the new output node."""
    graph, first = m.graph_module.graph, m.anchor.prev  # new nodes land between ``first`` and the anchor
    with graph.inserting_before(m.anchor):
        proxies = {k: (Proxy(v, m.tracer) if isinstance(v, Node) else v) for k, v in m.inputs.items()}
        out = replacement(m, **proxies)
    new = out.node if isinstance(out, Proxy) else out
    if not isinstance(new, Node):
        raise TypeError(f"qcompiler: a replacement must return a graph value (a Proxy or Node); got {type(out).__name__}")
    n = first.next
    while n is not m.anchor:
        for key in KEPT_META + (("custom",) if n is new else ()):
            if key in m.anchor.meta and key not in n.meta:
                n.meta[key] = m.anchor.meta[key]
        n = n.next
    m.anchor.replace_all_uses_with(new)
    dead, left = True, list(m.nodes)
    while dead:  # erase matched nodes nothing reads any more, consumers before producers
        dead = [n for n in left if not n.users]
        for n in dead:
            graph.erase_node(n)
        left = [n for n in left if n not in dead]
    return new


def rewrite(gm: GraphModule, pattern: Callable, replacement: Callable[..., Any],
            where: Optional[Callable[[Match], bool]] = None, progress: Optional[Callable] = None,
            literals: str = "equal") -> list:
    """Replace every match of ``pattern`` (kept by ``where``); return the matches replaced.

    ``progress``, if given, wraps the list of matches (e.g. ``qcompiler.progress.progress``-like).
    """
    matches = find(gm, pattern, where, literals)
    replaced: dict = {}
    for m in (progress(matches) if progress else matches):  # a match may read what an earlier one computed: point it at the new node
        m.inputs = {k: replaced.get(v, v) for k, v in m.inputs.items()}
        replaced[m.anchor] = replace(m, replacement)
    if matches:
        gm.graph.lint()
        gm.recompile()
    return matches


def prune(gm: GraphModule) -> None:
    """Delete reads of attributes nothing uses, then the parameters and buffers no node reads."""
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    names = [n for n, _ in gm.named_parameters(remove_duplicate=False)] + [n for n, _ in gm.named_buffers(remove_duplicate=False)]
    for name in names:
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            mod = gm.get_submodule(owner) if owner else gm
            mod._parameters.pop(leaf, None)
            mod._buffers.pop(leaf, None)
    gm.recompile()
