"""torchao's nearest equivalents of qcompiler's intx and nvfp4 on all-MiniLM-L6-v2, eager, for the accuracy table.

    .venv/bin/python benchmarks/accuracy_formats_torchao.py [--out benchmarks/results/accuracy_minilm_torchao.json]

torchao (the ``[peer]`` extra): ``IntxWeightOnlyConfig(int<b>, PerGroup(g), ASYMMETRIC)`` beside ``intx-<b>-<g>``,
the prototype ``NVFP4WeightOnlyConfig()`` beside ``nvfp4`` and ``Int8DynamicActivationIntxWeightConfig(int<b>,
PerGroup(g))`` (its defaults: symmetric weights, asymmetric per-token int8 activations) beside
``int8da-intx-<b>-<g>``; mean and worst cosine of the mean-pooled embeddings to
fp32 over the same 36 sentences as ``accuracy_minilm.py``. torchao 0.18 has no CPU fpx (fp6) or weight-only MX
config; those rows are absent, said so in the output.
"""
import argparse
import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from machine import machine
from qcompiler.zoo import SENTENCES, minilm

INTX = [(2, 32), (3, 32), (3, 64), (4, 64), (5, 64), (6, 64)]
INT8DA_INTX = [(3, 32), (4, 32), (5, 32), (6, 32)]


def configs():
    from torchao.quantization import IntxWeightOnlyConfig, quantize_  # noqa: F401
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.quant_primitives import MappingType
    out = {f"intx-{b}-{g}": IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{b}"), granularity=PerGroup(g),
                                                 mapping_type=MappingType.ASYMMETRIC) for b, g in INTX}
    from torchao.prototype.mx_formats import NVFP4WeightOnlyConfig
    out["nvfp4"] = NVFP4WeightOnlyConfig()
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    out.update({f"int8da-intx-{b}-{g}": Int8DynamicActivationIntxWeightConfig(
        weight_dtype=getattr(torch, f"int{b}"), weight_granularity=PerGroup(g)) for b, g in INT8DA_INTX})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "accuracy_minilm_torchao.json"))
    ap.add_argument("--schemes", nargs="*", help="our aliases to compare (default: all)")
    args = ap.parse_args()
    import torchao
    from torchao.quantization import quantize_
    bundled = minilm()
    reference = bundled.embed(bundled.model, SENTENCES)
    rows = []
    for ours, config in configs().items():
        if args.schemes and ours not in args.schemes:
            continue
        model = copy.deepcopy(bundled.model)
        quantize_(model, config)
        cos = F.cosine_similarity(bundled.embed(model, SENTENCES).float(), reference, dim=-1)
        rows.append({"scheme": ours, "torchao": type(config).__name__, "mean_cosine": round(float(cos.mean()), 4),
                     "worst_cosine": round(float(cos.min()), 4)})
        print(f"torchao {type(config).__name__} as {ours:<10} mean {rows[-1]['mean_cosine']:.4f} "
              f"worst {rows[-1]['worst_cosine']:.4f}")
    print("not compared: fp6/fpx and mxfp4/mxfp8 (torchao 0.18 has no CPU weight-only config for them)")
    Path(args.out).write_text(json.dumps({"machine": machine(), "torchao": torchao.__version__, "rows": rows},
                                         indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
