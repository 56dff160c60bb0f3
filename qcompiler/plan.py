"""The autoquant plan: per layer, every candidate scheme's measured time and error, the choice and its reason,
with the target and shapes it was measured on. JSON only (``to_json`` / ``from_json``); no pickle.

    {"target": {"backend": "cpu", "capabilities": [...]}, "shapes": {"decode": 1, "prefill": 128},
     "accuracy": "layer output SQNR >= 20 dB", "cost_s": 84.2, "timing": "warm cache: ...",
     "layers": [{"name": "encoder.layer.0.attention.self.query", "out_features": 384, "in_features": 384,
                 "choice": "int8dq", "reason": "...",
                 "candidates": [{"scheme": "int8dq", "kernel": "...", "us": {"decode": 9.1, "prefill": 64.0},
                                 "weight_sqnr_db": 41.9, "output_sqnr_db": 33.0, "excluded": null}, ...]}]}
"""
import json
import math
from dataclasses import asdict, dataclass
from typing import Mapping, Optional

from .runtime.errors import fail
from .runtime.target import Target

FLOAT = "float"  # the candidate that leaves a layer unquantized
FORMAT = 1


@dataclass(frozen=True)
class Candidate:
    """One scheme measured on one layer: microseconds per declared shape, and its error.

    ``excluded`` says why the candidate could not be chosen whatever the constraint (the layer's shape does not
    fit the scheme, the target does not fuse it, the time budget ran out before it was timed), else ``None``."""

    scheme: str
    kernel: str = ""
    us: Optional[Mapping[str, float]] = None
    weight_sqnr_db: float = math.inf
    output_sqnr_db: float = math.inf
    excluded: Optional[str] = None

    def cost_us(self, weights: Optional[Mapping[str, float]] = None) -> float:
        """The time the choice minimises: the sum over the declared shapes, each times its weight (1 unless
        ``weights`` gives one)."""
        if not self.us:
            return math.inf
        return sum(us * (weights or {}).get(label, 1.0) for label, us in self.us.items())


@dataclass(frozen=True)
class LayerPlan:
    name: str
    out_features: int
    in_features: int
    candidates: tuple
    choice: str = FLOAT
    reason: str = ""

    def candidate(self, scheme: str) -> Candidate:
        return next(c for c in self.candidates if c.scheme == scheme)


@dataclass(frozen=True)
class Plan:
    target: Target
    shapes: Mapping[str, int]
    accuracy: str
    layers: tuple
    cost_s: float = 0.0
    timing: str = ""  # how the times were taken: with the cache written over before each call (cold) or not
    weights: Optional[Mapping[str, float]] = None  # each shape's weight in the time minimised (None: 1 each)

    def predicted_us(self) -> dict:
        """Per declared shape, the sum over layers of the chosen candidates' times."""
        return {label: sum(layer.candidate(layer.choice).us[label] for layer in self.layers) for label in self.shapes}

    def check_target(self, target: Target) -> None:
        """Refuse to reuse the plan for a target other than the one it was measured on."""
        if target != self.target:
            raise ValueError(f"qcompiler: this plan was measured on target {self.target}; it cannot be reused for "
                             f"{target} (its times say nothing about that machine). Run qcompiler.autoquant "
                             f"again there")

    def table(self) -> str:
        """One line per layer: the choice, its time per shape, its output SQNR, and the reason."""
        labels = list(self.shapes)
        head = f"{'layer':<44} {'choice':<16} " + " ".join(f"{'us ' + k:>12}" for k in labels)
        timing = f" ({self.timing})" if self.timing else ""
        weighted = f" weighted {dict(self.weights)}" if self.weights else ""
        lines = [f"plan for {self.target}, shapes {dict(self.shapes)}{weighted}, {self.accuracy}; "
                 f"measured in {self.cost_s:.0f} s{timing}", head + f" {'out SQNR':>9}  reason"]
        for layer in self.layers:
            c = layer.candidate(layer.choice)
            lines.append(f"{layer.name:<44} {layer.choice:<16} " + " ".join(f"{c.us[k]:>12.1f}" for k in labels)
                         + f" {c.output_sqnr_db:>9.1f}  {layer.reason}")
        total = self.predicted_us()
        lines.append(f"{'predicted total':<44} {'':<16} " + " ".join(f"{total[k]:>12.1f}" for k in labels))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        layers = [{**asdict(layer), "candidates": [_candidate_dict(c) for c in layer.candidates]}
                  for layer in self.layers]
        return {"format": FORMAT, "target": self.target.to_json(), "shapes": dict(self.shapes),
                "accuracy": self.accuracy, "cost_s": self.cost_s, "timing": self.timing,
                "weights": dict(self.weights) if self.weights else None, "layers": layers}

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise fail("plan", f"a qcompiler autoquant plan (format {FORMAT})", str(data)[:80])
        layers = tuple(LayerPlan(**{**layer, "candidates": tuple(_candidate(c) for c in layer["candidates"])})
                       for layer in data["layers"])
        return cls(Target.from_json(data["target"]), dict(data["shapes"]), data["accuracy"], layers,
                   float(data.get("cost_s", 0.0)), str(data.get("timing", "")), data.get("weights"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def _candidate_dict(c: Candidate) -> dict:
    out = asdict(c)
    out["us"] = dict(c.us) if c.us else None
    for key in ("weight_sqnr_db", "output_sqnr_db"):  # JSON has no infinity: an exact candidate (float) is null
        out[key] = None if math.isinf(out[key]) else out[key]
    return out


def _candidate(d: dict) -> Candidate:
    inf = {k: math.inf if d.get(k) is None else float(d[k]) for k in ("weight_sqnr_db", "output_sqnr_db")}
    return Candidate(d["scheme"], d.get("kernel", ""), d.get("us"), excluded=d.get("excluded"), **inf)
