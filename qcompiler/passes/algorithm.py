"""The one algorithm protocol, and the registry its implementations fill.

An algorithm chooses better quantized values than round-to-nearest. Each is one file in
``passes/``: a frozen dataclass (its user-facing config, e.g. ``GPTQ(damp=0.1)``) that
subclasses :class:`Algorithm`, is decorated with :func:`register`, and implements one of two forms:

- weight quantization: ``quantize_weight(spec, w, stats)``, the tensors to store for ``w`` (GPTQ, HQQ), or a
  :class:`Solved` that also says where the algorithm departed from its settings and why (the report shows it);
- input rescaling (``rescales = True``): ``input_scales(stats, weights, specs)``, ``s`` per input channel
  (AWQ, SmoothQuant).

``needs`` names what calibration must observe (``hessian``, ``channels``; empty: no data),
and ``stats`` is the observer of the layer's input that collected it. ``unsupported(spec)`` says why it
cannot serve a layer's :class:`~qcompiler.passes.spec.QuantSpec` (None where it can): an algorithm applies to
what a spec is (affine weights, codebooks, int8 activations), never to a list of scheme names, so a new scheme
of that kind takes it with no change here; the scheme registry lists the schemes it applies to from this. ``solve``
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
    needs: ClassVar[tuple] = ()
    rescales: ClassVar[bool] = False

    def unsupported(self, spec) -> Optional[str]:
        """Why this algorithm cannot serve a layer quantized as ``spec`` (a QuantSpec); None where it can."""
        raise NotImplementedError(f"{type(self).__name__} must say which specs it serves (unsupported)")

    def quantize_weight(self, spec, w: torch.Tensor, stats: Optional[torch.nn.Module]) -> Union[dict, Solved]:
        """The tensors to store for ``w`` [N, K] under the weight spec ``spec`` (weight algorithms)."""
        raise NotImplementedError(f"{type(self).__name__} rescales inputs; it quantizes no weight")

    def input_scales(self, stats: torch.nn.Module, weights: list, specs: list) -> torch.Tensor:
        """``s`` per input channel for one observed input and the float weights (with their specs) reading it."""
        raise NotImplementedError(f"{type(self).__name__} quantizes weights; it rescales no input")
