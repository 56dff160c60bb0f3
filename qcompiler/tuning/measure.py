"""What autoquant measures: each candidate's error on a layer, and its time on the target.

- Error (:func:`layer_errors`): the weight quantized as the scheme stores it (round to nearest) and
  dequantized, the input fake-quantized where the scheme quantizes activations; weight SQNR, and output SQNR
  of ``x Ŵᵀ + b`` against ``x Wᵀ + b`` on the layer's recorded calibration inputs (:func:`layer_inputs`).
- Time (:class:`Timer`): linears of the layer's shape, quantized with the scheme, lowered for the target and
  packaged with AOTInductor exactly as a model is, loaded, and run at every declared number of rows; the
  microseconds of an empty package's call are taken off, so that layer times add up to a model's. The
  candidates of one shape are timed side by side in interleaved rounds. Where the model's weights exceed the
  last-level cache, each call is timed after the cache is written over, so that the weights come from memory
  as in the model; where they fit, they stay cached, as in the model. Layers of one shape share one
  measurement per scheme.
"""
import ctypes
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import torch
from torch.utils._pytree import tree_map

from ..stages.calibrate import split_item
from ..stages.capture import capture
from ..schemes import config_from_string
from ..stages.lower import lower
from ..lowering.rules import DECOMPOSED
from ..stages.package import load, package
from ..passes.linears import linear_sites
from ..passes.progress import held_back
from ..passes.reference import sqnr_db
from ..stages.quantize import quantize
from ..runtime.numerics import median_call_s
from ..stages.report import report
from ..runtime.target import Target
from ..plan import FLOAT

log = logging.getLogger(__name__)
ROWS_KEPT = 512  # calibration rows kept per layer input for the error measurements
EXAMPLE_ROWS = 8  # rows of the example a timed linear is exported with (its row count is dynamic)
DEFAULT_CACHE_BYTES = 32 << 20
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling for its dynamic mmap threshold on 64-bit
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


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
    """Times candidates on this machine, each (shape, bias, scheme) once, as packaged ``.pt2`` files.

    The candidates of one layer shape are packaged first, then timed side by side: ``rounds`` rounds, each
    calling every candidate ``calls`` times at every declared row count (the order alternating), a round's
    median kept and the median over rounds reported; a slow drift of the host then hits every candidate alike.

    ``cold``: before each timed call a buffer twice the last-level cache is written over, so that the weights
    come from memory, as they do in a model larger than the cache; without it the weights stay cached between
    calls, as in a model that fits in the cache (autoquant decides by the model's size).

    ``steady_allocator``: call :func:`steady_allocator` first (a change to the whole process, for the rest of it)."""

    def __init__(self, target: Target, shapes: Mapping[str, int], *, cold: bool = True, rounds: int = 11,
                 calls: int = 3, steady_allocator: bool = False):
        self.target, self.shapes, self.cold, self.rounds, self.calls = target, dict(shapes), cold, rounds, calls
        # written over by memset on this thread (not by a torch op: torch's OpenMP threads would still be spinning
        # when the package's own start)
        self._flush = (ctypes.c_char * (2 * last_level_cache_bytes()))() if cold else None
        if steady_allocator:
            set_steady_allocator()
        self.cache: dict = {}
        self.overhead: Optional[dict] = None

    def timed(self, scheme: str, out_features: int, in_features: int, bias: bool) -> bool:
        """Whether this (scheme, shape, bias) was timed already (a later layer of its shape costs nothing)."""
        return (scheme, out_features, in_features, bias) in self.cache

    def time(self, scheme: str, out_features: int, in_features: int, bias: bool) -> tuple:
        """``(kernel, {shape label: us})`` of ``scheme`` on a linear of this shape, less a package call's cost."""
        if not self.timed(scheme, out_features, in_features, bias):
            self.time_all([scheme], out_features, in_features, bias)
        return self.cache[(scheme, out_features, in_features, bias)]

    def time_all(self, schemes: Sequence[str], out_features: int, in_features: int, bias: bool,
                 keep_going: Callable[[], bool] = lambda: True) -> None:
        """Package every scheme not timed yet on a linear of this shape, then time them side by side. Before each
        quantized scheme is packaged ``keep_going()`` is asked; once it says no, the rest are left untimed."""
        todo = [s for s in schemes if not self.timed(s, out_features, in_features, bias)]
        if not todo:
            return
        start = time.perf_counter()
        linear = torch.nn.Linear(in_features, out_features, bias=bias).eval()
        weights = torch.Generator().manual_seed(0)  # the same weights every time, the process's random state untouched
        for p in linear.parameters():
            torch.nn.init.normal_(p, std=0.02, generator=weights)
        overhead = self.overhead_us()
        with tempfile.TemporaryDirectory(prefix="qcompiler_autoquant_") as folder:
            runs, kernel = {}, {}
            for scheme in todo:
                if scheme != FLOAT and not keep_going():
                    break
                config = None if scheme == FLOAT else config_from_string(scheme)
                kernels, runs[scheme] = self._packaged(linear, config, _rows_of(in_features), Path(folder) / scheme)
                kernel[scheme] = kernels[0] if kernels else ("aten" if scheme == FLOAT else DECOMPOSED)
            us = self._side_by_side(runs, _rows_of(in_features))
        for scheme, times in us.items():
            self.cache[(scheme, out_features, in_features, bias)] = (
                kernel[scheme], {k: max(v - overhead[k], 0.0) for k, v in times.items()})
        log.info("timed %d candidates on %dx%d%s in %.1f s", len(runs), out_features, in_features,
                 " with bias" if bias else "", time.perf_counter() - start)

    def overhead_us(self) -> dict:
        """Microseconds of calling a package that does almost nothing, at each declared row count (measured once)."""
        if self.overhead is None:
            _, self.overhead = self.package_us(_Empty(), None, _rows_of(8))
            log.info("a package call costs %s us on its own", {k: round(v, 1) for k, v in self.overhead.items()})
        return self.overhead

    def package_us(self, module: torch.nn.Module, config, inputs: Callable[[int], tuple]) -> tuple:
        """``(kernels, {shape label: us})``: ``module`` quantized with ``config`` (a config or Recipe; ``None``
        leaves it float), lowered for the target, packaged, and called on ``inputs(rows)`` at every declared
        row count. ``inputs`` gives a tuple of arguments (tensors, or lists of them), every tensor's first
        dimension dynamic. The kernels are those of the quantized layers."""
        with tempfile.TemporaryDirectory(prefix="qcompiler_autoquant_") as folder:
            kernels, run = self._packaged(module, config, inputs, Path(folder) / "module")
            return kernels, self._side_by_side({"module": run}, inputs)["module"]

    def _packaged(self, module: torch.nn.Module, config, inputs: Callable[[int], tuple], path: Path) -> tuple:
        """``(kernels, loaded package)`` of ``module`` with ``config``, its rows dynamic, packaged at ``path``."""
        example = inputs(EXAMPLE_ROWS)
        rows = torch.export.Dim("rows", min=1, max=max(max(self.shapes.values()), EXAMPLE_ROWS) * 2)
        dims = tree_map(lambda _: {0: rows}, example)  # every input tensor's first dimension
        with torch.no_grad(), held_back():  # each timed layer's quantizing and packaging lines
            program = capture(module, example, dynamic_shapes=dims) if config is None else \
                quantize(module, example, config, dynamic_shapes=dims, calibration_data=[example])
            lowered = lower(program, self.target)
            kernels = [r.kernel for r in report(lowered).quantized]
            return kernels, load(package(lowered, path.with_suffix(".pt2")))

    def _side_by_side(self, runs: Mapping[str, Callable], inputs: Callable[[int], tuple]) -> dict:
        """``{name: {shape label: us}}``: the median over rounds of each round's median call."""
        xs = {label: inputs(n) for label, n in self.shapes.items()}
        rounds: dict = {(name, label): [] for name in runs for label in xs}
        with torch.no_grad():
            for r in range(self.rounds):
                for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                    for label, x in xs.items():
                        rounds[(name, label)].append(self._round(runs[name], x))
        return {name: {label: 1e6 * statistics.median(rounds[(name, label)]) for label in xs} for name in runs}

    def _round(self, run: Callable, x: tuple) -> float:
        """Median seconds of ``calls`` calls after one untimed call, the cache written over before each if cold."""
        flush = self._flush
        before = None if flush is None else lambda: ctypes.memset(flush, 0, len(flush))  # weights come from memory
        return median_call_s(lambda: run(*x), self.calls, before=before)


def _rows_of(width: int) -> Callable[[int], tuple]:
    return lambda rows: (torch.randn(rows, width),)


def set_steady_allocator() -> None:
    """Set glibc's thresholds where its dynamic ones end up in a process that has run a model for a while: blocks
    under 32 MB (its ceiling on 64-bit) come from the heap, and the heap is given back to the system only past
    64 MB free. Otherwise a timed layer's large output (such as int8dq's 25 MB int32 accumulator at 4096 x 1536)
    is mapped afresh and page-faulted on every call, or not, depending on what ran before it (measured: 6144
    faults a call, which doubled that layer's time). Nothing is done where the C library is not glibc.

    This changes the whole process for the rest of its life (glibc cannot be told to go back to its dynamic
    thresholds): the library calls it only when asked (``autoquant(steady_allocator=True)``; the CLI asks)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return
    if hasattr(libc, "gnu_get_libc_version"):  # only glibc has these thresholds
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_MAX)


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
