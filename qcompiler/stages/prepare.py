"""Prepare: annotate the linears of a program and insert observers where a spec needs data.

The result is a runnable ``torch.fx.GraphModule``: call it on representative
inputs to calibrate (``calibrate.py``), then hand it to :func:`qcompiler.convert`.
"""

import torch
from torch.export import ExportedProgram

from .capture import export_shape
from ..passes.annotate import annotate
from ..passes.linears import canonicalize_linears
from ..passes.observe import insert_observers
from ..recipe import as_recipe
from ..runtime.errors import fail

QCOMPILER_META = "qcompiler_"  # the prefix of every gm.meta key prepare sets
SOURCE = "qcompiler_source"  # gm.meta key: the ExportShape of the program the prepared module came from


def prepare(program: ExportedProgram, config) -> torch.fx.GraphModule:
    """Annotate every linear of ``program`` with its spec (from a config or a Recipe) and add observers.

    The module shares ``program``'s weights (no copy)."""
    if not isinstance(program, ExportedProgram):
        raise fail("program", "a torch.export.ExportedProgram (see qcompiler.capture)", type(program).__name__)
    recipe = as_recipe(config)
    gm = program.module()
    canonicalize_linears(gm)
    sites = annotate(gm, recipe.config_for)
    gm.meta[SOURCE] = export_shape(program)  # not the program: its float weights may be freed once quantized
    gm.meta["qcompiler_names"] = {s.node: s.name for s in sites}
    gm.meta["qcompiler_observers"] = insert_observers(gm)
    return gm
