"""qcompiler::int8_tile_gemm (AMX tiles for many rows, a VNNI GEMV for few) against PyTorch's int8 and bf16 GEMMs.

    .venv/bin/python benchmarks/bench_int8_tile_gemm.py [--rounds 5] [--out benchmarks/results/int8_tile_gemm]

(writes benchmarks/results/int8_tile_gemm.md and .json unless --out says otherwise)

Median microseconds per call on 2 threads, the systems interleaved within each round (benchmarks/timing.py), at
MiniLM's shapes (K, N) = (384, 384), (384, 1536), (1536, 384) for M = 1, 8, 32, 128, 1024 and at a 7B/13B
decoder's (4096, 11008), (11008, 4096), (5120, 5120) for M = 1, 4, 16, 32, 128, 512:

- ``int8_tile_gemm``: int8 rows with per-row scales, the packed weight with per-column scales -> float32;
- ``_int_mm``: ``torch._int_mm(uint8 rows, the int8 weight's transposed view)`` -> int32 (no scaling);
- ``qlinear``: oneDNN's ``onednn.qlinear_pointwise`` on its prepacked weight (uint8 rows with a zero point, as
  ``lowering/cpu.py::_qlinear_gemm`` calls it) -> float32;
- ``bf16 linear``: ``F.linear`` in bfloat16 (oneDNN's brg_matmul, on AMX where the CPU has it).

The weights there stay in cache between calls (this machine's L3 holds every shape's). A last table times M = 1
with the weight read from memory (a 1 GiB buffer touched between calls) and reports the weight bytes read per
second, against the machine's read bandwidth: ``torch.ones(1 << 28).sum()``'s bytes per second, median of 5,
in the same run. The kernel's path per M (``native.tile_gemm_path``) is in the tables.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from qcompiler.runtime import int8_tile_gemm, native

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, write_results  # noqa: E402
from timing import interleaved, median_ratio  # noqa: E402

MINILM = ((384, 384), (384, 1536), (1536, 384))
MINILM_ROWS = (1, 8, 32, 128, 1024)
DECODER = ((4096, 11008), (11008, 4096), (5120, 5120))
DECODER_ROWS = (1, 4, 16, 32, 128, 512)
SYSTEMS = ("int8_tile_gemm", "_int_mm", "qlinear", "bf16 linear")
FLUSH_BYTES = 1 << 30


def systems(m: int, k: int, n: int) -> dict:
    """Each system's call for an [m, k] x [k, n] product on the same random int8 operands."""
    g = torch.Generator().manual_seed(m * 7 + k + n)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    a_scale, w_scale = torch.rand(m, generator=g) + 0.1, torch.rand(n, generator=g) + 0.01
    packed = int8_tile_gemm.pack(w)
    u = (a.to(torch.int16) + 128).to(torch.uint8)
    prepacked = torch.ops.onednn.qlinear_prepack(w, None)
    w_zero = torch.zeros(n, dtype=torch.int32)
    x16, w16 = a.to(torch.bfloat16), w.to(torch.bfloat16)
    return {"int8_tile_gemm": lambda: int8_tile_gemm.OP(a, a_scale, None, packed, w_scale),
            "_int_mm": lambda: torch._int_mm(u, w.t()),
            "qlinear": lambda: torch.ops.onednn.qlinear_pointwise(u, 1.0, 128, prepacked, w_scale, w_zero, None, 1.0,
                                                                   0, torch.float32, "none", [], ""),
            "bf16 linear": lambda: F.linear(x16, w16)}


def weight_bytes(k: int, n: int) -> dict:
    """The weight bytes each system reads per call."""
    packed = -(-n // int8_tile_gemm.BLOCK) * int8_tile_gemm.BLOCK * (-(-k // 4) * 4 + 4)
    return {"int8_tile_gemm": packed, "_int_mm": n * k, "qlinear": n * k, "bf16 linear": 2 * n * k}


def cached_rows(rounds: int) -> list:
    rows = []
    for shapes, ms in ((MINILM, MINILM_ROWS), (DECODER, DECODER_ROWS)):
        for k, n in shapes:
            for m in ms:
                times = interleaved(systems(m, k, n), rounds, min_time=0.2)
                us = {s: statistics.median(t) * 1e6 for s, t in times.items()}
                ratios = {f"{s} / int8_tile_gemm": median_ratio(times[s], times["int8_tile_gemm"])
                          for s in SYSTEMS[1:] if s in times}
                rows.append({"K": k, "N": n, "M": m, "path": native.tile_gemm_path(m), "us": us, **ratios})
                print(f"K={k} N={n} M={m}: " + ", ".join(f"{s} {v:.1f} us" for s, v in us.items()), flush=True)
    return rows


def read_bandwidth() -> float:
    """Bytes per second of ``torch.ones(1 << 28).sum()`` (1 GiB of float32 read), median of 5."""
    x = torch.ones(1 << 28)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - start)
    return x.numel() * 4 / statistics.median(times)


def cold_us(fn, flush: torch.Tensor, calls: int) -> float:
    """Median microseconds of ``fn()`` right after a pass over ``flush`` has evicted the caches."""
    fn()
    times = []
    for _ in range(calls):
        flush.add_(1)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def memory_rows(calls: int) -> tuple:
    flush = torch.zeros(FLUSH_BYTES // 4)
    bandwidth = read_bandwidth()
    rows = []
    for k, n in DECODER:
        fns, nbytes = systems(1, k, n), weight_bytes(k, n)
        for s in ("int8_tile_gemm", "qlinear", "bf16 linear"):
            us = cold_us(fns[s], flush, calls)
            rows.append({"K": k, "N": n, "system": s, "us": us, "GB/s": nbytes[s] / us / 1e3,
                         "of read bandwidth": nbytes[s] / us * 1e6 / bandwidth})
            print(f"cold K={k} N={n} {s}: {us:.0f} us, {nbytes[s] / us / 1e3:.1f} GB/s", flush=True)
    return bandwidth, rows


def cell(row: dict, s: str) -> str:
    ratio = row.get(f"{s} / int8_tile_gemm")
    return f"{row['us'][s]:.1f}" + (f" ({ratio:.2f}x)" if ratio else "") if s in row["us"] else "failed"


def table(rows: list, bandwidth: float, cold: list, m: dict, rounds: int) -> str:
    lines = [f"# int8_tile_gemm against PyTorch's int8 and bf16 GEMMs ({m['torch_threads']} threads, {rounds} "
             "interleaved rounds, median us per call; in brackets the system's time over int8_tile_gemm's)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['cpu_flags'])}; torch {m['torch']}", "",
             "Weights in cache between calls. int8_tile_gemm and qlinear return scaled float32, _int_mm int32 (no "
             "scaling), bf16 linear bfloat16.", "",
             "| K | N | M | path | " + " | ".join(f"{s} us" for s in SYSTEMS) + " |",
             "|---|---|---|---|" + "---|" * len(SYSTEMS)]
    lines += [f"| {r['K']} | {r['N']} | {r['M']} | {r['path']} | " + " | ".join(cell(r, s) for s in SYSTEMS) + " |"
              for r in rows]
    lines += ["", f"## M = 1, the weight read from memory (read bandwidth: {bandwidth / 1e9:.1f} GB/s, "
              "torch.ones(1 << 28).sum())", "",
              "| K | N | system | us | weight GB/s | of read bandwidth |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['K']} | {r['N']} | {r['system']} | {r['us']:.0f} | {r['GB/s']:.1f} | "
              f"{r['of read bandwidth']:.0%} |" for r in cold]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cold-calls", type=int, default=15, help="calls per system with the weight from memory")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "int8_tile_gemm"),
                   help="results path without suffix (writes .json and .md)")
    a = p.parse_args()
    torch.set_num_threads(2)
    native.load()
    rows = cached_rows(a.rounds)
    bandwidth, cold = memory_rows(a.cold_calls)
    m = machine()
    text = table(rows, bandwidth, cold, m, a.rounds)
    print(text)
    write_results(a.out, {"machine": m, "rounds": a.rounds, "rows": rows, "read_bandwidth": bandwidth,
                          "from_memory": cold}, text)


if __name__ == "__main__":
    main()
