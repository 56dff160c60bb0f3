"""Quantize one weight by its spec: its algorithm's ``quantize_weight`` (GPTQ, HQQ) or round to nearest.

(AWQ and SmoothQuant change the weight before this, in ``smoothing``; the rescaled weight is
then rounded to nearest.)
"""
from typing import Optional

import torch

from .algorithm import Solved, as_solved


def quantize_weight(spec, w: torch.Tensor, observer: Optional[torch.nn.Module], layer: str, store: dict,
                    key: tuple) -> Solved:
    """The tensors to store for ``w`` under ``spec`` (a QuantSpec), with the algorithm's note if any; ``observer``
    saw the layer's input; ``store`` holds what windowed calibration already solved, by ``key``."""
    algo = spec.algorithm
    if key in store:  # a data-driven algorithm's result (``calibration.solve``)
        return as_solved(store[key])
    if algo is None or algo.rescales:
        return Solved(spec.weight.quantize(w))
    if algo.needs:  # solve had no data for it
        raise ValueError(f"qcompiler: layer {layer!r} uses {type(algo).__name__}, which needs calibration, but no "
                         "input was observed: pass calibration_data (or call the prepared program on inputs)")
    return as_solved(algo.quantize_weight(spec.weight, w, observer))
