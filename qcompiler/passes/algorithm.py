"""The one algorithm protocol, and the registry its implementations fill.

An algorithm chooses better quantized values than round-to-nearest. Each is one file in
``passes/``: a frozen dataclass (its user-facing config, e.g. ``GPTQ(damp=0.1)``) that
subclasses :class:`Algorithm`, is decorated with :func:`register`, and implements one of two forms:

- weight quantization: ``quantize_weight(spec, w, stats)``, the tensors to store for ``w`` (GPTQ, HQQ), or a
  :class:`Solved` that also says where the algorithm departed from its settings and why (the report shows it);
- input rescaling (``rescales = True``): ``input_scales(stats, weights, specs)``, ``s`` per input channel
  (AWQ, SmoothQuant).

``needs`` names what calibration must observe (``hessian``, ``channels``; empty: no data),
and ``stats`` is the observer of the layer's input that collected it. ``schemes`` lists the
scheme families it applies to; ``check`` refuses a config it does not apply to. ``solve``
(``calibration.py``) is the one place data-driven algorithms run, per Hessian window in
calibrate or at convert, and its results live in one store keyed by the weight
(``calibration.solved``), not on the observers, which hold statistics only.
"""
from dataclasses import dataclass
from typing import ClassVar, Optional, Union

import torch

REGISTRY: dict = {}  # name -> class, filled by @register as each implementation is imported


@dataclass(frozen=True)
class Solved:
    """A weight algorithm's result: the tensors to store, and a note where it departed from its settings (kept
    round to nearest, damped more, ...), which the layer's record keeps (``algorithm_note``)."""

    tensors: dict
    note: Optional[str] = None


def as_solved(result: Union[dict, Solved]) -> Solved:
    return result if isinstance(result, Solved) else Solved(result)


def register(cls):
    """Make ``cls`` (an :class:`Algorithm`) known by its ``name`` (``+gptq`` in an alias, ``from_name``)."""
    if not issubclass(cls, Algorithm) or not cls.name:
        raise TypeError(f"qcompiler: {cls.__name__} must subclass Algorithm and set a name to be registered")
    REGISTRY[cls.name] = cls
    return cls


class Algorithm:
    """The protocol every algorithm implements (see the module's docstring)."""

    name: ClassVar[str] = ""
    schemes: ClassVar[tuple] = ()
    needs: ClassVar[tuple] = ()
    rescales: ClassVar[bool] = False

    def check(self, family: str, alias: str, weight=None) -> None:
        """Raise where this algorithm does not apply to a config of scheme ``family`` (its weight spec ``weight``)."""
        if family not in self.schemes:
            raise ValueError(f"qcompiler: {type(self).__name__} does not apply to {alias}; it supports "
                             f"{', '.join(self.schemes)}")

    def quantize_weight(self, spec, w: torch.Tensor, stats: Optional[torch.nn.Module]) -> Union[dict, Solved]:
        """The tensors to store for ``w`` [N, K] under the weight spec ``spec`` (weight algorithms)."""
        raise NotImplementedError(f"{type(self).__name__} rescales inputs; it quantizes no weight")

    def input_scales(self, stats: torch.nn.Module, weights: list, specs: list) -> torch.Tensor:
        """``s`` per input channel for one observed input and the float weights (with their specs) reading it."""
        raise NotImplementedError(f"{type(self).__name__} quantizes weights; it rescales no input")
