"""Calibrate: run data through a prepared program so its observers see it; say whether a config needs data.

Observers record activation ranges (static schemes) and, for GPTQ and AWQ, input Hessians
or channel statistics. Where those Hessians exceed a memory budget, the data runs once
per window of layers (``passes/calibration.py``), each window solved and freed in turn.
"""
from typing import Iterable, Optional

import torch

from ..passes.calibration import solve, windows
from ..passes.observe import needs, observers
from ..passes.progress import progress
from ..recipe import as_recipe

HESSIAN_BUDGET_MB = 2048


def calibrate(prepared: torch.fx.GraphModule, data: Optional[Iterable],
              hessian_budget_mb: float = HESSIAN_BUDGET_MB) -> int:
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
            args, kwargs = split_item(item)
            prepared(*args, **kwargs)


def split_item(item):
    if isinstance(item, dict):
        return (), item
    if (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], (tuple, list))
            and isinstance(item[1], dict)):
        return tuple(item[0]), item[1]
    if isinstance(item, (tuple, list)):
        return tuple(item), {}
    return (item,), {}


def needs_calibration(config) -> bool:
    """Whether ``config`` (or any rule of a ``Recipe``) needs calibration data: static activations, GPTQ,
    AWQ, SmoothQuant."""
    return any(needs(rule.config.spec()) for rule in as_recipe(config).rules if rule.config is not None)
