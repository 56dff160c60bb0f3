"""Capture: ``torch.export`` a model; and re-export a graph module that a stage edited.

Stages edit the unlifted graph module (``program.module()``), then re-export it
with the original example inputs and the original program's dynamic dimensions,
so each stage returns a clean ``ExportedProgram``.
"""
import inspect
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch.export import Dim, ExportedProgram
from torch.utils._pytree import tree_unflatten

from ..runtime.errors import fail


def capture(model: torch.nn.Module, example_args: tuple, *, example_kwargs: Optional[dict] = None,
            dynamic_shapes: Any = None) -> ExportedProgram:
    """``torch.export.export(model.eval(), ..., strict=False)``: the ATen program every stage works on."""
    if not isinstance(model, torch.nn.Module):
        raise fail("model", "a torch.nn.Module", type(model).__name__)
    if not isinstance(example_args, tuple):
        example_args = (example_args,)
    try:
        model.eval()
    except NotImplementedError:  # an exported program's module() (e.g. after your own pass) is already in eval form
        pass
    with torch.no_grad():
        return torch.export.export(model, example_args, example_kwargs or {}, dynamic_shapes=dynamic_shapes,
                                   strict=False)


@dataclass(frozen=True)
class ExportShape:
    """What exporting an edited ``program.module()`` again needs from ``program``, without its weights:
    the example inputs and each input's symbolic dimensions with their ranges."""

    args: tuple
    kwargs: dict
    dynamic: Any  # (args, kwargs) of per-input {dim: Dim.DYNAMIC(min=, max=)} or None


def export_shape(program: ExportedProgram) -> ExportShape:
    args, kwargs = program.example_inputs
    return ExportShape(tuple(args), dict(kwargs), dynamic_dims(program))


def dynamic_dims(program: ExportedProgram):
    """``(args, kwargs)`` of per-input ``{dim: spec}`` for every symbolic dimension of ``program``: a ``Dim`` with the
    program's range for each symbol (inputs sharing a symbol share it; a dimension captured from 1 stays from 1),
    ``Dim.DYNAMIC`` for a dimension that is an expression of symbols."""
    user = set(program.graph_signature.user_inputs)
    dims: dict = {}
    specs = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user:
            shape = getattr(node.meta.get("val"), "shape", ())
            specs.append({i: _dim(program, d.node.expr, dims) for i, d in enumerate(shape)
                          if isinstance(d, torch.SymInt)} or None)
    return tree_unflatten(specs, program.call_spec.in_spec)


def _dim(program: ExportedProgram, expr, dims: dict):
    bounds = program.range_constraints.get(expr)
    if not expr.is_Symbol or bounds is None:
        return Dim.DYNAMIC
    if expr not in dims:
        finite = {k: int(v) for k, v in (("min", bounds.lower), ("max", bounds.upper)) if v.is_Integer}
        dims[expr] = Dim(str(expr), **finite)
    return dims[expr]


def reexport(gm: torch.fx.GraphModule, like: Union[ExportedProgram, ExportShape]) -> ExportedProgram:
    """Export an edited ``like.module()`` again, with ``like``'s example inputs and dynamic dimensions."""
    shape = like if isinstance(like, ExportShape) else export_shape(like)
    dyn_args, dyn_kwargs = shape.dynamic
    dynamic = inspect.signature(gm.forward).bind(*dyn_args, **dyn_kwargs).arguments
    with torch.no_grad():
        return torch.export.export(gm, shape.args, shape.kwargs, dynamic_shapes=dict(dynamic), strict=False)
