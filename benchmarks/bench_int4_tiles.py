"""qcompiler::int8_int4_gemm's bfloat16 AMX tiles against its exact VNNI path and oneDNN's bfloat16 linear.

    .venv/bin/python benchmarks/bench_int4_tiles.py [--rounds 5] [--out benchmarks/results/int4_tiles]

(writes benchmarks/results/int4_tiles.md and .json unless --out says otherwise)

Microseconds per call on torch's threads, the systems interleaved within each round (benchmarks/timing.py); each
system's best round (this machine's neighbours make medians drift), and the ratios of the same round's medians.
int4 weights in groups of 64 with bfloat16 scales, as int4wo-64 lowers; MiniLM's shapes (K, N) = (384, 1536),
(1536, 384) and TinyLlama's (2048, 2048), (2048, 5632), (5632, 2048), for M from 4 to 1024:

- ``int4 tiles``: the op on float32 rows, as a lowered int4wo layer calls it: from ``AMX_MIN_ROWS`` rows on an AMX
  machine the weight decoded to bfloat16 and multiplied on tiles (the path is in the table), else the VNNI path;
- ``int4 exact``: the op on int16 rows, which keeps the exact integer path at every M (float rows there are
  quantized to int16 first, a pass over the rows, then run the same way);
- ``bf16 linear``: oneDNN's bfloat16 linear on its prepacked weight (``mkldnn._linear_pointwise``), what a bf16
  ``.pt2`` with freezing runs.
"""
import argparse
import sys
from pathlib import Path

import torch

from qcompiler.runtime import int8_int4, native

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, write_results  # noqa: E402
from timing import interleaved, median_ratio  # noqa: E402

SHAPES = ((384, 1536), (1536, 384), (2048, 2048), (2048, 5632), (5632, 2048))
ROWS = (4, 16, 32, 64, 128, 512, 1024)
SYSTEMS = ("int4 tiles", "int4 exact", "bf16 linear")
GROUP = 64


def systems(m: int, k: int, n: int) -> dict:
    g = torch.Generator().manual_seed(m + k + n)
    q = torch.randint(-8, 8, (n, k), generator=g)
    scale = (torch.rand(k // GROUP, n, generator=g) * 0.01 + 0.001).bfloat16()
    w = int8_int4.pack(q)
    x = torch.randn(m, k, generator=g)
    x16 = torch.randint(-int8_int4.INT16_MAX, int8_int4.INT16_MAX, (m, k), generator=g, dtype=torch.int16)
    x_scale = torch.rand(m, generator=g)
    xb = x.bfloat16()
    packed = torch.ops.mkldnn._reorder_linear_weight(torch.randn(n, k, generator=g).bfloat16(), m)
    return {"int4 tiles": lambda: int8_int4.OP(x, None, None, w, scale, None, None, GROUP),
            "int4 exact": lambda: int8_int4.OP(x16, x_scale, None, w, scale, None, None, GROUP),
            "bf16 linear": lambda: torch.ops.mkldnn._linear_pointwise(xb, packed, None, "none", [], "")}


def measure(rounds: int) -> list:
    rows = []
    for k, n in SHAPES:
        for m in ROWS:
            times = interleaved(systems(m, k, n), rounds, min_time=0.1)
            us = {s: min(t) * 1e6 for s, t in times.items()}
            ratios = {f"{s} / int4 tiles": median_ratio(times[s], times["int4 tiles"]) for s in SYSTEMS[1:]}
            rows.append({"K": k, "N": n, "M": m, "path": native.int4_gemm_path(m), "us": us, **ratios})
            print(f"K={k} N={n} M={m}: " + ", ".join(f"{s} {v:.0f} us" for s, v in us.items()), flush=True)
    return rows


def cell(row: dict, s: str) -> str:
    ratio = row.get(f"{s} / int4 tiles")
    return f"{row['us'][s]:.0f}" + (f" ({ratio:.2f}x)" if ratio else "")


def table(rows: list, m: dict, rounds: int) -> str:
    lines = [f"# int4 on bfloat16 AMX tiles ({m['torch_threads']} threads, {rounds} interleaved rounds, best round's "
             "median us per call; in brackets the same round's time over int4 tiles', median over rounds: above 1, "
             "the tiles are faster)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['cpu_flags'])}; torch {m['torch']}", "",
             "| K | N | M | int4 tiles path | " + " | ".join(f"{s} us" for s in SYSTEMS) + " |",
             "|---|---|---|---|" + "---|" * len(SYSTEMS)]
    lines += [f"| {r['K']} | {r['N']} | {r['M']} | {r['path']} | " + " | ".join(cell(r, s) for s in SYSTEMS) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "int4_tiles"),
                   help="results path without suffix (writes .json and .md)")
    a = p.parse_args()
    native.load()
    rows = measure(a.rounds)
    m = machine()
    text = table(rows, m, a.rounds)
    print(text)
    write_results(a.out, {"machine": m, "rounds": a.rounds, "rows": rows,
                          "statistic": "us: the best round's median per system"}, text)


if __name__ == "__main__":
    main()
