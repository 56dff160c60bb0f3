"""qcompiler serve (issue 33): the completions server over a .pt2 captured with slots, through a real HTTP client on
localhost: replies and streams equal to generating each prompt alone, many concurrent requests batched with
nothing lost or duplicated, 4xx for every malformed request, and a client that leaves frees its slot."""
import asyncio
import json
import socket
import threading
import time

import pytest
import torch

import qcompiler as qc

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

TIMEOUT = 60  # seconds any one exchange may take: the suite never hangs on the server


class ByteTokenizer:
    """Text as bytes 1..127 (token 0 is the end): enough to see text go in and come out."""

    eos_token_id = 0

    def encode(self, text):
        return [b for b in text.encode("ascii") if 0 < b < 128]

    def decode(self, ids):
        return bytes(i for i in ids if 0 < i < 128).decode("ascii")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """The app on a uvicorn server in a thread (started and stopped around the tests that use it)."""

    def __init__(self, app):
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + TIMEOUT
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(TIMEOUT)


@pytest.fixture(scope="module")
def server(slots_lm):
    with Served(qc.server_app(qc.load(slots_lm), model_name="tiny")) as url:
        yield url


@pytest.fixture(scope="module")
def alone(slots_lm):
    """Each prompt's tokens generated alone, from a second load of the same file."""
    run = qc.load(slots_lm)
    return lambda ids, n: qc.generate(run, torch.tensor([ids]), n)[0].tolist()


def _prompt(seed: int, length: int) -> list:
    return torch.randint(1, 128, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def _events(response) -> list:
    """The server-sent events of a streamed reply, parsed ([DONE] as None)."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            out.append(None if line == "data: [DONE]" else json.loads(line[6:]))
    return out


def test_health_and_models(server):
    health = httpx.get(f"{server}/health", timeout=TIMEOUT).json()
    assert health == {"status": "ok", "slots": 3, "max_seq_len": 64, "active": 0, "waiting": 0,
                      "finished": {"length": 0, "stop": 0, "cancelled": 0, "error": 0}}
    assert httpx.get(f"{server}/v1/models", timeout=TIMEOUT).json()["data"][0]["id"] == "tiny"


def test_a_completion_is_the_tokens_generated_alone(server, alone):
    ids = _prompt(1, 7)
    reply = httpx.post(f"{server}/v1/completions", json={"prompt": ids, "max_tokens": 6}, timeout=TIMEOUT)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["choices"][0]["token_ids"] == alone(ids, 6) and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13}
    assert body["choices"][0]["text"] is None  # no tokenizer: ids only


def test_a_stream_sends_each_token_once_in_order_then_done(server, alone):
    ids = _prompt(2, 4)
    with httpx.stream("POST", f"{server}/v1/completions", json={"prompt": ids, "max_tokens": 5, "stream": True},
                      timeout=TIMEOUT) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
    assert events[-1] is None
    chunks = events[:-1]
    assert [t for c in chunks for t in c["choices"][0]["token_ids"]] == alone(ids, 5)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 4 + ["length"]
    assert "usage" not in chunks[0] and chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 5,
                                                               "total_tokens": 9}


def test_concurrent_requests_are_batched_and_each_gets_its_own_tokens(server, alone):
    """Twelve clients at once over 3 slots, streamed and not, prompts and budgets of different lengths."""
    cases = [(_prompt(10 + i, 2 + 3 * i % 11), 3 + i % 5, i % 2 == 0) for i in range(12)]

    async def one(client, ids, n, stream):
        body = {"prompt": ids, "max_tokens": n, "stream": stream}
        if not stream:
            reply = await client.post(f"{server}/v1/completions", json=body)
            assert reply.status_code == 200, reply.text
            return reply.json()["choices"][0]["token_ids"]
        got = []
        async with client.stream("POST", f"{server}/v1/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    got += json.loads(line[6:])["choices"][0]["token_ids"]
        return got

    async def everyone():
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            return await asyncio.gather(*(one(client, *case) for case in cases))

    got = asyncio.run(everyone())
    assert got == [alone(ids, n) for ids, n, _ in cases]


@pytest.mark.parametrize("body,said", [
    (b"{not json", "the body must be JSON"),
    (b"[1, 2]", "the body must be a JSON object"),
    (b'{"max_tokens": 3}', "'prompt' is required"),
    (b'{"prompt": "hello"}', "this server has no tokenizer"),
    (b'{"prompt": [1, "x"]}', "'prompt' must be text or a list of token ids"),
    (b'{"prompt": []}', "'prompt' must hold at least one token"),
    (b'{"prompt": [1, 128]}', "'prompt' token ids must be in [0, 128)"),
    (b'{"prompt": [1], "max_tokens": 0}', "'max_tokens' must be an integer >= 1"),
    (b'{"prompt": [1], "max_tokens": "3"}', "'max_tokens' must be an integer >= 1"),
    (b'{"prompt": [1], "max_tokens": true}', "'max_tokens' must be an integer >= 1"),
    (b'{"prompt": [1], "temperature": -1}', "'temperature' must be a number >= 0"),
    (b'{"prompt": [1], "top_k": 0}', "'top_k' must be null or an integer >= 1"),
    (b'{"prompt": [1], "stream": "yes"}', "'stream' must be true or false"),
    (b'{"prompt": [1, 2, 3], "max_tokens": 62}', "a prompt of 3 tokens and max_new_tokens=62 need 65 positions; the "
                                                  "program's cache holds max_seq_len=64"),
], ids=["not-json", "not-object", "no-prompt", "text-without-tokenizer", "mixed-prompt", "empty-prompt",
        "out-of-vocabulary", "zero-tokens", "string-tokens", "bool-tokens", "negative-temperature", "zero-top-k",
        "string-stream", "too-long"])
def test_a_malformed_request_is_answered_400_with_the_reason(server, body, said):
    reply = httpx.post(f"{server}/v1/completions", content=body, headers={"content-type": "application/json"},
                       timeout=TIMEOUT)
    assert reply.status_code == 400 and said in reply.json()["error"]["message"], reply.text


def test_wrong_paths_and_methods_are_4xx(server):
    assert httpx.get(f"{server}/v1/completions", timeout=TIMEOUT).status_code == 405
    assert httpx.post(f"{server}/v1/chat", json={}, timeout=TIMEOUT).status_code == 404


class Slow:
    """A run that takes 20 ms a call: a sequence of 60 tokens outlasts its client's leaving by far."""

    def __init__(self, run):
        self.run, self.metadata = run, run.metadata

    def __call__(self, **inputs):
        time.sleep(0.02)
        return self.run(**inputs)


class Failing:
    """A run whose calls fail while ``broken`` is set (a model that raises mid-flight)."""

    def __init__(self, run):
        self.run, self.metadata, self.broken = run, run.metadata, False

    def __call__(self, **inputs):
        if self.broken:
            raise RuntimeError("the model broke")
        return self.run(**inputs)


def test_a_failing_step_answers_500_and_the_server_goes_on(slots_lm, alone):
    run = Failing(qc.load(slots_lm))
    with Served(qc.server_app(run)) as url:
        run.broken = True
        reply = httpx.post(f"{url}/v1/completions", json={"prompt": [5], "max_tokens": 3}, timeout=TIMEOUT)
        assert reply.status_code == 500 and "the model broke" in reply.json()["error"]["message"]
        with httpx.stream("POST", f"{url}/v1/completions", json={"prompt": [5], "max_tokens": 3, "stream": True},
                          timeout=TIMEOUT) as response:
            events = _events(response)
        assert "the model broke" in events[0]["error"]["message"] and events[-1] is None
        run.broken = False
        ids = _prompt(4, 6)
        reply = httpx.post(f"{url}/v1/completions", json={"prompt": ids, "max_tokens": 4}, timeout=TIMEOUT)
        assert reply.json()["choices"][0]["token_ids"] == alone(ids, 4)
        assert httpx.get(f"{url}/health", timeout=TIMEOUT).json()["finished"]["error"] == 2


def test_a_client_that_leaves_frees_its_slot(slots_lm, alone):
    """Three streams of 60 tokens take every slot; their clients read two tokens and leave. The slots come free as
    cancelled, not by running out of tokens (steps take 20 ms or more here), and a new request is served."""
    with Served(qc.server_app(Slow(qc.load(slots_lm)))) as url:
        for i in range(3):
            with httpx.stream("POST", f"{url}/v1/completions", json={"prompt": [5 + i], "max_tokens": 60,
                                                                     "stream": True}, timeout=TIMEOUT) as response:
                lines = response.iter_lines()
                assert next(lines).startswith("data: ") and next(lines) == "" and next(lines).startswith("data: ")
        deadline = time.monotonic() + TIMEOUT  # against a hang only
        while (health := httpx.get(f"{url}/health", timeout=TIMEOUT).json())["active"]:
            assert time.monotonic() < deadline, "the slots were never freed"
            time.sleep(0.02)
        assert health["finished"] == {"length": 0, "stop": 0, "cancelled": 3, "error": 0}
        ids = _prompt(3, 5)
        reply = httpx.post(f"{url}/v1/completions", json={"prompt": ids, "max_tokens": 3}, timeout=TIMEOUT)
        assert reply.json()["choices"][0]["token_ids"] == alone(ids, 3)


def test_text_in_and_out_with_a_tokenizer(slots_lm, alone):
    tokenizer = ByteTokenizer()
    with Served(qc.server_app(qc.load(slots_lm), tokenizer=tokenizer)) as url:
        reply = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi there", "max_tokens": 8}, timeout=TIMEOUT)
        with httpx.stream("POST", f"{url}/v1/completions", json={"prompt": "Hi there", "max_tokens": 8,
                                                                 "stream": True}, timeout=TIMEOUT) as response:
            chunks = [e for e in _events(response) if e is not None]
    expected = alone(tokenizer.encode("Hi there"), 8)
    if 0 in expected:  # the end token stops it
        expected = expected[:expected.index(0) + 1]
    choice = reply.json()["choices"][0]
    assert choice["token_ids"] == expected and choice["text"] == tokenizer.decode(expected)
    assert "".join(c["choices"][0]["text"] for c in chunks) == tokenizer.decode(expected)
    assert choice["finish_reason"] == ("stop" if expected[-1] == 0 else "length")


def test_the_command_serves_a_file_until_stopped(slots_lm, tmp_path):
    """``qcompiler serve FILE --port N``: it says where it serves, answers there, and stops on SIGINT."""
    import signal
    import subprocess
    import sys
    port = _free_port()
    cmd = [sys.executable, "-c", "import sys; from qcompiler.cli import main; sys.exit(main())", "serve",
           str(slots_lm), "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().startswith(f"qcompiler: serving {slots_lm} (3 slots, max_seq_len 64) on "
                                                     f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=TIMEOUT).json()["status"] == "ok"
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()
                time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(TIMEOUT)
    assert process.returncode == 0, process.stderr.read()[-2000:]
    bad = tmp_path / "notes.txt"
    bad.write_text("not a model")
    done = subprocess.run(cmd[:4] + [str(bad)], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 1 and "serve takes a .pt2 packaged from capture_lm(..., slots=n)" in done.stderr
    done = subprocess.run(cmd + ["--prefill-chunk", "0"], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 1 and "prefill_chunk must be an int >= 1" in done.stderr
