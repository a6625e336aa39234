"""The response bodies, built from the ``openai`` types: completions, SSE chunks, errors.

A streamed answer is ``data: <ChatCompletionChunk JSON>`` events: the role first, then
content deltas (the model's text and the tool results, in the order they are appended),
the calls of the client's tools (one chunk, when the answer ends with them), a last
chunk with ``finish_reason``, an optional usage chunk (``stream_options.
include_usage``) and ``data: [DONE]``, the shape the ``openai`` client parses.

Each answer also carries a ``conveyor`` field (the types allow extra fields) with its
timeline: the summary of :meth:`conveyor_hf.timeline.Timeline.summary` and, per tool
call, when it opened and closed and when each unit ran, in seconds from the start of the
request, so a client can see tool work overlap decoding.
"""

from __future__ import annotations

import json
import time
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta, ChoiceDeltaToolCall
from openai.types.chat.chat_completion_message_tool_call import ChatCompletionMessageToolCall
from openai.types.completion_usage import CompletionUsage

from conveyor_hf.outputs import ConveyorOutput
from conveyor_hf.tools.caller import CallerToolCall

#: How the tool loop's stop reasons read as OpenAI ``finish_reason`` s.
FINISH_REASONS = {"eos": "stop", "length": "length", "call": "length", "abort": "stop", "cancelled": "stop",
                  "tool_calls": "tool_calls"}

DONE = "data: [DONE]\n\n"


def finish_reason(output: ConveyorOutput) -> str:
    """``stop`` (the answer ended), ``length`` (a token or tool-round limit ended it),
    ``tool_calls`` (the client's tools are to run)."""
    return FINISH_REASONS.get(output.stop_reasons[0] if output.stop_reasons else "length", "stop")


def usage(prompt_tokens: int, output: ConveyorOutput) -> CompletionUsage:
    """Prompt tokens, and the tokens the model decoded (appended tool results are not counted)."""
    completion = int(output.timeline.summary()["new_tokens"])
    return CompletionUsage(prompt_tokens=prompt_tokens, completion_tokens=completion,
                           total_tokens=prompt_tokens + completion)


def timeline_extension(output: ConveyorOutput) -> dict[str, Any]:
    """The ``conveyor`` field: the timeline summary and each call's unit times."""
    timeline = output.timeline

    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - timeline.start, 6)

    calls = [
        {"tool": call.tool, "opened": rel(call.opened), "closed": rel(call.closed), "error": call.error,
         "units": [{"start": rel(u.start), "end": rel(u.end), "error": u.error, "skipped": u.skipped}
                   for u in call.units]}
        for call in timeline.calls
    ]
    rounds = [{"start": rel(r.start), "decode_end": rel(r.decode_end), "end": rel(r.end),
               "new_tokens": r.new_tokens} for r in timeline.rounds]
    return {"mode": timeline.mode, "stop_reason": output.stop_reasons[0] if output.stop_reasons else None,
            "summary": timeline.summary(), "rounds": rounds, "calls": calls}


def completion(request_id: str, model: str, output: ConveyorOutput, prompt_tokens: int) -> dict[str, Any]:
    """The non-streaming answer: a ``ChatCompletion`` as a JSON-ready dict."""
    calls = output.caller_calls[0] if output.caller_calls else []
    message = ChatCompletionMessage(
        role="assistant", content=output.content if output.content or not calls else None,
        tool_calls=[ChatCompletionMessageToolCall.model_validate(call.as_openai()) for call in calls] or None,
    )
    body = ChatCompletion(
        id=request_id, created=int(time.time()), model=model, object="chat.completion",
        choices=[Choice(index=0, message=message, finish_reason=finish_reason(output))],
        usage=usage(prompt_tokens, output),
    ).model_dump(exclude_none=True)
    body["conveyor"] = timeline_extension(output)
    return body


def chunk_event(request_id: str, model: str, created: int, *, content: str | None = None,
                role: str | None = None, finish: str | None = None,
                extension: dict[str, Any] | None = None) -> str:
    """One SSE ``data:`` event holding a ``ChatCompletionChunk`` with one choice."""
    chunk = ChatCompletionChunk(
        id=request_id, created=created, model=model, object="chat.completion.chunk",
        choices=[ChunkChoice(index=0, delta=ChoiceDelta(content=content, role=role), finish_reason=finish)],
    )
    return _event(chunk, extension)


def tool_calls_event(request_id: str, model: str, created: int, calls: list[CallerToolCall]) -> str:
    """The chunk that hands the client its tool calls, each complete, by ``index``."""
    deltas = [ChoiceDeltaToolCall.model_validate({"index": index, **call.as_openai()})
              for index, call in enumerate(calls)]
    chunk = ChatCompletionChunk(
        id=request_id, created=created, model=model, object="chat.completion.chunk",
        choices=[ChunkChoice(index=0, delta=ChoiceDelta(tool_calls=deltas), finish_reason=None)],
    )
    return _event(chunk, None)


def usage_event(request_id: str, model: str, created: int, prompt_tokens: int, output: ConveyorOutput) -> str:
    """The usage chunk of ``stream_options.include_usage``: no choices, only usage."""
    chunk = ChatCompletionChunk(id=request_id, created=created, model=model, object="chat.completion.chunk",
                                choices=[], usage=usage(prompt_tokens, output))
    return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"


def error_event(message: str, *, kind: str = "server_error", code: str | None = None) -> str:
    """An in-stream error (the headers are already sent): the ``openai`` client raises it."""
    return f"data: {json.dumps({'error': {'message': message, 'type': kind, 'code': code}})}\n\n"


def _event(chunk: ChatCompletionChunk, extension: dict[str, Any] | None) -> str:
    if extension is None:
        return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"
    body = chunk.model_dump(exclude_none=True)
    body["conveyor"] = extension
    return f"data: {json.dumps(body)}\n\n"
