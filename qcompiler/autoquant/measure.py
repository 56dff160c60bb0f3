"""What autoquant measures: each candidate's error on a layer, and its time on the target.

- Error (:func:`layer_errors`): the weight quantized as the scheme stores it (round to nearest) and
  dequantized, the input fake-quantized where the scheme quantizes activations; weight SQNR, and output SQNR
  of ``x Ŵᵀ + b`` against ``x Wᵀ + b`` on the layer's recorded calibration inputs (:func:`layer_inputs`).
- Time (:class:`Timer`): linears of the layer's shape, quantized with the scheme, lowered for the target and
  packaged with AOTInductor exactly as a model is, loaded, and run at every declared number of rows; the
  microseconds of an empty package's call are taken off, so that layer times add up to a model's. Each call
  is timed alone after a buffer twice the last-level cache is written over, so that the weights come from
  memory, as they do in a model larger than the cache (not from a cache kept warm by calling one layer again
  and again). Layers of one shape share one measurement per scheme.
"""
import contextlib
import ctypes
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Optional

import torch
from torch.utils._pytree import tree_map

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
DEFAULT_CACHE_BYTES = 32 << 20


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

    def __init__(self, target: Target, shapes: Mapping[str, int], calls: int = 21):
        self.target, self.shapes, self.calls = target, dict(shapes), calls
        # twice the last-level cache, written over by memset on this thread before each timed call (not by a torch
        # op: torch's OpenMP threads would still be spinning when the package's own start)
        self._flush = (ctypes.c_char * (2 * last_level_cache_bytes()))()
        self.cache: dict = {}
        self.overhead: Optional[dict] = None

    def timed(self, scheme: str, out_features: int, in_features: int, bias: bool) -> bool:
        """Whether this (scheme, shape, bias) was timed already (a later layer of its shape costs nothing)."""
        return (scheme, out_features, in_features, bias) in self.cache

    def time(self, scheme: str, out_features: int, in_features: int, bias: bool) -> tuple:
        """``(kernel, {shape label: us})`` of ``scheme`` on a linear of this shape, less a package call's cost."""
        key = (scheme, out_features, in_features, bias)
        if key not in self.cache:
            linear = torch.nn.Linear(in_features, out_features, bias=bias).eval()
            torch.manual_seed(0)
            for p in linear.parameters():
                torch.nn.init.normal_(p, std=0.02)
            config = None if scheme == FLOAT else config_from_string(scheme)
            kernels, us = self.package_us(linear, config, lambda rows: (torch.randn(rows, in_features),))
            kernel = kernels[0] if kernels else ("aten" if scheme == FLOAT else DECOMPOSED)
            overhead = self.overhead_us()
            self.cache[key] = (kernel, {k: max(v - overhead[k], 0.0) for k, v in us.items()})
        return self.cache[key]

    def overhead_us(self) -> dict:
        """Microseconds of calling a package that does almost nothing, at each declared row count (measured once)."""
        if self.overhead is None:
            _, self.overhead = self.package_us(_Empty(), None, lambda rows: (torch.randn(rows, 8),))
            log.info("a package call costs %s us on its own", {k: round(v, 1) for k, v in self.overhead.items()})
        return self.overhead

    def package_us(self, module: torch.nn.Module, config, inputs: Callable[[int], tuple]) -> tuple:
        """``(kernels, {shape label: us})``: ``module`` quantized with ``config`` (a config or Recipe; ``None``
        leaves it float), lowered for the target, packaged, and called on ``inputs(rows)`` at every declared
        row count. ``inputs`` gives a tuple of arguments (tensors, or lists of them), every tensor's first
        dimension dynamic. The kernels are those of the quantized layers."""
        example = inputs(EXAMPLE_ROWS)
        rows = torch.export.Dim("rows", min=1, max=max(max(self.shapes.values()), EXAMPLE_ROWS) * 2)
        dims = tree_map(lambda _: {0: rows}, example)  # every input tensor's first dimension
        with torch.no_grad(), _quiet_packaging():
            program = capture(module, example, dynamic_shapes=dims) if config is None else \
                quantize(module, example, config, dynamic_shapes=dims, calibration_data=[example])
            lowered = lower(program, self.target)
            kernels = [r.kernel for r in report(lowered).quantized]
            with tempfile.TemporaryDirectory(prefix="qcompiler_autoquant_") as folder:
                run = load(package(lowered, Path(folder) / "layer.pt2"))
                us = {label: self._run(run, inputs(n)) for label, n in self.shapes.items()}
        return kernels, us

    def _run(self, run, x: tuple) -> float:
        """Median microseconds of one call, each call timed alone after the cache is flushed."""
        for _ in range(3):
            run(*x)
        calls = []
        for i in range(self.calls):
            ctypes.memset(self._flush, i, len(self._flush))  # the cache written over: weights come from memory
            start = time.perf_counter()
            run(*x)
            calls.append(time.perf_counter() - start)
        return 1e6 * statistics.median(calls)


@contextlib.contextmanager
def _quiet_packaging() -> Iterator[None]:
    """The INFO lines of quantizing and packaging each timed layer held back (warnings still show)."""
    loggers = [logging.getLogger(name) for name in ("qcompiler.package", "qcompiler.progress")]
    saved = [logger.level for logger in loggers]
    for logger, level in zip(loggers, saved):
        logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, saved):
            logger.setLevel(level)


def last_level_cache_bytes(caches: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """The largest CPU cache of this machine (from Linux sysfs, ``index*/size`` files such as ``32768K``), or
    ``DEFAULT_CACHE_BYTES`` where none can be read."""
    sizes = []
    for path in caches.glob("index*/size"):
        text = path.read_text().strip().upper()
        digits = text.rstrip("KM")
        if digits.isdigit():
            sizes.append(int(digits) * {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1))
    return max(sizes, default=DEFAULT_CACHE_BYTES)


class _Empty(torch.nn.Module):
    def forward(self, x):
        return x[:, :1] + 1
