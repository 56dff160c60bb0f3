"""Autoquant: each linear's scheme chosen by measuring the candidates on the target (API front door).

    recipe = qc.autoquant(model, (x,), shapes={"decode": 1, "prefill": 128}, accuracy=25.0,
                          calibration_data=batches)
    Path("plan.json").write_text(recipe.to_json())       # the plan: every measurement, every choice
    program = qc.quantize(model, (x,), recipe)            # as any recipe
    again = qc.autoquant(model, (x,), plan=qc.Recipe.from_json(Path("plan.json").read_text()),
                         accuracy=qc.ModelBudget(30.0))   # re-chosen from the same measurements

Stages: record each linear's calibration inputs (``measure.layer_inputs``); per layer and candidate, the
error (``measure.layer_errors``) and, once per layer shape, the time as a packaged ``.pt2`` on this machine
(``measure.Timer``); then the choice (``choose.choose``), a pure function of the measurements.
"""
import logging
import math
import time
from dataclasses import replace
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch.export import ExportedProgram

from ..stages.capture import capture
from ..schemes import config_from_string
from ..lowering.rules import DECOMPOSED
from ..passes.linears import linear_sites
from ..passes.pattern import attr_target, stored
from ..passes.progress import progress
from ..plan import FLOAT, Candidate, LayerPlan, Plan
from ..recipe import Recipe
from ..runtime.errors import fail
from ..runtime.target import Target, host_cpu_capabilities
from .choose import Accuracy, LayerFloor, ModelBudget, as_accuracy, choose
from .measure import LayerData, Timer, last_level_cache_bytes, layer_errors, layer_inputs

__all__ = ["autoquant", "LayerFloor", "ModelBudget", "AUTOQUANT_CANDIDATES"]
log = logging.getLogger(__name__)

# Tried where the caller names no candidates; those the target does not fuse are left out (said in the plan).
AUTOQUANT_CANDIDATES = ("int8dq", "int8wo", "int4wo-64", "int4wo-128", "int8da-int4w-64", "codebook-4")


def autoquant(model_or_program: Union[torch.nn.Module, ExportedProgram], example_args: tuple = (), *,
              example_kwargs: Optional[dict] = None, candidates: Optional[Sequence[str]] = None,
              target: Union[str, Target, None] = None, dynamic_shapes: Any = None,
              shapes: Optional[Mapping[str, int]] = None, weights: Optional[Mapping[str, float]] = None,
              accuracy: Accuracy = 20.0, calibration_data: Optional[Iterable] = None,
              budget_s: Optional[float] = None, plan: Union[Recipe, Plan, None] = None,
              steady_allocator: bool = False) -> Recipe:
    """Choose each linear's scheme by measuring every candidate on its real shapes; return a :class:`Recipe`.

    Args:
        model_or_program: the float model (captured here with ``example_args``, ``example_kwargs`` and
            ``dynamic_shapes``) or a float program from :func:`qcompiler.capture`.
        candidates: scheme aliases (``"int8dq"``, ``"int4wo-64"``, ...), round to nearest. Default:
            :data:`AUTOQUANT_CANDIDATES` that the target runs on a fused kernel. Float is always a candidate.
        target: where the kernels are timed: this machine (``"cpu"``, the default), or a :class:`Target`
            this machine can run.
        shapes: rows (tokens) a linear is timed at, by label: ``{"decode": 1, "prefill": 128}``. The choice
            minimises the sum over the labels. Default: the example's rows, ``{"example": rows}``.
        weights: how many times each shape runs in the work to make fast, by label (1 where not given):
            ``{"decode": 64}`` for 64 tokens generated after each prompt. The choice minimises the weighted
            sum. With ``plan``, the plan's own weights unless given.
        accuracy: a floor on every layer's output SQNR in dB (a number, or :class:`LayerFloor`), or a
            whole-model :class:`ModelBudget`.
        calibration_data: batches the errors are measured on (as :func:`qcompiler.calibrate` takes them);
            default: the example.
        budget_s: stop timing quantized candidates after this many seconds; those not timed by then are
            excluded, said so (float is always timed).
        plan: an earlier result (or its :class:`Plan`): choose again from its measurements, measuring nothing.
            Refused for another target than the one it was measured on.
        steady_allocator: before timing, fix glibc's malloc thresholds where a long-running process ends up
            (see :func:`qcompiler.tuning.measure.set_steady_allocator`), so that a layer's large output is not
            mapped and page-faulted afresh at every call. It changes the whole process for the rest of its life,
            so it is off unless asked for; the CLI asks (the process is its own).

    The recipe's ``plan`` holds, per layer, every candidate's time, error and exclusion, and the choice with
    its reason; ``recipe.to_json()`` writes it and :meth:`Plan.table` prints it.
    """
    target = _target(target)
    accuracy = as_accuracy(accuracy)
    if plan is not None:
        return _rechoose(plan, target, accuracy, weights)
    if shapes is not None:
        _check_shapes(dict(shapes))  # before any long work
        _check_weights(weights, shapes)
    start = time.perf_counter()
    program = model_or_program if isinstance(model_or_program, ExportedProgram) else \
        capture(model_or_program, example_args, example_kwargs=example_kwargs, dynamic_shapes=dynamic_shapes)
    data = list(calibration_data) if calibration_data is not None else [(tuple(example_args), example_kwargs or {})]
    inputs = layer_inputs(program, data)
    shapes = dict(shapes) if shapes is not None else {"example": _example_rows(program, example_args, example_kwargs)}
    _check_shapes(shapes)
    _check_weights(weights, shapes)
    schemes = _candidates(candidates)
    gm = program.module()
    sites = _sites(gm)
    cold, timing = _cache_regime(sites)
    timer = Timer(target, shapes, cold=cold, steady_allocator=steady_allocator)
    work = [(site, scheme) for site in sites for scheme in (FLOAT, *schemes)]
    measured: dict = {}
    layer: Optional[LayerData] = None

    def in_budget() -> bool:
        return budget_s is None or time.perf_counter() - start <= budget_s
    for site, scheme in progress(work, "autoquant: layers x candidates measured"):
        if scheme == FLOAT:  # a layer's first candidate: its tensors and float output, kept for its other ones
            layer = _layer_data(gm, site, inputs[site.weight])
            fitting = [c for c in schemes if not _unfit(c, site)]
            timer.time_all([FLOAT, *fitting], *_shape(site, layer), keep_going=in_budget)  # once per shape
        measured.setdefault(site.weight, []).append(_measure(scheme, site, layer, timer, candidates is None, budget_s))
    layers = [LayerPlan(s.name, s.out_features, s.in_features, tuple(measured[s.weight])) for s in sites]
    chosen = Plan(target, shapes, str(accuracy), tuple(choose(layers, accuracy, weights)),
                  round(time.perf_counter() - start, 1), timing, dict(weights) if weights else None)
    log.info("autoquant measured %d layers x %d candidates in %.1f s (%d shapes timed)", len(layers),
             len(schemes) + 1, chosen.cost_s, len(timer.cache))
    return _recipe(chosen)


def _target(target) -> Target:
    target = Target.host("cpu") if target is None else target if isinstance(target, Target) else Target.parse(target)
    if target.backend != "cpu" or not target.capabilities <= host_cpu_capabilities():
        raise ValueError(f"qcompiler: autoquant times kernels on this machine, so its target must be one this "
                         f"machine runs; got {target} (this machine: {Target.host('cpu')})")
    return target


def _rechoose(plan, target: Target, accuracy, weights) -> Recipe:
    plan = plan.plan if isinstance(plan, Recipe) else plan
    if not isinstance(plan, Plan):
        raise fail("plan", "a Recipe from qcompiler.autoquant (or its Plan)", plan)
    plan.check_target(target)
    if weights is not None:
        _check_weights(weights, plan.shapes)
        plan = replace(plan, weights=dict(weights))
    layers = tuple(choose(list(plan.layers), accuracy, plan.weights))
    return _recipe(replace(plan, accuracy=str(accuracy), layers=layers))


def _recipe(plan: Plan) -> Recipe:
    return Recipe([(layer.name, None if layer.choice == FLOAT else config_from_string(layer.choice))
                   for layer in plan.layers], plan)


def _candidates(candidates) -> tuple:
    if candidates is None:
        return AUTOQUANT_CANDIDATES
    if isinstance(candidates, str) or not all(isinstance(c, str) for c in candidates):
        raise fail("candidates", "a list of scheme aliases such as ['int8dq', 'int4wo-64']", candidates)
    out = []
    for c in candidates:
        if c == FLOAT:
            continue
        if config_from_string(c).spec().algorithm is not None:
            raise fail("candidates", "schemes without an algorithm (autoquant measures round to nearest)", c)
        out.append(config_from_string(c).alias)
    return tuple(dict.fromkeys(out))


def _check_shapes(shapes: dict) -> None:
    if not shapes or not all(isinstance(k, str) and isinstance(v, int) and v >= 1 for k, v in shapes.items()):
        raise fail("shapes", 'rows to time each linear at, by label: {"decode": 1, "prefill": 128}', shapes)


def _check_weights(weights, shapes) -> None:
    if weights is None:
        return
    if not isinstance(weights, Mapping) or not all(
            k in shapes and isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf
            for k, v in weights.items()):
        raise fail("weights", f"a positive number per shape label, labels among {sorted(shapes)} "
                   '(e.g. {"decode": 64})', weights)


def _example_rows(program, example_args: tuple, example_kwargs: Optional[dict]) -> int:
    """The most rows any linear sees on the example (not on the calibration data, nor capped as it is)."""
    seen = layer_inputs(program, [(tuple(example_args), example_kwargs or {})], rows=2**62)
    return max((x.shape[0] for x in seen.values()), default=1)


def _sites(gm) -> list:
    """Each stored-weight linear once (a weight called twice is measured once)."""
    return list({s.weight: s for s in reversed(linear_sites(gm)) if s.weight}.values())[::-1]


def _layer_data(gm, site, x: torch.Tensor) -> LayerData:
    bias = attr_target(site.node.args[2]) if len(site.node.args) > 2 else None
    return LayerData.of(stored(gm, site.weight), stored(gm, bias) if bias else None, x)


def _cache_regime(sites: list) -> tuple:
    """``(cold, why)``: time with the cache written over before each call where the linears' weights, at a byte
    each as int8 stores them, exceed the last-level cache (they come from memory in the model too)."""
    weight_bytes, cache = sum(s.out_features * s.in_features for s in sites), last_level_cache_bytes()
    cold = weight_bytes > cache
    return cold, (f"{'cold' if cold else 'warm'} cache: the linears' weights ({weight_bytes / 2**20:.0f} MB at a byte "
                  f"each) {'exceed' if cold else 'fit in'} the last-level cache ({cache / 2**20:.0f} MB)")


def _unfit(scheme: str, site) -> Optional[str]:
    return config_from_string(scheme).spec().weight.unfit((site.out_features, site.in_features))


def _shape(site, layer: LayerData) -> "tuple[int, int, bool]":
    return site.out_features, site.in_features, layer.b is not None


def _measure(scheme: str, site, layer, timer: Timer, default_pool: bool, budget_s: Optional[float]) -> Candidate:
    """One candidate on one layer: its error, then its time (or why it has none)."""
    if scheme == FLOAT:
        errors: tuple = (float("inf"), float("inf"))
    else:
        unfit = _unfit(scheme, site)
        if unfit:
            return Candidate(scheme, excluded=f"does not fit this layer: {unfit}")
        try:
            errors = layer_errors(scheme, layer)
        except ValueError as e:
            return Candidate(scheme, excluded=f"could not be measured: {e}")
    shape = _shape(site, layer)
    if not timer.timed(scheme, *shape):  # float is the baseline: always timed
        return Candidate(scheme, weight_sqnr_db=errors[0], output_sqnr_db=errors[1],
                         excluded=f"not timed: budget_s ({budget_s:g} s) spent")
    kernel, us = timer.time(scheme, *shape)
    excluded = f"not fused on {timer.target}: {DECOMPOSED}" if default_pool and kernel == DECOMPOSED else None
    return Candidate(scheme, kernel, us, errors[0], errors[1], excluded)
