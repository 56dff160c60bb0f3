"""The algorithms that choose better quantized values than round-to-nearest, as configs name them.

Pass one as ``algorithm=`` to a config (``Int4WeightOnlyConfig(64, algorithm=GPTQ())``), or
append ``+gptq`` / ``+hqq`` / ``+awq`` / ``+smoothquant`` to a scheme alias (``"int4wo-64+gptq"``).

| algorithm | schemes | needs calibration | what it changes |
| --- | --- | --- | --- |
| ``GPTQ`` | int8wo, int4wo, codebook | yes (a Hessian per linear input) | quantized values, column by column with error feedback |
| ``HQQ`` | int4wo (float zero point) | no | each group's zero point (and so its scale's use) |
| ``AWQ`` | int4wo | yes (Hessian and channel magnitudes) | per-input-channel scales searched to protect salient channels |
| ``SmoothQuant`` | int8dq, int8static | yes (channel ranges) | per-input-channel scales that move activation outliers into the weights |

The implementations are passes beside this module: ``gptq``, ``hqq``, ``smoothing`` (AWQ
and SmoothQuant both rescale a linear's input channels).
"""
from dataclasses import dataclass
from typing import Optional

from ..runtime.errors import fail


@dataclass(frozen=True)
class GPTQ:
    """GPTQ (Frantar et al., 2022): quantize a weight column by column and spread each column's
    error over the columns not yet quantized, weighted by the inverse Hessian of the layer's
    inputs (``H = XᵀX`` over the calibration data).

    ``damp``: fraction of the mean diagonal added to ``H``. The default is 0.1, not the paper's 0.01:
    with a few thousand calibration rows a wide layer's ``H`` is rank-deficient, and on MiniLM
    (48 calibration sentences) 0.1 beat 0.01 on every scheme measured. ``block_size``: columns updated
    together; ``act_order``: quantize columns in order of decreasing ``H`` diagonal (groups
    keep their qparams from the original weights then, so the stored layout is unchanged).
    """

    damp: float = 0.1
    block_size: int = 128
    act_order: bool = False
    name = "gptq"
    schemes = ("int8wo", "int4wo", "codebook")
    needs = ("hessian",)

    def __post_init__(self):
        if not 0 <= self.damp < 1:
            raise fail("damp", "a fraction in [0, 1)", self.damp)
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise fail("block_size", "a positive integer", self.block_size)


@dataclass(frozen=True)
class HQQ:
    """Half-Quadratic Quantization (Badri & Shaji, 2023): no data. Per group, alternate rounding
    with an ``lp_norm`` (< 1) shrinkage of the error and a closed-form zero-point update, so
    the zero point fits the weights' bulk rather than their outliers."""

    iters: int = 20
    lp_norm: float = 0.7
    beta: float = 10.0
    kappa: float = 1.01
    name = "hqq"
    schemes = ("int4wo",)
    needs = ()

    def __post_init__(self):
        if not 0 < self.lp_norm <= 1:
            raise fail("lp_norm", "a number in (0, 1]", self.lp_norm)
        if not isinstance(self.iters, int) or self.iters < 1:
            raise fail("iters", "a positive integer", self.iters)


@dataclass(frozen=True)
class AWQ:
    """Activation-aware Weight Quantization (Lin et al., 2023): scale each input channel by
    ``s = mean|x|^a`` (``a`` searched on a ``grid`` in [0, 1) per linear input, minimizing the
    output error ``tr(ΔW H ΔWᵀ)``), quantize ``W·s`` and divide the input by ``s``, folded into
    the op before it where the graph allows."""

    grid: int = 20
    name = "awq"
    schemes = ("int4wo",)
    needs = ("hessian", "channels")

    def __post_init__(self):
        if not isinstance(self.grid, int) or self.grid < 2:
            raise fail("grid", "an integer of at least 2", self.grid)


@dataclass(frozen=True)
class SmoothQuant:
    """SmoothQuant (Xiao et al., 2022): ``s_j = max|x_j|^alpha / max|W_j|^(1-alpha)`` per input
    channel; weights become ``W·s`` and inputs ``x/s``, folded into the op before it where the
    graph allows, so int8 activations lose less to outlier channels."""

    alpha: float = 0.5
    name = "smoothquant"
    schemes = ("int8dq", "int8static")
    needs = ("channels",)

    def __post_init__(self):
        if not 0 <= self.alpha <= 1:
            raise fail("alpha", "a number in [0, 1]", self.alpha)


ALGORITHMS = {a.name: a for a in (GPTQ, HQQ, AWQ, SmoothQuant)}
ALGORITHM_TYPES = (GPTQ, HQQ, AWQ, SmoothQuant)


def check_algorithm(algorithm, family: str, alias: str, weight=None) -> None:
    """Raise a clear error where ``algorithm`` does not apply to a config of scheme ``family``."""
    if algorithm is None:
        return
    if not isinstance(algorithm, ALGORITHM_TYPES):
        raise fail("algorithm", "None or one of qcompiler.GPTQ(), HQQ(), AWQ(), SmoothQuant()", algorithm)
    if family not in algorithm.schemes:
        raise ValueError(f"qcompiler: {type(algorithm).__name__} does not apply to {alias}; it supports "
                         f"{', '.join(algorithm.schemes)}")
    if isinstance(algorithm, HQQ) and getattr(weight, "zero_point_domain", None) != "float":
        raise ValueError(f"qcompiler: HQQ optimizes a float zero point; {alias} has zero_point_domain "
                         f"{getattr(weight, 'zero_point_domain', None)!r} (use the default 'float')")


def from_name(name: str) -> Optional[object]:
    """The algorithm with its defaults for an alias suffix (``gptq``, ``hqq``, ``awq``, ``smoothquant``)."""
    if name not in ALGORITHMS:
        raise fail("algorithm", f"one of {', '.join(ALGORITHMS)}", name)
    return ALGORITHMS[name]()
