"""The ``qcompiler`` command: quantize, inspect, verify, bench, eval, demo, generate and serve.

    qcompiler quantize MODEL --scheme int4wo-64 -o out.pt2
    qcompiler inspect out.pt2
    qcompiler verify out.pt2
    qcompiler bench out.pt2 --baseline fp32.pt2 --shape 1x128 --shape 32x128
    qcompiler eval [FILE ...] [--scheme int8wo ...]
    qcompiler demo [-o demo-out]
    qcompiler serve lm.pt2 --port 8000

Results go to stdout (a table, or JSON with ``--json``); progress (the library's log) to stderr. A mistake
in the input gets one line on stderr and exit status 1 (the whole traceback with ``--traceback`` or
``QCOMPILER_TRACEBACK=1``); no output file is left half-written.
"""
import argparse
import contextlib
import logging
import os
import sys
import traceback
from typing import Optional, Sequence

from .. import AUTOQUANT_CANDIDATES, scheme_forms
from . import commands
from .generate import generate_cmd
from .serve import serve_cmd
from .tables import emit

COMMANDS = {"quantize": commands.quantize_cmd, "inspect": commands.inspect_cmd, "verify": commands.verify_cmd,
            "bench": commands.bench_cmd,
            "eval": commands.eval_cmd, "demo": commands.demo_cmd, "generate": generate_cmd,
            "serve": serve_cmd}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qcompiler", description="Quantize PyTorch models captured with torch.export, "
                                "lower them to fast kernels and package them with AOTInductor.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    schemes = ", ".join(scheme_forms())

    q = sub.add_parser("quantize", help="capture, quantize, lower and package a model")
    q.add_argument("model", metavar="MODEL", help="'minilm' (bundled all-MiniLM-L6-v2) or package.module:factory, "
                   "a callable returning (model, example_inputs)")
    how = q.add_mutually_exclusive_group(required=True)
    how.add_argument("--scheme", help=f"one scheme for every linear: {schemes}; or 'auto': each linear's scheme "
                     "chosen by measuring candidates on this machine (qcompiler.autoquant)")
    how.add_argument("--recipe", metavar="FILE.json",
                     help='per-layer rules: [{"match": "*.mlp.*", "config": "int4wo-64"}, ...]')
    q.add_argument("--calib", metavar="N|FILE", help="calibration: N batches, sentences (.txt, bundled model) or a "
                   "torch.save'd list of inputs; static schemes need it (the bundled model has a default)")
    q.add_argument("--backend", choices=["cpu", "cuda", "reference"], default="cpu",
                   help="kernels to lower to; 'reference' saves the portable program (torch.export.save) instead")
    q.add_argument("--target", metavar="TARGET", help="the machine to compile for, e.g. cpu:avx2 or "
                   "cpu:avx512+vnni+avx512_bf16 (capabilities: avx2, avx512, vnni, avx512_bf16, amx); "
                   "default: this one")
    q.add_argument("--unquantized-dtype", choices=["bfloat16"], help="run the unquantized matmuls, linears and "
                   "attention in this dtype (needs a target with native bfloat16); default: as captured")
    q.add_argument("--dynamic", metavar="DIMS", help="dynamic dims by position, e.g. 'batch,seq' (dim 0 of every input "
                   "is batch, dim 1 seq), or 'none'; default: the bundled model's batch,seq, a factory's static shapes")
    q.add_argument("-o", "--output", required=True, metavar="OUT.pt2")
    auto = q.add_argument_group("--scheme auto")
    auto.add_argument("--candidates", metavar="S,S,...", help="schemes to try (default: "
                      f"{','.join(AUTOQUANT_CANDIDATES)}, those this machine runs fused); float always")
    auto.add_argument("--plan", metavar="PLAN.json", help="write the plan (every measurement and choice) here; if the "
                      "file exists, choose again from its measurements instead of measuring")
    auto.add_argument("--shapes", metavar="LABEL=ROWS,...", help="rows each linear is timed at, e.g. "
                      "decode=1,prefill=128 (default: the example's)")
    auto.add_argument("--weights", metavar="LABEL=N,...", help="how many times each shape runs in the work to make "
                      "fast, e.g. decode=64 for 64 tokens generated per prompt (default: 1 each)")
    auto.add_argument("--min-sqnr", type=float, default=20.0, metavar="DB",
                      help="the floor on every layer's output SQNR (default 20 dB)")
    auto.add_argument("--budget-s", type=float, metavar="S", help="stop timing candidates after S seconds")

    i = sub.add_parser("inspect", help="what is in a .pt2 or saved program (layers, schemes, kernels, sizes, "
                       "inputs), or an autoquant plan (PLAN.json: per layer, each candidate's time and error)")
    i.add_argument("file", metavar="FILE")

    v = sub.add_parser("verify", help="check every member of a .pt2 against the SHA-256 digests recorded when it was "
                       "packaged, loading nothing (exit status 1, naming the member, if one is missing, added or "
                       "damaged)")
    v.add_argument("file", metavar="FILE.pt2")

    b = sub.add_parser("bench", help="latency of a .pt2 or saved program, against a baseline")
    b.add_argument("file", metavar="FILE")
    b.add_argument("--baseline", metavar="FILE", help="another file taking the same inputs (e.g. the fp32 .pt2)")
    b.add_argument("--shape", action="append", metavar="AxB", help="sizes of the dynamic dims (repeatable); "
                   "default: the example's")
    b.add_argument("--seconds", type=float, default=2.0, help="time spent per measurement (median taken)")

    e = sub.add_parser("eval", help="embedding cosine against fp32 on the bundled model (all-MiniLM-L6-v2)")
    e.add_argument("files", nargs="*", metavar="FILE", help="MiniLM .pt2 packages or saved programs")
    e.add_argument("--scheme", action="append", help="quantize in memory with this scheme (repeatable); "
                   f"default without FILEs: {', '.join(commands.DEMO_SCHEMES)}")

    d = sub.add_parser("demo", help="MiniLM quantized four ways, packaged for the CPU: size, latency, cosine")
    d.add_argument("-o", "--output", default="demo-out", metavar="DIR", help="folder for the .pt2 files")
    d.add_argument("--schemes", nargs="+", default=list(commands.DEMO_SCHEMES))
    d.add_argument("--shape", default="1x128", metavar="BATCHxSEQ", help="input size timed")
    d.add_argument("--seconds", type=float, default=2.0)

    g = sub.add_parser("generate", help="tokens from a decoder LLM (.pt2 or model), then tokens/s, GB/s and memory")
    g.add_argument("model", metavar="MODEL_OR_PT2", help="a .pt2 packaged from qcompiler.capture_lm, decoder:NAME "
                   "(random weights; NAME: llama-tiny, tinyllama-1.1b, llama-2-7b, ...) or package.module:factory "
                   "returning a transformers causal LM or (model, tokenizer)")
    said = g.add_mutually_exclusive_group()
    said.add_argument("--prompt", help="text (needs a tokenizer)")
    said.add_argument("--prompt-ids", metavar="IDS", help="token ids joined by commas, e.g. 1,415,2934")
    said.add_argument("--prompt-length", type=int, default=128, metavar="N",
                      help="N random token ids (default 128; for speed runs)")
    g.add_argument("-n", type=int, default=128, metavar="N", help="new tokens to make (default 128)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    g.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    g.add_argument("--scheme", help=f"quantize a model first: {schemes}")
    g.add_argument("--max-seq-len", type=int, default=2048, help="KV cache length of a captured model (default 2048)")
    g.add_argument("--kv-cache-dtype", choices=["int8", "bfloat16"], help="store a captured model's KV cache in int8 "
                   "(a float32 scale per token and head) or bfloat16; default: the model's dtype")
    g.add_argument("--target", metavar="TARGET", help="with -o: the machine to compile for (default: this one)")
    g.add_argument("-o", "--output", metavar="OUT.pt2", help="lower and package a model here first, generate from it")

    sv = sub.add_parser("serve", help="an OpenAI-style completions server (POST /v1/completions, streaming too) over "
                        "an LM .pt2 captured with slots, batching concurrent requests")
    sv.add_argument("model", metavar="MODEL.pt2", help="a .pt2 packaged from qcompiler.capture_lm(model, max_seq_len, "
                    "slots=n)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    sv.add_argument("--tokenizer", metavar="NAME_OR_PATH", help="a transformers tokenizer for text prompts and "
                    "replies (without one: token ids in, token ids out)")
    sv.add_argument("--eos-token-id", type=int, help="the end token (default: the tokenizer's)")
    sv.add_argument("--name", help="the model's name in replies (default: the file's)")
    sv.add_argument("--prefill-chunk", type=int, metavar="N", help="prompt tokens prefilled a step at most, between "
                    "the decode steps of the others (default: qcompiler.Batcher's, 128)")
    sv.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                    help="uvicorn's log level (default info)")

    for s in (b, e, g, sv):
        s.add_argument("--allow-import", action="append", metavar="MODULE", help="a module (with its submodules) "
                       "that loading a .pt2 may import to register the input/output types it names, e.g. "
                       "transformers (repeatable); by default a file imports nothing")
    for s in (q, i, v, b, e, d, g, sv):
        s.add_argument("--json", action="store_true", help="print the result as JSON")
        s.add_argument("--traceback", action="store_true", help="on an error, print the whole traceback, not one line "
                       "(also QCOMPILER_TRACEBACK=1)")
    return p


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is at the time of each record."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


@contextlib.contextmanager
def showing_progress():
    """The library logs its progress (packaging, calibration, quantizing layers): show it on stderr meanwhile."""
    root = logging.getLogger("qcompiler")
    handler, level = _Stderr(), root.level
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        with showing_progress():
            result, text = COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("qcompiler: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, ImportError, OSError, NotImplementedError) as e:
        if args.traceback or os.environ.get("QCOMPILER_TRACEBACK", "") not in ("", "0"):
            traceback.print_exc()
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"qcompiler: error: {message.removeprefix('qcompiler: ')}", file=sys.stderr)
        return 1
    emit(result, args.json, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
