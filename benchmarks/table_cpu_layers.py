"""Markdown tables (as in docs/measured.md) from ``results/cpu_layers.json``.

    .venv/bin/python benchmarks/table_cpu_layers.py [results/cpu_layers.json] > benchmarks/results/cpu_layers.md

One table per layer shape: each scheme's packaged (.pt2) time at M=1 and M=128, its
effective weight GB/s at M=1, speedup over bf16 eager, and torchao's best time
(eager or compiled) with our speed relative to it (>1: we are faster).
"""
import json
import sys
from pathlib import Path


def _best_peer(rows, shape, m, scheme):
    peers = [r for r in rows
             if (r["shape"], r["m"], r["scheme"]) == (shape, m, scheme) and r["mode"].startswith("torchao")]
    return min(peers, key=lambda r: r["us"]) if peers else None


def _cell(rows, shape, m, scheme, mode):
    return next((r for r in rows if (r["shape"], r["m"], r["scheme"], r["mode"]) == (shape, m, scheme, mode)), None)


def table(rows, shape) -> str:
    out = [f"**{shape}** (N x K)", "",
           "| scheme | kernel | M=1 µs | GB/s | vs bf16 | torchao M=1 µs | vs torchao "
           "| M=128 µs | vs bf16 | torchao M=128 µs | vs torchao |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    schemes = list(dict.fromkeys(r["scheme"] for r in rows if r["shape"] == shape))
    for scheme in schemes:
        mode = "eager" if scheme in ("fp32", "bf16") else "pt2"
        cells = []
        for m in (1, 128):
            ours, peer = _cell(rows, shape, m, scheme, mode), _best_peer(rows, shape, m, scheme)
            if ours is None:
                cells += ["", "", ""] if m == 128 else ["", "", "", "", ""]
                continue
            head = ([f"{ours['us']:.0f}"] + ([f"{ours['weight_gbps']:.1f}"] if m == 1 else [])
                    + [f"{ours['speedup_vs_bf16']:.2f}x"])
            tail = ([f"{peer['us']:.0f} ({peer['mode'].split('-')[1]})", f"{peer['us'] / ours['us']:.2f}x"]
                    if peer else ["-", "-"])
            cells += head + tail
        kernel = next(r["kernel"] for r in rows if r["shape"] == shape and r["scheme"] == scheme)
        out.append(f"| `{scheme}` | {kernel} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "cpu_layers.json"
    data = json.loads(path.read_text())
    rows = data["results"]
    print(f"# CPU per-layer speed (`benchmarks/table_cpu_layers.py` from `{path.name}`)\n")
    print(f"{data['activation_dtype']} activations; `.pt2` times for our schemes, eager for fp32/bf16; torchao 0.18 "
          "the best of eager and `torch.compile` on the same layers in the same run; \"vs torchao\" above 1 means we "
          "are faster.\n")
    print(f"machine: {data['machine']}\n")
    for shape in dict.fromkeys(r["shape"] for r in rows):
        print(table(rows, shape) + "\n")


if __name__ == "__main__":
    main()
