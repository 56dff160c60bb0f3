"""What this machine's cores can do at most: the vector dot products our CPU kernels are made of, and memory reads.

    .venv/bin/python benchmarks/bench_machine_peak.py [--decoder tinyllama-1.1b] [--out benchmarks/results/...]

Throughput of each instruction on torch's threads (12 independent accumulators per thread, in registers, no
loads: the instruction's own rate), in billions of instructions and of multiply-adds per second: FMA on 256 and
512 bits, ``vpdpbusd`` (int8 x uint8, what int8 activations run on), ``vpdpwssd`` (int16 x int16) and
``vdpbf16ps`` (bfloat16); a 16-bit activation row runs as two int8 rows on ``vpdpbusd`` (two instructions per 64
products), as many instructions as on the other two. Instructions the machine lacks are left out, with the reason.
Memory: ``torch.sum`` over 1 GB (from memory) and over 16 MB (from the last-level cache on most servers), best of 5.

For a decoder (``--decoder``, a ``qcompiler.zoo`` name; built on the meta device, no weights) the multiply-adds of
one token row through its linear layers, and the milliseconds they take at the machine's peak with int8 and with
16-bit activations: the floor under each added row of a batched decode step, which no kernel goes below (issue
#33's 8 sequences are measured against it in docs/measured.md).
Writes ``benchmarks/results/cpu_machine_peak.json`` and ``.md`` with the machine.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils import cpp_extension

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, report_table  # noqa: E402

SOURCE = r"""
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/extension.h>
#include <chrono>

// Twelve independent chains per thread, each its own variable (in an array GCC kept them in memory at -O2: a store
// and a load around each instruction) from its own start (equal chains are merged into one); the operands pass
// through an empty asm so the loop is not folded.
#define CHAINS(op) op(a0) op(a1) op(a2) op(a3) op(a4) op(a5) op(a6) op(a7) op(a8) op(a9) op(a10) op(a11)
#define SINK(a) asm volatile("" : : "v"(a));
#define LOOP(T, init, op)                                                                     \
  T a0 = init(0), a1 = init(1), a2 = init(2), a3 = init(3), a4 = init(4), a5 = init(5), a6 = init(6), \
    a7 = init(7), a8 = init(8), a9 = init(9), a10 = init(10), a11 = init(11);                       \
  for (int64_t it = 0; it < iters; ++it) {                                       \
    CHAINS(op)                                                                   \
    asm volatile("" : "+v"(x), "+v"(y));                                         \
  }                                                                              \
  CHAINS(SINK)

template <typename Loop>
double timed(int64_t iters, Loop loop) {
  const auto t0 = std::chrono::steady_clock::now();
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) loop(iters);
  });
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// name(iters): iters x 12 instructions per thread; x and y the operands, T and init the chains' type and start.
#define PEAK_LOOP(name, isa, T, init, X, x0, y0, op)                        \
  __attribute__((target(isa))) void name(int64_t iters) {                \
    X x = x0, y = y0;                                                    \
    LOOP(T, init, op)                                                    \
  }
#define FMA256(a) a = _mm256_fmadd_ps(x, y, a);
#define FMA512(a) a = _mm512_fmadd_ps(x, y, a);
#define DPBUSD(a) asm("vpdpbusd %2, %1, %0" : "+v"(a) : "v"(x), "v"(y));
#define DPWSSD(a) asm("vpdpwssd %2, %1, %0" : "+v"(a) : "v"(x), "v"(y));
#define DPBF16(a) asm("vdpbf16ps %2, %1, %0" : "+v"(a) : "v"(x), "v"(y));
PEAK_LOOP(fma256_loop, "avx2,fma", __m256, _mm256_set1_ps, __m256, _mm256_set1_ps(1.0f), _mm256_set1_ps(0.5f), FMA256)
PEAK_LOOP(fma512_loop, "avx512f", __m512, _mm512_set1_ps, __m512, _mm512_set1_ps(1.0f), _mm512_set1_ps(0.5f), FMA512)
PEAK_LOOP(dpbusd512_loop, "avx512f,avx512bw,avx512vnni", __m512i, _mm512_set1_epi32, __m512i, _mm512_set1_epi8(3),
          _mm512_set1_epi8(5), DPBUSD)
PEAK_LOOP(dpwssd512_loop, "avx512f,avx512bw,avx512vnni", __m512i, _mm512_set1_epi32, __m512i, _mm512_set1_epi16(3),
          _mm512_set1_epi16(5), DPWSSD)
PEAK_LOOP(dpbf16_512_loop, "avx512f,avx512bw,avx512bf16", __m512, _mm512_set1_ps, __m512i, _mm512_set1_epi16(0x3f80),
          _mm512_set1_epi16(0x3f00), DPBF16)

double run(const std::string& name, int64_t iters) {
  if (name == "fma256") return timed(iters, fma256_loop);
  if (name == "fma512") return timed(iters, fma512_loop);
  if (name == "vpdpbusd512") return timed(iters, dpbusd512_loop);
  if (name == "vpdpwssd512") return timed(iters, dpwssd512_loop);
  if (name == "vdpbf16ps512") return timed(iters, dpbf16_512_loop);
  TORCH_CHECK(false, "no loop ", name);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("run", &run); }
"""

# name -> (what it is, multiply-adds per instruction, the flags it needs: machine.CPU_FLAGS' names)
INSTRUCTIONS = {
    "fma256": ("FMA, 8 float32", 8, ("avx2",)),
    "fma512": ("FMA, 16 float32", 16, ("avx512f",)),
    "vpdpbusd512": ("vpdpbusd, 64 uint8 x int8", 64, ("avx512_vnni",)),
    "vpdpwssd512": ("vpdpwssd, 32 int16 x int16", 32, ("avx512_vnni",)),
    "vdpbf16ps512": ("vdpbf16ps, 32 bfloat16", 32, ("avx512_bf16",)),
}
ITERS = 20_000_000  # x 12 per thread: about 0.1 s at a few instructions per cycle


def instruction_rates(module, flags: set) -> list:
    rows = []
    for name, (what, macs, needs) in INSTRUCTIONS.items():
        missing = [f for f in needs if f not in flags]
        if missing:
            rows.append({"instruction": name, "what": what, "skipped": f"no {', '.join(missing)} here"})
            continue
        module.run(name, ITERS // 10)  # warm the threads and the clock
        seconds = min(module.run(name, ITERS) for _ in range(3))
        rate = ITERS * 12 * torch.get_num_threads() / seconds / 1e9
        rows.append({"instruction": name, "what": what, "g_instructions_per_s": rate, "g_macs_per_s": rate * macs})
    return rows


def read_bandwidth(megabytes: int) -> float:
    """GB/s of torch.sum over a float32 tensor of ``megabytes``, best of 5 (the 16 MB one: 50 sums a try)."""
    x = torch.ones(megabytes << 18)
    x.sum()
    repeat = max(1, 800 // megabytes)
    best = min(_seconds(lambda: [x.sum() for _ in range(repeat)]) for _ in range(5)) / repeat
    return x.numel() * 4 / best / 1e9


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def token_macs(decoder: str) -> int:
    """Multiply-adds of one token row through the decoder's linear layers (attention's own products aside)."""
    import transformers

    from qcompiler.zoo import DECODERS
    cls_name, fields = DECODERS[decoder]
    cls = getattr(transformers, cls_name)
    with torch.device("meta"):
        model = cls(cls.config_class(**fields))
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decoder", default="tinyllama-1.1b")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_machine_peak"))
    args = ap.parse_args()
    flags = set(machine()["cpu_flags"])
    module = cpp_extension.load_inline("qcompiler_machine_peak", cpp_sources=SOURCE, extra_cflags=["-O2", "-fopenmp"],
                                       extra_ldflags=["-fopenmp"])
    rows = instruction_rates(module, flags)
    memory = {"from memory (1 GB)": read_bandwidth(1024), "16 MB": read_bandwidth(16)}
    macs = token_macs(args.decoder)
    rates = {r["instruction"]: r["g_macs_per_s"] for r in rows if "g_macs_per_s" in r}
    lines = [f"| {r['instruction']} | {r['what']} | " + (f"{r['g_instructions_per_s']:.2f} | {r['g_macs_per_s']:.0f} |"
             if "skipped" not in r else f"skipped: {r['skipped']} | |") for r in rows]
    lines += [f"| memory read, {k} | torch.sum | {v:.1f} GB/s | |" for k, v in memory.items()]
    floors = {}
    if "vpdpbusd512" in rates:
        floors = {"int8 activations (one vpdpbusd per 64)": macs / rates["vpdpbusd512"] / 1e6,
                  "16-bit activations (two vpdpbusd per 64)": 2 * macs / rates["vpdpbusd512"] / 1e6}
        lines += [f"| {args.decoder}: a token row's {macs / 1e9:.3f} G multiply-adds, {k} | at the peak above | "
                  f"{v:.2f} ms | |" for k, v in floors.items()]
    title = (f"Peak throughput on {torch.get_num_threads()} threads (12 independent chains per thread, no loads), "
             "memory reads, and the arithmetic floor of a decoder's token row")
    report_table(args.out, title, ["instruction", "what", "G instructions/s (or as named)", "G multiply-adds/s"],
                 lines, {"instructions": rows, "memory_gb_per_s": memory, "decoder": args.decoder,
                         "token_macs": macs, "token_row_ms_at_peak": floors})


if __name__ == "__main__":
    main()
