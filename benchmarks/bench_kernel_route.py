"""How a .pt2 reaches qcompiler's C++ kernels, timed: linked C functions (today) against PyTorch's dispatcher.

    python benchmarks/bench_kernel_route.py [--rounds 15] [--out benchmarks/results/kernel_route]

MiniLM lowered once per scheme (int4wo-64, codebook-4), packaged twice: as ``qc.package`` does (the kernels
linked into the model's .so, called as C functions) and as qcompiler 0.1.0 did (called through AOTInductor's
proxy executor and the dispatcher, with the kernels' library loaded in the process). Both files are timed
side by side in one process, in interleaved rounds; medians per call, with the machine.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import qcompiler as qc
from qcompiler.runtime import native
from qcompiler.zoo import minilm

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, write_results  # noqa: E402

SCHEMES = ("int4wo-64", "codebook-4")
SHAPES = ((1, 128), (8, 128))


def packaged_both_ways(bundled, scheme: str, folder: Path) -> dict:
    program = qc.lower(qc.quantize(bundled.model, (), qc.config_from_string(scheme),
                                   example_kwargs=bundled.example_kwargs, dynamic_shapes=bundled.dynamic_shapes), "cpu")
    linked = qc.package(program, folder / f"{scheme}_linked.pt2")
    with mock.patch.object(native, "shim_options", lambda ops: {}):  # as packaged before the kernels went inside
        dispatched = qc.package(program, folder / f"{scheme}_dispatcher.pt2")
    return {way: qc.load(path, allow_imports=["transformers"])
            for way, path in (("linked C functions", linked), ("dispatcher", dispatched))}


def time_side_by_side(runs: dict, inputs: dict, rounds: int) -> dict:
    times = {way: [] for way in runs}
    for run in runs.values():
        run(**inputs)  # warm-up
    for r in range(rounds):
        for way in (list(runs) if r % 2 else list(reversed(runs))):
            start = time.perf_counter()
            runs[way](**inputs)
            times[way].append(time.perf_counter() - start)
    return {way: statistics.median(t) * 1e3 for way, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--out", help="results path without suffix (writes .json and .md)")
    a = p.parse_args()
    bundled = minilm()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for scheme in SCHEMES:
            runs = packaged_both_ways(bundled, scheme, Path(folder))
            for batch, seq in SHAPES:
                inputs = {k: v[:batch, :seq] for k, v in bundled.encode(["word " * 200] * batch).items()}
                ms = time_side_by_side(runs, inputs, a.rounds)
                rows.append({"scheme": scheme, "shape": f"{batch}x{seq}", **ms,
                             "linked / dispatcher": ms["linked C functions"] / ms["dispatcher"]})
    m = machine()
    lines = [f"# MiniLM: qcompiler's kernels called as linked C functions or through the dispatcher ({a.rounds} "
             "interleaved rounds, median ms per call)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['cpu_flags'])}; torch {m['torch']}", "",
             "| scheme | shape | linked C functions ms | dispatcher ms | linked / dispatcher |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['scheme']} | {r['shape']} | {r['linked C functions']:.2f} | {r['dispatcher']:.2f} | "
              f"{r['linked / dispatcher']:.3f} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    write_results(a.out, {"machine": m, "rounds": a.rounds, "rows": rows}, text)


if __name__ == "__main__":
    main()
