"""Time the codebook primitives on a 7B-decoder-sized weight (4096x4096).

    .venv/bin/python benchmarks/bench_kmeans.py [--out benchmarks/results/kmeans.json]

Measures k-means (per tensor and per block of rows), nearest-entry quantization
and index packing, with the SQNR each codebook reaches. Writes JSON and prints a table.
"""
import argparse
import json
import time
from pathlib import Path

import torch

import qcompiler as qc
from machine import machine


def timed(fn, repeats=3):
    fn()  # warm-up
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def sqnr_db(x, xh):
    return (10 * torch.log10(x.pow(2).mean() / (x - xh).pow(2).mean())).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "kmeans.json"))
    ap.add_argument("--size", type=int, default=4096)
    args = ap.parse_args()
    torch.manual_seed(0)
    w = torch.randn(args.size, args.size) * 0.02
    rows = []
    for bits in (2, 3, 4):
        for block_rows in (None, 256):
            t_km, cb = timed(lambda: qc.kmeans_codebook(w, bits, block_rows))
            t_q, idx = timed(lambda: qc.quantize_codebook(w, cb, block_rows))
            t_p, _ = timed(lambda: qc.pack_int(idx, bits))
            rows.append({"shape": list(w.shape), "bits": bits, "block_rows": block_rows, "kmeans_s": round(t_km, 3),
                         "quantize_s": round(t_q, 3), "pack_s": round(t_p, 3),
                         "sqnr_db": round(sqnr_db(w, qc.dequantize_codebook(idx, cb, block_rows)), 2)})
            r = rows[-1]
            print(f"{args.size}x{args.size} bits={bits} block_rows={str(block_rows):>4}  "
                  f"kmeans {r['kmeans_s']:6.2f} s  quantize {r['quantize_s']:5.2f} s  "
                  f"pack {r['pack_s']:5.2f} s  SQNR {r['sqnr_db']:5.2f} dB", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine(), "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
