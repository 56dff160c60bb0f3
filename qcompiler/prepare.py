"""Prepare: annotate the linears of a program and insert observers where a spec needs data.

The result is a runnable ``torch.fx.GraphModule``: call it on representative
inputs to calibrate, then hand it to :func:`qcompiler.convert`.
"""
from typing import Iterable, Optional

import torch
from torch.export import ExportedProgram

from .passes.annotate import annotate
from .passes.linears import canonicalize_linears
from .passes.observe import insert_observers
from .passes.progress import progress
from .recipe import as_recipe
from .runtime.dtypes import fail

SOURCE = "qcompiler_source"  # gm.meta key: the program the prepared module came from


def prepare(program: ExportedProgram, config) -> torch.fx.GraphModule:
    """Annotate every linear of ``program`` with its spec (from a config or a Recipe) and add observers."""
    if not isinstance(program, ExportedProgram):
        raise fail("program", "a torch.export.ExportedProgram (see qcompiler.capture)", type(program).__name__)
    recipe = as_recipe(config)
    gm = program.module()
    canonicalize_linears(gm)
    sites = annotate(gm, recipe.config_for)
    gm.meta[SOURCE] = program
    gm.meta["qcompiler_names"] = {s.node: s.name for s in sites}
    gm.meta["qcompiler_observers"] = insert_observers(gm)
    return gm


def needs_calibration(prepared: torch.fx.GraphModule) -> bool:
    return prepared.meta.get("qcompiler_observers", 0) > 0


def calibrate(prepared: torch.fx.GraphModule, data: Optional[Iterable]) -> int:
    """Run ``prepared`` on each item of ``data``; return how many items ran.

    An item is an argument tuple, a dict of keyword arguments, an ``(args_tuple, kwargs_dict)``
    pair, or a single tensor (one positional argument).
    """
    count = 0
    with torch.no_grad():
        for item in progress(data or (), "calibrating"):
            args, kwargs = _split(item)
            prepared(*args, **kwargs)
            count += 1
    return count


def _split(item):
    if isinstance(item, dict):
        return (), item
    if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], (tuple, list)) and isinstance(item[1], dict):
        return tuple(item[0]), item[1]
    if isinstance(item, (tuple, list)):
        return tuple(item), {}
    return (item,), {}
