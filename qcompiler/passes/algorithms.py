"""The algorithms that choose better quantized values than round-to-nearest, as configs name them.

Pass one as ``algorithm=`` to a config (``Int4WeightOnlyConfig(64, algorithm=GPTQ())``), or
append ``+gptq`` / ``+hqq`` / ``+awq`` / ``+smoothquant`` to a scheme alias (``"int4wo-64+gptq"``).

Each with its schemes, what calibration it needs, and what it changes:

- ``GPTQ`` (weight-only affine and codebook weights: int8wo, int4wo, codebook): a Hessian per linear input;
  quantized values, column by column with error feedback.
- ``HQQ`` (grouped affine weights with a float zero point: int4wo): no calibration; each group's zero point
  (and so its scale's use).
- ``AWQ`` (grouped affine weights: int4wo): Hessian and channel magnitudes; per-input-channel scales searched to
  protect salient channels.
- ``SmoothQuant`` (int8 activations: int8dq, int8static): channel ranges; per-input-channel scales that move
  activation outliers into the weights.

Each says what it applies to by what a spec is (``unsupported(spec)``); ``qcompiler.schemes`` lists the
schemes that are.

Each is one file implementing the one protocol (``algorithm.py``): ``gptq``, ``hqq``, ``awq``,
``smoothquant`` (the last two rescale a linear's input channels, applied by ``smoothing``).
This module imports them, so the registry is complete, and checks a config's algorithm.
"""
from typing import Optional

from ..runtime.errors import fail
from .algorithm import REGISTRY, Algorithm
from .gptq import GPTQ  # the registry's order is this import order (names in messages and --help)
from .hqq import HQQ
from .awq import AWQ
from .smoothquant import SmoothQuant

__all__ = ["AWQ", "GPTQ", "HQQ", "SmoothQuant", "check_algorithm", "from_name"]


def check_algorithm(algorithm, alias: str, spec) -> None:
    """Raise a clear error where ``algorithm`` is not an algorithm or cannot serve ``spec`` (config ``alias``)."""
    if algorithm is None:
        return
    if not isinstance(algorithm, Algorithm):
        names = ", ".join(f"{cls.__name__}()" for cls in REGISTRY.values())
        raise fail("algorithm", f"None or one of qcompiler.{names}", algorithm)
    reason = algorithm.unsupported(spec)
    if reason:
        raise ValueError(f"qcompiler: {type(algorithm).__name__} does not apply to {alias}: {reason}")


def from_name(name: str) -> Optional[Algorithm]:
    """The algorithm with its defaults for an alias suffix (``gptq``, ``hqq``, ``awq``, ``smoothquant``)."""
    if name not in REGISTRY:
        raise fail("algorithm", f"one of {', '.join(REGISTRY)}", name)
    return REGISTRY[name]()
