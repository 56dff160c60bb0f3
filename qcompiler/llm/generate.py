"""Generate: run a program captured by :func:`qcompiler.capture_lm` token by token.

One call with the prompt (prefill, ``cache_position = arange(prompt)``), then one call per
new token (decode, ``cache_position = [n]``). The callable keeps the KV cache between
calls; starting again at position 0 starts a new sequence, so each prompt is independent.
A program captured with slots takes ``start`` and ``slot`` per row instead; a list of prompts of different
lengths is batched continuously over its slots (``batching.py``).
"""
import json
import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from .capture_lm import LM_METADATA_KEY, lm_shape
from ..runtime.errors import fail

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    """Greedy where ``temperature`` is 0; else sampled from ``softmax(logits / temperature)`` over the ``top_k``
    most likely tokens (all if None)."""

    temperature: float = 0.0
    top_k: Optional[int] = None

    def __post_init__(self):
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise fail("temperature", "a number >= 0 (0: greedy)", self.temperature)
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise fail("top_k", "None or an int >= 1", self.top_k)

    def pick(self, logits: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        """The next token of each row of ``logits`` [batch, vocab]: LongTensor [batch]."""
        if self.temperature == 0:
            return logits.argmax(-1)
        logits = logits.float() / self.temperature
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def stream(run: Callable, input_ids: torch.Tensor, max_new_tokens: int = 128, *, temperature: float = 0.0,
           top_k: Optional[int] = None, eos_token_id: Optional[int] = None, max_seq_len: Optional[int] = None,
           generator: Optional[torch.Generator] = None) -> Iterator[torch.Tensor]:
    """Yield each new token (LongTensor [batch]) as it is made; the first one right after the prefill.

    ``run``: a loaded ``.pt2`` (:func:`qcompiler.load` or ``torch._inductor.aoti_load_package``) or a
    program's ``module()``, captured by :func:`qcompiler.capture_lm`. Stops after ``max_new_tokens``,
    or once every row has made ``eos_token_id``. ``max_seq_len`` is read from ``run`` where it can be."""
    sampling = Sampling(temperature, top_k)
    ids = _check_prompt(input_ids, max_new_tokens)
    limit, batch = _limits(run, max_seq_len)
    independent = _independent(run, ids.shape[0])
    if batch is not None and ids.shape[0] != batch and not independent:
        raise fail("input_ids", f"a batch of {batch} prompts (the program's batch size)", f"{ids.shape[0]} prompts")
    if limit is not None and ids.shape[1] + max_new_tokens > limit:
        raise ValueError(f"qcompiler: a prompt of {ids.shape[1]} tokens and max_new_tokens={max_new_tokens} need "
                         f"{ids.shape[1] + max_new_tokens} positions; the program's cache holds max_seq_len={limit}")
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    logits = _call(run, independent, ids, 0)
    for step in range(max_new_tokens):
        token = sampling.pick(logits[:, -1], generator)
        yield token
        if eos_token_id is not None:
            done |= token == eos_token_id
        if step + 1 == max_new_tokens or bool(done.all()):
            return
        logits = _call(run, independent, token[:, None], ids.shape[1] + step)


def _independent(run: Callable, rows: int) -> bool:
    """Whether ``run`` takes ``start`` and ``slot`` per row (captured with slots); it then needs ``rows`` slots."""
    shape = program_shape(run)
    if shape is None or shape.get("sequences", "shared") == "shared":
        return False
    if rows > shape["batch_size"]:
        raise fail("input_ids", f"at most {shape['batch_size']} prompts (the program's slots)", f"{rows} prompts")
    return True


def _call(run: Callable, independent: bool, ids: torch.Tensor, position: int):
    """``run`` on ``ids`` [B, L] whose first token is at ``position`` in every row (rows in slots 0 .. B - 1)."""
    if independent:
        start = torch.full((ids.shape[0],), position, dtype=torch.long, device=ids.device)
        return run(input_ids=ids, start=start, slot=torch.arange(ids.shape[0], device=ids.device))
    return run(input_ids=ids, cache_position=torch.arange(position, position + ids.shape[1], device=ids.device))


def generate(run: Callable, input_ids, max_new_tokens: int = 128, **options):
    """The new tokens, LongTensor [batch, max_new_tokens] (fewer where every row reached ``eos_token_id``).
    Greedy by default; ``options`` as :func:`stream` takes them (temperature, top_k, eos_token_id, ...).

    ``input_ids`` a list of 1-D LongTensors (prompts of any lengths): a list of each one's new tokens (up to
    ``max_new_tokens``, ending at its ``eos_token_id``), the tokens each would get alone. A program captured with
    slots batches them continuously (:class:`qcompiler.Batcher`); another generates them one after another."""
    if isinstance(input_ids, (list, tuple)):
        return _generate_each(run, list(input_ids), max_new_tokens, **options)
    tokens = list(stream(run, input_ids, max_new_tokens, **options))
    return torch.stack(tokens, 1) if tokens else torch.empty(input_ids.shape[0], 0, dtype=torch.long)


def _generate_each(run: Callable, prompts: list, max_new_tokens: int, **options) -> list:
    for prompt in prompts:
        if not isinstance(prompt, torch.Tensor) or prompt.dim() != 1 or prompt.dtype != torch.long:
            raise fail("input_ids", "a LongTensor [batch, prompt length] or a list of 1-D LongTensors",
                       f"a list holding a {_describe(prompt)}")
    shape = program_shape(run)
    if shape is not None and shape.get("sequences") == "independent":
        from .batching import generate_each
        options.pop("max_seq_len", None)
        return generate_each(run, prompts, max_new_tokens, **options)
    eos = options.get("eos_token_id")
    out = []
    for prompt in prompts:
        tokens = generate(run, prompt[None], max_new_tokens, **options)[0]
        stop = (tokens == eos).nonzero()
        out.append(tokens[:int(stop[0]) + 1] if eos is not None and len(stop) else tokens)
    return out


def _check_prompt(input_ids, max_new_tokens) -> torch.Tensor:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise fail("input_ids", "a LongTensor [batch, prompt length]", _describe(input_ids))
    if input_ids.shape[1] == 0:
        raise fail("input_ids", "at least one token per prompt", "an empty prompt")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise fail("max_new_tokens", "an int >= 0", max_new_tokens)
    return input_ids


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {list(x.shape)}"
    return type(x).__name__


def _limits(run, max_seq_len: Optional[int]) -> tuple:
    """``(max_seq_len, batch_size)`` of ``run``'s cache where ``run`` tells them (None where not)."""
    shape = program_shape(run)
    if shape is None:
        if max_seq_len is None:
            log.warning("cannot tell the program's max_seq_len; pass max_seq_len= to check prompts against it")
        return max_seq_len, None
    if max_seq_len is not None and max_seq_len != shape["max_seq_len"]:
        raise fail("max_seq_len", f"{shape['max_seq_len']} (the program's) or None", max_seq_len)
    return shape["max_seq_len"], shape["batch_size"]


def program_device(run) -> torch.device:
    """Where ``run`` (a program's module or a loaded .pt2) wants its inputs: its cache's device, or the backend it
    was lowered for (the CPU where it does not say)."""
    if isinstance(run, torch.nn.Module):
        for _, buffer in run.named_buffers():
            return buffer.device
    metadata = getattr(run, "metadata", None)
    target = metadata.get("target") if isinstance(metadata, dict) else None
    return torch.device("cuda" if isinstance(target, dict) and target.get("backend") == "cuda" else "cpu")


def program_shape(run) -> Optional[dict]:
    """:func:`qcompiler.llm.capture_lm.lm_shape` of ``run`` (a program's module or a loaded .pt2), where it tells it;
    None where not."""
    if isinstance(run, torch.nn.Module):
        graph = getattr(run, "graph", None)
        inputs = [n.target for n in graph.nodes if n.op == "placeholder"] if graph is not None else ()
        return lm_shape(run.named_buffers(), inputs)
    metadata = getattr(run, "metadata", None)  # qcompiler.load
    if isinstance(metadata, dict) and "lm" in metadata:
        return metadata["lm"]
    get = getattr(run, "get_metadata", None)  # torch._inductor.aoti_load_package
    entry = get().get(LM_METADATA_KEY) if callable(get) else None
    return json.loads(entry) if entry else None
