"""The reference patterns convert emits, as example functions for the backends' rules: each a linear of the
graphs a spec emits (``passes/spec.py``), traced with parameters in place of the spec's settings.

A weight-only format's pattern is :func:`weight_only` of its dequantization graph: ``linear(x, graph(...), b)``
with every parameter of the graph a pattern input, so a new weight format gets its pattern from its graph alone.
Parameters bind graph nodes or literal arguments (dtype names, block sizes), so a rule's ``where`` reads them
from the match. ``rows`` reshapes a linear's input to 2-D and back.
"""
import inspect
from typing import Callable, Dict

import torch

from ..passes import record
from ..passes import spec as graphs
from ..passes.pattern import attr_target

aten = torch.ops.aten

_PATTERNS: Dict[Callable, Callable] = {}  # a registry: one pattern function per graph, so rules share it


def weight_only(graph: Callable) -> Callable:
    """``pattern(x, <graph's parameters>, b) = linear(x, graph(<parameters>), b)``, made once per graph (rules
    group by pattern identity)."""
    if graph not in _PATTERNS:
        names = list(inspect.signature(graph).parameters)
        if "x" in names or "b" in names:
            raise ValueError(f"qcompiler: {graph.__name__}'s parameters may not be named x or b")
        source = (f"def {graph.__name__}(x, {', '.join(names)}, b):\n"
                  f"    return linear(x, graph({', '.join(names)}), b)\n")
        namespace = {"linear": aten.linear.default, "graph": graph}
        exec(compile(source, f"<weight_only({graph.__name__})>", "exec"), namespace)  # a real signature to trace
        _PATTERNS[graph] = namespace[graph.__name__]  # type: ignore[assignment]
    return _PATTERNS[graph]


def layer_name(m) -> str:
    """The matched layer's name, as convert named it (its report record), the prefix of the constants a rule
    stores; a linear without a record (a program not from convert) is named by its stored weight."""
    rec = record.read(m.anchor)
    if rec is not None and rec.name:
        return rec.name
    targets = [attr_target(node) for node in m.inputs.values()]
    return next((t for t in targets if t), m.anchor.name)


def stored_inputs(m, *names) -> bool:
    """Whether each named pattern input is a stored tensor (or absent, like a symmetric zero point)."""
    return all(m[name] is None or m[name].op == "get_attr" for name in names)


def per_token_block(m) -> bool:
    """Whether the matched activation quantization has one scale per token (row)."""
    block = list(m["block"])
    return block[-1] == -1 and all(v == 1 for v in block[:-1])


def with_bias(y, b):
    return y if b is None else y + b


def rows(m, x, k, n):
    """x as (rows, k), and a function giving an (rows, n) result x's leading dimensions back."""
    ndim = x.node.meta["val"].ndim
    lead = [aten.sym_size.int(x, i) for i in range(ndim - 1)]
    return aten.reshape.default(x, [-1, k]), lambda y: aten.reshape.default(y, lead + [n])


weight_only_unpacked = weight_only(graphs.affine_bytes)
weight_only_packed = weight_only(graphs.affine_packed)
grid_codebook_packed = weight_only(graphs.grid_codebook_packed)
grid_codebook_bytes = weight_only(graphs.grid_codebook_bytes)
float_codebook_packed = weight_only(graphs.float_codebook_packed)
float_codebook_bytes = weight_only(graphs.float_codebook_bytes)
additive = weight_only(graphs.additive)
table_packed = weight_only(graphs.table_packed)
table_bytes = weight_only(graphs.table_bytes)


def dynamic_int8_int8(x, block, eps, out_x, w_q, w_block, w_scale, out_w, b):
    """int8dq: per-token symmetric int8 activations, per-channel symmetric int8 weights."""
    return aten.linear.default(graphs.dynamic_int8(x, block, eps, out_x, "symmetric"),
                               graphs.affine_bytes(w_q, w_block, w_scale, None, "int8", "none", out_w), b)


def dynamic_int8_int4(x, block, eps, out_x, w_q, n, w_block, w_scale, out_w, b):
    """int8da-int4w: per-token asymmetric int8 activations, symmetric int4 weights in groups."""
    return aten.linear.default(graphs.dynamic_int8(x, block, eps, out_x, "asymmetric"),
                               graphs.affine_packed(w_q, 4, n, True, w_block, w_scale, None, "int4", "none", out_w), b)


def dynamic_int8_intx(x, block, eps, out_x, w_q, bits, n, w_block, w_scale, dtype, out_w, b):
    """int8da-intx: per-token asymmetric int8 activations, symmetric b-bit weights in groups, packed."""
    return aten.linear.default(graphs.dynamic_int8(x, block, eps, out_x, "asymmetric"),
                               graphs.affine_packed(w_q, bits, n, True, w_block, w_scale, None, dtype, "none", out_w),
                               b)


def static_int8_int8(x, block, scale, zero_point, out_x, w_q, w_block, w_scale, out_w, b):
    """int8static: calibrated per-tensor int8 activations, per-channel symmetric int8 weights."""
    return aten.linear.default(graphs.static_int8(x, block, scale, zero_point, out_x),
                               graphs.affine_bytes(w_q, w_block, w_scale, None, "int8", "none", out_w), b)
