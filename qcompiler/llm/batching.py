"""Continuous batching over a program captured with ``capture_lm(..., slots=n)``: sequences come and go.

Each submitted prompt waits for a free slot of the cache and is prefilled there, ``prefill_chunk`` prompt tokens a
step at most (a call per chunk), then decodes with every other active sequence in one call per step
(``input_ids`` [B, 1], each row's ``start`` and ``slot``). A step is the prefill chunks plus the decode call, so a
long prompt arriving holds the decoding sequences for one chunk's time a step, not for its whole prefill (what
llama.cpp's server does with its batch size). A sequence that finishes (its token budget, its end token, or
cancelled) frees its slot for the next one. The rows of a call do not mix, so each sequence gets the tokens it would
get alone (greedy).

    batcher = Batcher(run)                    # a loaded .pt2 or a program's module()
    request = batcher.submit(prompt_ids, 64)  # 1-D LongTensor
    while not batcher.idle:
        for request, token in batcher.step():  # the tokens this step made, each with its request
            ...

One thread drives a batcher (``qcompiler serve`` runs it on a worker thread of its own).
"""
import logging
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..runtime.errors import fail
from .generate import Sampling, _describe, program_device, program_shape

log = logging.getLogger(__name__)

PREFILL_CHUNK = 128  # prompt tokens a step by default: on 2 CPU cores, ~0.6 s of a 1.1B int4 model's time


class Request:
    """One sequence: its prompt, budget, end token and sampling, the tokens made so far, where it stands (its
    ``slot``, and ``filled``: its prompt's positions in the cache so far, read a chunk a step).
    ``finish``: None while it runs, else "length" (its budget), "stop" (its end token) or "cancelled"."""

    def __init__(self, prompt: torch.Tensor, max_new_tokens: int, eos_token_id: Optional[int], sampling: Sampling):
        self.prompt, self.max_new_tokens, self.eos_token_id = prompt, max_new_tokens, eos_token_id
        self.sampling = sampling
        self.tokens: List[int] = []
        self.slot: Optional[int] = None
        self.filled = 0  # prompt positions in the cache so far
        self.finish: Optional[str] = None if max_new_tokens > 0 else "length"

    @property
    def position(self) -> int:
        """Where the last token made goes in the cache (fed back as the next call's input)."""
        return len(self.prompt) + len(self.tokens) - 1

    def _took(self, token: int) -> None:
        self.tokens.append(token)
        if self.eos_token_id is not None and token == self.eos_token_id:
            self.finish = "stop"
        elif len(self.tokens) == self.max_new_tokens:
            self.finish = "length"


class Batcher:
    """Continuous batching over ``run``, a program captured with slots (see the module)."""

    def __init__(self, run: Callable, *, temperature: float = 0.0, top_k: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, prefill_chunk: int = PREFILL_CHUNK):
        if not isinstance(prefill_chunk, int) or isinstance(prefill_chunk, bool) or prefill_chunk < 1:
            raise fail("prefill_chunk", "an int >= 1 (prompt tokens prefilled a step)", prefill_chunk)
        shape = program_shape(run)
        if shape is None or shape.get("sequences") != "independent":
            raise fail("run", "a program captured with capture_lm(..., slots=n) (independent sequences)",
                       "one whose sequences share a position" if shape else "a program that does not say its shape")
        self.run, self.slots, self.max_seq_len = run, shape["batch_size"], shape["max_seq_len"]
        self.device = program_device(run)
        self.sampling, self.generator = Sampling(temperature, top_k), generator
        self.prefill_chunk = prefill_chunk
        self.waiting: List[Request] = []
        self.active: Dict[int, Request] = {}  # slot -> its request

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.active

    def submit(self, prompt: torch.Tensor, max_new_tokens: int, eos_token_id: Optional[int] = None,
               **sampling) -> Request:
        """Queue a prompt (1-D LongTensor); refused here, before any work, where it cannot fit the cache.
        ``sampling``: ``temperature`` and ``top_k`` for this sequence (the batcher's by default)."""
        return self.enqueue(self.request(prompt, max_new_tokens, eos_token_id, **sampling))

    def request(self, prompt: torch.Tensor, max_new_tokens: int, eos_token_id: Optional[int] = None, *,
                temperature: Optional[float] = None, top_k: Optional[int] = None) -> Request:
        """The checked request for a prompt, not queued yet (it touches no state: any thread may call it)."""
        if not isinstance(prompt, torch.Tensor) or prompt.dim() != 1 or prompt.dtype != torch.long:
            raise fail("prompt", "a 1-D LongTensor of token ids", _describe(prompt))
        if len(prompt) == 0:
            raise fail("prompt", "at least one token", "an empty prompt")
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
            raise fail("max_new_tokens", "an int >= 0", max_new_tokens)
        if len(prompt) + max_new_tokens > self.max_seq_len:
            raise ValueError(f"qcompiler: a prompt of {len(prompt)} tokens and max_new_tokens={max_new_tokens} need "
                             f"{len(prompt) + max_new_tokens} positions; the program's cache holds "
                             f"max_seq_len={self.max_seq_len}")
        sampling = self.sampling if temperature is None and top_k is None else Sampling(
            self.sampling.temperature if temperature is None else temperature, top_k)
        return Request(prompt, max_new_tokens, eos_token_id, sampling)

    def enqueue(self, request: Request) -> Request:
        """Queue a request from :meth:`request` (one already finished, a budget of 0, is not)."""
        if request.finish is None:
            self.waiting.append(request)
        return request

    def cancel(self, request: Request) -> None:
        """Stop ``request`` (a client that went away): its slot is free for the next one."""
        if request.finish is None:
            request.finish = "cancelled"
        if request in self.waiting:
            self.waiting.remove(request)
        if request.slot is not None and self.active.get(request.slot) is request:
            del self.active[request.slot]

    def step(self) -> List[Tuple[Request, int]]:
        """Waiting prompts take the free slots; up to ``prefill_chunk`` prompt tokens are prefilled (one call per
        prompt's chunk, oldest first), then one decode call for every sequence whose prompt is in; the tokens made,
        in order, each with its request (a prompt's first token when its last chunk is in)."""
        free = [s for s in range(self.slots) if s not in self.active]
        while self.waiting and free:
            request = self.waiting.pop(0)
            request.slot = free.pop(0)
            self.active[request.slot] = request
        decoding = [r for r in self.active.values() if r.tokens]
        made = self._prefill()
        if decoding:
            logits = self.run(input_ids=self._tensor([[r.tokens[-1]] for r in decoding]),
                              start=self._tensor([r.position for r in decoding]),
                              slot=self._tensor([r.slot for r in decoding]))
            made += self._took(decoding, self._pick(decoding, _last(logits)))
        return made

    def _prefill(self) -> List[Tuple[Request, int]]:
        """This step's prompt chunks, ``prefill_chunk`` tokens in all, oldest prompt first."""
        made: List[Tuple[Request, int]] = []
        budget = self.prefill_chunk
        for request in [r for r in self.active.values() if not r.tokens]:
            if budget == 0:
                break
            chunk = request.prompt[request.filled:request.filled + budget]
            logits = self.run(input_ids=chunk[None].to(self.device), start=self._tensor([request.filled]),
                              slot=self._tensor([request.slot]))
            request.filled += len(chunk)
            budget -= len(chunk)
            if request.filled == len(request.prompt):
                made += self._took([request], self._pick([request], _last(logits)))
        return made

    def _tensor(self, values: list) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def _pick(self, rows: List[Request], logits: torch.Tensor) -> torch.Tensor:
        """Each row's next token by its own sampling (greedy rows all at once)."""
        if all(r.sampling.temperature == 0 for r in rows):
            return logits.argmax(-1)
        return torch.stack([r.sampling.pick(logits[i:i + 1], self.generator)[0] for i, r in enumerate(rows)])

    def _took(self, rows: List[Request], tokens: torch.Tensor) -> List[Tuple[Request, int]]:
        made = []
        for request, token in zip(rows, tokens.tolist()):
            request._took(token)
            made.append((request, token))
            if request.finish is not None:
                del self.active[request.slot]
        return made


def _last(logits) -> torch.Tensor:
    logits = logits[0] if isinstance(logits, (list, tuple)) else logits
    return logits[:, -1]


def generate_each(run: Callable, prompts: list, max_new_tokens: int, *, eos_token_id: Optional[int] = None,
                  temperature: float = 0.0, top_k: Optional[int] = None,
                  generator: Optional[torch.Generator] = None) -> List[torch.Tensor]:
    """Each prompt's new tokens (a list of 1-D LongTensors), batched continuously over ``run``'s slots."""
    batcher = Batcher(run, temperature=temperature, top_k=top_k, generator=generator)
    requests = [batcher.submit(p, max_new_tokens, eos_token_id) for p in prompts]
    steps = 0
    while not batcher.idle:
        batcher.step()
        steps += 1
    log.debug("generated for %d prompts in %d steps", len(requests), steps)
    return [torch.tensor(r.tokens, dtype=torch.long) for r in requests]
