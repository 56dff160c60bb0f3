"""Round-to-nearest against GPTQ, HQQ, AWQ and SmoothQuant on all-MiniLM-L6-v2 (reference programs).

    .venv/bin/python benchmarks/accuracy_algorithms.py [--schemes int4wo-64 ...] [--out ...]

Calibration on ``CALIBRATION_CORPUS`` (48 sentences), evaluation on the 36 held-out
``SENTENCES`` (no overlap). For each scheme and algorithm: the mean and worst cosine of the
mean-pooled embeddings to fp32, the mean over the 37 linears of each layer's output SQNR
(the quantized program's linear outputs against the float program's, both run on the
held-out sentences, so upstream error counts), and the time to quantize.
"""
import argparse
import json
import time
from pathlib import Path

import torch
from torch.fx import Interpreter

import qcompiler as qc
from machine import machine
from qcompiler.zoo import CALIBRATION_CORPUS, SENTENCES, minilm

ALGORITHMS = {"int4wo-64": ["gptq", "hqq", "awq"], "int4wo-128": ["gptq", "hqq", "awq"], "codebook-3": ["gptq"],
              "codebook-4": ["gptq"], "int8dq": ["smoothquant"], "int8static": ["smoothquant"]}
CALIBRATION_BATCH = 4
# Settings other than the defaults, measured beside them where a default lost to round-to-nearest.
EXTRA = {"int8static": [("smoothquant alpha=0.75",
                         qc.Int8StaticActivationInt8WeightConfig(algorithm=qc.SmoothQuant(0.75)))]}
# Also calibrated on only the first FEW_SENTENCES of the corpus, as a new user with a little data of their own would.
FEW_DATA, FEW_SENTENCES = ("codebook-3", "codebook-4"), 16


def linear_outputs(gm: torch.fx.GraphModule, inputs: dict) -> dict:
    """Output of every ``aten.linear`` in ``gm`` on ``inputs``, by module path."""
    outputs = {}

    class Recorder(Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.op == "call_function" and n.target == torch.ops.aten.linear.default and n.meta.get("nn_module_stack"):
                outputs[list(n.meta["nn_module_stack"].values())[-1][0]] = out.detach()
            return out
    with torch.no_grad():
        Recorder(gm).run(*[inputs[k] for k in ("input_ids", "attention_mask")])
    return outputs


def mean_layer_sqnr(reference: dict, quantized: dict) -> float:
    values = [10 * torch.log10(reference[k].pow(2).sum() / (reference[k] - quantized[k]).pow(2).sum())
              for k in reference if k in quantized]
    return float(torch.stack(values).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schemes", nargs="*", default=list(ALGORITHMS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "accuracy_algorithms.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    m = minilm()
    reference = m.embed(m.model, SENTENCES)
    held_out = m.encode(SENTENCES)
    calibration = [m.encode(CALIBRATION_CORPUS[i:i + CALIBRATION_BATCH])
                   for i in range(0, len(CALIBRATION_CORPUS), CALIBRATION_BATCH)]
    float_program = qc.capture(m.model, (), example_kwargs=m.example_kwargs, dynamic_shapes=m.dynamic_shapes)
    float_outputs = linear_outputs(float_program.module(), held_out)
    rows = []
    print(f"{'scheme':<34} {'mean cos':>9} {'worst cos':>9} {'layer SQNR':>11} {'time s':>7}")
    for base in args.schemes:
        runs = [(a, qc.config_from_string(base if a == "rtn" else f"{base}+{a}"), calibration)
                for a in ["rtn"] + ALGORITHMS[base]]
        runs += [(a, c, calibration) for a, c in EXTRA.get(base, [])]
        if base in FEW_DATA:
            runs += [(f"{a} ({FEW_SENTENCES} sentences)", qc.config_from_string(f"{base}+{a}"),
                      calibration[:FEW_SENTENCES // CALIBRATION_BATCH]) for a in ALGORITHMS[base]]
        for algorithm, config, data in runs:
            scheme = f"{base} {algorithm}"
            start = time.perf_counter()
            prog = qc.quantize(m.model, (), config, example_kwargs=m.example_kwargs,
                               dynamic_shapes=m.dynamic_shapes, calibration_data=data)
            seconds = time.perf_counter() - start
            cos = (m.embed(prog.module(), SENTENCES) * reference).sum(-1)
            row = {"scheme": base, "algorithm": algorithm, "mean_cosine": round(cos.mean().item(), 5),
                   "worst_cosine": round(cos.min().item(), 5),
                   "mean_layer_output_sqnr_db": round(
                       mean_layer_sqnr(float_outputs, linear_outputs(prog.module(), held_out)), 2),
                   "quantize_s": round(seconds, 1),
                   "calibration_sentences": len(data) * CALIBRATION_BATCH if qc.needs_calibration(config) else 0,
                   "layers_noted": [r.algorithm_note for r in qc.report(prog).quantized if r.algorithm_note]}
            rows.append(row)
            print(f"{scheme:<34} {row['mean_cosine']:>9.5f} {row['worst_cosine']:>9.5f} "
                  f"{row['mean_layer_output_sqnr_db']:>11.2f} {row['quantize_s']:>7.1f}", flush=True)
    Path(args.out).write_text(json.dumps({"machine": machine(), "model": "all-MiniLM-L6-v2",
                                          "calibration_sentences": len(CALIBRATION_CORPUS),
                                          "held_out_sentences": len(SENTENCES), "results": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
