"""``qcompiler generate``: text (or token ids) from a decoder LLM, then its speed.

MODEL_OR_PT2 is a ``.pt2`` packaged from :func:`qcompiler.capture_lm`, ``decoder:NAME`` (a shape from
``qcompiler.zoo.DECODERS`` with random weights) or ``package.module:factory`` returning a transformers
causal LM or ``(model, tokenizer)``. A model is captured, quantized with ``--scheme`` if given, and run
as its reference program, or lowered and packaged into ``-o OUT.pt2`` first.
"""
import importlib
import resource
import time
from pathlib import Path
from typing import Any, Optional

import torch

from .. import capture_lm, check_writable, config_from_string, convert, lower, open_artifact, package, prepare, stream
from .models import CliError
from .tables import table

DECODER_PREFIX = "decoder:"


def generate_cmd(a) -> tuple:
    out = check_writable(a.output) if a.output else None
    began = time.perf_counter()
    run, tokenizer, size, source, kv_dtype = _runnable(a, out)
    load_s = time.perf_counter() - began if a.model.endswith(".pt2") else None  # verify and load the file
    ids = _prompt_ids(a, tokenizer)
    for _ in stream(run, ids, min(a.n, 2), temperature=a.temperature, top_k=a.top_k):  # warm-up: first calls
        pass
    start, times, tokens = time.perf_counter(), [], []
    for token in stream(run, ids, a.n, temperature=a.temperature, top_k=a.top_k):
        times.append(time.perf_counter() - start)
        tokens.append(token)
    new = torch.stack(tokens, 1) if tokens else ids[:, :0]
    result = {"model": source, "kv_cache_dtype": kv_dtype,
              "prompt_tokens": ids.shape[1], "new_tokens": new.shape[1], "tokens": new[0].tolist(),
              "text": tokenizer.decode(new[0]) if tokenizer is not None else None, "model_bytes": size,
              "load_s": load_s, **_speed(times, ids.shape[1], size), "peak_memory_mb": _peak_rss_mb()}
    return result, _text(result)


def _runnable(a, out: Optional[Path]) -> tuple:
    """``(callable, tokenizer or None, model bytes, what it is, KV cache dtype)`` for MODEL_OR_PT2."""
    if a.model.endswith(".pt2"):
        if a.scheme or out or a.kv_cache_dtype:
            raise CliError("--scheme, --kv-cache-dtype and -o apply to a model, not to a .pt2 (it is already "
                           "captured, quantized and packaged)")
        art = open_artifact(a.model, allow_imports=a.allow_import or ())
        if "lm" not in art.metadata:
            raise CliError(f"{a.model} is not a decoder captured with its KV cache (qcompiler.capture_lm)")
        return art.run, None, art.size, str(art.path), art.metadata["lm"].get("kv_cache_dtype")
    model, tokenizer = _model(a.model)
    kv = getattr(torch, a.kv_cache_dtype) if a.kv_cache_dtype else None
    kv_name = str(kv or next(model.parameters()).dtype).removeprefix("torch.")
    program = capture_lm(model, max_seq_len=a.max_seq_len, kv_cache_dtype=kv)
    if a.scheme:
        program = convert(prepare(program, config_from_string(a.scheme)))
    if out is None:
        return program.module(), tokenizer, _program_bytes(program), a.model, kv_name
    path = package(lower(program, a.target or "cpu"), out)
    return open_artifact(path).run, tokenizer, path.stat().st_size, str(path), kv_name


def _model(spec: str) -> tuple:
    if spec.startswith(DECODER_PREFIX):
        from ..zoo import decoder
        return decoder(spec.removeprefix(DECODER_PREFIX)), None
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CliError(f"MODEL_OR_PT2 must be a .pt2, 'decoder:NAME' or 'package.module:factory'; got {spec!r}")
    try:
        made = getattr(importlib.import_module(module_name), attr)()
    except (ImportError, AttributeError) as e:
        raise CliError(f"cannot make a model from {spec!r}: {e}") from e
    return made if isinstance(made, tuple) else (made, None)


def _prompt_ids(a, tokenizer: Any) -> torch.Tensor:
    if a.prompt is not None:
        if tokenizer is None:
            raise CliError("--prompt needs a model with a tokenizer; give --prompt-ids 1,2,3 or --prompt-length N")
        return tokenizer(a.prompt, return_tensors="pt")["input_ids"]
    if a.prompt_ids is not None:
        try:
            return torch.tensor([[int(v) for v in a.prompt_ids.split(",")]])
        except ValueError:
            raise CliError(f"--prompt-ids must be token ids joined by commas; got {a.prompt_ids!r}") from None
    return torch.randint(3, 256, (1, a.prompt_length), generator=torch.Generator().manual_seed(0))


def _program_bytes(program) -> int:
    tensors = {**program.state_dict, **program.constants}
    return sum(t.numel() * t.element_size() for t in tensors.values() if isinstance(t, torch.Tensor))


def _speed(times: list, prompt: int, size: int) -> dict:
    """Prefill tokens/s (the first token's wait), decode tokens/s over the rest, and the GB/s that reading
    ``size`` bytes per decoded token means."""
    if not times:
        return {"prefill_tokens_per_s": None, "decode_tokens_per_s": None, "decode_gb_per_s": None}
    decode = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else None
    return {"prefill_tokens_per_s": prompt / times[0], "decode_tokens_per_s": decode,
            "decode_gb_per_s": decode * size / 1e9 if decode else None}


def _peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM (not ru_maxrss, which a child inherits from its parent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _text(r: dict) -> str:
    said = r["text"] if r["text"] is not None else " ".join(str(t) for t in r["tokens"])
    row = {**r, "model_mb": r["model_bytes"] / 1e6}
    load = [("load_s", "load s", "{:.2f}")] if r.get("load_s") is not None else []
    return said + "\n\n" + table([row], [
        ("prompt_tokens", "prompt"), ("new_tokens", "new"), *load,
        ("prefill_tokens_per_s", "prefill tok/s", "{:.1f}"), ("decode_tokens_per_s", "decode tok/s", "{:.1f}"),
        ("decode_gb_per_s", "decode GB/s", "{:.2f}"), ("peak_memory_mb", "peak MB", "{:.0f}"),
        ("model_mb", "model MB", "{:.1f}")])
