"""AQLM's CPU kernel (``qcompiler.additive_gemm``) against fp32, int4wo-64 and codebook-2 on 7B layer shapes.

    .venv/bin/python benchmarks/bench_additive_gemm.py [--shapes 4096x4096 4096x11008 11008x4096] [--m 1 4 16 128]

Every case is the kernel a lowered layer calls, timed eagerly (a ``.pt2`` calls the same op): fp32
``F.linear``; int4wo-64 and codebook-2 lowered from a layer quantized without data (their own C++
kernels); ``aqlm-2x8-g8`` and ``aqlm-1x16-g8`` as ``additive_gemm`` on random codes and codebooks
(learning real ones for a 7B layer takes minutes; the kernel's speed does not depend on the values).
Each case rotates over copies of its weight until they exceed 64 MB, so M = 1 reads from memory;
cases interleave per round and each ratio is the median of same-round ratios.
Writes ``benchmarks/results/cpu_additive_gemm.json`` with the machine.
"""
import argparse
import json
import statistics
from pathlib import Path

import torch

import qcompiler as qc
from machine import machine
from qcompiler.runtime import additive_gemm, native
from timing import copies, interleaved, median_ratio, rotating

AQLM = {"aqlm-2x8-g8": (2, 8, 8), "aqlm-1x16-g8": (1, 16, 8)}


def dense(n, k):
    return [torch.nn.Linear(k, n, bias=False).eval() for _ in range(copies(n * k * 4))]


def lowered(n, k, scheme):
    """Copies of an [n, k] layer quantized without data and lowered for this CPU; its kernel's name."""
    dims = ({0: torch.export.Dim("m", max=4096)},)
    fns, kernel = [], ""
    for _ in range(copies(n * k // 2)):
        linear = torch.nn.Linear(k, n, bias=False).eval()
        prog = qc.quantize(linear, (torch.randn(2, k),), qc.config_from_string(scheme), dynamic_shapes=dims)
        low = qc.lower(prog, "cpu")
        kernel = qc.report(low).quantized[0].kernel
        fns.append(low.module())
    return fns, kernel


def additive(n, k, codebooks, bits, group):
    """Copies of an AQLM layer (random codes, codebooks, scales) as ``additive_gemm`` calls; bytes per copy."""
    fns, nbytes = [], 0
    for _ in range(copies(n * k * codebooks * bits // group // 8)):
        codes = torch.randint(0, 1 << bits, (n, k // group, codebooks), dtype=torch.int32)
        codes = additive_gemm.layout(codes.to(torch.uint8 if bits <= 8 else torch.int16))
        books, scale = torch.randn(codebooks, 1 << bits, group).half(), torch.rand(n) + 0.5
        nbytes = codes.nbytes + books.nbytes + scale.nbytes
        fns.append(lambda x, c=codes, b=books, s=scale: additive_gemm.OP(x, c, b, s))
    return fns, nbytes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="*", default=["4096x4096", "4096x11008", "11008x4096"])
    ap.add_argument("--m", nargs="*", type=int, default=[1, 4, 16, 128])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_additive_gemm.json"))
    args = ap.parse_args()
    native.load()
    rows = []
    with torch.no_grad():
        for shape in args.shapes:
            n, k = map(int, shape.split("x"))
            layers = {"fp32": (dense(n, k), "F.linear (fp32)")}
            for scheme in ("int4wo-64", "codebook-2"):
                layers[scheme] = lowered(n, k, scheme)
            for scheme, form in AQLM.items():
                fns, nbytes = additive(n, k, *form)
                layers[scheme] = (fns, f"qcompiler.additive_gemm ({nbytes / n / k * 8:.2f} bits a weight)")
            for m in args.m:
                x = torch.randn(m, k)
                times = interleaved({s: rotating(fns, x) for s, (fns, _) in layers.items()}, args.rounds)
                for scheme, t in times.items():
                    rows.append({"shape": shape, "m": m, "scheme": scheme, "kernel": layers[scheme][1],
                                 "us": round(statistics.median(t) * 1e6, 1),
                                 "vs_fp32": round(median_ratio(times["fp32"], t), 2),
                                 "vs_int4wo_64": round(median_ratio(times["int4wo-64"], t), 2)})
                    print(rows[-1], flush=True)
    Path(args.out).write_text(json.dumps({"machine": machine(), "results": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
