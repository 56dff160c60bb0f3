"""Decoder LLM, batch 1: tokens/s (prefill and decode), effective GB/s, peak memory and size per system.

    python benchmarks/bench_llm.py [--model tinyllama-1.1b] [--prompt 128] [--new 128] [--rounds 3]
                                   [--systems bf16 int8wo ...] [--folder bench-llm] [--out benchmarks/results/llm_...]

Build phase: each qcompiler system is captured with ``qc.capture_lm`` (random weights, shapes from
``qcompiler.zoo.DECODERS``), quantized, lowered for this machine and packaged into ``--folder`` (kept
between runs; ``--rebuild`` makes them again); llama.cpp's get the same shapes written to GGUF with
random weights (``peer_llamacpp.py``). A system named ``<scheme> bf16-rest`` is lowered with
``unquantized_dtype=torch.bfloat16`` (attention over the KV cache and unquantized linears in bf16); with
``kv-bf16`` its KV cache is stored in bfloat16 (``capture_lm(kv_cache_dtype=torch.bfloat16)``). Measure phase:
every system runs in a fresh process per round
(``qcompiler generate --json``, or the llama.cpp runner), rounds alternate the order, and the medians
are written with the machine. Load s: opening the file (``qc.load`` with its checks for qcompiler;
llama.cpp's ``Llama(...)``, which maps its file; ``aoti_load_package`` for torchao). Peak MB is the whole
process's (VmHWM: Python, torch and the KV cache included); peak / file divides it by the file's size.
Effective GB/s = bytes read per token x decode tokens/s, where bytes read per token are the file's bytes
less the embedding table's (a token reads one row of it); the machine's read bandwidth (``torch.sum`` over
1 GiB, in the same rounds) is the yardstick. The KV cache read
(under 25 MB at 256 tokens here) is left out.

The fixed-table formats beside llama.cpp's nearest types (``FORMAT_SYSTEMS``):
``--systems int4wo-64 mxfp4 nvfp4 nf4 intx-3-64 intx-5-64 fp6 mxfp8 --peers llama.cpp
--llamacpp-types Q4_0 NVFP4 IQ4_NL Q3_K_S Q5_0 Q6_K Q8_0``.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch

import qcompiler as qc
from qcompiler.zoo import DECODERS, decoder

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, write_results  # noqa: E402

# system -> (weights dtype, scheme or None, KV cache dtype or None); "bf16" is the unquantized baseline
F32, BF16, INT8 = torch.float32, torch.bfloat16, torch.int8
QC_SYSTEMS = {"bf16": (BF16, None, None), "int8wo": (F32, "int8wo", None), "int8dq": (F32, "int8dq", None),
              "int4wo-64": (F32, "int4wo-64", None), "int4wo-64+gptq": (F32, "int4wo-64+gptq", None),
              "codebook-4": (F32, "codebook-4", None), "int4wo-64 kv-int8": (F32, "int4wo-64", INT8),
              "int4wo-64 emb-int8": (F32, "int4wo-64 emb-int8", None),
              "int8dq bf16-rest": (F32, "int8dq", None), "int8wo bf16-rest": (F32, "int8wo", None),
              "int4wo-64 bf16-rest": (F32, "int4wo-64", None), "int8dq kv-bf16 bf16-rest": (F32, "int8dq", BF16)}
DEFAULT_SYSTEMS = tuple(QC_SYSTEMS)
# the fixed-table formats (qcompiler.table_gemm), each beside llama.cpp's nearest type (--llamacpp-types):
# mxfp4 / nvfp4 ~ NVFP4, nf4 ~ IQ4_NL (a 16-value non-uniform grid per 32), intx-3-64 ~ Q3_K_S, intx-5-64 ~ Q5_0,
# fp6 ~ Q6_K, mxfp8 ~ Q8_0
FORMAT_SYSTEMS = ("mxfp4", "nvfp4", "nf4", "intx-3-64", "intx-5-64", "fp6", "mxfp8")
QC_SYSTEMS.update({name: (F32, name, None) for name in FORMAT_SYSTEMS})
QC_SYSTEMS["int8da-int4w-64"] = (F32, "int8da-int4w-64", None)  # int8 activations: half int4wo's dot products
PEERS = ("llama.cpp", "torchao")
EMBEDDING_INT8 = " emb-int8"  # a scheme's suffix: the embedding table's rows in int8 too, by recipe
BF16_REST = " bf16-rest"  # a system's suffix: lowered with unquantized_dtype=torch.bfloat16 (attention, unquantized
# linears in bf16; needs a machine with native bf16)


def config_of(scheme: str):
    """The config (or Recipe) a system's scheme names."""
    linears = qc.config_from_string(scheme.removesuffix(EMBEDDING_INT8))
    if not scheme.endswith(EMBEDDING_INT8):
        return linears
    return qc.Recipe([(torch.nn.Embedding, qc.Int8WeightOnlyConfig()), (torch.nn.Linear, linears)])
CALIBRATION = 4  # random-token sequences of the prompt length, for GPTQ (speed only: random weights)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_qc(name: str, model_name: str, max_seq_len: int, prompt: int, path: Path,
             dtype: Optional[torch.dtype] = None, slots: Optional[int] = None) -> None:
    """Capture, quantize, lower and package system ``name``; ``dtype`` overrides the weights' dtype before
    quantizing (bfloat16 for shapes whose float32 weights don't fit in memory); ``slots``: independent sequences
    (``capture_lm``'s)."""
    own_dtype, scheme, kv = QC_SYSTEMS[name]
    start = time.perf_counter()
    model = decoder(model_name, dtype=dtype or own_dtype)
    vocab = model.config.vocab_size
    lm = qc.capture_lm(model, max_seq_len=max_seq_len, kv_cache_dtype=kv, slots=slots)
    del model
    if scheme is not None:
        config = config_of(scheme)
        data = None
        if qc.needs_calibration(config):
            gen = torch.Generator().manual_seed(0)
            positions = ({"start": torch.zeros(1, dtype=torch.long), "slot": torch.zeros(1, dtype=torch.long)} if slots
                         else {"cache_position": torch.arange(prompt)})
            data = [{"input_ids": torch.randint(3, vocab, (1, prompt), generator=gen), **positions}
                    for _ in range(CALIBRATION)]
        prepared = qc.prepare(lm, config)
        if data is not None:
            qc.calibrate(prepared, data)
        lm = qc.convert(prepared)
    qc.package(qc.lower(lm, "cpu", unquantized_dtype=torch.bfloat16 if name.endswith(BF16_REST) else None), path)
    log(f"  built {name}: {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - start:.0f} s")


def embedding_bytes(model_name: str, system: str) -> int:
    """Bytes of a qcompiler system's embedding table (the model's dtype, or int8 rows with a float32 scale each),
    of which a token reads one row: left out of the bytes read per token."""
    config = DECODERS[model_name][1]
    dtype, scheme, _ = QC_SYSTEMS[system]
    if scheme is not None and scheme.endswith(EMBEDDING_INT8):
        return config["vocab_size"] * (config["hidden_size"] + 4)
    return config["vocab_size"] * config["hidden_size"] * dtype.itemsize


def measure_qc(path: Path, prompt: int, new: int, embedding: int) -> dict:
    cmd = [sys.executable, "-c", "import sys; from qcompiler.cli import main; sys.exit(main())", "generate", str(path),
           "--prompt-length", str(prompt),
           "-n", str(new), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed")
    r = json.loads(out.stdout)
    keys = ("prefill_tokens_per_s", "decode_tokens_per_s", "peak_memory_mb", "load_s", "model_bytes")
    return {**{k: r[k] for k in keys}, "embedding_bytes": embedding}


def read_bandwidth_gbps() -> float:
    x = torch.ones(1 << 28)  # 1 GiB of float32
    x.sum()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t)
    return x.numel() * 4 / statistics.median(times) / 1e9


def peer_systems(model_name: str, folder: Path, rebuild: bool, prompt: int, new: int, peers: tuple = PEERS,
                 llamacpp_types: Optional[tuple] = None) -> dict:
    """llama.cpp and torchao systems (name -> measure function), where the ``[peer]`` extra is installed."""
    cases = {}
    try:
        import peer_llamacpp
        if "llama.cpp" in peers:
            config = transformers_config(model_name)
            cases.update(peer_llamacpp.systems(config, folder, rebuild, log, prompt, new,
                                               llamacpp_types or peer_llamacpp.TYPES))
    except ImportError as e:
        log(f"  llama.cpp: not measured ({e})")
    if "torchao" not in peers:
        return cases
    try:
        import peer_torchao_llm
        cases.update(peer_torchao_llm.systems(model_name, folder, rebuild, log, prompt + new, prompt, new))
    except ImportError as e:
        log(f"  torchao: not measured ({e})")
    return cases


def transformers_config(model_name: str):
    """The transformers config of ``model_name`` (no weights built)."""
    import transformers
    cls_name, fields = DECODERS[model_name]
    return getattr(transformers, cls_name).config_class(**fields)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tinyllama-1.1b")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--systems", nargs="+", default=list(DEFAULT_SYSTEMS), choices=list(QC_SYSTEMS))
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS))
    p.add_argument("--llamacpp-types", nargs="+", help="llama.cpp quantization types (default: Q8_0 Q4_0 Q4_K_M)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"],
                   help="every qcompiler system's weights before quantizing (bfloat16 where float32 doesn't fit)")
    p.add_argument("--folder", default="bench-llm")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--out", default=None, help="results path without suffix (writes .json and .md)")
    a = p.parse_args()
    folder = Path(a.folder) / a.model
    folder.mkdir(parents=True, exist_ok=True)
    max_seq_len = a.prompt + a.new
    cases = {}
    for name in a.systems:
        path = folder / f"{name.replace(' ', '_')}.pt2"
        if a.rebuild or not path.is_file():
            log(f"building {name} ...")
            build_qc(name, a.model, max_seq_len, a.prompt, path, getattr(torch, a.dtype) if a.dtype else None)
        embedding = embedding_bytes(a.model, name)
        cases[f"qcompiler {name}"] = lambda path=path, e=embedding: measure_qc(path, a.prompt, a.new, e)
    if not a.no_peers:
        cases.update(peer_systems(a.model, folder, a.rebuild, a.prompt, a.new, tuple(a.peers),
                                  tuple(a.llamacpp_types) if a.llamacpp_types else None))
    runs = {k: [] for k in cases}
    bandwidth = []
    for r in range(a.rounds):
        order = list(cases) if r % 2 == 0 else list(reversed(cases))
        for key in order:
            runs[key].append(cases[key]())
            log(f"  round {r + 1}: {key}: {runs[key][-1]['decode_tokens_per_s']:.1f} decode tok/s")
        bandwidth.append(read_bandwidth_gbps())
    write(a, runs, statistics.median(bandwidth))


def summarize(runs: dict, bandwidth: float) -> list:
    rows = []
    base = None
    for key, rs in runs.items():
        sizes = ("model_bytes", "embedding_bytes")
        row = {"system": key, **{k: statistics.median(r[k] for r in rs) for k in rs[0] if k not in sizes},
               "model_mb": rs[0]["model_bytes"] / 1e6}
        row["read_mb_per_token"] = (rs[0]["model_bytes"] - rs[0]["embedding_bytes"]) / 1e6
        row["decode_gb_per_s"] = row["decode_tokens_per_s"] * row["read_mb_per_token"] / 1e3
        row["of_read_bandwidth"] = row["decode_gb_per_s"] / bandwidth
        base = row if key == "qcompiler bf16" else base
        rows.append(row)
    for row in rows:
        row["decode_vs_bf16"] = row["decode_tokens_per_s"] / base["decode_tokens_per_s"] if base else None
        row["prefill_vs_bf16"] = row["prefill_tokens_per_s"] / base["prefill_tokens_per_s"] if base else None
    return rows


def write(a, runs: dict, bandwidth: float) -> None:
    rows = summarize(runs, bandwidth)
    result = {"model": a.model, "config": DECODERS[a.model][1], "prompt": a.prompt, "new": a.new,
              "rounds": a.rounds, "read_bandwidth_gbps": bandwidth, "machine": machine(), "rows": rows,
              "runs": runs}
    header = ["system", "decode tok/s", "vs bf16", "prefill tok/s", "vs bf16", "read MB/token", "GB/s", "of read bw",
              "load s", "peak MB", "file MB", "peak / file"]
    lines = [f"# {a.model}, batch 1, {a.prompt}-token prompt, {a.new} new tokens ({a.rounds} rounds, medians)", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, flags "
             f"{' '.join(result['machine']['cpu_flags'])}; read bandwidth {bandwidth:.1f} GB/s", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        def f(v, fmt):
            return "-" if v is None else fmt.format(v)
        lines.append(f"| {r['system']} | {r['decode_tokens_per_s']:.1f} | {f(r['decode_vs_bf16'], '{:.2f}x')} | "
                     f"{r['prefill_tokens_per_s']:.1f} | {f(r['prefill_vs_bf16'], '{:.2f}x')} | "
                     f"{r['read_mb_per_token']:.0f} | {r['decode_gb_per_s']:.1f} | "
                     f"{r['of_read_bandwidth']:.0%} | {f(r.get('load_s'), '{:.2f}')} | {r['peak_memory_mb']:.0f} | "
                     f"{r['model_mb']:.0f} | {r['peak_memory_mb'] * 2**20 / 1e6 / r['model_mb']:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    write_results(a.out, result, text)


if __name__ == "__main__":
    main()
