"""``RemoteEngine``: decoding on any OpenAI-compatible streaming ``/v1/completions`` server.

vLLM, SGLang, TGI and ``transformers serve`` all stream ``/v1/completions``. The client
renders the chat template itself (the prompt is plain text), so the tool results it
appends are exactly what the model sees. Each conversation is its own streamed request,
sent concurrently (a thread each), so the server's continuous batching does the
batching. Every streamed delta goes through the same conversation state and parsers as
in-process decoding: tool units start while the server is still decoding. When a call
closes, the stream is closed (the server aborts that request, so a conversation waiting
for a tool holds no decode slot), the tools finish, and a new request continues from
prompt + answer so far + result. That resume costs only the appended tokens' prefill
where the server caches prefixes (vLLM automatic prefix caching, SGLang RadixAttention);
elsewhere the server prefills the whole prompt again.

Example::

    from conveyor_hf import ConveyorGenerator
    from conveyor_hf.engines import RemoteEngine
    from conveyor_hf.tools import PythonTool

    engine = RemoteEngine("http://127.0.0.1:8000/v1", model="HuggingFaceTB/SmolLM2-135M-Instruct")
    with ConveyorGenerator(engine, tokenizer, tools=[PythonTool()]) as gen:
        out = gen.generate([{"role": "user", "content": "Use Python to compute 2**100."}])
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from transformers import GenerationConfig

from conveyor_hf.engines.base import Engine

if TYPE_CHECKING:
    import httpx

    from conveyor_hf.conversation import Conversation
    from conveyor_hf.loop import ToolLoop

#: GenerationConfig fields the completions API carries (the rest must stay at their defaults).
_MAPPED_FIELDS = {"max_new_tokens", "do_sample", "temperature", "top_p", "stop_strings"}
#: Fields the tool loop itself sets or reads; never sent.
_LOCAL_FIELDS = {
    "max_length", "num_return_sequences", "pad_token_id", "eos_token_id", "bos_token_id",
    "return_dict_in_generate", "transformers_version", "_from_model_config",
}
#: ``generate`` keywords that are not generation-config fields but map to the API.
_MAPPED_KEYWORDS = {"seed", "stop"}


class RemoteEngineError(RuntimeError):
    """The server could not be used: not running, an HTTP error, or no answer in time.
    The message names the URL and what to do."""


@dataclass
class _Streamed:
    """What one streamed request gave: the text kept, how it ended, its token count."""

    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int | None = None
    error: str | None = None


class RemoteEngine(Engine):
    """Decodes through an OpenAI-compatible streaming ``/v1/completions`` endpoint.

    Args:
      base_url: the API root, e.g. ``"http://127.0.0.1:8000/v1"``.
      model: the model name the server serves (``GET {base_url}/models`` lists them).
      api_key: sent as ``Authorization: Bearer …`` when given.
      timeout: seconds one request may take in all, and the longest silence between
        two streamed chunks; past it the request is closed and reported.
      connect_timeout: seconds to wait for the server to accept a connection.
      max_concurrency: requests in flight at once (default: one per conversation).
      extra_body: more JSON fields sent with every request (server-specific options).

    Greedy decoding is the default (``temperature=0``), as ``do_sample=False`` is for
    ``model.generate``; pass ``do_sample=True`` (with ``temperature``/``top_p``/``seed``)
    to sample. ``replay=`` is refused: forcing text needs the logits.
    """

    name = "remote"
    supports_replay = False

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        max_concurrency: int | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r} must be an http(s) URL such as 'http://127.0.0.1:8000/v1'")
        if not model:
            raise ValueError("model= must name the model the server serves (see GET /v1/models)")
        if timeout <= 0 or connect_timeout <= 0:
            raise ValueError(f"timeout={timeout} and connect_timeout={connect_timeout} must be > 0")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency={max_concurrency} must be >= 1")
        self.base_url = base_url.rstrip("/")
        self.model_name = model
        self.api_key = api_key
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.max_concurrency = max_concurrency
        self.extra_body = dict(extra_body or {})
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()

    @staticmethod
    def served_models(base_url: str, *, api_key: str | None = None, timeout: float = 10.0) -> list[str]:
        """The model names ``GET {base_url}/models`` lists (to pick ``model=``)."""
        import httpx

        url = f"{base_url.rstrip('/')}/models"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            response = httpx.get(url, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            raise RemoteEngineError(f"cannot list models at {url} ({exc}); is the server running?") from exc
        if response.status_code >= 400:
            raise RemoteEngineError(f"{url} answered HTTP {response.status_code}: {_server_message(response)}")
        return [entry["id"] for entry in response.json().get("data", []) if "id" in entry]

    @property
    def url(self) -> str:
        return f"{self.base_url}/completions"

    def describe(self) -> str:
        return f"remote ({self.model_name} at {self.base_url})"

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- options -----------------------------------------------------------------------
    def default_generation_config(self) -> GenerationConfig:
        return GenerationConfig(do_sample=False)

    def check_options(self, config: GenerationConfig, extra: dict[str, Any]) -> None:
        unknown = sorted(set(config.to_diff_dict()) - _MAPPED_FIELDS - _LOCAL_FIELDS)
        unknown += sorted(key for key in extra if key not in _MAPPED_KEYWORDS)
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)} cannot be sent to a remote engine: the completions API takes "
                "max_new_tokens (as max_tokens), do_sample, temperature, top_p, seed and stop; remove "
                "the others (or pass server-specific fields with RemoteEngine(..., extra_body={...}))"
            )

    def request_body(self, loop: "ToolLoop", prompt: str, max_tokens: int) -> dict[str, Any]:
        """The JSON of one streamed completion request."""
        config = loop.config
        body: dict[str, Any] = {"model": self.model_name, "prompt": prompt, "max_tokens": max_tokens,
                                "stream": True}
        if config.do_sample:
            body["temperature"] = float(config.temperature if config.temperature is not None else 1.0)
            if config.top_p is not None and config.top_p < 1.0:
                body["top_p"] = float(config.top_p)
        else:
            body["temperature"] = 0.0
        stop = loop.extra.get("stop", config.stop_strings)
        if stop:
            body["stop"] = [stop] if isinstance(stop, str) else list(stop)
        if loop.extra.get("seed") is not None:
            body["seed"] = int(loop.extra["seed"])
        body.update(self.extra_body)
        return body

    # -- decoding ----------------------------------------------------------------------
    def run(self, loop: "ToolLoop") -> None:
        """One streamed request after another per conversation; conversations side by side."""
        conversations = loop.conversations
        if len(conversations) == 1:
            self._drive(loop, conversations[0])
            return
        workers = self.max_concurrency or len(conversations)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="conveyor-remote") as pool:
            futures = [pool.submit(self._drive, loop, conv) for conv in conversations]
            errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error

    def _drive(self, loop: "ToolLoop", conv: "Conversation") -> None:
        """Decode one conversation to its end: stream, settle, resume."""
        prompt = loop.prompt_texts[conv.row]
        while True:
            conv.begin_round()
            rnd = loop.begin_round(conv.round_index, row=conv.row)
            streamed = self._stream(loop, conv, prompt + conv.text, conv.budget - conv.generated)
            rnd.decode_end = time.perf_counter()
            if streamed.error is not None and conv.round_index == 0 and not streamed.text:
                conv.stop, conv.error = "error", streamed.error  # nothing decoded: the server is unusable
                loop.end_round(rnd)
                raise RemoteEngineError(streamed.error)
            ids = loop.encode_text(streamed.text)
            used = len(ids) if conv.stop in ("call", "abort") or streamed.completion_tokens is None \
                else streamed.completion_tokens
            conv.generated += used
            rnd.new_tokens += used
            if streamed.error is not None:
                conv.stop, conv.error = "error", streamed.error
            elif conv.stop is None:
                conv.stop = "eos" if streamed.finish_reason == "stop" else "length"
            suffix = loop.settle(conv, ids, eos_token_last=False)
            loop.end_round(rnd)
            if suffix is None or conv.stop == "error":
                return

    def _stream(self, loop: "ToolLoop", conv: "Conversation", prompt: str, max_tokens: int) -> _Streamed:
        """One streamed request: feed each delta to ``conv``; close the stream when it stops."""
        import httpx

        out = _Streamed()
        if max_tokens <= 0:
            out.finish_reason = "length"
            return out
        body = self.request_body(loop, prompt, max_tokens)
        deadline = time.monotonic() + self.timeout
        try:
            with self._http().stream("POST", self.url, json=body, headers=self._headers()) as response:
                if response.status_code >= 400:
                    response.read()
                    out.error = (f"{self.url} answered HTTP {response.status_code}: {_server_message(response)}"
                                 f"{_hint(response.status_code, self.model_name)}")
                    return out
                for chunk in _sse_chunks(response):
                    if "error" in chunk:
                        out.error = f"{self.url} reported an error mid-stream: {_error_text(chunk['error'])}"
                        return out
                    usage = chunk.get("usage") or {}
                    if usage.get("completion_tokens") is not None:
                        out.completion_tokens = int(usage["completion_tokens"])
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("text") or ""
                        if delta:
                            stop = conv.feed_delta(delta)
                            out.text += conv.pieces[-1]  # the part of the delta kept
                            if stop is not None:  # a call closed (or failed): stop decoding it here
                                out.finish_reason = stop
                                return out
                        if choice.get("finish_reason"):
                            out.finish_reason = choice["finish_reason"]
                    if time.monotonic() > deadline:
                        out.error = (f"{self.url} did not finish the request within timeout={self.timeout:g}s; "
                                     "raise RemoteEngine(timeout=...) or lower max_new_tokens")
                        return out
        except httpx.ConnectError as exc:
            out.error = (f"cannot connect to {self.url} ({exc}); is the server running? Start it (for example "
                         "`transformers serve MODEL --port 8000` or `vllm serve MODEL`) or fix base_url")
        except httpx.TimeoutException as exc:
            out.error = (f"{self.url} sent nothing for {self.timeout:g}s ({type(exc).__name__}); the server is "
                         "stuck or overloaded: raise RemoteEngine(timeout=...) or check the server")
        except (httpx.TransportError, httpx.StreamError) as exc:
            out.error = f"the connection to {self.url} dropped mid-stream ({type(exc).__name__}: {exc})"
        return out

    def _http(self) -> "httpx.Client":
        import httpx

        with self._client_lock:
            if self._client is None:
                timeout = httpx.Timeout(self.timeout, connect=self.connect_timeout)
                self._client = httpx.Client(timeout=timeout)
            return self._client

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


def _sse_chunks(response: "httpx.Response") -> Iterator[dict[str, Any]]:
    """The JSON payloads of a server-sent-event stream, until ``[DONE]``."""
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            return
        try:
            payload = json.loads(data)
        except json.JSONDecodeError:
            yield {"error": f"malformed stream chunk {data[:200]!r}"}
            return
        if isinstance(payload, dict):
            yield payload


def _server_message(response: "httpx.Response") -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text.strip()[:500] or "(empty body)"
    if isinstance(payload, dict):
        for key in ("error", "detail", "message"):
            if key in payload:
                return _error_text(payload[key])
    return json.dumps(payload)[:500]


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or json.dumps(error))[:500]
    if isinstance(error, list):
        return "; ".join(_error_text(e) for e in error)[:500]
    return str(error)[:500]


def _hint(status: int, model: str) -> str:
    if status == 404:
        return f" (is base_url the API root, ending in /v1, and is {model!r} served? see GET /v1/models)"
    if status in (401, 403):
        return " (pass RemoteEngine(..., api_key=...))"
    return ""
