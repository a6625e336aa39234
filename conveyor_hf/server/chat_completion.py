"""``ChatCompletionHandler``: ``POST /v1/chat/completions``, from request to answer.

1. Parse and validate (:mod:`~conveyor_hf.server.validation`): malformed JSON, unknown
   fields and fields this server cannot honour are refused with a 400 naming them, a
   body over :data:`MAX_BODY_BYTES` with a 413 before it is read whole.
2. Render and tokenize the prompt on the server's one render thread (a long prompt
   never stalls the event loop, so other streams go on); a prompt that does not fit the
   context is a 400.
3. Admission: wait for a slot, or 429 with ``Retry-After`` when the queue is full.
4. Run ``generate`` on its own thread (:class:`~conveyor_hf.server.generation_run.
   GenerationRun`) with the request's own tools (its first Python call takes a started
   kernel from the pool); stream content deltas as SSE, or answer once with a
   ``ChatCompletion``.

The content a client receives is exactly ``ConveyorOutput.content``: the model's text and
the tool results as they were appended (the last chunk completes it if the stream ever
fell behind). Calls of the client's own ``tools`` are not content: they end the answer
and come back as ``tool_calls`` with ``finish_reason: "tool_calls"`` for the client to
run, while the server's tools run server-side in the same answer. A client that disconnects — while queued, waiting for a kernel, or
mid-answer — cancels its request at once: decoding stops at the next token, its tools
are killed, its slot goes to the next request and its kernel is replaced.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Awaitable, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from conveyor_hf.server import chunks
from conveyor_hf.server.admission import Admission, QueueFull
from conveyor_hf.server.errors import APIError
from conveyor_hf.server.generation_run import AnswerFailed, Delta, Failed, Finished, GenerationRun
from conveyor_hf.server.conversation_tools import ConversationTools
from conveyor_hf.server.kernel_pool import KernelPool
from conveyor_hf.server.metrics import ServerMetrics
from conveyor_hf.server.prompts import PromptBuilder
from conveyor_hf.server.serving_engine import ServingEngine
from conveyor_hf.server.settings import ServerSettings
from conveyor_hf.server.validation import ChatRequest, RequestPolicy, validate_request
from conveyor_hf.tools.base import Tool

logger = logging.getLogger("conveyor_hf.server")

T = TypeVar("T")

#: Largest request body accepted (bytes); a longer prompt could not fit a context anyway.
MAX_BODY_BYTES = 8 << 20


class ClientGone(Exception):
    """The client closed the connection before its answer started."""


class ChatCompletionHandler:
    """Serves chat completions with the server's shared engine, pool, admission and metrics."""

    def __init__(self, *, settings: ServerSettings, serving: ServingEngine, templates: list[Tool],
                 pools: dict[str, KernelPool], admission: Admission, metrics: ServerMetrics,
                 prompts: PromptBuilder) -> None:
        self.settings = settings
        self.serving = serving
        self.templates = templates
        self.pools = pools
        self.admission = admission
        self.metrics = metrics
        self.prompts = prompts
        # One thread renders every prompt: the shared tokenizer has one user at a time.
        self._render = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conveyor-render")
        self.policy = RequestPolicy(model_id=serving.model_id, remote=serving.remote,
                                    server_tools=tuple(tool.name for tool in templates))

    async def handle(self, request: Request) -> Response:
        """One request, answered with JSON, an SSE stream, or an OpenAI-shaped error."""
        try:
            chat = validate_request(await _json_body(request), self.policy)
            prompt = await asyncio.get_running_loop().run_in_executor(
                self._render, self.prompts.build, chat.messages, chat.max_tokens, chat.tools)
        except RecursionError:  # JSON, a tool schema or the messages nested beyond reason
            self.metrics.count("invalid")
            return APIError(400, "the request is nested too deeply to read; flatten the nesting of its "
                                 "messages and tool schemas", code="too_deeply_nested").response()
        except APIError as exc:
            self.metrics.count("invalid")
            return exc.response()
        except Exception as exc:  # a fault of this server's, answered in the API's shape
            self.metrics.count("invalid")
            return _failure(exc).response()
        received = time.perf_counter()
        try:
            await _unless_disconnected(request, self.admission.acquire())
        except QueueFull as exc:
            self.metrics.count("rejected")
            return APIError(429, str(exc), code="rate_limit_exceeded",
                            headers={"Retry-After": str(exc.retry_after)}).response()
        except ClientGone:
            self.metrics.count("disconnected")
            return Response(status_code=499)
        admitted = time.perf_counter()
        tools = ConversationTools(self.templates, self.pools)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        run = GenerationRun(
            serving=self.serving, tools=tools, prompt=prompt, generate_kwargs=chat.generate_kwargs,
            client_tools=chat.tools, parallel_tool_calls=chat.parallel_tool_calls, mode=self.settings.mode, max_tool_rounds=self.settings.max_tool_rounds, stream=chat.stream,
            loop=asyncio.get_running_loop(), on_end=lambda r: self._ended(r, received, admitted), name=request_id[-8:],
        )
        run.start()
        if chat.stream:
            return StreamingResponse(self._stream(run, chat, request_id, prompt.tokens), media_type="text/event-stream",
                                     headers={"X-Request-Id": request_id, "Cache-Control": "no-cache"})
        try:
            output = await _unless_disconnected(request, asyncio.shield(run.result))
        except ClientGone:
            run.abort()
            return Response(status_code=499)
        except Exception as exc:
            return _failure(exc).response()
        body = chunks.completion(request_id, self.serving.model_id, output, prompt.tokens)
        return JSONResponse(body, headers={"X-Request-Id": request_id})

    def _ended(self, run: GenerationRun, received: float, admitted: float) -> None:
        """(Event loop.) A run's thread is done: free its slot and tools, count it. The
        latency histogram counts from the request's arrival (queueing included); the
        Retry-After estimate learns the time a request holds its slot."""
        self.admission.release()
        run.tools.release()
        if run.aborted:
            self.metrics.count("disconnected")
        elif run.error is not None:
            self.metrics.count("failed")
        elif run.output is not None:
            now = time.perf_counter()
            self.metrics.count("completed")
            self.metrics.record_answer(run.output.timeline.summary(), now - received)
            self.admission.note_latency(now - admitted)

    # -- streaming -------------------------------------------------------------------
    async def _stream(self, run: GenerationRun, chat: ChatRequest, request_id: str,
                      prompt_tokens: int) -> AsyncIterator[str]:
        model, created = self.serving.model_id, int(time.time())
        sent: list[str] = []
        done = False
        try:
            yield chunks.chunk_event(request_id, model, created, role="assistant", content="")
            while not done:
                items = [await run.events.get()]
                while not run.events.empty():
                    items.append(run.events.get_nowait())
                parts: list[str] = []
                text = "".join(item.text for item in items if isinstance(item, Delta))
                if text:
                    sent.append(text)
                    parts.append(chunks.chunk_event(request_id, model, created, content=text))
                end = next((item for item in items if not isinstance(item, Delta)), None)
                if isinstance(end, Failed):
                    error = _failure(end.error)
                    parts.append(chunks.error_event(error.message, kind=error.payload()["error"]["type"],
                                                    code=error.code))
                    done = True
                elif isinstance(end, Finished):
                    parts.extend(self._closing_events(end, chat, request_id, created, "".join(sent), prompt_tokens))
                    done = True
                if parts:
                    yield "".join(parts)
        finally:
            if not done:  # the client went away (the response was cancelled)
                run.abort()

    def _closing_events(self, end: Finished, chat: ChatRequest, request_id: str, created: int,
                        sent: str, prompt_tokens: int) -> list[str]:
        output, model = end.output, self.serving.model_id
        events = []
        content = output.content
        if content != sent:
            if content.startswith(sent):
                events.append(chunks.chunk_event(request_id, model, created, content=content[len(sent):]))
            else:
                logger.warning("%s: the streamed content is not a prefix of the answer", request_id)
        if output.caller_calls and output.caller_calls[0]:
            events.append(chunks.tool_calls_event(request_id, model, created, output.caller_calls[0]))
        events.append(chunks.chunk_event(request_id, model, created, finish=chunks.finish_reason(output),
                                         extension=chunks.timeline_extension(output)))
        if chat.include_usage:
            events.append(chunks.usage_event(request_id, model, created, prompt_tokens, output))
        events.append(chunks.DONE)
        return events

    def close(self) -> None:
        """Stop the render thread (server shutdown)."""
        self._render.shutdown(wait=False, cancel_futures=True)


async def _json_body(request: Request) -> Any:
    """The request's JSON, read at most :data:`MAX_BODY_BYTES` far (413 beyond)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large(f"{int(declared)} bytes")
    raw = bytearray()
    async for part in request.stream():
        raw += part
        if len(raw) > MAX_BODY_BYTES:
            raise _too_large(f"more than {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        raise APIError(400, "the request body is empty; send a JSON object with model and messages")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc}); send a JSON object with model and "
                            "messages", code="invalid_json") from None


def _too_large(size: str) -> APIError:
    return APIError(413, f"the request body is {size}; at most {MAX_BODY_BYTES} bytes are accepted: shorten "
                         "the messages", code="request_too_large")


async def _unless_disconnected(request: Request, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` unless the client disconnects first (then :class:`ClientGone`)."""
    task = asyncio.ensure_future(awaitable)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        if not watch.done():
            watch.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    raise ClientGone()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _failure(exc: Exception) -> APIError:
    """The error a client sees when its answer failed after admission."""
    from conveyor_hf.engines.remote import RemoteEngineError

    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, (RemoteEngineError, AnswerFailed)):
        return APIError(502, f"the decoding engine failed: {exc}", code="engine_error")
    if isinstance(exc, ValueError):  # an option the engine refused, named by it
        return APIError(400, str(exc), code="unsupported_option")
    logger.error("a chat completion failed", exc_info=exc)
    return APIError(500, f"the answer failed: {type(exc).__name__}: {exc}", code="internal_error")
