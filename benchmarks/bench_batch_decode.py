"""Aggregate decode speed of independent sequences: one .pt2 captured with slots, B sequences decoding together.

    python benchmarks/bench_batch_decode.py [--model tinyllama-1.1b] [--systems int4wo-64 int8da-int4w-64]
                                            [--sequences 1 2 4 8 16] [--slots 16] [--max-seq-len 512]
                                            [--new 16] [--rounds 2] [--folder bench-context]

Issue #33's third goal (8 concurrent sequences >= 5x one's tokens/s): the model captured with
``capture_lm(..., slots=16)``, int4wo-64 (and int8da-int4w-64: int8 activations, half the integer dot
products of int4wo's 16-bit ones), each built once into ``--folder``. For each B, B prompts of different lengths
(48 .. 80 tokens) are prefilled in slots 0 .. B-1, then ``--new`` decode steps run all B in one call each
(``input_ids`` [B, 1], each row's own ``start`` and ``slot``); aggregate tokens/s is B over the median step.
Rounds alternate the order of the B's. Results under ``benchmarks/results/cpu_batch_decode.json`` and ``.md``.
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


def decode_step_s(run, vocab: int, sequences: int, new: int) -> float:
    """The median seconds of ``new`` decode calls of ``sequences`` rows, each row after its own prompt."""
    gen = torch.Generator().manual_seed(sequences)
    lengths = torch.randint(48, 81, (sequences,), generator=gen).tolist()
    tokens = []
    for slot, length in enumerate(lengths):
        prompt = torch.randint(3, vocab, (1, length), generator=gen)
        logits = run(input_ids=prompt, start=torch.zeros(1, dtype=torch.long), slot=torch.tensor([slot]))
        tokens.append(logits[0, -1].argmax())
    token, start, slot = torch.stack(tokens)[:, None], torch.tensor(lengths), torch.arange(sequences)
    steps = []
    for _ in range(new):
        begin = time.perf_counter()
        logits = run(input_ids=token, start=start, slot=slot)
        steps.append(time.perf_counter() - begin)
        token, start = logits[:, -1:].argmax(-1), start + 1
    return statistics.median(steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tinyllama-1.1b")
    ap.add_argument("--systems", nargs="*", default=["int4wo-64", "int8da-int4w-64"])
    ap.add_argument("--sequences", nargs="*", type=int, default=[1, 2, 4, 8, 16])
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--folder", default="bench-context")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_batch_decode"))
    args = ap.parse_args()
    if max(args.sequences) > args.slots:
        ap.error(f"--sequences up to --slots ({args.slots})")
    folder = Path(args.folder)
    folder.mkdir(exist_ok=True)
    runs = {}
    for system in args.systems:
        path = folder / f"{args.model}_{system}_slots{args.slots}_{args.max_seq_len}.pt2"
        if not path.exists():
            build_qc(system, args.model, args.max_seq_len, 16, path, slots=args.slots)
        runs[system] = qc.load(path)
    vocab = DECODERS[args.model][1].get("vocab_size", 32000)
    times = {(s, b): [] for s in runs for b in args.sequences}
    for r in range(args.rounds):
        for system, run in runs.items():
            for b in (args.sequences if r % 2 == 0 else reversed(args.sequences)):
                times[(system, b)].append(decode_step_s(run, vocab, b, args.new))
        log(f"  round {r + 1}/{args.rounds} done")
    rows, lines = [], []
    for system in runs:
        one = 1 / min(times[(system, args.sequences[0])])
        for b in args.sequences:
            t = min(times[(system, b)])
            row = {"system": system, "sequences": b, "step_ms": t * 1e3, "tokens_per_s": b / t,
                   "vs_first": b / t / one}
            rows.append(row)
            lines.append(f"| {system} | {b} | {row['step_ms']:.1f} | {row['tokens_per_s']:.1f} | "
                         f"{row['vs_first']:.2f}x |")
    report_table(args.out, f"{args.model}, slots={args.slots}, max_seq_len={args.max_seq_len}: decode steps of all "
                 f"sequences in one call (median of {args.new}, best of {args.rounds} rounds), prompts of 48-80 tokens",
                 ["system", "sequences", "step ms", "aggregate tokens/s", f"vs {args.sequences[0]}"], lines,
                 {"model": args.model, "results": rows})


if __name__ == "__main__":
    main()
