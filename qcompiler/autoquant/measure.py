"""What autoquant measures: each candidate's error on a layer, and its time on the target.

- Error (:func:`layer_errors`): the weight quantized as the scheme stores it (round to nearest) and
  dequantized, the input fake-quantized where the scheme quantizes activations; weight SQNR, and output SQNR
  of ``x Ŵᵀ + b`` against ``x Wᵀ + b`` on the layer's recorded calibration inputs (:func:`layer_inputs`).
- Time (:class:`Timer`): a linear of the layer's shape, quantized with the scheme, lowered for the target and
  packaged with AOTInductor exactly as a model is, loaded, and run at every declared number of rows; the
  microseconds of an empty package's call are taken off, so that layer times add up to a model's.
  Layers of one shape share one measurement per scheme.
"""
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

import torch

from ..calibrate import split_item
from ..capture import capture
from ..configs import config_from_string
from ..lower import lower
from ..lowering.rules import DECOMPOSED
from ..package import load, package
from ..passes.linears import linear_sites
from ..passes.reference import sqnr_db
from ..pipeline import quantize
from ..report import report
from ..runtime.target import Target
from ..plan import FLOAT

log = logging.getLogger(__name__)
ROWS_KEPT = 512  # calibration rows kept per layer input for the error measurements
EXAMPLE_ROWS = 8  # rows of the example a timed linear is exported with (its row count is dynamic)


def layer_inputs(program: torch.export.ExportedProgram, batches: Iterable, rows: int = ROWS_KEPT) -> dict:
    """Up to ``rows`` input rows of every stored-weight linear of ``program`` (by weight name), as [rows, K].

    ``batches`` are calibration items as :func:`qcompiler.calibrate` takes them (argument tuples, keyword
    dicts, or ``(args, kwargs)`` pairs)."""
    gm = program.module()
    seen: dict = {}

    def record_input(name: str, x: torch.Tensor) -> None:
        seen.setdefault(name, []).append(x.detach().reshape(-1, x.shape[-1]).float())
    for site in linear_sites(gm):
        if site.weight:
            with gm.graph.inserting_before(site.node):
                gm.graph.call_function(record_input, (site.weight, site.node.args[0]))
    gm.recompile()
    with torch.no_grad():
        for item in batches:
            args, kwargs = split_item(item)
            gm(*args, **kwargs)
    return {name: _spread(torch.cat(xs), rows) for name, xs in seen.items() if xs}


def _spread(x: torch.Tensor, rows: int) -> torch.Tensor:
    if x.shape[0] <= rows:
        return x
    return x[torch.linspace(0, x.shape[0] - 1, rows).long()]


@dataclass(frozen=True)
class LayerData:
    """One layer's float weight and bias, its recorded inputs, and its float output on them (computed once)."""

    w: torch.Tensor
    b: Optional[torch.Tensor]
    x: torch.Tensor
    y: torch.Tensor

    @classmethod
    def of(cls, w: torch.Tensor, b: Optional[torch.Tensor], x: torch.Tensor) -> "LayerData":
        w, b = w.detach().float(), None if b is None else b.detach().float()
        return cls(w, b, x, _linear(x, w, b))


def _linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    return x @ w.T if b is None else x @ w.T + b


def layer_errors(scheme: str, layer: LayerData) -> tuple:
    """``(weight SQNR, output SQNR)`` in dB of ``scheme`` (round to nearest) on ``layer``."""
    spec = config_from_string(scheme).spec()
    w_hat = spec.weight.dequantize(spec.weight.quantize(layer.w), layer.w.shape[1], torch.float32)
    x_hat = layer.x
    if spec.activation is not None:
        qparams = None
        if spec.activation.static:
            qparams = spec.activation.qparams_from_range(layer.x.min(), layer.x.max())
        x_hat = spec.activation.fake_quantize(layer.x, 2, qparams)
    return sqnr_db(layer.w, w_hat), sqnr_db(layer.y, _linear(x_hat, w_hat, layer.b))


class Timer:
    """Times candidates on this machine, each (shape, bias, scheme) once, as packaged ``.pt2`` files."""

    def __init__(self, target: Target, shapes: Mapping[str, int], repeats: int = 5):
        self.target, self.shapes, self.repeats = target, dict(shapes), repeats
        self.cache: dict = {}
        self.overhead: Optional[dict] = None

    def timed(self, scheme: str, out_features: int, in_features: int, bias: bool) -> bool:
        """Whether this (scheme, shape, bias) was timed already (a later layer of its shape costs nothing)."""
        return (scheme, out_features, in_features, bias) in self.cache

    def time(self, scheme: str, out_features: int, in_features: int, bias: bool) -> tuple:
        """``(kernel, {shape label: us})`` of ``scheme`` on a linear of this shape."""
        key = (scheme, out_features, in_features, bias)
        if key not in self.cache:
            if self.overhead is None:
                self.overhead = self._overhead()
            kernel, us = self._measure(scheme, torch.nn.Linear(in_features, out_features, bias=bias).eval())
            self.cache[key] = (kernel, {k: max(v - self.overhead[k], 0.0) for k, v in us.items()})
        return self.cache[key]

    def _measure(self, scheme: str, module: torch.nn.Module) -> tuple:
        torch.manual_seed(0)
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.02)
        in_features = module.in_features if isinstance(module, torch.nn.Linear) else 8
        example = (torch.randn(EXAMPLE_ROWS, in_features),)
        dims = ({0: torch.export.Dim("rows", min=1, max=max(max(self.shapes.values()), EXAMPLE_ROWS) * 2)},)
        with torch.no_grad():
            program = capture(module, example, dynamic_shapes=dims) if scheme == FLOAT else \
                quantize(module, example, config_from_string(scheme), dynamic_shapes=dims,
                         calibration_data=[example])
            lowered = lower(program, self.target)
            kernels = [r.kernel for r in report(lowered).quantized]
            with tempfile.TemporaryDirectory(prefix="qcompiler_autoquant_") as folder:
                run = load(package(lowered, Path(folder) / "layer.pt2"))
                us = {label: self._run(run, torch.randn(rows, in_features)) for label, rows in self.shapes.items()}
        return (kernels[0] if kernels else ("aten" if scheme == FLOAT else DECOMPOSED)), us

    def _run(self, run, x: torch.Tensor) -> float:
        for _ in range(3):
            run(x)
        once = _seconds(run, x, 1)
        n = max(1, int(0.02 / max(once, 1e-7)))  # rounds of about 20 ms
        return 1e6 * statistics.median(_seconds(run, x, n) for _ in range(self.repeats))

    def _overhead(self) -> dict:
        """Microseconds of calling a package that does almost nothing, at each declared row count."""
        _, us = self._measure(FLOAT, _Empty())
        log.info("a package call costs %s us on its own", {k: round(v, 1) for k, v in us.items()})
        return us


class _Empty(torch.nn.Module):
    def forward(self, x):
        return x[:, :1] + 1


def _seconds(run, x, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        run(x)
    return (time.perf_counter() - start) / n
