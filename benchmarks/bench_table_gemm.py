"""The fixed-table kernel (``qcompiler.table_gemm``) per format against ``codebook_gemm`` and fp32, per byte read.

    .venv/bin/python benchmarks/bench_table_gemm.py [--shapes 4096x4096 11008x4096] [--m 1 4 16 128]

Each case is the op a lowered layer calls, on random codes and scales (the kernels' speed does not depend on the
values): fp32 ``F.linear``; ``codebook_gemm`` at 2, 3 and 4 bits (each row's int8 table, a float32 scale per row:
the kernel the issue measures against); ``table_gemm`` at the same widths with random float tables and a scale
per row, and in each format's own layout and table (intx-3-64 and intx-5-64: the integers, bfloat16 scales and
uint8 zero points per 64; fp6: e3m2 per row; mxfp4 / mxfp8: e8m0 per 32; nvfp4: e4m3 per 16; nf4: bfloat16 per
64); and int8da-intx-3-32's layer (the rows quantized to int8 per token, then the op on int8 rows) beside the same
symmetric 3-bit weight on 16-bit rows. "GB/s" is the bytes the kernel reads of the weight (codes,
tables, scales, offsets) over its time; "per byte vs codebook" is that rate over codebook_gemm's at 4 bits in the
same round. Each case rotates over copies of its weight until they exceed 64 MB, so M = 1 reads from memory; cases
interleave per round and each ratio is the median of same-round ratios.
Writes ``benchmarks/results/cpu_table_gemm.json`` and ``.md`` with the machine.
"""
import argparse
import statistics
from pathlib import Path

import torch

from machine import machine, write_results
import qcompiler.schemes  # noqa: F401  (registers nf4's grid)
from qcompiler.runtime import codebook_gemm, native, table_gemm, tables
from qcompiler.runtime.numerics import EPS, per_token_int8
from timing import copies, interleaved, median_ratio, rotating

# name: (bits, block (0: per row), scale dtype, offset dtype, table: "float" (random values) or a grid's name, or
# "intx" (the integers 0 .. 2^b - 1))
FORMATS = {
    "float table-2 (per row)": (2, 0, torch.float32, None, "float"),
    "float table-3 (per row)": (3, 0, torch.float32, None, "float"),
    "float table-4 (per row)": (4, 0, torch.float32, None, "float"),
    "intx-3-64": (3, 64, torch.bfloat16, torch.uint8, "intx"),
    "intx-5-64": (5, 64, torch.bfloat16, torch.uint8, "intx"),
    "fp6 (e3m2, per row)": (6, 0, torch.float32, None, "e3m2"),
    "mxfp4": (4, 32, torch.uint8, None, "e2m1"),
    "nvfp4": (4, 16, torch.float8_e4m3fn, None, "e2m1"),
    "nf4": (4, 64, torch.bfloat16, None, "nf4"),
    "mxfp8": (8, 32, torch.uint8, None, "e4m3"),
    "intx-3-32 symmetric (16-bit rows)": (3, 32, torch.bfloat16, None, "intx"),
}
INT8_ROWS = {"int8da-intx-3-32 (int8 rows)": (3, 32)}  # per-token int8 rows, the quantization in the time


def dense(n, k):
    ws = [torch.randn(n, k) for _ in range(copies(n * k * 4))]
    return [lambda x, w=w: torch.nn.functional.linear(x, w) for w in ws], n * k * 4


def codebook(n, k, bits):
    fns, nbytes = [], 0
    for _ in range(copies(n * k * bits // 8)):
        idx = torch.randint(0, 1 << bits, (n, k), dtype=torch.uint8)
        table = torch.randint(-127, 128, (n, 1 << bits), dtype=torch.int8)
        args = (codebook_gemm.pack(idx, bits), codebook_gemm.table16(table), codebook_gemm.weight_sums(idx, table),
                torch.rand(n) + 0.5)
        nbytes = sum(t.nbytes for t in args)
        fns.append(lambda x, a=args: codebook_gemm.OP(x, *a, bits))
    return fns, nbytes


def _stored(shape, dtype, offset: bool, bits: int):
    if dtype == torch.uint8:
        return torch.randint(0, 1 << bits, shape, dtype=torch.uint8) if offset else \
            torch.randint(120, 130, shape, dtype=torch.uint8)
    return (torch.rand(shape) + 0.5).to(dtype)


def values(kind: str, bits: int) -> torch.Tensor:
    if kind == "float":
        return torch.randn(1 << bits)
    if kind == "intx":
        return torch.arange(1 << bits, dtype=torch.float32)
    return tables.grid_values(kind)


def table(n, k, bits, block, scale_dtype, offset_dtype, kind):
    block = block or k
    fns, nbytes = [], 0
    for _ in range(copies(n * k * bits // 8)):
        idx = torch.randint(0, 1 << bits, (n, k), dtype=torch.uint8)
        scale = table_gemm.panel_qparams(_stored((n, k // block), scale_dtype, False, bits))
        offset = None if offset_dtype is None else \
            table_gemm.panel_qparams(_stored((n, k // block), offset_dtype, True, bits))
        if kind == "e4m3":  # float8_e4m3fn's NaN codes are never chosen
            idx = torch.where(idx & 0x7F == 0x7F, idx - 1, idx)
        w, t = table_gemm.pack(idx, bits), values(kind, bits)
        nbytes = w.nbytes + t.nbytes + scale.nbytes + (0 if offset is None else offset.nbytes)
        fns.append(lambda x, w=w, v=t, s=scale, o=offset: table_gemm.OP(x, None, None, w, v, s, o, None, bits, block))
    return fns, nbytes


def int8_rows(n, k, bits, group):
    """int8da-intx's layer: the rows quantized per token (as the lowered graph does), then the op on int8 rows."""
    fns, nbytes = [], 0
    for _ in range(copies(n * k * bits // 8)):
        idx = torch.randint(0, 1 << bits, (n, k), dtype=torch.uint8)
        t = torch.arange(1 << bits, dtype=torch.float32) - (1 << (bits - 1))
        s = (torch.rand(n, k // group) + 0.5).bfloat16()
        scale, w = table_gemm.panel_qparams(s), table_gemm.pack(idx, bits)
        sums = table_gemm.weight(idx, t, s.float()).sum(1).float()
        nbytes = w.nbytes + t.nbytes + scale.nbytes + sums.nbytes

        def run(x, w=w, t=t, scale=scale, sums=sums):
            q, xs, xz = per_token_int8(x, "asymmetric", EPS)
            return table_gemm.OP(q.to(torch.int8), xs.reshape(-1), xz.reshape(-1), w, t, scale, None, sums, bits,
                                 group)
        fns.append(run)
    return fns, nbytes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="*", default=["4096x4096", "11008x4096"])
    ap.add_argument("--m", nargs="*", type=int, default=[1, 4, 16, 128])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_table_gemm"))
    args = ap.parse_args()
    native.load()
    rows = []
    with torch.no_grad():
        for shape in args.shapes:
            n, k = map(int, shape.split("x"))
            cases = {"fp32": dense(n, k)}
            for bits in (2, 3, 4):
                cases[f"codebook-{bits}"] = codebook(n, k, bits)
            for name, form in FORMATS.items():
                cases[name] = table(n, k, *form)
            for name, (bits, group) in INT8_ROWS.items():
                cases[name] = int8_rows(n, k, bits, group)
            for m in args.m:
                x = torch.randn(m, k)
                times = interleaved({c: rotating(fns, x) for c, (fns, _) in cases.items()}, args.rounds)
                base = cases["codebook-4"][1]
                for case, t in times.items():
                    nbytes = cases[case][1]
                    rows.append({"shape": shape, "m": m, "case": case, "us": round(statistics.median(t) * 1e6, 1),
                                 "bits_per_weight": round(nbytes * 8 / n / k, 3),
                                 "gb_s": round(nbytes / statistics.median(t) / 1e9, 2),
                                 "vs_fp32": round(median_ratio(times["fp32"], t), 2),
                                 "per_byte_vs_codebook_4": round(median_ratio(times["codebook-4"], t) * nbytes / base,
                                                                 2)})
                    print(rows[-1], flush=True)
    head = ("| shape | M | case | bits/weight | µs | GB/s | vs fp32 | per byte vs codebook-4 |\n"
            "|---|---|---|---|---|---|---|---|\n")
    text = head + "".join(f"| {r['shape']} | {r['m']} | {r['case']} | {r['bits_per_weight']} | {r['us']} | "
                          f"{r['gb_s']} | {r['vs_fp32']} | {r['per_byte_vs_codebook_4']} |\n" for r in rows)
    write_results(args.out, {"machine": machine(), "results": rows}, f"Machine: {machine()}\n\n" + text)
    print(text)


if __name__ == "__main__":
    main()
