"""Per-layer CUDA speed of the Triton kernels, against bf16 ``F.linear``, torchao and a plain copy.

    .venv/bin/python benchmarks/bench_cuda_layers.py [--shapes 4096x4096 14336x4096] [--m 1 16 128 2048]
        [--schemes int8wo int4wo-128 ...] [--no-peer] [--out benchmarks/results/cuda_layers.json]
    TRITON_INTERPRET=1 .venv/bin/python benchmarks/bench_cuda_layers.py --smoke   # runs on a CPU, tiny, no figures

Issue 5's measurement, to run on the lent GPU: microseconds per call and effective GB/s of
weight bytes read, for each scheme lowered for ``cuda`` (eager calls of the Triton ops),
beside bf16 ``F.linear`` and torchao's kernel for the same scheme, all in one run. The
bandwidth a plain device-to-device copy reaches is the yardstick for the decode goal
(int4 and codebook at >= 70% of it). ``triton.testing.do_bench`` flushes L2 between
calls, so M = 1 reads its weights from memory.
"""
import argparse
import json
import time
from pathlib import Path

import torch

import qcompiler as qc
import peer_torchao
from machine import machine

SCHEMES = ["int8wo", "int4wo-64", "int4wo-128", "codebook-4", "codebook-3", "int8dq", "int8da-int4w-128",
           "aqlm-2x8-g8"]


def timer(device: str):
    """Microseconds of one call: ``do_bench`` (L2 flushed) on a GPU, a short wall-clock loop elsewhere."""
    if device == "cuda":
        import triton.testing
        return lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100) * 1e3

    def wall(fn, reps=3):
        fn()
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - start) / reps * 1e6
    return wall


def copy_gbs(device: str, nbytes: int, time_us) -> float:
    """GB/s a plain copy of ``nbytes`` reaches (read + write counted)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / time_us(lambda: dst.copy_(src)) / 1e3


def lowered(linear, scheme: str, k: int, device: str):
    """The module lowered for ``cuda``, its kernel and the bytes its weights occupy. Without a GPU
    (``--smoke``) the CUDA rules rewrite the graph and the kernels run in Triton's interpreter."""
    x = torch.randn(2, k, dtype=linear.weight.dtype, device=device)
    prog = qc.quantize(linear, (x,), qc.config_from_string(scheme), calibration_data=[x],
                       dynamic_shapes=({0: torch.export.Dim("m", max=1 << 16)},))
    if device == "cuda":
        module = qc.lower(prog, "cuda").module()
    else:
        from qcompiler.lowering import lower_graph
        module = prog.module()
        lower_graph(module, "cuda")
    rows = qc.report(module).quantized
    return module, rows[0].kernel, sum(r.bytes_after for r in rows)


def run(args) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    time_us = timer(device)
    results = {"machine": machine(), "copy_gbs": copy_gbs(device, args.copy_mb << 20, time_us), "rows": []}
    print(f"plain copy: {results['copy_gbs']:.0f} GB/s")
    for shape in args.shapes:
        n, k = map(int, shape.split("x"))
        torch.manual_seed(0)
        linear = torch.nn.Linear(k, n, bias=False).eval().to(device, torch.bfloat16)
        dense_bytes = linear.weight.numel() * 2
        for m in args.m:
            x = torch.randn(m, k, dtype=torch.bfloat16, device=device)
            with torch.no_grad():
                base = time_us(lambda: torch.nn.functional.linear(x, linear.weight))
            results["rows"].append(dict(shape=shape, m=m, scheme="bf16", kernel="F.linear", us=base,
                                        gbs=dense_bytes / base / 1e3, vs_bf16=1.0))
            for scheme in args.schemes:
                rows = [("qcompiler",) + lowered(linear, scheme, k, device)]
                if not args.no_peer and peer_torchao.available():
                    try:
                        peer = peer_torchao.quantized_copy(linear, scheme, None)
                        rows.append(("torchao", peer, "torchao", peer_torchao.torchao_weight_bytes(peer)))
                    except (NotImplementedError, RuntimeError, ValueError) as e:
                        print(f"  torchao {scheme}: {e}")
                for who, fn, kernel, nbytes in rows:
                    with torch.no_grad():
                        us = time_us(lambda: fn(x))
                    row = dict(shape=shape, m=m, scheme=scheme, who=who, kernel=kernel, us=us, gbs=nbytes / us / 1e3,
                               vs_bf16=base / us, bytes=nbytes)
                    results["rows"].append(row)
                    print(f"{shape} M={m:<5} {scheme:<18} {who:<9} {us:9.1f} us {row['gbs']:7.1f} GB/s "
                          f"{row['vs_bf16']:5.2f}x bf16")
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", default=["4096x4096", "14336x4096"])
    p.add_argument("--m", nargs="+", type=int, default=[1, 16, 128, 2048])
    p.add_argument("--schemes", nargs="+", default=SCHEMES)
    p.add_argument("--copy-mb", type=int, default=1024)
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on whatever device there is; writes nothing")
    p.add_argument("--out", default="benchmarks/results/cuda_layers.json")
    args = p.parse_args()
    if args.smoke:
        args.shapes, args.m, args.copy_mb, args.no_peer = ["48x256"], [1, 17], 1, True
    results = run(args)
    if not args.smoke:
        Path(args.out).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
