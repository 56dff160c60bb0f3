"""Choosing each layer's scheme from its measured candidates: a pure function of the measurements.

Two accuracy constraints:

- :class:`LayerFloor`: every layer keeps its output SQNR at or above a floor; each layer takes its fastest
  candidate that does (float where none does, with that reason).
- :class:`ModelBudget`: the model's mean layer noise (noise-to-signal power, averaged over the layers) stays
  under a budget given in dB; the budget is spent where it buys the most time. Every layer starts at its most
  accurate candidate; then, step by step, the one move (a layer to a faster candidate) that saves the most
  microseconds per unit of noise added is taken while the budget holds.

Ties go to the candidate listed first, so the same measurements always give the same plan.
"""
import math
from dataclasses import dataclass, replace
from typing import Mapping, Optional, Union

from ..runtime.errors import fail
from ..plan import FLOAT, Candidate, LayerPlan


def _check_db(field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise fail(field, "a number of dB", value)


@dataclass(frozen=True)
class LayerFloor:
    """Every layer's output SQNR (on the calibration data) at least ``min_output_sqnr_db``."""

    min_output_sqnr_db: float = 20.0

    def __post_init__(self):
        _check_db("min_output_sqnr_db", self.min_output_sqnr_db)

    def __str__(self) -> str:
        return f"layer output SQNR >= {self.min_output_sqnr_db:g} dB"


@dataclass(frozen=True)
class ModelBudget:
    """The layers' noise, averaged over the model, at most ``-min_mean_sqnr_db`` dB of their signal."""

    min_mean_sqnr_db: float = 25.0

    def __post_init__(self):
        _check_db("min_mean_sqnr_db", self.min_mean_sqnr_db)

    def __str__(self) -> str:
        return f"mean layer noise <= {-self.min_mean_sqnr_db:g} dB of the signal (whole-model budget)"


Accuracy = Union[float, LayerFloor, ModelBudget]


def as_accuracy(accuracy) -> Union[LayerFloor, ModelBudget]:
    if isinstance(accuracy, (LayerFloor, ModelBudget)):
        return accuracy
    if isinstance(accuracy, (int, float)) and not isinstance(accuracy, bool):
        return LayerFloor(float(accuracy))
    raise fail("accuracy", "a layer SQNR floor in dB, qc.LayerFloor(...) or qc.ModelBudget(...)", accuracy)


def choose(layers: list, accuracy: Accuracy, weights: Optional[Mapping[str, float]] = None) -> list:
    """``layers``' :class:`LayerPlan` with ``choice`` and ``reason`` filled in under ``accuracy``, minimising each
    candidate's time summed over the shapes, each times its weight (1 unless ``weights`` gives one)."""
    accuracy = as_accuracy(accuracy)
    if isinstance(accuracy, LayerFloor):
        return [_floor(layer, accuracy, weights) for layer in layers]
    return _budget(layers, accuracy, weights)


def _usable(layer: LayerPlan) -> list:
    return [c for c in layer.candidates if c.excluded is None and c.us]


def _noise(c: Candidate) -> float:
    return 0.0 if math.isinf(c.output_sqnr_db) else 10 ** (-c.output_sqnr_db / 10)


def _floor(layer: LayerPlan, floor: LayerFloor, weights) -> LayerPlan:
    usable = _usable(layer)
    kept = [c for c in usable if c.scheme != FLOAT and c.output_sqnr_db >= floor.min_output_sqnr_db]
    if not kept:
        return replace(layer, choice=FLOAT, reason=_none_kept(layer, usable, floor))
    best = min([c for c in usable if c.scheme == FLOAT] + kept, key=lambda c: c.cost_us(weights))  # first of equals
    why = f"fastest of {len(kept)} at >= {floor.min_output_sqnr_db:g} dB and float ({best.cost_us(weights):.1f} us"
    if best.scheme != FLOAT and _has_float(layer):
        why += f"; float {layer.candidate(FLOAT).cost_us(weights):.1f} us"
    under = [f"{c.scheme} {c.output_sqnr_db:.1f} dB" for c in usable if c.scheme != FLOAT and c not in kept]
    if under:
        why += f"; under the floor: {', '.join(under)}"
    return replace(layer, choice=best.scheme, reason=why + ")")


def _has_float(layer: LayerPlan) -> bool:
    return any(c.scheme == FLOAT and c.us for c in layer.candidates)


def _none_kept(layer: LayerPlan, usable: list, floor: LayerFloor) -> str:
    quantized = [c for c in usable if c.scheme != FLOAT]
    if not quantized:
        excluded = "; ".join(f"{c.scheme}: {c.excluded}" for c in layer.candidates if c.excluded)
        return f"left float: no candidate could be measured ({excluded or 'none given'})"
    best = max(quantized, key=lambda c: c.output_sqnr_db)
    return (f"left float: every candidate is under {floor.min_output_sqnr_db:g} dB "
            f"(best {best.scheme} at {best.output_sqnr_db:.1f} dB)")


def _budget(layers: list, budget: ModelBudget, weights) -> list:
    allowed = len(layers) * 10 ** (-budget.min_mean_sqnr_db / 10)
    options = [sorted(_usable(layer), key=_noise) for layer in layers]  # stable: ties keep the listed order
    pick = [0] * len(layers)
    spent = sum(_noise(o[0]) for o in options if o)
    while True:
        move = _best_move(options, pick, allowed - spent, weights)
        if move is None:
            break
        i, j, added = move
        pick[i], spent = j, spent + added
    out = []
    for layer, opts, j in zip(layers, options, pick):
        if not opts:
            out.append(replace(layer, choice=FLOAT, reason="left float: no candidate could be measured"))
            continue
        c = opts[j]
        out.append(replace(layer, choice=c.scheme, reason=f"whole-model budget: {c.cost_us(weights):.1f} us at "
                                                          f"{c.output_sqnr_db:.1f} dB ({len(opts)} candidates)"))
    return out


def _best_move(options: list, pick: list, room: float, weights):
    """The (layer, candidate, noise added) that saves the most time per noise added within ``room``."""
    best, best_rate = None, 0.0
    for i, opts in enumerate(options):
        if not opts:
            continue
        now = opts[pick[i]]
        for j, c in enumerate(opts):
            saved, added = now.cost_us(weights) - c.cost_us(weights), _noise(c) - _noise(now)
            if saved <= 0 or added > room:
                continue
            rate = math.inf if added <= 0 else saved / added
            if rate > best_rate:
                best, best_rate = (i, j, added), rate
    return best
