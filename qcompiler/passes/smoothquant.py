"""SmoothQuant: per-input-channel scales that move activation outliers into the weights (Xiao et al., 2022).

The scales are applied by ``smoothing.py`` (weights ``W·s``, inputs ``x/s``, folded where the
graph allows), before int8 activations are calibrated on what the linear will see.
"""
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from ..runtime.errors import fail
from .algorithm import Algorithm, register
from .smoothing import MIN_SCALE
from .spec import AffineWeight


@register
@dataclass(frozen=True)
class SmoothQuant(Algorithm):
    """SmoothQuant (Xiao et al., 2022): ``s_j = max|x_j|^alpha / max|W_j|^(1-alpha)`` per input
    channel; weights become ``W·s`` and inputs ``x/s``, folded into the op before it where the
    graph allows, so int8 activations lose less to outlier channels."""

    alpha: float = 0.5
    name: ClassVar[str] = "smoothquant"
    needs: ClassVar[tuple] = ("channels",)

    def unsupported(self, spec) -> Optional[str]:
        if spec.activation is not None and not spec.activation.is_float8 and isinstance(spec.weight, AffineWeight):
            return None
        return "SmoothQuant moves outliers from int8 activations into affine weights"

    def __post_init__(self):
        if not 0 <= self.alpha <= 1:
            raise fail("alpha", "a number in [0, 1]", self.alpha)
    rescales: ClassVar[bool] = True

    def input_scales(self, stats, weights: list, specs: list) -> torch.Tensor:
        return smoothquant_scales(stats, weights, self.alpha)


def smoothquant_scales(obs, weights: list, alpha: float) -> torch.Tensor:
    """``s_j = max|x_j|^alpha / max|W_j|^(1-alpha)``, the weight maximum over every linear reading x."""
    x_max = torch.maximum(obs.channel_hi.abs(), obs.channel_lo.abs()).clamp_min(MIN_SCALE)
    w_max = torch.stack([w.abs().amax(0) for w in weights]).amax(0).clamp_min(MIN_SCALE)
    return (x_max.pow(alpha) / w_max.pow(1 - alpha)).clamp_min(MIN_SCALE)
