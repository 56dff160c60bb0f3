"""Inputs made from a program's input description (``runtime/inputs.py``), for ``bench`` and calibration."""
from typing import Dict, Optional

import torch


def make_inputs(description: dict, sizes: Optional[Dict[str, int]] = None, seed: int = 0) -> tuple:
    """``(args, kwargs)`` matching ``description``: dynamic dims take ``sizes`` (by symbol), else their
    example size; float inputs are normal noise, integer inputs draw from their example values."""
    sizes = {**{k: d["example"] for k, d in description["dims"].items()}, **(sizes or {})}
    gen = torch.Generator().manual_seed(seed)
    args, kwargs = [], {}
    for entry in description["inputs"]:
        shape = [sizes[s] if isinstance(s, str) else s for s in entry["shape"]]
        t = sample_like(getattr(torch, entry["dtype"]), shape, entry.get("values"), gen)
        if entry["keyword"]:
            kwargs[entry["name"]] = t
        else:
            args.append(t)
    return tuple(args), kwargs


def sample_like(dtype: torch.dtype, shape, values: Optional[list], gen: torch.Generator) -> torch.Tensor:
    """Normal noise for a float dtype; otherwise draws from ``values`` (an example's values; 0 if none)."""
    if dtype.is_floating_point:
        return torch.randn(list(shape), generator=gen).to(dtype)
    pool = torch.tensor(values or [0]).to(dtype)
    return pool[torch.randint(len(pool), list(shape), generator=gen)]


def dynamic_dims(description: dict) -> list:
    """The dynamic dimensions' symbols, in the order the inputs first use them."""
    order = []
    for entry in description["inputs"]:
        order += [s for s in entry["shape"] if isinstance(s, str) and s not in order]
    return order
