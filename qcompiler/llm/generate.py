"""Generate: run a program captured by :func:`qcompiler.capture_lm` token by token.

One call with the prompt (prefill, ``cache_position = arange(prompt)``), then one call per
new token (decode, ``cache_position = [n]``). The callable keeps the KV cache between
calls; starting again at position 0 starts a new sequence, so each prompt is independent.
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
    if batch is not None and ids.shape[0] != batch:
        raise fail("input_ids", f"a batch of {batch} prompts (the program's batch size)", f"{ids.shape[0]} prompts")
    if limit is not None and ids.shape[1] + max_new_tokens > limit:
        raise ValueError(f"qcompiler: a prompt of {ids.shape[1]} tokens and max_new_tokens={max_new_tokens} need "
                         f"{ids.shape[1] + max_new_tokens} positions; the program's cache holds max_seq_len={limit}")
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    logits = run(input_ids=ids, cache_position=torch.arange(ids.shape[1], device=ids.device))
    for step in range(max_new_tokens):
        token = sampling.pick(logits[:, -1], generator)
        yield token
        if eos_token_id is not None:
            done |= token == eos_token_id
        if step + 1 == max_new_tokens or bool(done.all()):
            return
        position = torch.tensor([ids.shape[1] + step], device=ids.device)
        logits = run(input_ids=token[:, None], cache_position=position)


def generate(run: Callable, input_ids: torch.Tensor, max_new_tokens: int = 128, **options) -> torch.Tensor:
    """The new tokens, LongTensor [batch, max_new_tokens] (fewer where every row reached ``eos_token_id``).
    Greedy by default; ``options`` as :func:`stream` takes them (temperature, top_k, eos_token_id, ...)."""
    tokens = list(stream(run, input_ids, max_new_tokens, **options))
    return torch.stack(tokens, 1) if tokens else torch.empty(input_ids.shape[0], 0, dtype=torch.long)


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
    shape = _shape_of(run)
    if shape is None:
        if max_seq_len is None:
            log.warning("cannot tell the program's max_seq_len; pass max_seq_len= to check prompts against it")
        return max_seq_len, None
    if max_seq_len is not None and max_seq_len != shape["max_seq_len"]:
        raise fail("max_seq_len", f"{shape['max_seq_len']} (the program's) or None", max_seq_len)
    return shape["max_seq_len"], shape["batch_size"]


def _shape_of(run) -> Optional[dict]:
    if isinstance(run, torch.nn.Module):
        return lm_shape(run.named_buffers())
    metadata = getattr(run, "metadata", None)  # qcompiler.load
    if isinstance(metadata, dict) and "lm" in metadata:
        return metadata["lm"]
    get = getattr(run, "get_metadata", None)  # torch._inductor.aoti_load_package
    entry = get().get(LM_METADATA_KEY) if callable(get) else None
    return json.loads(entry) if entry else None
