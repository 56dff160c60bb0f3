"""The unquantized parts of a float32 program in bfloat16: ``qcompiler.lower(..., unquantized_dtype=torch.bfloat16)``.

Each float32 matmul, linear, convolution and attention that is not a quantized layer runs
in bfloat16, its inputs cast in and its result cast back; everything else (norms,
softmax outside attention, residual adds) stays float32. Packaged with freezing, the casts
of stored weights fold: the ``.pt2`` holds those weights in bfloat16.

Before::

    x (f32) ── aten.linear ── y (f32)
              W (f32) ─┘

After::

    x (f32) ── to(bf16) ── aten.linear ── to(f32) ── y (f32)
    W (f32) ── to(bf16) ─┘

Quantized layers keep the scheme's numerics: their anchors carry a report record (not a
skipped layer's) and are left alone, as are ops whose result is not float32. The changed nodes are marked
(``record.UNQUANTIZED_KEY`` in their custom metadata) so the report can say the program runs them in
bfloat16.
"""
import torch
from torch.fx import GraphModule, Node

from ..passes import record

aten = torch.ops.aten
COMPUTE_OPS = frozenset({
    aten.linear.default, aten.matmul.default, aten.mm.default, aten.bmm.default, aten.addmm.default,
    aten.baddbmm.default, aten.scaled_dot_product_attention.default, aten.conv1d.default, aten.conv2d.default,
    aten.einsum.default,
})


def _float32(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.float32


def _casts_to(graph, arg, dtype, casts: dict):
    """``arg`` (a node, or a list of nodes as einsum takes) cast to ``dtype`` where it is a float32 tensor;
    ``casts`` keeps one cast per node (q, k and v projections share their input's)."""
    if isinstance(arg, (list, tuple)):
        return type(arg)(_casts_to(graph, a, dtype, casts) for a in arg)
    if isinstance(arg, Node) and _float32(arg.meta.get("val")):
        if (widened := _widened_from(arg, dtype)) is not None:  # dtype -> float32 -> dtype: the value itself
            return widened
        if arg not in casts:
            with graph.inserting_after(arg):
                casts[arg] = graph.call_function(aten._to_copy.default, (arg,), {"dtype": dtype})
        return casts[arg]
    return arg


def _widened_from(node: Node, dtype: torch.dtype):
    """The ``dtype`` tensor that ``node`` widens to float32 (``x.to(torch.float32)``, as ``aten.to.dtype`` or a
    ``_to_copy`` with only a dtype), else None: casting it back would give those same values (a bfloat16 KV cache
    read by a float32 model, for one)."""
    widening = ((node.target == aten.to.dtype and node.args[1:] == (torch.float32,) and not node.kwargs)
                or (node.target == aten._to_copy.default and node.kwargs == {"dtype": torch.float32}))
    source = node.args[0] if widening else None
    value = source.meta.get("val") if isinstance(source, Node) else None
    return source if isinstance(value, torch.Tensor) and value.dtype == dtype else None


def _quantized_layer(node: Node) -> bool:
    """Whether a node is a quantized layer's anchor (a report record that is not a skipped layer's)."""
    rec = record.read(node)
    return rec is not None and rec.quantized


def run_unquantized_in(gm: GraphModule, dtype: torch.dtype) -> int:
    """Run ``gm``'s unquantized float32 compute ops in ``dtype`` (in place); return how many."""
    graph, changed = gm.graph, 0
    casts: dict[Node, Node] = {}
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in COMPUTE_OPS or _quantized_layer(node):
            continue
        if not _float32(node.meta.get("val")):
            continue
        node.args = tuple(_casts_to(graph, a, dtype, casts) for a in node.args)
        node.kwargs = {k: _casts_to(graph, v, dtype, casts) for k, v in node.kwargs.items()}
        with graph.inserting_after(node):
            back = graph.call_function(aten._to_copy.default, (node,), {"dtype": torch.float32})
        node.replace_all_uses_with(back, delete_user_cb=lambda user: user is not back)
        unquantized = {record.UNQUANTIZED_KEY: str(dtype).removeprefix("torch.")}
        node.meta["custom"] = {**(node.meta.get("custom") or {}), **unquantized}
        changed += 1
    gm.recompile()
    return changed
