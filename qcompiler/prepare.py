"""Prepare: annotate the linears of a program and insert observers where a spec needs data.

The result is a runnable ``torch.fx.GraphModule``: call it on representative
inputs to calibrate, then hand it to :func:`qcompiler.convert`.
"""
from typing import Iterable, Optional

import torch
from torch.export import ExportedProgram

from .passes.annotate import annotate
from .passes.linears import canonicalize_linears
from .passes.calibration import solve, windows
from .passes.observe import insert_observers, observers
from .passes.progress import progress
from .recipe import as_recipe
from .runtime.errors import fail

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


HESSIAN_BUDGET_MB = 2048


def calibrate(prepared: torch.fx.GraphModule, data: Optional[Iterable], hessian_budget_mb: float = HESSIAN_BUDGET_MB) -> int:
    """Run ``prepared`` on each item of ``data``; return how many items ran.

    An item is an argument tuple, a dict of keyword arguments, an ``(args_tuple, kwargs_dict)``
    pair, or a single tensor (one positional argument). GPTQ and AWQ keep a ``K×K`` float32
    Hessian per distinct linear input; if those exceed ``hessian_budget_mb``, the data is run
    once per window of layers whose Hessians fit, each window solved and freed in turn
    (``passes.calibration``), so memory stays bounded at the cost of more passes.
    """
    items = list(data or ())
    cuts = windows(prepared, int(hessian_budget_mb * 2**20))
    if len(cuts) <= 1:  # everything fits: one pass; convert solves from the Hessians
        _run(prepared, items, "calibrating")
        return len(items)
    for i, window in enumerate(cuts):
        for node, obs in observers(prepared):
            obs.collect, obs.frozen = any(node is n for n, _ in window), i > 0
        _run(prepared, items, f"calibrating (Hessian window {i + 1}/{len(cuts)})")
        solve(prepared, window)
    for _, obs in observers(prepared):
        obs.frozen = False
    return len(items)


def _run(prepared, items: list, label: str) -> None:
    with torch.no_grad():
        for item in progress(items, label):
            args, kwargs = _split(item)
            prepared(*args, **kwargs)


def _split(item):
    if isinstance(item, dict):
        return (), item
    if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], (tuple, list)) and isinstance(item[1], dict):
        return tuple(item[0]), item[1]
    if isinstance(item, (tuple, list)):
        return tuple(item), {}
    return (item,), {}
