"""Decode speed against the filled context: a captured LM's .pt2 with a static cache, by how many positions are filled.

    python benchmarks/bench_decode_context.py [--model tinyllama-1.1b] [--filled 128 256 512 1024 2048]
                                              [--max-seq-len 2048] [--new 16] [--rounds 2] [--folder bench-context]

Issue #33's measurements: tokens/s of greedy decode steps at each filled length in a ``max_seq_len`` 2,048 program
(int4wo-64, a float cache and an int8 one), beside a program whose ``max_seq_len`` is 256 (decode at 256 filled
positions there is what a cache sized to the context gives). Each program is built once into ``--folder`` (reused
when there), loaded here; per filled length a prompt fills the cache up to ``filled - new``, then ``--new``
decode steps are timed, the last attending ``filled`` positions (one token each, the median step). Rounds
interleave the programs. Results under ``benchmarks/results/cpu_decode_context.json`` and ``.md``, with the machine.
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


def decode_step_s(run, vocab: int, filled: int, new: int) -> float:
    """The median seconds of ``new`` decode steps at positions filled - new .. filled - 1 (the last one attends
    ``filled`` positions), after a prompt that fills the positions before them."""
    gen = torch.Generator().manual_seed(filled)
    prompt = torch.randint(3, vocab, (1, filled - new), generator=gen)
    logits = run(input_ids=prompt, cache_position=torch.arange(filled - new))
    token = logits[:, -1:].argmax(-1)
    steps = []
    for i in range(new):
        position = torch.tensor([filled - new + i])
        start = time.perf_counter()
        logits = run(input_ids=token, cache_position=position)
        steps.append(time.perf_counter() - start)
        token = logits[:, -1:].argmax(-1)
    return statistics.median(steps)


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
    times = {(name, f): [] for name in runs for f in args.filled}
    for r in range(args.rounds):
        for name, run in (runs.items() if r % 2 == 0 else reversed(list(runs.items()))):
            capacity = run.metadata["lm"]["max_seq_len"]
            for filled in args.filled:
                if filled <= capacity:
                    times[(name, filled)].append(decode_step_s(run, vocab, filled, args.new))
        log(f"  round {r + 1}/{args.rounds} done")
    rows, lines = [], []
    for (name, filled), t in times.items():
        if not t:
            continue
        row = {"program": name, "filled": filled, "tokens_per_s": 1 / min(t)}
        rows.append(row)
        lines.append(f"| {name} | {filled} | {row['tokens_per_s']:.1f} |")
    report_table(args.out, f"{args.model}, greedy decode steps (median of {args.new}, best of {args.rounds} rounds) "
                 "after a prompt filling the cache", ["program", "filled positions", "tokens/s"], lines,
                 {"model": args.model, "results": rows})


if __name__ == "__main__":
    main()
