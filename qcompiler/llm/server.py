"""``qcompiler serve``: an OpenAI-style completions server over a ``.pt2`` captured with slots.

    POST /v1/completions  {"prompt": "text" | [token ids], "max_tokens": 16, "stream": false,
                           "temperature": 0, "top_k": null}
    GET  /v1/models, GET /health

Concurrent requests are batched continuously (:class:`~qcompiler.llm.engine.Engine`: one decode call for every
running sequence per step, a free slot for each new prompt). A reply holds the completion's text (where the server
has a tokenizer) and its token ids; with ``"stream": true`` each token is a server-sent event as it is made, then
``data: [DONE]``. A malformed request, or one too long for the cache, is answered 400 with the reason before any
work; a client that goes away (a closed stream, or a dropped connection while it waits) frees its slot.

Starlette serves the routes, uvicorn the HTTP (``pip install 'qcompiler[serve]'``).
"""
import asyncio
import itertools
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Optional, Tuple

import torch

from .batching import PREFILL_CHUNK, Request
from .engine import Engine

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.5  # how often a waiting non-streaming request checks that its client is still there


class BadRequest(ValueError):
    """A request the server refuses (400), with the reason."""


@dataclass(frozen=True)
class Completion:
    """A checked ``/v1/completions`` body."""

    prompt: torch.Tensor  # 1-D LongTensor
    max_tokens: int
    stream: bool
    temperature: float
    top_k: Optional[int]


def _field(body: dict, name: str, kinds: tuple, default: Any, what: str) -> Any:
    value = body.get(name, default)
    if value is not default and (not isinstance(value, kinds) or isinstance(value, bool) != (bool in kinds)):
        raise BadRequest(f"'{name}' must be {what}; got {json.dumps(value)[:80]}")
    return value


def parse_completion(raw: bytes, tokenizer: Any, vocab_size: int) -> Completion:
    """The body's fields, checked; :class:`BadRequest` naming what is wrong."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body must be JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    if "prompt" not in body:
        raise BadRequest("'prompt' is required: text, or a list of token ids")
    prompt = body["prompt"]
    if isinstance(prompt, str):
        if tokenizer is None:
            raise BadRequest("this server has no tokenizer: send 'prompt' as a list of token ids (or start it with "
                             "--tokenizer)")
        ids = list(tokenizer.encode(prompt))
    elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        ids = prompt
    else:
        raise BadRequest("'prompt' must be text or a list of token ids (integers)")
    if not ids:
        raise BadRequest("'prompt' must hold at least one token")
    if not all(0 <= t < vocab_size for t in ids):
        raise BadRequest(f"'prompt' token ids must be in [0, {vocab_size}) (the model's vocabulary)")
    max_tokens = _field(body, "max_tokens", (int,), 16, "an integer >= 1")
    if max_tokens < 1:
        raise BadRequest(f"'max_tokens' must be an integer >= 1; got {max_tokens}")
    temperature = _field(body, "temperature", (int, float), 0.0, "a number >= 0 (0: greedy)")
    if temperature < 0:
        raise BadRequest(f"'temperature' must be a number >= 0 (0: greedy); got {temperature}")
    top_k = _field(body, "top_k", (int,), None, "null or an integer >= 1")
    if top_k is not None and top_k < 1:
        raise BadRequest(f"'top_k' must be null or an integer >= 1; got {top_k}")
    stream = _field(body, "stream", (bool,), False, "true or false")
    return Completion(torch.tensor(ids, dtype=torch.long), max_tokens, stream, float(temperature), top_k)


class Service:
    """The routes' state: the engine, the tokenizer, the end token, the model's name."""

    def __init__(self, engine: Engine, tokenizer: Any = None, eos_token_id: Optional[int] = None,
                 model_name: str = "qcompiler"):
        self.engine, self.tokenizer, self.model_name = engine, tokenizer, model_name
        self.eos_token_id = eos_token_id if eos_token_id is not None else getattr(tokenizer, "eos_token_id", None)
        self._ids = itertools.count(1)

    def start(self, completion: Completion) -> Tuple[Request, "asyncio.Queue"]:
        """Queue the completion; its tokens arrive on the returned queue as (token, finish) pairs."""
        try:
            request = self.engine.batcher.request(completion.prompt, completion.max_tokens, self.eos_token_id,
                                                  temperature=completion.temperature, top_k=completion.top_k)
        except ValueError as e:
            raise BadRequest(str(e).removeprefix("qcompiler: ")) from None
        loop, tokens = asyncio.get_running_loop(), asyncio.Queue()
        self.engine.submit(request, lambda token, finish: loop.call_soon_threadsafe(tokens.put_nowait,
                                                                                    (token, finish)))
        return request, tokens

    def text(self, ids: list) -> Optional[str]:
        return self.tokenizer.decode(ids) if self.tokenizer is not None else None

    def reply(self, ident: str, completion: Completion, ids: list, finish: str, text: Optional[str]) -> dict:
        return {"id": ident, "object": "text_completion", "created": int(time.time()), "model": self.model_name,
                "choices": [{"index": 0, "text": text, "token_ids": ids, "finish_reason": finish}],
                "usage": {"prompt_tokens": len(completion.prompt), "completion_tokens": len(ids),
                          "total_tokens": len(completion.prompt) + len(ids)}}

    def next_id(self) -> str:
        return f"cmpl-{next(self._ids)}"


async def tokens_of(service: Service, request: Request, tokens: "asyncio.Queue",
                    gone: Callable) -> AsyncIterator[Tuple[int, Optional[str]]]:
    """Each (token, finish) of ``request`` as it is made; the request is cancelled if the caller stops early (a
    closed stream) or ``gone()`` says its client left. A failed step raises RuntimeError."""
    finished, getter = False, None
    try:
        while True:
            # one get() kept across the polls (a get cancelled by a timeout could drop a token on older Pythons)
            getter = getter or asyncio.ensure_future(tokens.get())
            done, _ = await asyncio.wait({getter}, timeout=DISCONNECT_POLL_S)
            if not done:
                if await gone():
                    return
                continue
            (token, finish), getter = getter.result(), None
            if token is None:
                raise RuntimeError(finish)
            finished = finish is not None
            yield token, finish
            if finished:
                return
    finally:
        if getter is not None:
            getter.cancel()
        if not finished:
            service.engine.cancel(request)


def app(run: Callable, *, tokenizer: Any = None, eos_token_id: Optional[int] = None, model_name: str = "qcompiler",
        prefill_chunk: int = PREFILL_CHUNK):
    """The Starlette application serving ``run`` (a loaded ``.pt2`` or program captured with slots), as
    ``qc.server_app``; its engine thread starts and stops with the application (``uvicorn.run(qc.server_app(run))``).
    ``tokenizer``: anything with ``encode(text) -> ids`` and ``decode(ids) -> text`` (a transformers tokenizer), for
    text prompts and replies; ``eos_token_id``: the end token (default: the tokenizer's); ``prefill_chunk``: prompt
    tokens prefilled a step at most (:class:`~qcompiler.llm.batching.Batcher`)."""
    import contextlib

    from starlette.applications import Starlette
    from starlette.requests import Request as HttpRequest
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    service = Service(Engine(run, prefill_chunk=prefill_chunk), tokenizer, eos_token_id, model_name)

    def refuse(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)

    async def completions(http: HttpRequest):
        try:
            completion = parse_completion(await http.body(), service.tokenizer, service.engine.vocab_size)
            request, tokens = service.start(completion)
        except BadRequest as e:
            return refuse(400, str(e))
        ident = service.next_id()
        events = tokens_of(service, request, tokens, http.is_disconnected)
        if completion.stream:
            return StreamingResponse(_sse(service, ident, completion, events), media_type="text/event-stream")
        ids, finish = [], None
        try:
            async for token, done in events:
                ids.append(token)
                finish = done
        except RuntimeError as e:
            return JSONResponse({"error": {"message": str(e), "type": "server_error"}}, status_code=500)
        if finish is None:  # the client left: nobody reads this
            return JSONResponse({"error": {"message": "cancelled", "type": "cancelled"}}, status_code=499)
        return JSONResponse(service.reply(ident, completion, ids, finish, service.text(ids)))

    async def health(_):
        engine = service.engine
        return JSONResponse({"status": "ok", "slots": engine.slots, "max_seq_len": engine.max_seq_len,
                             **engine.counts()})

    async def models(_):
        return JSONResponse({"object": "list", "data": [{"id": service.model_name, "object": "model",
                                                         "owned_by": "qcompiler"}]})

    @contextlib.asynccontextmanager
    async def lifespan(_):
        service.engine.start()
        try:
            yield
        finally:
            service.engine.stop()

    return Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]), Route("/health", health),
                             Route("/v1/models", models)], lifespan=lifespan)


async def _sse(service: Service, ident: str, completion: Completion, events) -> AsyncIterator[str]:
    """Server-sent events: a chunk per token (its text, where there is a tokenizer, and its id), the last one with
    the finish reason, then ``[DONE]``; an error event if a step fails."""
    ids, said = [], ""
    try:
        async for token, finish in events:
            ids.append(token)
            text = service.text(ids)
            delta = None if text is None else (text[len(said):] if text.startswith(said) else text)
            said = text if text is not None else said
            chunk = service.reply(ident, completion, [token], finish, delta)
            if finish is None:
                del chunk["usage"]  # the totals come with the last chunk
            else:
                chunk["usage"] = service.reply(ident, completion, ids, finish, None)["usage"]
            yield f"data: {json.dumps(chunk)}\n\n"
    except RuntimeError as e:
        yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"
    yield "data: [DONE]\n\n"
