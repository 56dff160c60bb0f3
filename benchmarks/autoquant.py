"""Autoquant against every single scheme, side by side in one run, and its plan's prediction checked.

    python benchmarks/autoquant.py minilm [--accuracy floor:20 budget:30] [--rounds 5]
    python benchmarks/autoquant.py decoder [--model tinyllama-1.1b] [--prompt 128] [--new 64] [--rounds 3]
                                           [--folder bench-autoquant/tinyllama] [--plan PLAN.json]
                                           [--weights decode=64] [--out results/autoquant_tinyllama_decode64]

1. Autoquant measures the model's linears once (``qc.autoquant``, default candidates) at the model's shapes:
   MiniLM at 1 x 128 and 32 x 128 tokens (128 and 4096 rows); a decoder at decode (1 row) and prefill
   (``--prompt`` rows). Each ``--accuracy`` constraint re-chooses from that one plan (no timing): ``floor:DB``
   is ``qc.LayerFloor``, ``budget:DB`` is ``qc.ModelBudget``. The plans are written beside the results.
2. Systems: the float ``.pt2``, one ``.pt2`` per candidate scheme for every linear, one per autoquant plan;
   each quantized with the same calibration data, lowered for this machine and packaged.
3. Accuracy: MiniLM's mean embedding cosine to float eager over the held-out sentences; a decoder's logits
   SQNR (dB) against the float program on held-out random prompts (random weights: only relative).
   Time, side by side: MiniLM's latency at both shapes (interleaved rounds, one process); a decoder's
   prefill and decode tokens/s from ``qcompiler generate --json``, a fresh process per system and round.
4. Pareto: a system is dominated where another is at least as accurate and at least as fast at every
   shape, and strictly better in one; the table lists who dominates whom.
5. Prediction: the plan's predicted total (the sum of its per-layer times) against a module holding only
   the model's linears (same names and weights, one input per in-features at each shape's rows), quantized
   with the plan's recipe and packaged, timed as autoquant times one layer (less an empty package's call).
"""
import argparse
import gc
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import qcompiler as qc
from qcompiler.tuning.measure import Timer
from qcompiler.passes.reference import sqnr_db
from qcompiler.plan import FLOAT

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine  # noqa: E402
from timing import interleaved  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def accuracy_of(text: str):
    """``floor:20`` -> ``qc.LayerFloor(20)``; ``budget:30`` -> ``qc.ModelBudget(30)``."""
    kind, _, db = text.partition(":")
    kinds = {"floor": qc.LayerFloor, "budget": qc.ModelBudget}
    if kind not in kinds or not db:
        raise SystemExit(f"--accuracy: expected floor:DB or budget:DB, got {text!r}")
    return kinds[kind](float(db))


# --- the two models -------------------------------------------------------------------------------------------

class MiniLM:
    """all-MiniLM-L6-v2: mean embedding cosine to float eager; latency at 1 x 128 and 32 x 128 tokens."""

    name, accuracy_key = "minilm", "mean_cosine"

    def __init__(self, args):
        from qcompiler.zoo import CALIBRATION_SENTENCES, SENTENCES, minilm
        self.bundled, self.sentences = minilm(), SENTENCES
        b = self.bundled
        self.program = qc.capture(b.model, (), example_kwargs=b.example_kwargs, dynamic_shapes=b.dynamic_shapes)
        self.calibration = [b.encode(CALIBRATION_SENTENCES[i:i + 2]) for i in range(0, len(CALIBRATION_SENTENCES), 2)]
        self.shapes = {"1x128": 128, "32x128": 32 * 128}
        self.inputs = {label: _tokens((rows // 128, 128)) for label, rows in self.shapes.items()}
        with torch.no_grad():
            self.reference = b.embed(b.model, SENTENCES)

    def accuracy(self, run) -> float:
        with torch.no_grad():
            return round((self.bundled.embed(run, self.sentences) * self.reference).sum(-1).mean().item(), 5)

    def time(self, paths: dict, rounds: int) -> dict:
        """{system: {shape label: [ms per round]}}: every system and shape interleaved, one median per round."""
        runs = {system: qc.load(path) for system, path in paths.items()}
        cases = {(system, label): (lambda r=run, i=inp: r(**i))
                 for system, run in runs.items() for label, inp in self.inputs.items()}
        with torch.no_grad():
            times = interleaved(cases, rounds=rounds, min_time=0.5)
        return {system: {label: [1e3 * t for t in times[(system, label)]] for label in self.shapes} for system in runs}


def _tokens(shape) -> dict:
    gen = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(1000, 20000, shape, generator=gen),
            "attention_mask": torch.ones(shape, dtype=torch.long)}


class Decoder:
    """A decoder (``qcompiler.zoo.DECODERS``, random weights): logits SQNR to the float program; prefill and decode
    time per token from ``qcompiler generate``."""

    accuracy_key = "logits_sqnr_db"
    CALIBRATION, HELD_OUT = 4, 2  # random prompts

    def __init__(self, args):
        from qcompiler.zoo import decoder
        self.name, self.prompt, self.new = args.model, args.prompt, args.new
        model = decoder(args.model)
        self.vocab = model.config.vocab_size
        self.program = qc.capture_lm(model, max_seq_len=args.prompt + args.new)
        del model
        prompts = [self._prompt(seed) for seed in range(self.CALIBRATION + self.HELD_OUT)]
        self.calibration, self.held_out = prompts[:self.CALIBRATION], prompts[self.CALIBRATION:]
        self.shapes = {"decode": 1, "prefill": args.prompt}
        with torch.no_grad():
            float_module = self.program.module()
            self.reference = [float_module(**p) for p in self.held_out]

    def _prompt(self, seed: int) -> dict:
        gen = torch.Generator().manual_seed(seed)
        return {"input_ids": torch.randint(3, self.vocab, (1, self.prompt), generator=gen),
                "cache_position": torch.arange(self.prompt)}

    def accuracy(self, run) -> float:
        with torch.no_grad():
            outs = [run(**p) for p in self.held_out]
        return round(sqnr_db(torch.cat([r.flatten() for r in self.reference]),
                             torch.cat([o.flatten() for o in outs])), 2)

    def time(self, paths: dict, rounds: int) -> dict:
        """{system: {"decode": [ms per token], "prefill": [ms per prompt]}}: one per round, order alternating."""
        from bench_llm import measure_qc
        runs: dict = {system: [] for system in paths}
        for r in range(rounds):
            for system in (list(paths) if r % 2 == 0 else list(reversed(paths))):
                runs[system].append(measure_qc(paths[system], self.prompt, self.new, 0))
                log(f"  round {r + 1}: {system}: {runs[system][-1]['decode_tokens_per_s']:.1f} decode tok/s")
        return {system: {"decode": [1e3 / x["decode_tokens_per_s"] for x in rs],
                         "prefill": [1e3 * self.prompt / x["prefill_tokens_per_s"] for x in rs]}
                for system, rs in runs.items()}


# --- building, the Pareto front, the prediction ----------------------------------------------------------------

def build(model, config, path: Path, reuse: bool = False) -> Path:
    """The model's float program quantized with ``config`` (None: float), lowered for this machine, packaged
    (with ``reuse``, a package already at ``path`` is kept: single schemes do not depend on autoquant)."""
    if reuse and path.is_file():
        log(f"  kept {path}")
        return path
    start = time.perf_counter()
    if config is None:
        program = model.program
    else:
        prepared = qc.prepare(model.program, config)
        qc.calibrate(prepared, model.calibration)
        program = qc.convert(prepared)
    qc.package(qc.lower(program, "cpu"), path)
    del program
    gc.collect()
    log(f"  built {path.name}: {path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - start:.0f} s")
    return path


def spread(values: list) -> float:
    """Round-to-round spread of one system's time: interquartile range over median (0 with fewer than 2 rounds)."""
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (q3 - q1) / statistics.median(values)


def noise(rows: dict, labels: list) -> dict:
    """{shape: the median over systems of their round-to-round spread}: time differences within it are ties."""
    return {k: statistics.median(r["spread"][k] for r in rows.values()) for k in labels}


def dominators(rows: dict, accuracy_key: str, labels: list, tie: dict) -> dict:
    """{system: [systems at least as accurate and as fast at every shape, strictly better somewhere]}; times
    within ``tie[shape]`` (a fraction) of each other count as equal."""
    def faster(a, b, k):
        return rows[a]["ms"][k] < rows[b]["ms"][k] * (1 - tie[k])

    def better_or_equal(a, b):
        return rows[a][accuracy_key] >= rows[b][accuracy_key] and not any(faster(b, a, k) for k in labels)

    def strictly(a, b):
        return rows[a][accuracy_key] > rows[b][accuracy_key] or any(faster(a, b, k) for k in labels)
    return {s: [o for o in rows if o != s and better_or_equal(o, s) and strictly(o, s)] for s in rows}


class Linears(torch.nn.Module):
    """Only the model's linears, under their own names, sharing its weights: ``forward`` takes a list of one input
    per distinct in-features (in ``self.widths`` order) and returns every linear's output."""

    def __init__(self, layers, state: dict):
        super().__init__()
        self.names = [layer.name for layer in layers]
        self.widths = sorted({layer.in_features for layer in layers})
        for layer in layers:
            bias = state.get(layer.name + ".bias")
            linear = torch.nn.Linear(layer.in_features, layer.out_features, bias=bias is not None, device="meta")
            linear.weight = torch.nn.Parameter(state[layer.name + ".weight"], requires_grad=False)
            if bias is not None:
                linear.bias = torch.nn.Parameter(bias, requires_grad=False)
            parent = self
            *path, leaf = layer.name.split(".")
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, torch.nn.Module())
                parent = getattr(parent, part)
            parent.add_module(leaf, linear)

    def forward(self, xs: list):
        by_width = dict(zip(self.widths, xs))
        return [self.get_submodule(n)(by_width[self.get_submodule(n).in_features]) for n in self.names]


def prediction(model, recipe) -> dict:
    """The plan's predicted us per shape against its linears packaged together, timed as autoquant timed them
    (cache written over before each call or not, as the plan says)."""
    plan = recipe.plan
    module = Linears(plan.layers, dict(model.program.state_dict)).eval()
    timer = Timer(plan.target, plan.shapes, cold=plan.timing.startswith("cold"), steady_allocator=True)
    overhead = timer.overhead_us()
    _, raw = timer.package_us(module, recipe, lambda rows: ([torch.randn(rows, k) for k in module.widths],))
    predicted = plan.predicted_us()
    out = {}
    for label in plan.shapes:
        measured = raw[label] - overhead[label]
        out[label] = {"predicted_us": round(predicted[label], 1), "measured_us": round(measured, 1),
                      "package_call_us": round(overhead[label], 1),
                      "error": round(predicted[label] / measured - 1, 4)}
    return out


def saving(plan, rows: dict, name: str) -> dict:
    """{shape: predicted and measured ms the plan saves over the float model}: the per-layer model's sum of
    (chosen - float) against the two whole models timed side by side."""
    out = {}
    for label in plan.shapes:
        predicted = sum(layer.candidate(FLOAT).us[label] - layer.candidate(layer.choice).us[label]
                        for layer in plan.layers) / 1e3
        measured = rows["float"]["ms"][label] - rows[name]["ms"][label]
        out[label] = {"predicted_ms": round(predicted, 2), "measured_ms": round(measured, 2),
                      "error": round(predicted / measured - 1, 4) if measured else None}
    return out


# --- the run --------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=["minilm", "decoder"])
    ap.add_argument("--model", default="tinyllama-1.1b", help="for decoder: a qcompiler.zoo.DECODERS key")
    ap.add_argument("--candidates", default=None, help="comma-separated schemes (default: autoquant's)")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--accuracy", nargs="+", default=None, help="constraints, each floor:DB or budget:DB")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--folder", default=None, help="keep the packages here; single schemes found there are reused")
    ap.add_argument("--plan", default=None, help="re-choose from this plan instead of measuring")
    ap.add_argument("--weights", default=None, metavar="LABEL=N,...",
                    help="each shape's weight in the time autoquant minimises, e.g. decode=64 (default: 1 each)")
    ap.add_argument("--out", default=None, help="results path without suffix (default: results/autoquant_<model>)")
    args = ap.parse_args()
    logging.basicConfig(format="  %(message)s")
    logging.getLogger("qcompiler.progress").setLevel(logging.INFO)  # autoquant's layers x candidates
    minilm = args.which == "minilm"
    constraints = [accuracy_of(a) for a in (args.accuracy or (["floor:20", "floor:30", "budget:30"] if minilm
                                                               else ["floor:20", "floor:30", "budget:25"]))]
    rounds = args.rounds or (5 if minilm else 3)
    model = MiniLM(args) if minilm else Decoder(args)
    out = Path(args.out) if args.out else RESULTS / f"autoquant_{'minilm' if minilm else args.model.split('-')[0]}"

    candidates = args.candidates.split(",") if args.candidates else None
    weights = {k: float(v) for k, v in (part.split("=") for part in args.weights.split(","))} if args.weights else None
    recipes = autoquant_recipes(model, constraints, candidates, args.plan, out, weights)
    plan = next(iter(recipes.values())).plan
    schemes = [c.scheme for c in plan.layers[0].candidates if c.scheme != FLOAT]
    excluded = {c.scheme: c.excluded for c in plan.layers[0].candidates if c.excluded}
    with tempfile.TemporaryDirectory(prefix="bench_autoquant_") as scratch:
        folder = Path(args.folder or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"float": build(model, None, folder / "float.pt2", reuse=True)}
        for scheme in schemes:
            if scheme not in excluded:
                paths[scheme] = build(model, qc.config_from_string(scheme), folder / f"{scheme}.pt2", reuse=True)
        for name, recipe in recipes.items():
            paths[name] = build(model, recipe, folder / f"{name.replace(' ', '_')}.pt2")
        rows = {}
        for system, path in paths.items():
            rows[system] = {"mb": round(path.stat().st_size / 1e6, 1)}
            rows[system][model.accuracy_key] = model.accuracy(qc.load(path))
            log(f"  {system}: {model.accuracy_key} {rows[system][model.accuracy_key]}")
        gc.collect()
        for system, per_round in model.time(paths, rounds).items():
            rows[system]["ms"] = {label: round(statistics.median(ms), 3) for label, ms in per_round.items()}
            rows[system]["spread"] = {label: round(spread(ms), 4) for label, ms in per_round.items()}
    checks = {name: prediction(model, recipe) for name, recipe in recipes.items()}
    savings = {name: saving(recipe.plan, rows, name) for name, recipe in recipes.items()}
    write(out, model, plan, recipes, rows, excluded, checks, savings, rounds)


def autoquant_recipes(model, constraints: list, candidates, plan_path, out: Path, weights=None) -> dict:
    """{"autoquant <constraint>": Recipe}: one measurement (or the given plan), re-chosen per constraint."""
    if plan_path:
        measured = qc.Recipe.from_json(Path(plan_path).read_text())
    else:
        log(f"autoquant: measuring {model.name} at {model.shapes} ...")
        measured = qc.autoquant(model.program, candidates=candidates, shapes=model.shapes, weights=weights,
                                calibration_data=model.calibration, accuracy=constraints[0])
        log(f"  measured in {measured.plan.cost_s:.0f} s")
    recipes = {}
    for c in constraints:
        recipe = qc.autoquant(model.program, plan=measured, accuracy=c, weights=weights)
        name = f"autoquant {'floor' if isinstance(c, qc.LayerFloor) else 'budget'} {_db(c)} dB"
        recipes[name] = recipe
        Path(f"{out}_plan_{name.split(' ', 1)[1].replace(' ', '_')}.json").write_text(recipe.to_json() + "\n")
    return recipes


def _db(c) -> str:
    return f"{c.min_output_sqnr_db:g}" if isinstance(c, qc.LayerFloor) else f"{c.min_mean_sqnr_db:g}"


def write(out: Path, model, plan, recipes: dict, rows: dict, excluded: dict, checks: dict, savings: dict,
          rounds: int) -> None:
    labels = list(model.shapes)
    tie = noise(rows, labels)
    dominated = dominators(rows, model.accuracy_key, labels, tie)
    choices = {name: _choices(r.plan) for name, r in recipes.items()}
    result = {"model": model.name, "shapes": model.shapes, "rounds": rounds, "machine": machine(),
              "plan_cost_s": plan.cost_s, "excluded_candidates": excluded, "choices": choices,
              "systems": rows, "dominated_by": dominated, "prediction": checks,
              "saving_over_float": savings, "timing": plan.timing,
              "ties_within": tie}
    Path(f"{out}.json").write_text(json.dumps(result, indent=1) + "\n")
    m = result["machine"]
    base = rows["float"]["ms"]
    head = ["system", model.accuracy_key] + [f"ms {k}" for k in labels] + [f"vs float {k}" for k in labels] + \
        ["MB", "dominated by"]
    lines = [f"# Autoquant on {model.name}: every system side by side ({rounds} rounds, medians)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['cpu_flags'])}; torch {m['torch']}. "
             f"Shapes (rows): {model.shapes}"
             + (f", weighted {dict(plan.weights)} in the time autoquant minimises" if plan.weights else "")
             + f". Autoquant measured in {plan.cost_s:.0f} s ({plan.timing}).", "",
             "Times within the round-to-round noise of each other (the median over systems of their interquartile "
             "range over median: " + ", ".join(f"{k} {v:.1%}" for k, v in tie.items()) + ") count as ties when "
             "deciding who dominates whom.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for system, r in rows.items():
        speed = [f"{base[k] / r['ms'][k]:.2f}x" for k in labels]
        lines.append(f"| {system} | {r[model.accuracy_key]} | " + " | ".join(f"{r['ms'][k]:g}" for k in labels) +
                     " | " + " | ".join(speed) + f" | {r['mb']:g} | {', '.join(dominated[system]) or '-'} |")
    lines += ["", "Autoquant's choices (layers per scheme):", ""]
    lines += [f"- {name}: {', '.join(f'{k} {v}' for k, v in c.items())}" for name, c in choices.items()]
    if excluded:
        lines += ["", "Excluded candidates: " + "; ".join(f"{k} ({v})" for k, v in excluded.items())]
    lines += ["", "Predicted (sum of per-layer times) against the linears packaged together, us:", "",
              "| plan | shape | predicted | measured | predicted / measured - 1 |", "|---|---|---|---|---|"]
    for name, check in checks.items():
        for label, c in check.items():
            lines.append(f"| {name} | {label} | {c['predicted_us']:g} | {c['measured_us']:g} | {c['error']:+.1%} |")
    lines += ["", "Predicted (sum over layers of chosen - float) against the measured saving of the whole model over "
              "the float model, ms:", "", "| plan | shape | predicted | measured | predicted / measured - 1 |",
              "|---|---|---|---|---|"]
    for name, check in savings.items():
        for label, c in check.items():
            error = "-" if c["error"] is None else f"{c['error']:+.1%}"
            lines.append(f"| {name} | {label} | {c['predicted_ms']:g} | {c['measured_ms']:g} | {error} |")
    text = "\n".join(lines) + "\n"
    Path(f"{out}.md").write_text(text)
    print(text)


def _choices(plan) -> dict:
    counts: dict = {}
    for layer in plan.layers:
        counts[layer.choice] = counts.get(layer.choice, 0) + 1
    return counts


if __name__ == "__main__":
    main()
