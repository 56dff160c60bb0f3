"""HQQ: Half-Quadratic Quantization of the zero point, without data (Badri & Shaji, 2023).

Per group, with the min-max scale fixed, alternate:
``Wq = round(W/s + z)``; the error ``W - (Wq - z)·s`` is shrunk under an lp norm (p < 1:
outliers are allowed to keep their error); ``z`` becomes the mean of ``Wq - (W - We)/s``.
The zero point then fits the bulk of the weights, not the extremes. ``beta`` grows by
``kappa`` each step; the best zero point seen (by the squared error) is kept.

The result is converted to the spec's float-domain zero point (``x̂ = (q - mid)·s + z_f``,
``z_f = (mid - z)·s``) in its dtypes, and rounded by the spec's own ops, so it is stored
and dequantized exactly as round-to-nearest is.
"""
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from ..runtime import int_type
from ..runtime.errors import fail
from .algorithm import Algorithm, register
from .spec import AffineWeight

ops = torch.ops.qcompiler


@register
@dataclass(frozen=True)
class HQQ(Algorithm):
    """Half-Quadratic Quantization (Badri & Shaji, 2023): no data. Per group, alternate rounding
    with an ``lp_norm`` (< 1) shrinkage of the error and a closed-form zero-point update, so
    the zero point fits the weights' bulk rather than their outliers."""

    iters: int = 20
    lp_norm: float = 0.7
    beta: float = 10.0
    kappa: float = 1.01
    name: ClassVar[str] = "hqq"
    needs: ClassVar[tuple] = ()

    def __post_init__(self):
        if not 0 < self.lp_norm <= 1:
            raise fail("lp_norm", "a number in (0, 1]", self.lp_norm)
        if not isinstance(self.iters, int) or self.iters < 1:
            raise fail("iters", "a positive integer", self.iters)

    def unsupported(self, spec) -> Optional[str]:
        if spec.activation is not None or not isinstance(spec.weight, AffineWeight) or spec.weight.group_size is None:
            return "HQQ fits the zero points of grouped affine weights of weight-only schemes"
        if spec.weight.zero_point_domain != "float":
            return (f"HQQ optimizes a float zero point; this one has zero_point_domain "
                    f"{spec.weight.zero_point_domain!r} (use 'float')")
        return None

    def quantize_weight(self, spec, w: torch.Tensor, stats) -> dict:
        return hqq_quantize(spec, w, self)


def _shrink(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """The lp-norm proximal step: ``sign(x)·max(|x| - |x|^(p-1)/beta, 0)``."""
    return torch.sign(x) * torch.relu(x.abs() - x.abs().clamp_min(1e-12).pow(p - 1) / beta)


def hqq_zero(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int, algo: HQQ) -> torch.Tensor:
    """The optimized zero point ``z`` [G, 1] of ``x̂ = (q - z)·s`` for groups ``w`` [G, size]."""
    beta, best, best_err = algo.beta, zero, float("inf")
    for _ in range(algo.iters):
        wq = torch.clamp(torch.round(w / scale + zero), 0, qmax)
        err = w - (wq - zero) * scale
        total = float(err.pow(2).sum())
        if total < best_err:
            best, best_err = zero, total
        we = _shrink(err, beta, algo.lp_norm)
        zero = torch.mean(wq - (w - we) / scale, dim=1, keepdim=True)
        beta *= algo.kappa
    return best


def hqq_quantize(spec: AffineWeight, w: torch.Tensor, algo: HQQ) -> dict:
    """HQQ for ``w`` [N, K] under an asymmetric float-zero-point ``spec``; the stored tensors."""
    it, (n, k) = int_type(spec.dtype), w.shape
    g = spec.group_size or k
    groups = w.detach().float().reshape(-1, g)
    lo, hi = groups.amin(1, keepdim=True).clamp_max(0), groups.amax(1, keepdim=True).clamp_min(0)
    scale = ((hi - lo) / (it.qmax - it.qmin)).clamp_min(torch.finfo(torch.float32).eps)
    scale = scale.to(spec.scale_dtype).float()  # optimize against the scale as it will be stored
    zero = hqq_zero(groups, scale, -lo / scale, it.qmax, algo)  # unsigned codes: HQQ needs a float zero point
    s = scale.reshape(n, k // g)
    z = ((it.mid - zero) * scale).reshape(n, k // g).to(spec.zero_point_dtype)
    q = ops.quantize_affine(w.detach().float(), spec.block, s.to(spec.scale_dtype), z, it.name, "float")
    return {"q": q if it.bits == 8 else ops.pack_int(q, it.bits), "scale": s.to(spec.scale_dtype), "zero_point": z}
