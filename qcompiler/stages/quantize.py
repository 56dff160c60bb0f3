"""``quantize``: capture, prepare, calibrate and convert in one call."""
from typing import Any, Iterable, Optional

import torch
from torch.export import ExportedProgram

from .capture import capture
from .convert import convert
from .calibrate import calibrate
from .prepare import prepare


def quantize(model: torch.nn.Module, example_args: tuple, config, *, example_kwargs: Optional[dict] = None,
             dynamic_shapes: Any = None, calibration_data: Optional[Iterable] = None) -> ExportedProgram:
    """Quantize ``model``'s linears: returns an ExportedProgram holding the reference Q/DQ graph.

    Args:
        model: the float model.
        example_args, example_kwargs, dynamic_shapes: as for ``torch.export.export``.
        config: one config for every eligible linear (e.g. ``Int4WeightOnlyConfig(64)``) or a ``Recipe``.
        calibration_data: an iterable of argument tuples, keyword dicts or ``(args, kwargs)``
            pairs; static schemes need it.

    ``prog.module()(*example_args)`` runs the result; ``qcompiler.report(prog)`` tells what happened to each layer.
    """
    program = capture(model, example_args, example_kwargs=example_kwargs, dynamic_shapes=dynamic_shapes)
    prepared = prepare(program, config)
    calibrate(prepared, calibration_data)
    return convert(prepared)
