"""RemoteEngine against a real ``transformers serve`` on loopback (the embedded default model).

The server is started once for the module on a free port and stopped by its process id.
Tool-using answers come from greedy decoding of the default model, which writes a
```python block for this prompt: the same text must come out of both engines.
"""

import httpx
import pytest

from conveyor_hf.engines import RemoteEngine, RemoteEngineError
from conveyor_hf.generator import ConveyorGenerator
from conveyor_hf.tools import PythonTool
from servers import CuttingProxy, SilentServer, free_port, transformers_serve

pytestmark = pytest.mark.slow

ASK = [{"role": "user", "content": "Use Python to compute the sum of the squares of the integers from 1 to 100, "
                                   "then tell me the result."}]
TOKENS = 90


@pytest.fixture(scope="module")
def server(default_model):
    served = transformers_serve(default_model[0].name_or_path)
    try:
        [entry] = httpx.get(served.root + "/v1/models", timeout=10).json()["data"]
        served.model_id = entry["id"]
        yield served
    finally:
        served.stop()


def remote(server, port=None, **kw):
    return RemoteEngine(f"http://127.0.0.1:{port or server.port}/v1", model=server.model_id, **kw)


@pytest.fixture(scope="module")
def local_answer(default_model):
    model, tok = default_model
    with ConveyorGenerator(model, tok, tools=[PythonTool()]) as gen:
        return gen.generate(ASK, max_new_tokens=TOKENS, do_sample=False)


def test_greedy_text_through_the_server_equals_generate(server, default_model, local_answer):
    assert "```python" in local_answer.text and "```output" in local_answer.text  # a tool-using answer
    with ConveyorGenerator(remote(server), default_model[1], tools=[PythonTool()]) as gen:
        out = gen.generate(ASK, max_new_tokens=TOKENS)
    assert out.text == local_answer.text
    assert out.stop_reasons == local_answer.stop_reasons and out.errors == [None]
    summary = out.timeline.summary()
    assert summary["rounds"] == 2 and summary["units"] == len(local_answer.tool_calls[0].units)


def test_python_units_start_while_the_server_is_still_streaming(server, default_model, local_answer):
    with ConveyorGenerator(remote(server), default_model[1], tools=[PythonTool()], mode="partial") as gen:
        partial = gen.generate(ASK, max_new_tokens=TOKENS)
    with ConveyorGenerator(remote(server), default_model[1], tools=[PythonTool()], mode="lazy") as gen:
        lazy = gen.generate(ASK, max_new_tokens=TOKENS)
    assert partial.text == lazy.text == local_answer.text
    [call] = partial.tool_calls
    first_round = partial.timeline.rounds[0]
    assert call.units[0].start < call.closed <= first_round.decode_end  # ran before the stream reached ```
    assert all(u.start >= lazy.tool_calls[0].closed for u in lazy.tool_calls[0].units)


def test_conversations_of_a_batch_are_concurrent_requests(server, default_model):
    tok = default_model[1]
    asks = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Name a fruit."}]]
    with ConveyorGenerator(remote(server), tok, tools=[PythonTool()]) as gen:
        batch = gen.generate(asks, max_new_tokens=12)
        singles = [gen.generate(a, max_new_tokens=12).text for a in asks]
    assert batch.texts == singles
    rows = sorted({r.row for r in batch.timeline.rounds})
    assert rows == [0, 1]


def test_a_dropped_connection_ends_the_conversation_with_what_was_decoded(server, default_model, local_answer):
    proxy = CuttingProxy(server.port, limit=2500)  # headers and a few chunks, then the line goes dead
    try:
        with ConveyorGenerator(remote(server, port=proxy.port), default_model[1], tools=[PythonTool()]) as gen:
            out = gen.generate(ASK, max_new_tokens=TOKENS)
    finally:
        proxy.close()
    assert proxy.cut.is_set()
    assert out.stop_reasons == ["error"] and "dropped mid-stream" in out.errors[0]
    assert out.errors[0].count("127.0.0.1") == 1
    decoded = out.text[:out.text.index("\n```\n```output")]  # then the loop closed the open call and ran it
    assert decoded.startswith("```python\n") and local_answer.text.startswith(decoded)
    [call] = out.tool_calls
    assert "was not closed before the answer ended" in call.result.error


def test_a_server_that_is_not_running_is_a_clear_error(default_model):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with ConveyorGenerator(RemoteEngine(url, model="m"), default_model[1], tools=[PythonTool()]) as gen:
        with pytest.raises(RemoteEngineError, match="cannot connect to .*is the server running"):
            gen.generate(ASK, max_new_tokens=5)


def test_http_errors_show_the_servers_message(server, default_model):
    engine = RemoteEngine(f"http://127.0.0.1:{server.port}/v1", model="no-such-model")
    with ConveyorGenerator(engine, default_model[1]) as gen:
        with pytest.raises(RemoteEngineError, match=r"answered HTTP 4\d\d: .*pinned"):
            gen.generate("Hello", max_new_tokens=5)


def test_a_server_that_never_answers_times_out(default_model):
    silent = SilentServer()
    try:
        engine = RemoteEngine(f"http://127.0.0.1:{silent.port}/v1", model="m", timeout=1.0)
        with ConveyorGenerator(engine, default_model[1]) as gen:
            with pytest.raises(RemoteEngineError, match="sent nothing for 1s"):
                gen.generate("Hello", max_new_tokens=5)
    finally:
        silent.close()
