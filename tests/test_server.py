"""``conveyor-hf serve`` on loopback with the embedded default model, driven by the real ``openai`` client.

The server tests (``slow``) share one server (2 slots, 6 queued, a pool of 2 kernels), started on a free port
and stopped by its process id. Greedy decoding makes the default model write a ```python
block for the codegen prompt; every other answer is kept a few tokens long (the CPU decodes
~20 tokens/s). Waits are gated on what the server reports (/metrics, process tables),
never on sleeps or wall-clock thresholds. The serial engine (the fallback when continuous
batching is unavailable) is checked in-process on a tiny model.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from conveyor_hf.engines.generate import GenerateEngine
from conveyor_hf.generator import ConveyorGenerator
from conveyor_hf.server.errors import APIError
from conveyor_hf.server.kernel_pool import KernelPool
from conveyor_hf.server.serial_engine import SerialEngine
from conveyor_hf.server.validation import RequestPolicy, validate_request
from conveyor_hf.tools import ScriptedTool
from helpers import wait_until
from servers import ServedProcess, free_port

CODEGEN = ("Use Python to compute the sum of the squares of the integers from 1 to 100, "
           "then tell me the result.")
SHORT = ["Name a colour.", "Name a fruit.", "What is 2+2?", "Say hello."]
POOL, SLOTS, QUEUE = 2, 2, 6
MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def server():
    port = free_port()
    exe = Path(sys.executable).with_name("conveyor-hf")
    argv = [str(exe) if exe.exists() else "conveyor-hf", "serve", "--port", str(port), "--threads", "1",
            "--kernel-pool", str(POOL), "--max-concurrency", str(SLOTS), "--max-queue", str(QUEUE),
            "--max-tokens", "16"]
    served = ServedProcess(argv, port, limit=240, env={"OMP_NUM_THREADS": "1"})
    kernels: set[int] = set()
    try:
        yield served
    finally:
        kernels = _kernel_pids(served)
        served.stop()
    assert kernels and not [pid for pid in kernels if psutil.pid_exists(pid)], "the server left kernels behind"


def client(server, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.root}/v1", api_key="none", **kw)


def metrics(server) -> dict[str, float]:
    text = httpx.get(server.root + "/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _kernel_pids(server) -> set[int]:
    """The Python kernels under the server process (not their bwrap wrappers)."""
    try:
        children = psutil.Process(server.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    pids = set()
    for child in children:
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if cmd and "python" in Path(cmd[0]).name and "ipykernel_launcher" in cmd:
            pids.add(child.pid)
    return pids


def _idle(server) -> bool:
    m = metrics(server)
    in_use = m["conveyor_kernel_pool_started"] - m["conveyor_kernel_pool_closed"] - m["conveyor_kernel_pool_ready"]
    return (m["conveyor_requests_in_flight"] == 0 and m["conveyor_queue_length"] == 0 and in_use == 0
            and m["conveyor_kernel_pool_ready"] == POOL and m["conveyor_kernel_pool_starting"] == 0)


class RawStream:
    """A chat completion over a plain socket, so the test can hang up at any moment."""

    def __init__(self, server, content: str, max_tokens: int) -> None:
        body = json.dumps({"model": MODEL, "stream": True, "max_tokens": max_tokens,
                           "messages": [{"role": "user", "content": content}]}).encode()
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=120)
        self.sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        self.received = b""

    def read_until(self, marker: bytes) -> None:
        """Read until ``marker`` arrived (``b"data: "``: the first chunk, the request holds a
        slot; ``b"def"``: the model is writing Python, its call is open and has a kernel)."""
        while marker not in self.received:
            data = self.sock.recv(4096)
            assert data, f"the server closed the stream: {self.received[-500:]!r}"
            self.received += data

    def close(self) -> None:
        self.sock.close()


@pytest.mark.slow
def test_a_streamed_answer_runs_its_code_while_it_streams(server):
    stream = client(server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": CODEGEN}], stream=True, max_tokens=64,
        stream_options={"include_usage": True})
    deltas, last, usage = [], None, None
    for chunk in stream:
        if not chunk.choices:
            usage = chunk.usage
            continue
        if chunk.choices[0].delta.content:
            deltas.append(chunk.choices[0].delta.content)
        if chunk.choices[0].finish_reason:
            last = chunk
    text = "".join(deltas)
    assert text.startswith("```python\n") and "```output\nThe result is 338350." in text  # the kernel's answer
    assert len(deltas) > 20  # streamed piece by piece, the tool result as one appended piece
    assert last.choices[0].finish_reason == "length" and 0 < usage.completion_tokens <= 64
    timeline = last.model_extra["conveyor"]
    [call] = timeline["calls"]
    assert call["tool"] == "python" and len(call["units"]) >= 2
    assert all(u["error"] is None for u in call["units"])
    assert call["units"][0]["start"] < call["closed"]  # the first statement ran before the block was written
    assert timeline["summary"]["rounds"] == 2


@pytest.mark.slow
def test_eight_concurrent_clients_get_the_answers_they_would_get_alone(server):
    before = metrics(server)
    api = client(server)

    def ask(job):
        prompt, streaming = job
        messages = [{"role": "user", "content": prompt}]
        if streaming:
            parts = [c.choices[0].delta.content or "" for c in api.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=6, stream=True) if c.choices]
            return "".join(parts)
        return api.chat.completions.create(model=MODEL, messages=messages, max_tokens=6).choices[0].message.content

    jobs = [(p, s) for p in SHORT for s in (True, False)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(ask, jobs))
    for i in range(0, len(jobs), 2):  # greedy: streamed and non-streamed answers of one prompt agree
        assert answers[i] and answers[i] == answers[i + 1], (jobs[i], answers[i], answers[i + 1])
    after = metrics(server)
    done, rejected = 'conveyor_requests_total{outcome="completed"}', 'conveyor_requests_total{outcome="rejected"}'
    assert after[done] - before[done] == 8 and after[rejected] == before[rejected]


@pytest.mark.slow
def test_a_full_queue_gets_429_and_disconnected_clients_free_everything(server):
    assert wait_until(lambda: _idle(server), 60)
    ready_kernels = _kernel_pids(server)
    assert len(ready_kernels) == POOL
    start = metrics(server)
    running = [RawStream(server, CODEGEN, 200) for _ in range(SLOTS)]
    running[0].read_until(b"def")  # mid-answer, in a Python call
    running[1].read_until(b"data: ")  # admitted (on the generate engine it decodes after the first's round)
    queued = [RawStream(server, SHORT[0], 4) for _ in range(QUEUE)]
    assert wait_until(lambda: metrics(server)["conveyor_queue_length"] == QUEUE, 30)
    with pytest.raises(openai.RateLimitError) as refused:
        client(server, max_retries=0).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert "at capacity" in refused.value.message
    for stream in queued:  # clients that give up while waiting leave the queue
        stream.close()
    assert wait_until(lambda: metrics(server)["conveyor_queue_length"] == 0, 30)
    for stream in running:  # and clients that hang up mid-answer stop it
        stream.close()
    assert wait_until(lambda: _idle(server), 60)
    end = metrics(server)
    gone = 'conveyor_requests_total{outcome="disconnected"}'
    assert end[gone] - start[gone] == SLOTS + QUEUE
    rejected = 'conveyor_requests_total{outcome="rejected"}'
    assert end[rejected] - start[rejected] == 1
    used = end["conveyor_kernel_pool_closed"] - start["conveyor_kernel_pool_closed"]
    assert 1 <= used <= SLOTS  # the queued requests never got far enough to need a kernel
    kernels = _kernel_pids(server)
    assert len(kernels) == POOL and len(ready_kernels - kernels) == used  # used kernels were killed and replaced
    answer = client(server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": SHORT[3]}], max_tokens=4)
    assert answer.choices[0].message.content


@pytest.mark.slow
def test_bad_requests_get_a_clear_4xx_and_the_server_stays_up(server):
    url = server.root + "/v1/chat/completions"
    ok = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}

    malformed = httpx.post(url, content=b'{"model": "x", "messages": [', headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400 and "not valid JSON" in malformed.json()["error"]["message"]

    api = client(server, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="unknown field 'top_k'"):
        api.chat.completions.create(**ok, extra_body={"top_k": 5})
    with pytest.raises(openai.BadRequestError, match=r"tools\[0\]: a function tool needs a non-empty string 'name'"):
        api.chat.completions.create(**ok, tools=[{"type": "function", "function": {
            "parameters": {"type": "object", "properties": {}}}}])
    with pytest.raises(openai.BadRequestError, match="'python' is a tool this server runs itself"):
        api.chat.completions.create(**ok, tools=[{"type": "function", "function": {"name": "python"}}])
    with pytest.raises(openai.BadRequestError, match="tool_choice='required' cannot be honoured"):
        api.chat.completions.create(**ok, tools=[WEATHER], tool_choice="required")
    with pytest.raises(openai.BadRequestError, match="deprecated form of tools"):
        api.chat.completions.create(**ok, functions=[{"name": "f", "parameters": {}}])
    with pytest.raises(openai.BadRequestError, match="cannot honour 'n'"):
        api.chat.completions.create(**ok, n=2)
    with pytest.raises(openai.BadRequestError, match="'seed'.*remote engine"):
        api.chat.completions.create(**ok, seed=1)
    with pytest.raises(openai.BadRequestError, match=r"temperature=5 must be between 0 and 2"):
        api.chat.completions.create(**ok, temperature=5)
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\] is not a chat message"):
        api.chat.completions.create(model=MODEL, messages=[{"role": "robot", "content": "Hi"}])
    with pytest.raises(openai.NotFoundError, match="is not served here"):
        api.chat.completions.create(**{**ok, "model": "gpt-9"})
    with pytest.raises(openai.BadRequestError, match=r"the prompt is \d+ tokens .* context is 8192 tokens"):
        api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "apple " * 9000}])
    with pytest.raises(openai.BadRequestError, match="plus max_tokens=9000 exceeds"):
        api.chat.completions.create(**{**ok, "max_tokens": 9000})

    nested = b'{"model": "x", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    deep = httpx.post(url, content=nested, headers={"Content-Type": "application/json"})
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]["message"]
    schema: dict = {"type": "string"}
    for _ in range(600):
        schema = {"type": "array", "items": schema}
    with pytest.raises(openai.BadRequestError, match="nested too deeply|maximum recursion depth") as refused:
        api.chat.completions.create(**ok, tools=[{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object", "properties": {"x": schema}}}}])
    assert len(str(refused.value)) < 1000  # names the schema by its start, not whole
    huge = httpx.post(url, content=b" " * (9 << 20), headers={"Content-Type": "application/json"})
    assert huge.status_code == 413 and "at most 8388608 bytes" in huge.json()["error"]["message"]

    health = httpx.get(server.root + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["tools"] == ["python"] and health["engine"] in ("generate", "continuous")
    assert metrics(server)['conveyor_requests_total{outcome="invalid"}'] >= 13
    assert httpx.get(server.root + "/v1/models", timeout=10).json()["data"][0]["id"] == MODEL
    assert api.chat.completions.create(**ok).choices[0].message.content


WEATHER = {"type": "function", "function": {
    "name": "weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
#: One exchange that shows the default model how the client's tool is called (it copies the shape).
EXAMPLE = [
    {"role": "user", "content": "Weather in Rome?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Rome"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "21 C, sunny"},
    {"role": "assistant", "content": "It is 21 C and sunny in Rome."},
]


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [False, True])
def test_the_clients_own_tools_come_back_as_tool_calls(server, streaming):
    api = client(server, max_retries=0)
    messages = [*EXAMPLE, {"role": "user", "content": "Weather in Paris?"}]
    if streaming:
        content, calls, finish = "", {}, None
        for chunk in api.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], max_tokens=40,
                                                 stream=True):
            delta = chunk.choices[0].delta
            content += delta.content or ""
            for call in delta.tool_calls or []:
                calls[call.index] = call
            finish = chunk.choices[0].finish_reason or finish
        calls = [calls[i] for i in sorted(calls)]
    else:
        choice = api.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], max_tokens=40).choices[0]
        content, calls, finish = choice.message.content or "", choice.message.tool_calls, choice.finish_reason
    assert finish == "tool_calls" and "tool_call" not in content
    [call] = calls
    assert call.function.name == "weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id and call.type == "function"
    # The client runs it and sends the result back: the model answers from it.
    messages += [{"role": "assistant", "content": None, "tool_calls": [
                     {"id": call.id, "type": "function",
                      "function": {"name": "weather", "arguments": call.function.arguments}}]},
                 {"role": "tool", "tool_call_id": call.id, "content": "14 C, rain"}]
    answer = api.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], max_tokens=12).choices[0]
    assert answer.finish_reason in ("stop", "length") and answer.message.content and not answer.message.tool_calls


@pytest.mark.slow
def test_nothing_leaks_after_many_requests_a_third_of_them_abandoned(server):
    assert wait_until(lambda: _idle(server), 60)
    process = psutil.Process(server.proc.pid)
    threads = process.num_threads()
    api = client(server)

    def one(i):
        if i % 3 == 0:  # hang up once the model writes Python (its kernel is in use)
            stream = RawStream(server, CODEGEN, 64)
            stream.read_until(b"def")
            stream.close()
            return None
        return api.chat.completions.create(model=MODEL, max_tokens=3,
                                           messages=[{"role": "user", "content": SHORT[i % 4]}]).choices[0]

    closed = metrics(server)["conveyor_kernel_pool_closed"]
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(one, range(12)))
    assert all(a is None or a.message.content for a in answers)
    assert wait_until(lambda: _idle(server), 60)
    assert metrics(server)["conveyor_kernel_pool_closed"] - closed == 4  # the abandoned ones' kernels
    assert wait_until(lambda: len(_kernel_pids(server)) == POOL, 30), _kernel_pids(server)
    assert wait_until(lambda: process.num_threads() <= threads, 30), (process.num_threads(), threads)


def test_the_serial_engine_decodes_another_request_while_one_waits_for_its_tool(tiny_model, tokenizer):
    entered, release = threading.Event(), threading.Event()

    def respond(line):
        entered.set()
        release.wait(60)
        return f"ECHO {line}"

    engine = SerialEngine(GenerateEngine(tiny_model))
    with_tool = ConveyorGenerator(engine, tokenizer, tools=[ScriptedTool("echo", fence_languages=("echo",),
                                                                         respond=respond)])
    plain = ConveyorGenerator(engine, tokenizer)
    results = {}
    waiting = threading.Thread(target=lambda: results.update(a=with_tool.generate(
        "Q", replay=["```echo\nx\n```\nafter"], max_new_tokens=30)))
    waiting.start()
    assert entered.wait(60)  # its tool is running (and will block until released)
    other = threading.Thread(target=lambda: results.update(b=plain.generate("Hello", max_new_tokens=5)))
    other.start()
    other.join(60)
    decoded_meanwhile = not other.is_alive() and not release.is_set()
    release.set()
    waiting.join(60)
    assert decoded_meanwhile  # the second request decoded while the first waited for its tool
    assert results["b"].timeline.summary()["new_tokens"] == 5
    assert "ECHO x" in results["a"].text and results["a"].text.endswith("after")


def test_request_fields_are_read_as_the_api_types_read_them():
    policy = RequestPolicy(model_id=MODEL, remote=False, server_tools=("python",))
    ask = {"messages": [{"role": "user", "content": "Hi"}]}
    chat = validate_request({**ask, "stream": "false", "parallel_tool_calls": "false"}, policy)
    assert chat.stream is False and chat.parallel_tool_calls is False
    chat = validate_request({**ask, "stream": "true", "stream_options": {"include_usage": "false"}}, policy)
    assert chat.stream is True and chat.include_usage is False
    with pytest.raises(APIError, match="top_p=7 must be above 0 and at most 1"):
        validate_request({**ask, "top_p": 7}, policy)  # refused even where greedy decoding ignores it


class _FlakyStarts(ScriptedTool):
    """A pool template whose forks fail to start while ``failing`` is set."""

    def __init__(self, failing: threading.Event) -> None:
        super().__init__("flaky")
        self.failing = failing

    def fork(self) -> "_FlakyStarts":
        return _FlakyStarts(self.failing)

    def warm_up(self) -> None:
        if self.failing.is_set():
            raise RuntimeError("transient start failure")


def test_a_pool_that_recovered_from_a_failed_start_is_not_failing():
    failing = threading.Event()
    failing.set()
    pool = KernelPool(_FlakyStarts(failing), size=1, builders=1, retry_backoff=(0.01, 0.05))
    try:
        assert wait_until(lambda: pool.stats().failures >= 1)
        assert pool.stats().failing and pool.stats().ready == 0
        failing.clear()
        assert wait_until(lambda: pool.stats().ready == 1)
        stats = pool.stats()
        assert not stats.failing and stats.last_error == "RuntimeError: transient start failure"
        pool.take().result(10)  # taken: none ready until the replacement starts, yet not failing
        assert not pool.stats().failing
    finally:
        pool.close()
