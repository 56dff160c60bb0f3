"""Decode attention over a static KV cache: ``qcompiler.cache_attention`` (the filled prefix only) against SDPA with
the causal mask over the whole cache (what a captured LM's attention did), per layer, by filled length.

    .venv/bin/python benchmarks/bench_cache_attention.py [--filled 128 256 512 1024 2048] [--max-seq-len 2048]

TinyLlama-1.1B's attention shape by default (4 kv heads of 8 query heads, head dim 64), one sequence, one new
token; each layer's cache is its own tensor, rotated over 22 layers or as many more as make the filled prefixes
read exceed 128 MB, so the cache is read from memory as in a model (whose weights stream through the CPU's caches
between two layers' attention). Cases: SDPA over ``max_seq_len`` positions on a float32 cache (grouped rows, a
mask), ``cache_attention`` on a float32, bfloat16 and int8 cache (int8: a float32 scale per token and head, read in
int8), and SDPA in a program whose ``max_seq_len`` is the filled length (the speed a cache sized to the context would
give). Cases interleave per round; ratios are medians of same-round ratios. Writes
``benchmarks/results/cpu_cache_attention.json`` and ``.md``.
"""
import argparse
from pathlib import Path

import torch

from machine import machine, write_results
from qcompiler.runtime import cache_attention, native
from qcompiler.runtime.numerics import EPS, per_token_int8
from timing import interleaved, median_ratio

LAYERS = 22
READ_BYTES = 128 << 20   # layers rotated until the positions read exceed this (past this host's 32 MB L3), ...
ALLOC_BYTES = 1536 << 20  # ... while a case's caches hold at most this


def layer_count(kv_heads: int, positions: int, d: int, store: str, filled: int) -> int:
    """Layers rotated: at least a model's 22, as many as make the filled prefixes read exceed READ_BYTES (a model's
    weights stream through the caches between two layers' attention, so each layer's cache comes from memory)."""
    per_token = kv_heads * 2 * (d * getattr(torch, store).itemsize + (4 if store == "int8" else 0))
    wanted = -(-READ_BYTES // (per_token * filled))
    return max(LAYERS, min(wanted, ALLOC_BYTES // (per_token * positions)))


def caches(kv_heads, positions, d, store, filled=None):
    """Each rotated layer's (k, v, k_scale, v_scale), ``positions`` long, random over the first ``filled``."""
    filled = positions if filled is None else filled
    out = []
    for _ in range(layer_count(kv_heads, positions, d, store, filled)):
        k, v = (torch.randn(1, kv_heads, filled, d) for _ in range(2))
        ks = vs = None
        if store == "int8":
            (k, ks, _), (v, vs, _) = (per_token_int8(t, "symmetric", EPS) for t in (k, v))
            k, v = k.to(torch.int8), v.to(torch.int8)
            ks, vs = (torch.nn.functional.pad(t, (0, 0, 0, positions - filled)) for t in (ks, vs))
        k, v = (torch.nn.functional.pad(t.to(getattr(torch, store)), (0, 0, 0, positions - filled)) for t in (k, v))
        out.append((k, v, ks, vs))
    return out


def rotating(calls):
    state = {"i": 0}

    def call():
        state["i"] = (state["i"] + 1) % len(calls)
        return calls[state["i"]]()
    return call


def sdpa(q, layers, filled, groups, scale):
    """SDPA on grouped rows with the mask of a static cache: every position read."""
    mask = cache_attention.visible(torch.tensor([filled - 1]), q.shape[2], groups, layers[0][0].shape[2])
    return rotating([lambda k=k, v=v: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                                                       scale=scale)
                     for k, v, _, _ in layers])


def ours(q, layers, filled, groups, scale):
    start = torch.tensor([filled - 1])
    return rotating([lambda k=k, v=v, ks=ks, vs=vs: cache_attention.OP(q, k, v, ks, vs, start, groups, scale)
                     for k, v, ks, vs in layers])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filled", nargs="*", type=int, default=[128, 256, 512, 1024, 2048])
    ap.add_argument("--max-seq-len", type=int, default=2048)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_cache_attention"))
    args = ap.parse_args()
    native.load()
    torch.manual_seed(0)
    h, g, d, cap = args.kv_heads, args.groups, args.head_dim, args.max_seq_len
    scale = d ** -0.5
    q = torch.randn(1, h, g, d)
    rows, lines = [], []
    for filled in args.filled:
        full = {store: caches(h, cap, d, store, filled) for store in ("float32", "bfloat16", "int8")}
        cases = {"sdpa, whole cache": sdpa(q, full["float32"], filled, g, scale),
                 f"sdpa, a cache of {filled}": sdpa(q, caches(h, filled, d, "float32"), filled, g, scale)}
        for store, layers in full.items():
            cases[f"cache_attention, {store}"] = ours(q, layers, filled, g, scale)
        times = interleaved(cases, args.rounds)
        base = times["sdpa, whole cache"]
        for name, t in times.items():
            row = {"filled": filled, "max_seq_len": cap, "case": name, "us": 1e6 * min(t),
                   "speed_vs_sdpa_whole_cache": median_ratio(base, t),
                   "vs_float32_ours": median_ratio(times["cache_attention, float32"], t)}
            rows.append(row)
            lines.append(f"| {filled} | {name} | {row['us']:.1f} | {row['speed_vs_sdpa_whole_cache']:.2f}x | "
                         f"{row['vs_float32_ours']:.2f}x |")
        print(f"filled {filled}: done ({', '.join(f'{s}: {len(c)} layers' for s, c in full.items())} rotated)",
              flush=True)
        del full, cases
    text = (f"Machine: {machine()}\n\nOne decode step's attention per layer (1 sequence, {h} kv heads x {g} query "
            f"heads, head dim {d}, max_seq_len {cap}; at least {LAYERS} layers' caches rotated, more where their "
            f"filled prefixes come to less than {READ_BYTES >> 20} MB: read from memory as in a model)\n\n"
            "| filled | case | µs | speed vs SDPA over the whole cache | speed vs cache_attention float32 |\n"
            "|---|---|---|---|---|\n" + "\n".join(lines) + "\n")
    print(text)
    write_results(args.out, {"machine": machine(), "results": rows}, text)


if __name__ == "__main__":
    main()
