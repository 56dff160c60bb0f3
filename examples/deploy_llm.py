"""Deploy a decoder LLM: capture it with its KV cache, quantize, package, generate.

    python examples/deploy_llm.py [--model llama-tiny|tinyllama-1.1b] [--scheme int4wo-64] [--out llm.pt2]

The model is built from its transformers config with random weights (no weights are
downloaded), so the tokens are noise; what counts is that the packaged ``.pt2`` makes
the same tokens as the quantized program it came from, and how fast it makes them.
"""
import argparse
import time

import torch

import qcompiler as qc
from qcompiler.zoo import decoder


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="llama-tiny")
    p.add_argument("--scheme", default="int4wo-64")
    p.add_argument("--out", default="llm.pt2")
    a = p.parse_args()

    lm = qc.capture_lm(decoder(a.model), max_seq_len=256)            # tokens + cache position in, logits out
    prog = qc.convert(qc.prepare(lm, qc.config_from_string(a.scheme)))  # the KV cache stays the program's state
    run = qc.load(qc.package(qc.lower(prog, "cpu"), a.out))
    prompt = torch.randint(3, 256, (1, 32), generator=torch.Generator().manual_seed(0))

    start = time.perf_counter()
    new = qc.generate(run, prompt, max_new_tokens=32)                    # greedy; LongTensor [1, 32]
    seconds = time.perf_counter() - start
    same = torch.equal(new, qc.generate(prog.module(), prompt, max_new_tokens=32))
    print(f"{a.model} {a.scheme}: {new.shape[1]} tokens in {seconds:.2f} s ({new.shape[1] / seconds:.1f} tokens/s, "
          f"prefill included)")
    print(f"same tokens as the quantized reference program: {same}")
    print("first tokens:", new[0, :8].tolist())


if __name__ == "__main__":
    main()
