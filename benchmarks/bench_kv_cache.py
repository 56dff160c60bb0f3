"""The int8 KV cache at a long context: cache memory saved, tokens/s, and how far greedy decoding drifts.

    python benchmarks/bench_kv_cache.py [--model tinyllama-1.1b] [--scheme int4wo-64] [--max-seq-len 2048]
                                        [--prompt 1920] [--new 128] [--rounds 3] [--folder bench-llm-2k]

Builds the model (``--scheme``) twice with ``qc.capture_lm(max_seq_len=...)``: a cache in the model's dtype
and an int8 one. Speed: each runs ``qcompiler generate --json`` in a fresh process per round, rounds
interleaved. Drift: both files loaded here; the float-cache file decodes greedily after the prompt, and
the int8-cache file is fed the same tokens (teacher forcing), so every step compares the two on the
same context: how often their next token agrees, and their logits' largest difference relative to the
largest logit. Also where free-running greedy decoding from each first differs.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

import qcompiler as qc

sys.path.insert(0, str(Path(__file__).parent))
from bench_llm import QC_SYSTEMS, build_qc, log  # noqa: E402
from machine import machine  # noqa: E402

SYSTEMS = {"float cache": None, "int8 cache": torch.int8}


def measure(path: Path, prompt: int, new: int) -> dict:
    cmd = [sys.executable, "-c", "import sys; from qcompiler.cli import main; sys.exit(main())", "generate", str(path),
           "--prompt-length", str(prompt), "-n", str(new), "--json"]
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return {k: out[k] for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "peak_memory_mb", "tokens")}


def drift(paths: dict, prompt: int, new: int, vocab: int) -> dict:
    """Teacher-forced agreement of the int8-cache file with the float-cache one, over ``new`` steps."""
    ids = torch.randint(3, vocab, (1, prompt), generator=torch.Generator().manual_seed(0))
    runs = {name: qc.load(path) for name, path in paths.items()}
    logits = {name: run(input_ids=ids, cache_position=torch.arange(prompt))[:, -1] for name, run in runs.items()}
    agree, errors = [], []
    for step in range(new):
        ref, test = logits["float cache"], logits["int8 cache"]
        agree.append(bool(ref.argmax(-1) == test.argmax(-1)))
        errors.append(float((ref - test).abs().max() / ref.abs().max()))
        token = ref.argmax(-1, keepdim=True)
        position = torch.tensor([prompt + step])
        logits = {name: run(input_ids=token, cache_position=position)[:, -1] for name, run in runs.items()}
    return {"top1_agreement": sum(agree) / len(agree), "max_rel_logit_error": max(errors),
            "median_rel_logit_error": statistics.median(errors)}


def first_difference(a: list, b: list) -> int:
    """The index of the first token where two greedy decodings differ (their length if none)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tinyllama-1.1b")
    p.add_argument("--scheme", default="int4wo-64")
    p.add_argument("--max-seq-len", type=int, default=2048)
    p.add_argument("--prompt", type=int, default=1920)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--folder", type=Path, default=Path("bench-llm-2k"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/llm_kv_cache"))
    a = p.parse_args()
    folder = a.folder / a.model
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, kv in SYSTEMS.items():
        system = a.scheme if kv is None else f"{a.scheme} kv-int8"
        if system not in QC_SYSTEMS:
            raise SystemExit(f"no bench_llm system {system!r}")
        paths[name] = folder / f"{system.replace(' ', '_')}.pt2"
        if not paths[name].exists():
            log(f"building {name} ({a.max_seq_len} positions)")
            build_qc(system, a.model, a.max_seq_len, a.prompt, paths[name])
    runs: dict = {name: [] for name in paths}
    for r in range(a.rounds):
        for name in (list(paths) if r % 2 == 0 else list(paths)[::-1]):
            runs[name].append(measure(paths[name], a.prompt, a.new))
            log(f"round {r + 1} {name}: decode {runs[name][-1]['decode_tokens_per_s']:.1f} tok/s")
    result = {"model": a.model, "scheme": a.scheme, "max_seq_len": a.max_seq_len, "prompt": a.prompt, "new": a.new,
              "machine": machine(), "systems": {}}
    for name, rs in runs.items():
        result["systems"][name] = {k: statistics.median(r[k] for r in rs)
                                   for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "peak_memory_mb")}
        result["systems"][name]["file_bytes"] = paths[name].stat().st_size
        result["systems"][name]["cache_bytes"] = kv_cache_bytes(a.model, SYSTEMS[name], a.max_seq_len)
    result["greedy_first_difference"] = first_difference(runs["float cache"][0]["tokens"],
                                                         runs["int8 cache"][0]["tokens"])
    result["teacher_forced"] = drift(paths, a.prompt, a.new, _vocab(a.model))
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    a.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def _vocab(model: str) -> int:
    from qcompiler.zoo import DECODERS
    return DECODERS[model][1]["vocab_size"]


def kv_cache_bytes(model: str, kv, max_seq_len: int) -> int:
    """Bytes of the cache: keys and values per layer, [1, kv heads, max_seq_len, head dim], plus float32 scales
    per token and head for the int8 cache. The float cache is in the model's dtype (float32 here)."""
    from qcompiler.zoo import DECODERS
    c = DECODERS[model][1]
    head_dim = c["hidden_size"] // c["num_attention_heads"]
    entries = 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * max_seq_len
    if kv is None:
        return entries * head_dim * QC_SYSTEMS["int4wo-64"][0].itemsize
    return entries * (head_dim + 4)


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# int8 KV cache: {r['model']} {r['scheme']}, {r['max_seq_len']} positions, "
             f"{r['prompt']}-token prompt + {r['new']} new", "",
             f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} threads), ATen {m['cpu_capability']}, "
             f"flags {' '.join(m['cpu_flags'])}; torch {m['torch']}.", "",
             "| cache | cache MB | decode tok/s | prefill tok/s | peak MB | file MB |", "|---|---|---|---|---|---|"]
    for name, s in r["systems"].items():
        lines.append(f"| {name} | {s['cache_bytes'] / 1e6:.0f} | {s['decode_tokens_per_s']:.1f} | "
                     f"{s['prefill_tokens_per_s']:.1f} | {s['peak_memory_mb']:.0f} | {s['file_bytes'] / 1e6:.0f} |")
    t = r["teacher_forced"]
    lines += ["", f"Drift over {r['new']} steps after the prompt (random weights: nearly flat logits, a harsh test):",
              f"- teacher forced, next-token agreement {t['top1_agreement']:.1%}; logit error relative to the "
              f"largest logit: median {t['median_rel_logit_error']:.2%}, max {t['max_rel_logit_error']:.2%}",
              f"- free-running greedy decoding first differs at new token {r['greedy_first_difference']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
