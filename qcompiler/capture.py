"""Capture: ``torch.export`` a model; and re-export a graph module that a stage edited.

Stages edit the unlifted graph module (``program.module()``), then re-export it
with the original example inputs and the original program's dynamic dimensions,
so each stage returns a clean ``ExportedProgram``.
"""
import inspect
from typing import Any, Optional

import torch
from torch.export import Dim, ExportedProgram
from torch.utils._pytree import tree_unflatten

from .runtime.errors import fail


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


def dynamic_dims(program: ExportedProgram):
    """``(args, kwargs)`` of per-input ``{dim: Dim.DYNAMIC}`` for every symbolic dimension of ``program``."""
    user = set(program.graph_signature.user_inputs)
    specs = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user:
            val = node.meta.get("val")
            shape = getattr(val, "shape", ())
            specs.append({i: Dim.DYNAMIC for i, d in enumerate(shape) if isinstance(d, torch.SymInt)} or None)
    return tree_unflatten(specs, program.call_spec.in_spec)


def reexport(gm: torch.fx.GraphModule, like: ExportedProgram) -> ExportedProgram:
    """Export an edited ``like.module()`` again, with ``like``'s example inputs and dynamic dimensions."""
    args, kwargs = like.example_inputs
    dyn_args, dyn_kwargs = dynamic_dims(like)
    dynamic = inspect.signature(gm.forward).bind(*dyn_args, **dyn_kwargs).arguments
    with torch.no_grad():
        return torch.export.export(gm, tuple(args), dict(kwargs), dynamic_shapes=dict(dynamic), strict=False)
