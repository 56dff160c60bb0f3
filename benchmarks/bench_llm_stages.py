"""Peak memory and time of each stage, building one decoder ``.pt2`` (e.g. the Llama-2-7B shape in bf16).

    python benchmarks/bench_llm_stages.py [--model llama-2-7b] [--dtype bfloat16] [--scheme int4wo-64]
                                          [--max-seq-len 512] [--out bench-llm/llama-2-7b/int4wo-64.pt2]
                                          [--json benchmarks/results/llm_stages_llama-2-7b.json]

Stages: build (random weights in ``--dtype``), capture (``qc.capture_lm``), prepare, convert, lower,
package, then load and generate 16 tokens from the file in a fresh process. Each stage's peak is the
process's resident-set high-water mark (VmHWM) during that stage alone: it is reset before each stage
(``/proc/self/clear_refs``); "after" is the resident set once the stage returned.
"""
import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import torch

import qcompiler as qc
from qcompiler.zoo import decoder

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine  # noqa: E402

GB = 1e9


def rss() -> dict:
    """Current and peak resident set of this process, in bytes (Linux /proc)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set


class Stages:
    def __init__(self):
        self.rows = []

    def run(self, name: str, fn, *args, **kwargs):
        reset_peak()
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        mem = rss()
        row = {"stage": name, "seconds": time.perf_counter() - start, "peak_gb": mem["VmHWM"] / GB,
               "after_gb": mem["VmRSS"] / GB}
        self.rows.append(row)
        print(f"{name:>9}: {row['seconds']:7.1f} s  peak {row['peak_gb']:6.2f} GB  after {row['after_gb']:6.2f} GB",
              file=sys.stderr, flush=True)
        return out


def load_and_generate(path: Path, new: int) -> dict:
    """Load the file and generate ``new`` tokens in a fresh process (its own peak memory)."""
    cmd = [sys.executable, "-c", "import sys; from qcompiler.cli import main; sys.exit(main())", "generate", str(path),
           "--prompt-length", "16", "-n", str(new), "--json"]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    return {"stage": "load + generate", "seconds": time.perf_counter() - start,
            "peak_gb": r["peak_memory_mb"] * 1e6 / GB,
            "decode_tokens_per_s": r["decode_tokens_per_s"], "prefill_tokens_per_s": r["prefill_tokens_per_s"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-2-7b")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--scheme", default="int4wo-64")
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--out", type=Path)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the stages' progress
    out = a.out or Path("bench-llm") / a.model / f"{a.scheme}.pt2"
    out.parent.mkdir(parents=True, exist_ok=True)
    s = Stages()
    model = s.run("build", decoder, a.model, dtype=getattr(torch, a.dtype))
    lm = s.run("capture", qc.capture_lm, model, max_seq_len=a.max_seq_len)
    del model  # the program holds the weights now
    prepared = s.run("prepare", qc.prepare, lm, qc.config_from_string(a.scheme))
    del lm  # the prepared module holds them
    program = s.run("convert", qc.convert, prepared)
    del prepared
    lowered = s.run("lower", qc.lower, program, "cpu")
    del program
    s.run("package", qc.package, lowered, out)
    del lowered
    s.rows.append(load_and_generate(out, 16))
    print(json.dumps(s.rows[-1]), file=sys.stderr)
    result = {"model": a.model, "dtype": a.dtype, "scheme": a.scheme, "max_seq_len": a.max_seq_len,
              "file_bytes": out.stat().st_size, "stages": s.rows, "machine": machine(),
              "ram_gb": _ram_gb()}
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


def _ram_gb() -> float:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) * 1024 / GB


if __name__ == "__main__":
    main()
