"""Decoder ``.pt2`` files side by side in one process: best prefill and decode step over interleaved rounds.

    python benchmarks/bench_llm_inprocess.py FOLDER/bf16.pt2 FOLDER/int8dq.pt2 ... [--prompts 128 512]
                                             [--rounds 6] [--out benchmarks/results/llm_inprocess_...]

``bench_llm.py`` times each system in a fresh process, one prefill each (time to the first token, as
``qcompiler generate`` reports it): on a noisy host two rounds of one sample each moved ratios by 2x. Here
every file is loaded once and the rounds interleave them: prefill is the best of 3 calls per round (a
prompt of ``--prompts`` tokens from position 0, which starts a new sequence), decode the median of 32
single-token steps after a 128-token prompt, best round. Ratios are against the first file.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import qcompiler as qc

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, write_results  # noqa: E402

DECODE_STEPS, DECODE_AFTER = 32, 128


def prefill_s(run, length: int) -> float:
    ids, positions = torch.randint(3, 1000, (1, length)), torch.arange(length)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        run(input_ids=ids, cache_position=positions)
        best = min(best, time.perf_counter() - start)
    return best


def decode_step_s(run) -> float:
    run(input_ids=torch.randint(3, 1000, (1, DECODE_AFTER)), cache_position=torch.arange(DECODE_AFTER))
    times, token = [], torch.tensor([[5]])
    for i in range(DECODE_STEPS):
        start = time.perf_counter()
        run(input_ids=token, cache_position=torch.tensor([DECODE_AFTER + i]))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(paths: list, prompts: list, rounds: int) -> list:
    runs = {p: qc.load(p) for p in paths}
    best = {(p, case): float("inf") for p in paths for case in [*prompts, "decode"]}
    for r in range(rounds):
        for p in (paths if r % 2 == 0 else paths[::-1]):
            for length in prompts:
                best[p, length] = min(best[p, length], prefill_s(runs[p], length))
            best[p, "decode"] = min(best[p, "decode"], decode_step_s(runs[p]))
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    rows = []
    for p in paths:
        row = {"file": Path(p).name, "decode_tokens_per_s": 1 / best[p, "decode"],
               "decode_vs_first": best[paths[0], "decode"] / best[p, "decode"]}
        for length in prompts:
            row[f"prefill{length}_tokens_per_s"] = length / best[p, length]
            row[f"prefill{length}_vs_first"] = best[paths[0], length] / best[p, length]
        rows.append(row)
    return rows


def markdown(results: dict) -> str:
    prompts = results["prompts"]
    head = ["file"] + [f"prefill {n} tok/s | vs first" for n in prompts] + ["decode tok/s | vs first"]
    m = results["machine"]
    lines = [f"# Decoder .pt2 files in one process ({results['rounds']} interleaved rounds, best)", "",
             f"Machine: {m['cpu']}, flags {' '.join(m['cpu_flags'])}, {m['torch_threads']} threads", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * (1 + 2 * len(prompts) + 2)]
    for r in results["rows"]:
        cells = [r["file"]] + [f"{r[f'prefill{n}_tokens_per_s']:.0f} | {r[f'prefill{n}_vs_first']:.2f}x"
                               for n in prompts]
        cells.append(f"{r['decode_tokens_per_s']:.1f} | {r['decode_vs_first']:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="decoder .pt2 files (qc.capture_lm programs); the first is the yardstick")
    p.add_argument("--prompts", nargs="+", type=int, default=[128, 512])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--out", default=None, help="results path without suffix (writes .json and .md)")
    a = p.parse_args()
    results = {"machine": machine(), "prompts": a.prompts, "rounds": a.rounds,
               "rows": measure(a.files, a.prompts, a.rounds)}
    text = markdown(results)
    print(text)
    if a.out:
        write_results(a.out, results, text)


if __name__ == "__main__":
    main()
