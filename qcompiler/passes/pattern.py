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
``where=`` filters matches (``lambda m: ...``): it returns True or False, or, to keep
a match, anything else, which the replacement finds as ``m.payload`` (what the check
computed, so the replacement need not compute it again). The replacement runs once per
match on ``torch.fx.Proxy`` objects, so it is ordinary PyTorch code; it may add
constants with ``m.constant(name, tensor)`` (their names in ``m.stored``).

The nodes a replacement creates are recorded (``m.created``), and each gets:

- ``meta["val"]``: its fake value, computed from its inputs' under the graph's fake mode
  (with its symbolic shapes), so later matches and passes read shapes off new nodes too;
- the matched output node's ``nn_module_stack``, ``stack_trace`` and ``source_fn_stack``,
  and, on the new output node, its ``custom`` metadata: module names, source lines and
  report records survive the rewrite.

``rewrite`` finds every match, then replaces them in graph order (:func:`replace_all`);
a match that reads what an earlier one computed is pointed at the new node. To show
progress over long rewrites, wrap the matches: ``replace_all(gm, progress(find(gm, p)), r)``.
"""
import logging
import operator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterable, Optional

import torch
from torch._guards import detect_fake_mode
from torch.fx import GraphModule, Node, Proxy
from torch.fx.node import Argument, map_arg
from torch.fx.passes.utils.matcher_utils import SubgraphMatcher

log = logging.getLogger(__name__)


def stored(gm: torch.nn.Module, target: str):
    """The attribute a ``get_attr`` target names (``"blocks.0.fc1.weight"``): parameter, buffer or constant."""
    return operator.attrgetter(target)(gm)


def attr_target(arg: Argument) -> Optional[str]:
    """The attribute ``arg`` reads where it is a ``get_attr`` node (a stored tensor); else None."""
    return arg.target if isinstance(arg, Node) and arg.op == "get_attr" and isinstance(arg.target, str) else None


def arg_node(node: Node, i: int) -> Node:
    """``node.args[i]``, where a pass needs it to be a graph node (not a literal or None)."""
    arg = node.args[i]
    if not isinstance(arg, Node):
        raise TypeError(f"qcompiler: argument {i} of {node.name} ({node.target}) is not a graph node; got {arg!r}")
    return arg


def stored_arg(gm: torch.nn.Module, node: Node, i: int):
    """The stored tensor that ``node.args[i]`` reads (a ``get_attr`` node)."""
    target = attr_target(node.args[i])
    if target is None:
        raise TypeError(f"qcompiler: argument {i} of {node.name} ({node.target}) is not a stored tensor; "
                        f"got {node.args[i]!r}")
    return stored(gm, target)


KEPT_META = ("nn_module_stack", "stack_trace", "source_fn_stack")  # to every new node; "custom" to the output only


@lru_cache(maxsize=None)
def pattern_graph(pattern: Callable) -> torch.fx.Graph:
    """Trace an example function, written in ATen (or qcompiler) ops, into a pattern graph."""
    return torch.fx.symbolic_trace(pattern).graph


class _RecordingTracer(torch.fx.proxy.GraphAppendingTracer):
    """Appends nodes at the graph's insertion point, as ``GraphAppendingTracer`` does, and lists them."""

    def __init__(self, graph: torch.fx.Graph):
        super().__init__(graph)
        self.created: list = []

    def create_node(self, *args, **kwargs) -> Node:
        node = super().create_node(*args, **kwargs)
        self.created.append(node)
        return node


@dataclass
class Match:
    """One place a pattern matched: its inputs by parameter name, the node it computes, what ``where`` returned
    to keep it (``payload``), and, once replaced, what the replacement created and stored."""

    graph_module: GraphModule
    anchor: Node
    inputs: dict = field(default_factory=dict)
    nodes: tuple = ()
    payload: Any = None
    stored: list = field(default_factory=list)  # attribute names of the tensors the replacement stored
    _tracer: Optional[_RecordingTracer] = field(default=None, repr=False)

    @property
    def tracer(self) -> _RecordingTracer:
        """The one tracer every Proxy of this match's replacement shares."""
        if self._tracer is None:
            self._tracer = _RecordingTracer(self.graph_module.graph)
        return self._tracer

    @property
    def created(self) -> list:
        """The nodes the replacement created, in the order it created them."""
        return list(self._tracer.created) if self._tracer else []

    def __getitem__(self, name: str) -> Optional[Node]:
        return self.inputs[name]

    def value(self, name: str) -> Optional[torch.Tensor]:
        """The stored tensor (parameter, buffer, constant) bound to ``name``; ``None`` if absent."""
        node = self.inputs[name]
        if node is None:
            return None
        target = attr_target(node)
        if target is None:
            raise ValueError(f"qcompiler: pattern input {name!r} is not a stored tensor at this match; got {node!r}")
        return stored(self.graph_module, target)

    def constant(self, name: str, tensor: torch.Tensor) -> Proxy:
        """Store ``tensor`` as a buffer of the module and return a node that reads it."""
        return self.attr(self.store(name, tensor))

    def store(self, name: str, tensor: torch.Tensor) -> str:
        """Store ``tensor`` as a buffer under a free name derived from ``name``; return that name."""
        unique = store_tensor(self.graph_module, name, tensor)
        self.stored.append(unique)
        return unique

    def attr(self, target: str) -> Proxy:
        """A node that reads an existing attribute (parameter, buffer, constant) of the module."""
        return Proxy(self.tracer.create_node("get_attr", target, (), {}), self.tracer)


def store_tensor(gm: GraphModule, name: str, tensor: torch.Tensor) -> str:
    """Register ``tensor`` as a buffer of ``gm`` under a free name derived from ``name`` (dots and other characters
    an attribute cannot hold become ``_``; ``_1``, ``_2``... where taken); return that name. For passes that
    insert with torch.fx directly; replacements use ``m.store`` / ``m.constant``."""
    base = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "const"
    unique, i = base, 1
    while hasattr(gm, unique):
        unique, i = f"{base}_{i}", i + 1
    gm.register_buffer(unique, tensor)
    return unique


def inherit_meta(gm: GraphModule, nodes: list, source: Node, output: Optional[Node] = None) -> None:
    """Give ``nodes`` (new, in creation order) ``source``'s module stack and source lines, ``output`` (one of them)
    its ``custom`` metadata too, and each a fake value (:func:`_fake_values`)."""
    for n in nodes:
        for key in KEPT_META + (("custom",) if n is output else ()):
            if key in source.meta and key not in n.meta:
                n.meta[key] = source.meta[key]
    _fake_values(gm, nodes)


def find(gm: GraphModule, pattern: Callable, where: Optional[Callable[[Match], bool]] = None,
         literals: str = "equal") -> list:
    """Every non-overlapping place ``pattern`` matches in ``gm``, in graph order, kept by ``where`` (True, or a
    payload other than False and None, which the match keeps as ``m.payload``).

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
        kept = True if where is None else where(m)
        if kept is False or kept is None:
            continue
        if kept is not True:
            m.payload = kept
        found.append(m)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    return sorted(found, key=lambda m: order[m.anchor])


def _fake_values(gm: GraphModule, nodes: list) -> None:
    """Set ``meta["val"]`` on ``nodes`` (in creation order) from their inputs' fake values, under the graph's fake
    mode; a node whose inputs have none (a graph traced without fake values) is left without."""
    near = [a.meta["val"] for n in nodes for a in n.all_input_nodes if "val" in a.meta]  # the usual case: cheap
    mode = detect_fake_mode(near) or detect_fake_mode([n.meta["val"] for n in gm.graph.nodes if "val" in n.meta])
    if mode is None:
        return
    for node in nodes:
        if "val" in node.meta:
            continue
        if node.op == "get_attr":
            node.meta["val"] = mode.from_tensor(stored(gm, node.target), static_shapes=True)
            continue
        missing = []
        args, kwargs = map_arg((node.args, node.kwargs),
                               lambda a: a.meta["val"] if "val" in a.meta else missing.append(a))
        if missing or node.op != "call_function":
            continue
        try:
            with mode:
                node.meta["val"] = node.target(*args, **kwargs)
        except Exception as e:  # the node still runs; only what reads its val goes without
            log.debug("no fake value for %s (%s): %s", node.name, node.target, e)


def replace(m: Match, replacement: Callable[..., Any]) -> Node:
    """Replace one match by what ``replacement(m, **inputs)`` computes; return the new output node."""
    graph = m.graph_module.graph
    with graph.inserting_before(m.anchor):
        proxies = {k: (Proxy(v, m.tracer) if isinstance(v, Node) else v) for k, v in m.inputs.items()}
        out = replacement(m, **proxies)
    new = out.node if isinstance(out, Proxy) else out
    if not isinstance(new, Node):
        raise TypeError("qcompiler: a replacement must return a graph value (a Proxy or Node); "
                        f"got {type(out).__name__} replacing {m.anchor.name} ({m.anchor.target})")
    inherit_meta(m.graph_module, m.created, m.anchor, new)
    m.anchor.replace_all_uses_with(new)
    left = list(m.nodes)
    while dead := [n for n in left if not n.users]:  # erase matched nodes nothing reads any more, consumers first
        for n in dead:
            graph.erase_node(n)
        left = [n for n in left if n not in dead]
    return new


def replace_all(gm: GraphModule, matches: Iterable[Match], replacement: Callable[..., Any]) -> list:
    """Replace each of ``matches`` (from :func:`find`, in graph order); return them. A match that reads what an
    earlier one computed is pointed at the new node."""
    replaced: dict = {}
    done = []
    for m in matches:
        m.inputs = {k: replaced.get(v, v) for k, v in m.inputs.items()}
        replaced[m.anchor] = replace(m, replacement)
        done.append(m)
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


def rewrite(gm: GraphModule, pattern: Callable, replacement: Callable[..., Any],
            where: Optional[Callable[[Match], Any]] = None, literals: str = "equal") -> list:
    """Replace every match of ``pattern`` (kept by ``where``); return the matches replaced."""
    return replace_all(gm, find(gm, pattern, where, literals), replacement)


def prune(gm: GraphModule) -> None:
    """Delete reads of attributes nothing uses, then the parameters and buffers no node reads."""
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    names = ([n for n, _ in gm.named_parameters(remove_duplicate=False)]
             + [n for n, _ in gm.named_buffers(remove_duplicate=False)])
    for name in names:
        if name not in used:
            delete_attr(gm, name)
    gm.recompile()


def delete_attr(gm: GraphModule, target: str) -> None:
    """Delete the parameter, buffer or plain tensor attribute ``target`` (``"blocks.0.fc1.weight"``) of ``gm``."""
    owner, _, leaf = target.rpartition(".")
    mod = gm.get_submodule(owner) if owner else gm
    mod._parameters.pop(leaf, None)
    mod._buffers.pop(leaf, None)
    if leaf in mod.__dict__:  # a plain tensor attribute
        delattr(mod, leaf)
