"""all-MiniLM-L6-v2 end to end: quantize, lower for the CPU, package; size, latency and accuracy.

    .venv/bin/python benchmarks/bench_minilm_e2e.py [--schemes int8wo int4wo-64 ...]

For fp32 and each scheme: the .pt2 size, latency at batch 1 x 128 tokens and
batch 32 x 128 tokens (medians, side by side in one run) with the ratio to the
fp32 .pt2, and the embedding cosine to fp32 eager over the held-out sentences.
"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import qcompiler as qc
from machine import machine
from qcompiler.zoo import CALIBRATION_SENTENCES, SENTENCES, minilm

SCHEMES = ["int8wo", "int8dq", "int4wo-64", "int8da-int4w-32", "codebook-4", "codebook-4-float", "fp8wo", "int8static"]


def latency_ms(run, inputs, min_time=2.0):
    run(**inputs)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < min_time or len(times) < 3:
        t = time.perf_counter()
        run(**inputs)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def calibration_batches(bundled):
    """CALIBRATION_SENTENCES encoded in batches of two: what ``int8static`` calibrates on."""
    return [bundled.encode(CALIBRATION_SENTENCES[i:i + 2]) for i in range(0, len(CALIBRATION_SENTENCES), 2)]


def token_inputs(shape):
    """Random token ids (batch, seq) and an all-ones attention mask, as keyword inputs."""
    return {"input_ids": torch.randint(1000, 20000, shape), "attention_mask": torch.ones(shape, dtype=torch.long)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schemes", nargs="*", default=SCHEMES)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "minilm_e2e.json"))
    args = ap.parse_args()
    bundled = minilm()
    reference = bundled.embed(bundled.model, SENTENCES)
    calibration = calibration_batches(bundled)
    shapes = {"1x128": (1, 128), "32x128": (32, 128)}
    inputs = {name: token_inputs(s) for name, s in shapes.items()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for scheme in ["fp32"] + args.schemes:
            if scheme == "fp32":
                program = qc.capture(bundled.model, (), example_kwargs=bundled.example_kwargs,
                                     dynamic_shapes=bundled.dynamic_shapes)
            else:
                program = qc.lower(qc.quantize(bundled.model, (), qc.config_from_string(scheme),
                                               example_kwargs=bundled.example_kwargs,
                                               dynamic_shapes=bundled.dynamic_shapes,
                                               calibration_data=calibration), "cpu")
            path = qc.package(program, Path(tmp) / f"minilm_{scheme}.pt2")
            run = qc.load(path)
            cos = (bundled.embed(run, SENTENCES) * reference).sum(-1)
            row = {"scheme": scheme, "pt2_mb": round(path.stat().st_size / 1e6, 2),
                   "mean_cosine": round(cos.mean().item(), 5),
                   "kernels": sorted({r.kernel for r in run.report.quantized})}
            for name, inp in inputs.items():
                row[f"ms_{name}"] = round(latency_ms(run, inp), 2)
            rows.append(row)
            fp32 = rows[0]
            for name in shapes:
                row[f"speedup_{name}_vs_fp32"] = round(fp32[f"ms_{name}"] / row[f"ms_{name}"], 2)
            print(row, flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine(), "model": "all-MiniLM-L6-v2", "results": rows},
                                         indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
