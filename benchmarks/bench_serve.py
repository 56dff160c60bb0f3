"""The completions server under load, beside llama.cpp's server on the same shape: aggregate tokens/s and latency.

    python benchmarks/bench_serve.py [--model tinyllama-1.1b] [--clients 8] [--requests 3] [--prompt 64]
        [--long N] [--new 64] [--max-seq-len 512] [--prefill-chunk 128 ...] [--llama-server build/bin/llama-server]
        [--folder bench-context]

Issue #33's last goal (at 8 concurrent clients, aggregate tokens/s >= 1.2x llama.cpp's server, nothing lost or
duplicated). qcompiler: ``qcompiler serve`` over the model captured with ``slots=clients`` (int4wo-64, and
int8da-int4w-64: int8 activations times 4-bit weights, the arithmetic of llama.cpp's Q4_0; each built once into
``--folder``). llama.cpp: its own ``llama-server`` (``-np clients``: a slot per client, continuous batching,
2 threads) over a Q4_0 GGUF of the same shape (random weights, written by ``peer_llamacpp.write_f16`` and
quantized by the ``llama-quantize`` beside the server binary). Each of ``--clients`` clients sends ``--requests``
requests one after another, each a random prompt of ``--prompt`` token ids for exactly ``--new`` tokens,
streamed (llama.cpp: ``ignore_eos``); every stream must bring ``--new`` tokens. ``--long N``: the first client's
prompts are N tokens (a long prompt arriving among decoding streams). Reported per server: aggregate tokens/s over
the whole load, time to first token, request latency and the longest wait between two of a stream's tokens
(percentiles: p50, p90, max). Results under
``benchmarks/results/cpu_serve.json`` and ``.md``, with the machine.
"""
import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_llm import build_qc, log  # noqa: E402
from machine import report_table  # noqa: E402
from timing import one_line  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, process, seconds: float = 600) -> None:
    import httpx
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode})")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not come up")


def _prompts(args, vocab: int) -> list:
    """Each client's prompts: ``--prompt`` token ids, the first client's ``--long`` where given."""
    gen = torch.Generator().manual_seed(0)
    return [[torch.randint(3, vocab, (args.long if args.long and c == 0 else args.prompt,), generator=gen).tolist()
             for _ in range(args.requests)] for c in range(args.clients)]


async def _load(url: str, prompts: list, new: int, body, tokens_of) -> dict:
    """Each client's requests in turn, all clients at once: per request (time to first token, latency, tokens, the
    longest wait between two of its tokens after the first)."""
    import httpx

    async def client(http, mine):
        out = []
        for ids in mine:
            start, first, count, last, gap = time.perf_counter(), None, 0, None, 0.0
            async with http.stream("POST", url, json=body(ids, new)) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    got = tokens_of(json.loads(line[6:]))
                    now = time.perf_counter()
                    if got and first is None:
                        first = now - start
                    if got and last is not None:
                        gap = max(gap, now - last)
                    last = now if got else last
                    count += got
            out.append((first, time.perf_counter() - start, count, gap))
        return out

    async with httpx.AsyncClient(timeout=600) as http:
        start = time.perf_counter()
        per_client = await asyncio.gather(*(client(http, mine) for mine in prompts))
        wall = time.perf_counter() - start
    done = [r for rs in per_client for r in rs]
    counts = [c for _, _, c, _ in done]
    if any(c != new for c in counts):
        raise RuntimeError(f"streams brought {sorted(set(counts))} tokens, not {new} each")
    return {"wall_s": wall, "tokens": sum(counts), "tokens_per_s": sum(counts) / wall,
            **_percentiles("ttft_ms", [f * 1e3 for f, _, _, _ in done]),
            **_percentiles("latency_ms", [t * 1e3 for _, t, _, _ in done]),
            **_percentiles("gap_ms", [g * 1e3 for _, _, _, g in done])}


def _percentiles(name: str, values: list) -> dict:
    values = sorted(values)
    q = statistics.quantiles(values, n=10) if len(values) > 1 else values * 9
    return {f"{name}_p50": statistics.median(values), f"{name}_p90": q[8], f"{name}_max": values[-1]}


def _served(cmd: list, url: str, env=None):
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        _wait_healthy(url, process)
    except RuntimeError:
        process.kill()
        raise RuntimeError(f"{cmd[0]}: {process.stderr.read().decode()[-2000:]}") from None
    return process


def _stop(process) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def qcompiler_server(args, prompts, system: str, chunk: int) -> dict:
    path = Path(args.folder) / f"{args.model}_{system}_slots{args.clients}_{args.max_seq_len}.pt2"
    if not path.exists():
        build_qc(system, args.model, args.max_seq_len, 16, path, slots=args.clients)
    port = _free_port()
    cmd = [sys.executable, "-c", "import sys; from qcompiler.cli import main; sys.exit(main())", "serve", str(path),
           "--port", str(port), "--log-level", "warning", "--prefill-chunk", str(chunk)]
    process = _served(cmd, f"http://127.0.0.1:{port}")
    try:
        return asyncio.run(_load(f"http://127.0.0.1:{port}/v1/completions", prompts, args.new,
                                 lambda ids, n: {"prompt": ids, "max_tokens": n, "stream": True},
                                 lambda chunk: len(chunk["choices"][0]["token_ids"])))
    finally:
        _stop(process)


def llamacpp_server(args, prompts, config) -> dict:
    from peer_llamacpp import write_f16
    server = Path(args.llama_server)
    folder = Path(args.folder)
    f16, q4 = folder / f"{args.model}-vocab-f16.gguf", folder / f"{args.model}-vocab-Q4_0.gguf"
    if not q4.exists():
        if not f16.exists():
            log("  writing the F16 GGUF (random weights, a made-up vocabulary the server can print) ...")
            write_f16(config, f16, vocabulary=True)
        subprocess.run([str(server.parent / "llama-quantize"), str(f16), str(q4), "Q4_0", "2"], check=True,
                       capture_output=True)
    port = _free_port()
    cmd = [str(server), "-m", str(q4), "--port", str(port), "-np", str(args.clients), "-t", "2", "-tb", "2",
           "-c", str(args.clients * args.max_seq_len), "--no-webui"]
    process = _served(cmd, f"http://127.0.0.1:{port}", env={**os.environ, "LLAMA_ARG_NO_WARMUP": "0"})
    try:
        return asyncio.run(_load(f"http://127.0.0.1:{port}/completion", prompts, args.new,
                                 lambda ids, n: {"prompt": ids, "n_predict": n, "stream": True, "ignore_eos": True,
                                                 "return_tokens": True, "temperature": 0, "cache_prompt": False},
                                 lambda chunk: len(chunk.get("tokens", []))))
    finally:
        _stop(process)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tinyllama-1.1b")
    ap.add_argument("--systems", nargs="*", default=["int4wo-64", "int8da-int4w-64"],
                    help="qcompiler schemes served (int8da-int4w-64 multiplies int8 activations, as Q4_0 does)")
    ap.add_argument("--prefill-chunk", type=int, nargs="*", default=[128],
                    help="qcompiler serve's --prefill-chunk, each a run (one >= clients x prompt: whole prompts)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--long", type=int, default=0, help="the first client's prompts' length (default: --prompt): a "
                    "long prompt arriving among decoding streams")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--llama-server", help="llama.cpp's llama-server binary (llama-quantize beside it)")
    ap.add_argument("--folder", default="bench-context")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_serve"))
    args = ap.parse_args()
    import transformers
    from qcompiler.zoo import DECODERS
    cls_name, fields = DECODERS[args.model]
    config = getattr(transformers, cls_name).config_class(**fields)
    Path(args.folder).mkdir(exist_ok=True)
    prompts = _prompts(args, config.vocab_size)
    results = {f"qcompiler serve ({system}, prefill chunk {chunk})": qcompiler_server(args, prompts, system, chunk)
               for system in args.systems for chunk in args.prefill_chunk}
    if args.llama_server:
        try:
            results["llama.cpp llama-server (Q4_0)"] = llamacpp_server(args, prompts, config)
        except Exception as e:  # the peer failing under load: recorded, the others' figures kept
            results["llama.cpp llama-server (Q4_0)"] = {"error": one_line(e)}
            log(f"  llama-server failed: {one_line(e)}")
    long = f" (the first client's: {args.long})" if args.long else ""
    lines = [f"| {name} | {r['tokens_per_s']:.1f} | {r['ttft_ms_p50']:.0f} / {r['ttft_ms_p90']:.0f} / "
             f"{r['ttft_ms_max']:.0f} | {r['latency_ms_p50']:.0f} / {r['latency_ms_p90']:.0f} / "
             f"{r['latency_ms_max']:.0f} | {r['gap_ms_p50']:.0f} / {r['gap_ms_p90']:.0f} / {r['gap_ms_max']:.0f} |"
             if "error" not in r else f"| {name} | failed: {r['error']} | | | |" for name, r in results.items()]
    report_table(args.out, f"{args.model}: {args.clients} clients x {args.requests} requests each (one after "
                 f"another), prompts of {args.prompt} token ids{long}, {args.new} new tokens each, streamed",
                 ["server", "aggregate tokens/s", "first token ms p50 / p90 / max", "request ms p50 / p90 / max",
                  "longest wait between a stream's tokens, ms p50 / p90 / max"],
                 lines, {"model": args.model, "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
