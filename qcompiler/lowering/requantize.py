"""Requantizing epilogues: an int8static layer on ``qcompiler.int8_tile_gemm`` that feeds, through its bias and an
activation, only the next int8static layer's input quantization becomes one ``qcompiler.int8_tile_gemm_requant``
call, which writes that int8 input instead of the float32 output.

Before (what the cpu rules leave for a BERT feed-forward block; views and float32 copies may sit between steps)::

    int8_tile_gemm(a, None, a_zero, w, w_scale) ── mul(a_scale) ── add(bias) ── gelu
        ── div(out_scale) ── round ── add(out_zero) ── clamp(-128, 127) ── to(int8) ── next layer

After::

    int8_tile_gemm_requant(a, a_scale, a_zero, w, w_scale, bias, gelu, out_scale, out_zero) ── next layer

The float32 output ([M, N], 4 bytes an element) is what a layer's float step stores and the next pass reads back;
on MiniLM at 8x128 the feed-forward's (1024 x 1536) took its GEMM's time again in stores and a GELU pass
(docs/cpu-kernels.md, "Requantizing epilogues"). Applied on targets whose int8 rule is ``int8_tile_gemm`` (AMX);
every step of the chain must have one user, so nothing else reads the float output.
"""
import operator
from dataclasses import dataclass
from typing import Optional

import torch
from torch.fx import GraphModule, Node
from torch.fx.experimental.symbolic_shapes import statically_known_true
from torch.fx.node import map_arg

from ..passes import record
from ..passes.pattern import attr_target, inherit_meta, store_tensor, stored, stored_arg
from ..runtime import int8_tile_gemm

aten = torch.ops.aten
qops = torch.ops.qcompiler

# Ops that change neither values nor rows: the chain may pass through them anywhere.
_TRANSPARENT = frozenset({aten.view.default, aten.reshape.default, aten._unsafe_view.default})
_ACTIVATIONS = {aten.gelu.default: "gelu", aten.relu.default: "relu"}
REQUANT = "qcompiler.int8_tile_gemm_requant (s8s8 AMX tiles, bias, activation and the next layer's int8 in the kernel)"
REQUANT_REASON = ("its bias, activation and the next int8static layer's quantization run in the kernel's epilogue, "
                  "which writes int8 instead of the float32 output (MiniLM 8x128: docs/cpu-kernels.md)")


@dataclass(frozen=True)
class Epilogue:
    """What follows one ``int8_tile_gemm`` up to the int8 it becomes: the nodes that compute it, in order."""
    a_scale: Node           # the mul's scale (a stored one-element float32)
    bias: Optional[Node]    # a stored float32 [N], or None
    activation: str         # a key of int8_tile_gemm.ACTIVATIONS
    out_scale: Node         # the division's scale (stored, one element)
    out_zero: float         # the added zero point
    output: Node            # the to(int8) node that the fused call replaces


def _only_user(node: Node) -> Optional[Node]:
    """The one user of ``node`` that reads its values (``sym_size`` users read only its shape), or None."""
    users = [u for u in node.users if u.target != aten.sym_size.int]
    return users[0] if len(users) == 1 else None


def _float32_copy(node: Node) -> bool:
    return node.target == aten._to_copy.default and node.kwargs == {"dtype": torch.float32}


def _step(node: Optional[Node], *targets) -> Optional[Node]:
    """The single user of ``node`` past views and float32 copies where it is one of ``targets`` taking that value
    as its first argument; else None. The nodes passed are ``node``'s only readers, one after another."""
    if node is None:
        return None
    last: Node = node
    user = _only_user(last)
    while user is not None and (user.target in _TRANSPARENT or _float32_copy(user)):
        last = user
        user = _only_user(last)
    return user if user is not None and user.target in targets and user.args[0] is last else None


def _stored(gm: GraphModule, arg, numel: int) -> Optional[Node]:
    """``arg`` where it reads a stored float32 tensor of ``numel`` elements; else None."""
    target = attr_target(arg)
    value = stored(gm, target) if target is not None else None
    ok = isinstance(value, torch.Tensor) and value.dtype == torch.float32 and value.numel() == numel
    return arg if ok else None


def _bias(gm: GraphModule, arg, n: int) -> Optional[Node]:
    """``arg`` where it reads a stored float32 [N] (a bias for the N columns: broadcast along rows only)."""
    node = _stored(gm, arg, n)
    return node if node is not None and tuple(stored(gm, node.target).shape) == (n,) else None  # type: ignore


def _zero_point(value: float) -> bool:
    """Whether ``value`` is an int8 zero point (an integer in [-128, 127])."""
    return float(value).is_integer() and -128 <= value <= 127


def _activation(node: Optional[Node]) -> Optional[str]:
    """The kernel's name for an activation node in its default form (GELU's: erf), or None."""
    if node is None or len(node.args) != 1 or node.kwargs:
        return None
    return _ACTIVATIONS.get(node.target)  # type: ignore[call-overload]


def epilogue(gm: GraphModule, gemm: Node) -> Optional[Epilogue]:
    """The requantizing chain after ``gemm`` (an int8-rows ``int8_tile_gemm`` call with a zero point), or None."""
    if len(gemm.args) != 5 or gemm.args[1] is not None or gemm.args[2] is None:
        return None
    n = stored_arg(gm, gemm, 4).numel()
    mul = _step(gemm, aten.mul.Tensor)
    a_scale = _stored(gm, mul.args[1], 1) if mul is not None else None
    if mul is None or a_scale is None:
        return None
    step, bias = mul, None
    add = _step(step, aten.add.Tensor, operator.add)
    if add is not None and len(add.args) == 2 and not add.kwargs:
        bias = _bias(gm, add.args[1], n)
        step = add if bias is not None else step
    act = _step(step, *_ACTIVATIONS)
    activation = _activation(act)
    if act is not None and activation is not None:
        step = act
    div = _step(step, aten.div.Tensor)
    out_scale = _stored(gm, div.args[1], 1) if div is not None else None
    add_zero = _step(_step(div, aten.round.default) if out_scale is not None else None, aten.add.Tensor)
    if out_scale is None or add_zero is None or add_zero.kwargs or len(add_zero.args) != 2:
        return None
    zero_point = add_zero.args[1]
    if not isinstance(zero_point, (int, float)) or not _zero_point(zero_point):
        return None
    if stored(gm, str(out_scale.target)).item() < int8_tile_gemm.MIN_OUT_SCALE:  # the kernel's least
        return None
    clamp = _step(add_zero, aten.clamp.default)
    out = _only_user(clamp) if clamp is not None and tuple(clamp.args[1:]) == (-128, 127) else None
    if out is None or out.target != aten._to_copy.default or out.kwargs != {"dtype": torch.int8}:
        return None
    value, rows = out.meta.get("val"), gemm.meta.get("val")
    # [M, N] as the GEMM's: the chain's views must come back to its rows and columns (provably: symbolic sizes)
    if value is None or rows is None or value.dim() != 2 or not statically_known_true(value.shape[-1] == n) \
            or not statically_known_true(value.shape[0] == rows.shape[0]):
        return None
    return Epilogue(a_scale, bias, activation or "none", out_scale, float(zero_point), out)


def _chain(gemm: Node, output: Node) -> list:
    """The nodes from ``gemm`` to ``output``, following their only users."""
    nodes = [gemm]
    while nodes[-1] is not output:
        user = _only_user(nodes[-1])
        assert user is not None, "epilogue() found this chain of single readers"
        nodes.append(user)
    return nodes


def _sizes_elsewhere(chain: list) -> Optional[dict]:
    """For each ``sym_size(n, d)`` that reads a chain node's shape (the next layer's rows take their sizes so), what
    gives that size without the node: the ``d``-th entry of the last view's shape at or before ``n`` in the chain.
    None where some size has no such source (the chain then stays)."""
    sizes: dict = {}
    shape = None
    for node in chain:
        if node.target in _TRANSPARENT:
            shape = node.args[1]
        for user in node.users:
            if user.target != aten.sym_size.int:
                continue
            d = user.args[1]
            size = shape[d] if shape is not None and -len(shape) <= d < len(shape) else None
            if not (isinstance(size, Node) or (isinstance(size, int) and size >= 0)):  # -1 is no size
                return None
            sizes[user] = sizes.get(size, size) if isinstance(size, Node) else size  # a size read off the chain too
    return sizes


def _carry_record(chain: list, call: Node) -> None:
    """Move the layer's report record (on a node of the chain) to ``call``, naming the fused kernel."""
    for node in chain:
        rec = record.read(node)
        if rec is not None:
            reason = f"{rec.kernel_reason}; {REQUANT_REASON}" if rec.kernel_reason else REQUANT_REASON
            call.meta["custom"] = dict(node.meta.get("custom") or {})
            record.write(call, rec.updated(kernel=REQUANT, kernel_reason=reason))
            return


def _resize(user: Node, size) -> None:
    """Point the readers of a ``sym_size`` node at ``size`` (a node or an int) instead."""
    for reader in list(user.users):
        reader.args = map_arg(reader.args, lambda a: size if a is user else a)
        reader.kwargs = map_arg(reader.kwargs, lambda a: size if a is user else a)


def fuse_requantize(gm: GraphModule) -> int:
    """Replace each requantizing chain after an ``int8_tile_gemm`` with one ``int8_tile_gemm_requant`` call (in
    place); return how many."""
    graph, fused = gm.graph, 0
    for gemm in [n for n in graph.nodes if n.op == "call_function" and n.target == int8_tile_gemm.OP]:
        e = epilogue(gm, gemm)
        chain = _chain(gemm, e.output) if e is not None else []
        sizes = _sizes_elsewhere(chain) if e is not None else None
        if e is None or sizes is None:
            continue
        for user, size in sizes.items():
            _resize(user, size)
        a, _, a_zero, w, w_scale = gemm.args
        with graph.inserting_before(e.output):
            zero = graph.get_attr(store_tensor(gm, f"{w.target}_out_zero",
                                               torch.tensor([e.out_zero], dtype=torch.float32)))
            call = graph.call_function(int8_tile_gemm.REQUANT_OP, (a, e.a_scale, a_zero, w, w_scale, e.bias,
                                                                    int8_tile_gemm.ACTIVATIONS[e.activation],
                                                                    e.out_scale, zero))
        inherit_meta(gm, [zero, call], gemm)
        _carry_record(chain, call)
        e.output.replace_all_uses_with(call)
        fused += 1
    if fused:
        graph.eliminate_dead_code()
        gm.recompile()
    return fused
