"""Per-layer CPU speed of every scheme, lowered, eager and packaged (AOTInductor), against fp32/bf16.

    .venv/bin/python benchmarks/bench_cpu_layers.py [--shapes 4096x4096 11008x4096 4096x11008]
        [--m 1 128] [--schemes int8wo int4wo-128 ...] [--dtype bfloat16] [--no-package]

Weights (N, K) as in a 7B decoder; M = 1 (decode) and 128 (prefill). Each timing
rotates over several copies of the layer so M=1 reads its weights from memory, not
cache. Reports microseconds, effective GB/s of weight bytes read, and speedup over
bf16 eager ``F.linear``, all measured side by side in one run. Packaging costs
10-30 s per layer and scheme here.

Where torchao is installed, its matching config runs beside ours on the same layers
(modes ``torchao-eager`` and ``torchao-compile``; see ``peer_torchao.py``), rotated
over as many copies as ours (eager) and as our packaged copies (compile).
"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import qcompiler as qc
import peer_torchao
from machine import machine

SCHEMES = ["int8wo", "int8dq", "int4wo-32", "int4wo-128", "int8da-int4w-32", "codebook-4", "codebook-4-float", "fp8wo",
           "int8static"]
CACHE_BYTES = 64 << 20  # rotate until the copies exceed this
PACKAGED_COPIES = 2  # packaging costs 10-30 s a copy: fewer packaged copies (the larger layers exceed cache anyway)


def bench(fns, x, min_time=1.0):
    """Median microseconds of one call, rotating over ``fns`` (copies of one layer)."""
    for f in fns:
        f(x)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < min_time or len(times) < 5:
        for f in fns:
            t = time.perf_counter()
            f(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def copies_for(nbytes):
    return max(1, min(8, -(-CACHE_BYTES // max(nbytes, 1))))


def layer(n, k, dtype, seed):
    torch.manual_seed(seed)
    return torch.nn.Linear(k, n, bias=False).eval().to(dtype)


def quantized_layers(n, k, scheme, dtype, count, package_dir):
    """``count`` lowered copies of one layer (eager callables), the packaged ones, and weight bytes."""
    eager, packed, nbytes = [], [], 0
    dims = ({0: torch.export.Dim("m", max=4096)},)
    calib = [torch.randn(8, k, dtype=dtype)]
    for i in range(count):
        prog = qc.quantize(layer(n, k, dtype, i), (torch.randn(2, k, dtype=dtype),), qc.config_from_string(scheme),
                           dynamic_shapes=dims, calibration_data=calib)
        low = qc.lower(prog, "cpu")
        nbytes = sum(r.bytes_after for r in qc.report(low).quantized)
        kernel = qc.report(low).quantized[0].kernel
        eager.append(low.module())
        if package_dir is not None and i < PACKAGED_COPIES:
            packed.append(qc.load(qc.package(low, Path(package_dir) / f"{scheme}_{n}x{k}_{i}.pt2")))
    return eager, packed, nbytes, kernel


def peer_layers(n, k, scheme, dtype, eager_count):
    """torchao's copies of the layer, by mode, and their weight bytes; ({}, 0) where it has no CPU path."""
    if not peer_torchao.available():
        return {}, 0
    modes, nbytes = {}, 0
    for mode, compiled, count in (("torchao-eager", False, eager_count), ("torchao-compile", True, PACKAGED_COPIES)):
        try:
            fns = [peer_torchao.torchao_layer(layer(n, k, dtype, i), scheme, compile=compiled) for i in range(count)]
        except NotImplementedError as e:
            print(f"torchao {mode} {scheme}: {e}", flush=True)
            continue
        modes[mode], nbytes = fns, peer_torchao.torchao_weight_bytes(fns[0])
    return modes, nbytes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="*", default=["4096x4096", "11008x4096", "4096x11008"])
    ap.add_argument("--m", nargs="*", type=int, default=[1, 128])
    ap.add_argument("--schemes", nargs="*", default=SCHEMES)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--no-package", action="store_true")
    ap.add_argument("--no-peer", action="store_true", help="skip torchao even where it is installed")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_layers.json"))
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for shape in args.shapes:
            n, k = map(int, shape.split("x"))
            dense = {d: [layer(n, k, d, i) for i in range(copies_for(n * k * d.itemsize))]
                     for d in (torch.float32, torch.bfloat16)}
            for m in args.m:
                base = {d: bench(fs, torch.randn(m, k, dtype=d)) for d, fs in dense.items()}
                for name, d in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                    rows.append({"shape": shape, "m": m, "scheme": name, "mode": "eager", "kernel": "F.linear",
                                 "us": round(base[d], 1), "weight_gbps": round(n * k * d.itemsize / base[d] / 1e3, 2),
                                 "speedup_vs_bf16": round(base[torch.bfloat16] / base[d], 2)})
                    print(rows[-1], flush=True)
            for scheme in args.schemes:
                one = quantized_layers(n, k, scheme, dtype, 1, None)[2]
                eager, packed, nbytes, kernel = quantized_layers(n, k, scheme, dtype, copies_for(one),
                                                                 None if args.no_package else tmp)
                runs = {"eager": (eager, nbytes, kernel), "pt2": (packed, nbytes, kernel)}
                peers, peer_bytes = ({}, 0) if args.no_peer else peer_layers(n, k, scheme, dtype, len(eager))
                runs.update({mode: (fns, peer_bytes, "torchao 0.18") for mode, fns in peers.items()})
                for m in args.m:
                    x = torch.randn(m, k, dtype=dtype)
                    bf16 = next(r["us"] for r in rows if r["shape"] == shape and r["m"] == m and r["scheme"] == "bf16")
                    for mode, (fns, nb, kern) in runs.items():
                        if not fns:
                            continue
                        us = bench(fns, x)
                        rows.append({"shape": shape, "m": m, "scheme": scheme, "mode": mode, "kernel": kern,
                                     "us": round(us, 1), "weight_gbps": round(nb / us / 1e3, 2),
                                     "speedup_vs_bf16": round(bf16 / us, 2)})
                        print(rows[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine(), "activation_dtype": args.dtype, "results": rows},
                                         indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
