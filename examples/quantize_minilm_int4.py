"""Quantize all-MiniLM-L6-v2 to int4 (groups of 64) for the CPU and ship it as one .pt2: five lines.

    python examples/quantize_minilm_int4.py [OUT.pt2]
"""
import sys

import qcompiler as qc
from qcompiler.zoo import minilm

out = sys.argv[1] if len(sys.argv) > 1 else "minilm_int4.pt2"

m = minilm()  # the model, its tokenizer, example inputs and dynamic batch/sequence dims
program = qc.quantize(m.model, (), qc.Int4WeightOnlyConfig(group_size=64),
                      example_kwargs=m.example_kwargs, dynamic_shapes=m.dynamic_shapes)
path = qc.package(qc.lower(program, "cpu"), out)  # AOTInductor: needs no Python model code to run
loaded = qc.load(path)

# What happened to each layer, and how close the embeddings stay to fp32.
print(loaded.report)
sentences = ["Quantization makes models smaller.", "The cat sat on the mat."]
cosine = (m.embed(loaded, sentences) * m.embed(m.model, sentences)).sum(-1)
print(f"{path}: {path.stat().st_size / 1e6:.1f} MB, embedding cosine to fp32 {cosine.min():.4f}")
