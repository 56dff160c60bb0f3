"""Per-layer CUDA speed of the Triton kernels, against bf16 ``F.linear``, torchao and a plain copy.

    .venv/bin/python benchmarks/bench_cuda_layers.py [--shapes 4096x4096 14336x4096] [--m 1 16 128 2048]
        [--schemes int8wo int4wo-128 ...] [--no-peer] [--out benchmarks/results/cuda_layers.json]
    TRITON_INTERPRET=1 .venv/bin/python benchmarks/bench_cuda_layers.py --smoke   # runs on a CPU, tiny, no figures

Issue 5's measurement, to run on the lent GPU: microseconds per call and effective GB/s of
weight bytes read, for each scheme lowered for ``cuda`` (eager calls of the Triton ops),
beside bf16 ``F.linear``, the ATen kernel torchao dispatches the scheme to on CUDA (tinygemm for
int4, ``torch._int_mm`` for int8dq; ``torch_kernel_peer``) and torchao itself where it is installed,
all in one run. The
bandwidth a plain device-to-device copy reaches is the yardstick for the decode goal
(int4 and codebook at >= 70% of it). ``triton.testing.do_bench`` flushes L2 between
calls, so M = 1 reads its weights from memory.
"""
import argparse
import dataclasses
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


def graph_timer(reps: int = 20, flush_mb: int = 256):
    """Microseconds of one call's GPU work alone: ``reps`` calls captured in a CUDA graph, each after an L2 flush
    (a write of ``flush_mb``), less a graph of the flushes alone; the best of five replays of each. An eager call
    of a Triton op pays Python and autotuner overhead that a ``.pt2`` does not (its launches are C++); this is
    what the kernels cost there. None where the call cannot be captured."""
    flush = torch.empty(flush_mb << 20, dtype=torch.uint8, device="cuda")

    def best_ms(graph) -> float:
        graph.replay()
        best = float("inf")
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end))
        return best

    def captured(body):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            body()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                body()
        return graph

    def time_us(fn):
        try:
            with_fn = captured(lambda: (flush.zero_(), fn()))
        except RuntimeError as e:  # not capturable: say so, the eager figure stands alone
            print(f"  (no CUDA graph: {str(e).splitlines()[0][:120]})")
            return None
        alone = captured(flush.zero_)
        return max(best_ms(with_fn) - best_ms(alone), 0.0) / reps * 1e3
    return time_us


def copy_gbs(device: str, nbytes: int, time_us) -> float:
    """GB/s a plain copy of ``nbytes`` reaches (read + write counted)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / time_us(lambda: dst.copy_(src)) / 1e3


def lowered(linear, scheme: str, k: int, device: str):
    """The module lowered for ``cuda``, its kernel and the bytes its weights occupy. Without a GPU
    (``--smoke``) the CUDA rules rewrite the graph and the kernels run in Triton's interpreter."""
    x = torch.randn(2, k, dtype=linear.weight.dtype, device=device)
    config = qc.config_from_string(scheme)
    if isinstance(config, qc.AQLMWeightOnlyConfig):  # its speed does not depend on the fit: one short round
        config = dataclasses.replace(config, beam=1, rounds=1)
    prog = qc.quantize(linear, (x,), config, calibration_data=[x],
                       dynamic_shapes=({0: torch.export.Dim("m", max=1 << 16)},))
    if device == "cuda":
        module = qc.lower(prog, "cuda").module()
    else:
        from qcompiler.lowering import lower_graph
        module = prog.module()
        lower_graph(module, "cuda")
    rows = qc.report(module).quantized
    return module, rows[0].kernel, sum(r.bytes_after for r in rows)


def torch_kernel_peer(linear, scheme: str, device: str):
    """The ATen kernel torchao dispatches ``scheme`` to on CUDA, called directly (no torchao needed), as
    ``(fn, name, weight bytes)``; None where there is none or it cannot run here. Random codes: timing only.

    int4wo-<g>: tinygemm (``aten._weight_int4pack_mm``, torchao's ``tile_packed_to_4d`` int4 format).
    int8dq: per-token int8 activations (ATen ops, as our op quantizes them) and ``torch._int_mm``, then the
    scales; ``_int_mm`` needs M > 16, so ``fn`` answers None below that."""
    if device != "cuda":
        return None
    n, k = linear.weight.shape
    if scheme.startswith("int4wo-"):
        g = int(scheme.split("-")[1])
        q = torch.randint(0, 16, (n, k), dtype=torch.uint8, device=device)
        packed = torch.ops.aten._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).contiguous(), 8)
        scales_zeros = torch.randn(k // g, n, 2, dtype=torch.bfloat16, device=device) * 0.01
        nbytes = packed.numel() * packed.element_size() + scales_zeros.numel() * 2
        return (lambda x: torch.ops.aten._weight_int4pack_mm(x, packed, g, scales_zeros)), "tinygemm", nbytes
    if scheme == "int8dq":
        wq = torch.randint(-127, 128, (n, k), dtype=torch.int8, device=device)
        w_scale = torch.rand(n, dtype=torch.float32, device=device) * 0.01

        def int_mm(x):
            if x.shape[0] <= 16:
                return None
            s = x.abs().amax(1, keepdim=True).float().clamp(min=1e-8) / 127
            xq = (x.float() / s).round().clamp(-127, 127).to(torch.int8)
            return (torch._int_mm(xq, wq.t()).float() * s * w_scale).to(x.dtype)
        return int_mm, "torch._int_mm", wq.numel() + w_scale.numel() * 4
    return None


def _peers(linear, scheme: str, device: str, use_torchao: bool) -> list:
    """(who, fn, kernel, bytes) for each peer of ``scheme`` that runs here."""
    rows = []
    if (aten := torch_kernel_peer(linear, scheme, device)) is not None:
        rows.append(("aten",) + aten)
    if use_torchao and peer_torchao.available():
        try:
            peer = peer_torchao.quantized_copy(linear, scheme, None)
            rows.append(("torchao", peer, "torchao", peer_torchao.torchao_weight_bytes(peer)))
        except (NotImplementedError, RuntimeError, ValueError) as e:
            print(f"  torchao {scheme}: {e}")
    return rows


def run(args, save=lambda results: None) -> dict:
    """Every row; ``save`` gets the results so far after each scheme (a run cut short keeps its figures).
    On a GPU each row has ``us`` (the kernels in a CUDA graph, as a ``.pt2`` runs them) and ``eager_us``
    (``do_bench`` of the eager call, Python included)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    eager_us = timer(device)
    graph_us = graph_timer() if device == "cuda" else (lambda fn: None)
    results = {"machine": machine(), "copy_gbs": copy_gbs(device, args.copy_mb << 20, eager_us), "rows": [],
               "timing": "us: CUDA graph of the calls, L2 flushed before each; eager_us: triton do_bench"}
    print(f"plain copy: {results['copy_gbs']:.0f} GB/s", flush=True)

    def measure(fn, **row):
        with torch.no_grad():
            eager = eager_us(fn)
            graph = graph_us(fn)
        us = graph if graph is not None else eager
        row.update(us=us, eager_us=eager, graphed=graph is not None, gbs=row["bytes"] / us / 1e3)
        results["rows"].append(row)
        return row

    for shape in args.shapes:
        n, k = map(int, shape.split("x"))
        torch.manual_seed(0)
        linear = torch.nn.Linear(k, n, bias=False).eval().to(device, torch.bfloat16)
        dense_bytes = linear.weight.numel() * 2
        xs = {m: torch.randn(m, k, dtype=torch.bfloat16, device=device) for m in args.m}
        base = {}
        for m, x in xs.items():
            row = measure(lambda: torch.nn.functional.linear(x, linear.weight), shape=shape, m=m, scheme="bf16",
                          who="torch", kernel="F.linear", bytes=dense_bytes)
            base[m] = row["us"]
            row["vs_bf16"] = 1.0
            print(f"{shape} M={m:<5} {'bf16':<18} {'torch':<9} {row['us']:9.1f} us {row['gbs']:7.1f} GB/s "
                  f"(eager {row['eager_us']:.1f})", flush=True)
        for scheme in args.schemes:  # lowered once per shape: the op picks decode or prefill per call
            rows = [("qcompiler",) + lowered(linear, scheme, k, device)] + _peers(linear, scheme, device,
                                                                                  not args.no_peer)
            for m, x in xs.items():
                for who, fn, kernel, nbytes in rows:
                    with torch.no_grad():
                        if who == "aten" and fn(x) is None:
                            continue
                    row = measure(lambda: fn(x), shape=shape, m=m, scheme=scheme, who=who, kernel=kernel,
                                  bytes=nbytes)
                    row["vs_bf16"] = base[m] / row["us"]
                    print(f"{shape} M={m:<5} {scheme:<18} {who:<9} {row['us']:9.1f} us {row['gbs']:7.1f} GB/s "
                          f"{row['vs_bf16']:5.2f}x bf16 (eager {row['eager_us']:.1f})", flush=True)
            save(results)
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", default=["4096x4096", "14336x4096"])
    p.add_argument("--m", nargs="+", type=int, default=[1, 16, 128, 2048])
    p.add_argument("--schemes", nargs="+", default=SCHEMES)
    p.add_argument("--copy-mb", type=int, default=1024)
    p.add_argument("--no-peer", action="store_true", help="skip torchao (the ATen kernels still run)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on whatever device there is; writes nothing")
    p.add_argument("--out", default="benchmarks/results/cuda_layers.json")
    args = p.parse_args()
    if args.smoke:
        args.shapes, args.m, args.copy_mb, args.no_peer = ["48x256"], [1, 17], 1, True
    out = None if args.smoke else Path(args.out)
    run(args, save=lambda results: out and out.write_text(json.dumps(results, indent=1)))
    if out:
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
