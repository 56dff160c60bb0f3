"""AWQ: per-input-channel scales that protect the weights of salient channels (Lin et al., 2023).

The scales are applied by ``smoothing.py`` (weights ``W·s``, inputs ``x/s``, folded where the
graph allows); the weights are then rounded to nearest.
"""
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from ..runtime.errors import fail
from ..runtime.numerics import layer_error
from .algorithm import Algorithm, register
from .smoothing import MIN_SCALE
from .spec import AffineWeight


@register
@dataclass(frozen=True)
class AWQ(Algorithm):
    """Activation-aware Weight Quantization (Lin et al., 2023): scale each input channel by
    ``s = mean|x|^a`` (``a`` searched on a ``grid`` in [0, 1) per linear input, minimizing the
    output error ``tr(ΔW H ΔWᵀ)``), quantize ``W·s`` and divide the input by ``s``, folded into
    the op before it where the graph allows."""

    grid: int = 20
    name: ClassVar[str] = "awq"
    needs: ClassVar[tuple] = ("hessian", "channels")

    def unsupported(self, spec) -> Optional[str]:
        if spec.activation is None and isinstance(spec.weight, AffineWeight) and spec.weight.group_size is not None:
            return None
        return "AWQ scales the input channels of grouped affine weights of weight-only schemes"

    def __post_init__(self):
        if not isinstance(self.grid, int) or self.grid < 2:
            raise fail("grid", "an integer of at least 2", self.grid)
    rescales: ClassVar[bool] = True

    def input_scales(self, stats, weights: list, specs: list) -> torch.Tensor:
        return awq_scales(stats, weights, specs, self.grid)


def awq_scales(obs, weights: list, specs: list, grid: int) -> torch.Tensor:
    """``s = mean|x|^a`` (normalized), ``a`` on a grid in [0, 1) minimizing the summed output error
    ``tr(ΔW H ΔWᵀ)`` of every linear reading x, ``ΔW = W - Q(W·s)/s``."""
    h, magnitude = obs.hessian / max(int(obs.rows), 1), obs.channel_abs_mean.clamp_min(MIN_SCALE)
    best, best_loss = torch.ones_like(magnitude), float("inf")
    for i in range(grid):
        s = magnitude.pow(i / grid)
        s = s / (s.max() * s.min()).sqrt()  # centre the scales around 1
        loss = sum(_output_error(w, w_hat(spec, w * s) / s, h) for w, spec in zip(weights, specs))
        if loss < best_loss:
            best, best_loss = s, loss
    return best


def w_hat(spec: AffineWeight, w: torch.Tensor) -> torch.Tensor:
    """Round to nearest and back, as the spec stores it."""
    return spec.dequantize(spec.quantize(w), w.shape[1], torch.float32)


def _output_error(w: torch.Tensor, w_q: torch.Tensor, h: torch.Tensor) -> float:
    return layer_error(w - w_q, h)
