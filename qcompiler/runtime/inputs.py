"""What a program takes as input, described as plain data (``cli/inputs.py`` makes inputs from it).

Packages carry the description (``metadata["inputs"]``), so that ``qcompiler bench`` can
time any ``.pt2`` that qcompiler wrote: each input's name, whether it is passed by
keyword, dtype and shape, with dynamic dimensions named where they are first used (``input_ids[1]``), and the range
and example size of each symbol. Integer inputs also record the values their example
held (token ids, masks), and made inputs draw from those values.
"""
from typing import Optional

import torch

MAX_VALUES = 4096  # distinct example values kept for an integer input


def _dim(size, where: str, dims: dict, ranges: dict, names: dict):
    """An int for a static size; else the dim's name: where the inputs first use its symbol."""
    if isinstance(size, int):
        return size
    name = names.setdefault(size.node.expr, where)
    bounds = ranges.get(size.node.expr)
    dims.setdefault(name, {"example": size.node.hint,
                           "min": int(bounds.lower) if bounds is not None else 1,
                           "max": _finite(bounds.upper) if bounds is not None else None})
    return name


def _finite(bound) -> Optional[int]:
    try:
        return int(bound)
    except (TypeError, ValueError, OverflowError, AttributeError):  # sympy's or torch's infinity
        return None


def describe_inputs(program: torch.export.ExportedProgram) -> Optional[dict]:
    """``{"inputs": [...], "dims": {...}}`` for a program whose inputs are tensors passed flat
    (positionally or by keyword); None for other input structures (nested lists, non-tensors)."""
    spec = program.call_spec.in_spec
    if spec is None or spec.num_children != 2:
        return None
    args, kwargs = spec.children()
    keywords = [None] * args.num_children + list(kwargs.context or [])
    names = program.graph_signature.user_inputs
    if len(names) != len(keywords) or any(not c.is_leaf() for c in args.children() + kwargs.children()):
        return None
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    examples = _example_leaves(program)
    dims, inputs, symbols = {}, [], {}
    for i, (name, keyword) in enumerate(zip(names, keywords)):
        val = placeholders[name].meta.get("val")
        if not isinstance(val, torch.Tensor):
            return None
        entry = {"name": keyword or name, "keyword": keyword is not None,
                 "dtype": str(val.dtype).removeprefix("torch."),
                 "shape": [_dim(s, f"{keyword or name}[{axis}]", dims, program.range_constraints, symbols)
                           for axis, s in enumerate(val.shape)]}
        if not val.dtype.is_floating_point and examples is not None:
            entry["values"] = torch.unique(examples[i]).flatten()[:MAX_VALUES].tolist()
        inputs.append(entry)
    return {"inputs": inputs, "dims": dims}


def _example_leaves(program) -> Optional[list]:
    example = program.example_inputs
    if example is None:
        return None
    args, kwargs = example
    leaves = list(args) + list(kwargs.values())
    return leaves if all(isinstance(t, torch.Tensor) for t in leaves) else None
