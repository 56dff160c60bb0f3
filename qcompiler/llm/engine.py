"""A :class:`~qcompiler.llm.batching.Batcher` on a thread of its own, for a server: requests arrive from any
thread, each with a callback that gets its tokens.

The thread owns the batcher (and the model's cache): it takes what arrived (new requests, cancellations), runs one
step, hands each token made to its request's callback, and sleeps while nothing is queued or running. A request is
checked in the caller's thread before it is queued (:meth:`Batcher.request`), so a bad one is refused before any
work. If a step fails, every request it held gets the error and the engine goes on with the next ones.
"""
import logging
import queue
import threading
from typing import Callable, Dict, Optional

import torch

from .batching import PREFILL_CHUNK, Batcher, Request

log = logging.getLogger(__name__)

# callback(token, finish): a token, with its request's finish reason (None while it runs); or (None, "error: ...")
Deliver = Callable[[Optional[int], Optional[str]], None]


class Engine:
    """Continuous batching over ``run`` (a program captured with slots) on a worker thread."""

    def __init__(self, run: Callable, *, generator: Optional[torch.Generator] = None,
                 prefill_chunk: int = PREFILL_CHUNK):
        self.batcher = Batcher(run, generator=generator, prefill_chunk=prefill_chunk)
        self.vocab_size = self._vocab_size(run, self.batcher.device)
        self._inbox: "queue.SimpleQueue" = queue.SimpleQueue()
        self._deliver: Dict[Request, Deliver] = {}
        self.finished = {"length": 0, "stop": 0, "cancelled": 0, "error": 0}  # requests ended, by reason
        self._thread = threading.Thread(target=self._loop, name="qcompiler-engine", daemon=True)

    @staticmethod
    def _vocab_size(run: Callable, device: torch.device) -> int:
        """The logits' width, from one token run in slot 0 (which also shows the file runs before a client waits)."""
        zero = torch.zeros(1, dtype=torch.long, device=device)
        logits = run(input_ids=zero[None], start=zero, slot=zero)
        return int((logits[0] if isinstance(logits, (list, tuple)) else logits).shape[-1])

    @property
    def slots(self) -> int:
        return self.batcher.slots

    @property
    def max_seq_len(self) -> int:
        return self.batcher.max_seq_len

    def counts(self) -> dict:
        """Sequences running and waiting, and those ended by reason (read without a lock: a snapshot)."""
        return {"active": len(self.batcher.active), "waiting": len(self.batcher.waiting),
                "finished": dict(self.finished)}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._inbox.put(("stop", None, None))
        self._thread.join(timeout=60)

    def submit(self, request: Request, deliver: Deliver) -> None:
        """Queue ``request`` (from ``self.batcher.request``); ``deliver`` gets its tokens on the engine's thread."""
        self._inbox.put(("submit", request, deliver))

    def cancel(self, request: Request) -> None:
        """Stop ``request`` (its client went away): its slot goes to the next one."""
        self._inbox.put(("cancel", request, None))

    def _loop(self) -> None:
        while True:
            if not self._take(block=self.batcher.idle):
                return
            if not self.batcher.idle:
                self._step()

    def _take(self, block: bool) -> bool:
        """Apply what arrived (waiting for something where ``block``); False once told to stop."""
        try:
            item = self._inbox.get(block=block)
        except queue.Empty:
            return True
        while True:
            kind, request, deliver = item
            if kind == "stop":
                return False
            if kind == "submit":
                self._deliver[request] = deliver
                self.batcher.enqueue(request)
            elif self._deliver.pop(request, None) is not None:  # still running (not ended meanwhile)
                self.batcher.cancel(request)
                self.finished["cancelled"] += 1
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return True

    def _step(self) -> None:
        try:
            made = self.batcher.step()
        except Exception as e:  # noqa: BLE001 - the requests it held hear of it; the engine goes on
            log.exception("qcompiler: a step of the model failed")
            for request in list(self.batcher.active.values()) + list(self.batcher.waiting):
                self.batcher.cancel(request)
                deliver = self._deliver.pop(request, None)
                self.finished["error"] += 1
                if deliver is not None:
                    deliver(None, f"error: {type(e).__name__}: {e}")
            return
        for request, token in made:
            deliver = self._deliver.get(request)
            if deliver is not None:
                deliver(token, request.finish)
            if request.finish is not None:
                self._deliver.pop(request, None)
                self.finished[request.finish] += 1
