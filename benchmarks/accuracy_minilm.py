"""Embedding accuracy of every config on all-MiniLM-L6-v2 (reference programs, no lowering).

    .venv/bin/python benchmarks/accuracy_minilm.py [--out benchmarks/results/accuracy_minilm.json]

For each config: quantize (static int8 calibrates on separate sentences), embed 36
varied held-out sentences, and report the mean and worst cosine similarity of the
mean-pooled sentence embeddings to fp32, with the mean weight SQNR and sizes.
"""
import argparse
import json
import time
from pathlib import Path

import torch

import qcompiler as qc
from machine import machine
from qcompiler.zoo import CALIBRATION_SENTENCES, SENTENCES, minilm

SCHEMES = ["int8wo", "int8dq", "int4wo-32", "int4wo-64", "int4wo-128", "int4wo-256", "int8da-int4w-32",
           "codebook-3", "codebook-4", "codebook-3-float", "codebook-4-float", "fp8wo", "fp8dq", "int8static",
           "intx-2-32", "intx-3-32", "intx-3-64", "intx-4-64", "intx-5-64", "intx-6-64", "fp6", "fpx-2-3", "mxfp4",
           "mxfp8", "nvfp4"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "accuracy_minilm.json"))
    ap.add_argument("--schemes", nargs="*", default=SCHEMES)
    args = ap.parse_args()
    torch.manual_seed(0)
    bundled = minilm()
    reference = bundled.embed(bundled.model, SENTENCES)
    calibration = [bundled.encode(CALIBRATION_SENTENCES[i:i + 2]) for i in range(0, len(CALIBRATION_SENTENCES), 2)]
    rows = []
    print(f"{'scheme':<16} {'mean cos':>9} {'min cos':>8} {'mean SQNR':>10} {'layers':>7} "
          f"{'MB before':>10} {'MB after':>9} {'time s':>7}")
    for scheme in args.schemes:
        start = time.perf_counter()
        prog = qc.quantize(bundled.model, (), qc.config_from_string(scheme), example_kwargs=bundled.example_kwargs,
                           dynamic_shapes=bundled.dynamic_shapes, calibration_data=calibration)
        seconds = time.perf_counter() - start
        cos = (bundled.embed(prog.module(), SENTENCES) * reference).sum(-1)
        rep = qc.report(prog)
        row = {"scheme": scheme, "mean_cosine": round(cos.mean().item(), 5), "min_cosine": round(cos.min().item(), 5),
               "mean_weight_sqnr_db": round(sum(r.sqnr_db for r in rep.quantized) / len(rep.quantized), 2),
               "layers": len(rep.quantized), "skipped": len(rep.skipped),
               "linear_mb_before": round(sum(r.bytes_before for r in rep.quantized) / 1e6, 2),
               "linear_mb_after": round(sum(r.bytes_after for r in rep.quantized) / 1e6, 2),
               "quantize_s": round(seconds, 1)}
        rows.append(row)
        print(f"{scheme:<16} {row['mean_cosine']:>9.5f} {row['min_cosine']:>8.5f} {row['mean_weight_sqnr_db']:>10.2f} "
              f"{row['layers']:>4}/{row['layers'] + row['skipped']:<2} "
              f"{row['linear_mb_before']:>10.2f} {row['linear_mb_after']:>9.2f} {row['quantize_s']:>7.1f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine(), "model": "all-MiniLM-L6-v2",
                                          "sentences": len(SENTENCES), "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
