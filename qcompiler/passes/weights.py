"""Quantize one weight by its spec's algorithm: round to nearest, GPTQ or HQQ.

(AWQ and SmoothQuant change the weight before this, in ``smoothing``; the rescaled weight is
then rounded to nearest.)
"""
from typing import Optional

import torch

from .algorithms import GPTQ, HQQ
from .gptq import gptq_quantize
from .hqq import hqq_quantize


def quantize_weight(spec, w: torch.Tensor, observer: Optional[torch.nn.Module], layer: str, key: tuple) -> dict:
    """The tensors to store for ``w`` under ``spec`` (a QuantSpec); ``observer`` saw the layer's input;
    ``key`` finds a weight already solved during windowed calibration."""
    algo = spec.algorithm
    if observer is not None and key in observer.solved:
        return observer.solved[key]
    if isinstance(algo, GPTQ):
        if observer is None or observer.hessian is None or int(observer.rows) == 0:
            raise ValueError(f"qcompiler: layer {layer!r} uses GPTQ, which needs calibration, but no input was "
                             "observed: pass calibration_data (or call the prepared program on inputs)")
        return gptq_quantize(spec.weight, w, observer.hessian, algo)
    if isinstance(algo, HQQ):
        return hqq_quantize(spec.weight, w, algo)
    return spec.weight.quantize(w)
