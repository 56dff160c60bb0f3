"""Decode speed against the filled context: a captured LM's .pt2 with a static cache, by how many positions are filled.

    python benchmarks/bench_decode_context.py [--model tinyllama-1.1b] [--filled 128 256 512 1024 2048]
                                              [--max-seq-len 2048] [--new 16] [--rounds 2] [--folder bench-context]

Issue #33's measurements: tokens/s of greedy decode steps at each filled length in a ``max_seq_len`` 2,048 program
(int4wo-64, a float cache and an int8 one), beside a program whose ``max_seq_len`` is 256 (decode at 256 filled
positions there is what a cache sized to the context gives). Each program is built once into ``--folder`` (reused
when there), loaded here; per filled length a prompt fills the cache up to ``filled - new``, then ``--new``
decode steps are timed, the last attending ``filled`` positions (one token each), two programs taking turns
step by step (the 2,048 ones together, the 256 one beside the float 2,048 one; the 2,048-vs-256 goal from one cache
at both lengths in turns); tokens/s from the median step over all rounds, the issue's goals as medians of paired
step ratios. Results under ``benchmarks/results/cpu_decode_context.json`` and ``.md``, with the machine.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import qcompiler as qc
from qcompiler.zoo import DECODERS

sys.path.insert(0, str(Path(__file__).parent))
from bench_llm import build_qc, log  # noqa: E402
from machine import report_table  # noqa: E402


def programs(max_seq_len: int) -> dict:
    """name -> (system in bench_llm.QC_SYSTEMS, max_seq_len)"""
    return {f"int4wo-64, float cache, max_seq_len {max_seq_len}": ("int4wo-64", max_seq_len),
            f"int4wo-64, int8 cache, max_seq_len {max_seq_len}": ("int4wo-64 kv-int8", max_seq_len),
            "int4wo-64, float cache, max_seq_len 256": ("int4wo-64", 256)}


def stepper(run, vocab: int, filled: int, new: int):
    """A greedy decode step of ``run`` at a given position, returning its seconds, after one prompt filling the
    positions before ``filled - new``."""
    gen = torch.Generator().manual_seed(filled)
    prompt = torch.randint(3, vocab, (1, filled - new), generator=gen)
    token = [run(input_ids=prompt, cache_position=torch.arange(filled - new))[:, -1:].argmax(-1)]

    def step(position: int) -> float:
        start = time.perf_counter()
        logits = run(input_ids=token[0], cache_position=torch.tensor([position]))
        seconds = time.perf_counter() - start
        token[0] = logits[:, -1:].argmax(-1)
        return seconds
    return step


def turns(steps: list, new: int) -> list:
    """Seconds of ``new`` steps of each (step, first position) pair, taking turns step by step: the host's drifts hit
    them alike, and step i of one against step i of another is a fair pair. Two at a time: three ~900 MB programs
    taking turns ran ~20% slower on this host than one or two."""
    out: list = [[] for _ in steps]
    for i in range(new):
        for times, (step, first) in zip(out, steps):
            times.append(step(first + i))
    return out


def paired(numerator: list, denominator: list) -> float:
    """The median of step-by-step ratios (step i of one against step i of the other, the same round)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def measure(runs: dict, vocab: int, filled: list, new: int, max_seq_len: int) -> tuple:
    """One round: ({(program, filled): [step seconds]} for the table, {(issue #33's goal, its bar): (slow steps, fast
    steps)}: the goal is the fast one's speed against the slow one's)."""
    big, int8, small = runs
    times: dict = {}
    pairs: dict = {}
    for f in filled:  # the two max_seq_len programs, float and int8 cache, in turns
        times[(big, f)], times[(int8, f)] = turns(
            [(stepper(runs[name], vocab, f, new), f - new) for name in (big, int8)], new)
        if f in (1024, 2048):
            pairs[(f"int8 cache vs float cache at {f} filled", 1.1)] = (times[(big, f)], times[(int8, f)])
    for f in (x for x in filled if x <= runs[small].metadata["lm"]["max_seq_len"]):  # the small program beside it
        times[(small, f)], same = turns([(stepper(runs[name], vocab, f, new), f - new) for name in (small, big)], new)
        if f == 256:
            pairs[(f"decode at 256 filled, max_seq_len {max_seq_len} vs 256", 0.95)] = (times[(small, f)], same)
    step = stepper(runs[big], vocab, max_seq_len, new)  # one cache filled to max_seq_len, steps at both lengths
    long, short = turns([(step, max_seq_len - new), (step, 256 - new)], new)
    pairs[(f"decode at {max_seq_len} filled vs at 256 (max_seq_len {max_seq_len})", 0.8)] = (short, long)
    return times, pairs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tinyllama-1.1b")
    ap.add_argument("--filled", nargs="*", type=int, default=[128, 256, 512, 1024, 2048])
    ap.add_argument("--max-seq-len", type=int, default=2048)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--folder", default="bench-context")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_decode_context"))
    args = ap.parse_args()
    folder = Path(args.folder)
    folder.mkdir(exist_ok=True)
    runs = {}
    for name, (system, length) in programs(args.max_seq_len).items():
        path = folder / f"{args.model}_{system.replace(' ', '_')}_{length}.pt2"
        if not path.exists():
            build_qc(system, args.model, length, 16, path)
        runs[name] = qc.load(path)
    vocab = DECODERS[args.model][1].get("vocab_size", 32000)
    times: dict = {}
    pairs: dict = {}
    for r in range(args.rounds):
        got, goal_pairs = measure(runs, vocab, args.filled, args.new, args.max_seq_len)
        for key, t in got.items():
            times.setdefault(key, []).extend(t)
        for key, (slow, fast) in goal_pairs.items():
            pairs.setdefault(key, ([], []))
            pairs[key][0].extend(slow)
            pairs[key][1].extend(fast)
        log(f"  round {r + 1}/{args.rounds} done")
    rows = [{"program": name, "filled": f, "tokens_per_s": 1 / statistics.median(t)}
            for (name, f), t in sorted(times.items(), key=lambda kv: (list(runs).index(kv[0][0]), kv[0][1]))]
    lines = [f"| {row['program']} | {row['filled']} | {row['tokens_per_s']:.1f} |" for row in rows]
    reached = []
    for (goal, bar), (slow, fast) in pairs.items():
        ratio = paired(slow, fast)
        reached.append({"goal": goal, "ratio": ratio, "asked": bar, "met": ratio >= bar})
    lines += ["", "Issue #33's goals: medians of paired step ratios (two programs, or one at two lengths, in turns)",
              "", "| goal | ratio | asked | met |", "|---|---|---|---|"]
    lines += [f"| {g['goal']} | {g['ratio']:.2f}x | {g['asked']}x | {'yes' if g['met'] else 'no'} |" for g in reached]
    report_table(args.out, f"{args.model}, greedy decode steps (median of {args.new} steps x {args.rounds} rounds, "
                 "two programs taking turns step by step) after a prompt filling the cache",
                 ["program", "filled positions", "tokens/s"], lines,
                 {"model": args.model, "results": rows, "goals": reached})


if __name__ == "__main__":
    main()
