"""Checking a chat-completions request against the ``openai`` types and what this server honours.

The field names and their types come from the ``openai`` package
(``CompletionCreateParams`` and ``ChatCompletionMessageParam``), as ``transformers serve``
does: a field that is not part of the API is refused as unknown; a field of the API that
this server cannot honour is refused by name with the reason (a silently ignored
``logprobs`` or ``n`` would give the client a wrong answer). Fields sent at their no-op
value (``n: 1``, ``presence_penalty: 0``, ``null`` …) are accepted. What passes becomes a
:class:`ChatRequest`: ``{"role", "content"}`` messages (an assistant turn may carry the
``tool_calls`` it made, and ``tool`` messages their results), the client's own function
``tools`` and the ``generate`` keywords of the request.
"""

from __future__ import annotations

import functools
import json
import typing
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from conveyor_hf.server.errors import APIError
from conveyor_hf.tools.caller import CallerTool

#: Fields this server honours (for ``seed`` and ``stop``: only with a remote engine).
SUPPORTED = frozenset({
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "seed", "stop", "user", "tools", "tool_choice", "parallel_tool_calls",
})

#: Fields of the API accepted when sent at a value that asks for nothing.
NO_OP_VALUES: dict[str, tuple[Any, ...]] = {
    "n": (1,), "logprobs": (False,), "presence_penalty": (0,), "frequency_penalty": (0,),
    "logit_bias": ({},), "store": (False,), "functions": ([],), "metadata": ({},), "service_tier": ("auto", "default"),
    "modalities": (["text"],), "response_format": ({"type": "text"},),
}

#: Why a field of the API cannot be honoured, when the reason is not obvious.
REASONS = {
    "functions": "functions is the deprecated form of tools; send your functions as tools",
    "function_call": "function_call is the deprecated form of tool_choice; send tool_choice",
    "n": "one answer per request (each answer runs its own tools); send n requests",
    "logprobs": "log-probabilities are not returned",
    "top_logprobs": "log-probabilities are not returned",
    "response_format": "structured output is not supported",
    "presence_penalty": "penalties are not supported",
    "frequency_penalty": "penalties are not supported",
    "logit_bias": "logit_bias is not supported",
    "audio": "only text is supported",
    "modalities": "only text is supported",
}

#: ``tool_choice`` values honoured: the model decides, or it is offered no client tools.
TOOL_CHOICES = ("auto", "none")

#: ``generate`` keywords only a remote engine takes (the completions API carries them).
REMOTE_ONLY = {"seed": "seed", "stop": "stop"}

MAX_STOP_SEQUENCES = 4


@dataclass
class ChatRequest:
    """A validated request: plain messages and how to decode them.

    ``messages`` are ``{"role", "content": str}`` dicts (``developer`` becomes
    ``system``; an assistant message may carry ``tool_calls`` with their arguments as
    objects, a ``tool`` message its ``tool_call_id`` and the function's ``name``);
    ``tools`` are the client's functions offered to the model (their calls come back as
    ``tool_calls``); ``parallel_tool_calls`` is None when the client left it to the
    server; ``max_tokens`` is None when the client set no limit; ``generate_kwargs`` are
    the sampling keywords for ``ConveyorGenerator.generate``.
    """

    messages: list[dict[str, Any]]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    model: str | None = None
    tools: list[CallerTool] = field(default_factory=list)
    parallel_tool_calls: bool | None = None
    generate_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestPolicy:
    """What this server honours: the model id it serves, whether the engine is remote, and
    the names of the tools it runs itself (a client's function may not take one)."""

    model_id: str
    remote: bool = False
    server_tools: tuple[str, ...] = ()


def validate_request(body: Any, policy: RequestPolicy) -> ChatRequest:
    """The :class:`ChatRequest` of a parsed JSON ``body``, or :class:`APIError` (400/404)
    naming every field that is unknown, malformed or cannot be honoured."""
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    known = _api_fields()
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise APIError(400, f"unknown field{'s' * (len(unknown) > 1)} {_names(unknown)}: not part of the "
                            "chat completions API; remove them", param=unknown[0], code="unknown_field")
    sent = {key: value for key, value in body.items() if value is not None}
    _refuse_unsupported(sent, policy)
    for key in sorted(set(sent) & SUPPORTED - {"messages", "tools", "tool_choice"}):
        sent[key] = _check_type(key, sent[key], known[key])  # as the API types read it ("false" is False)
    if "model" in sent and sent["model"] != policy.model_id:
        raise APIError(404, f"model {sent['model']!r} is not served here; this server serves "
                            f"{policy.model_id!r} (see GET /v1/models)", param="model", code="model_not_found")
    request = ChatRequest(messages=_messages(body.get("messages")), model=sent.get("model"))
    request.stream = bool(sent.get("stream", False))
    options = sent.get("stream_options") or {}
    if options and not request.stream:
        raise APIError(400, "stream_options is only allowed with stream: true", param="stream_options")
    request.include_usage = bool(options.get("include_usage", False))
    request.max_tokens = _max_tokens(sent)
    request.generate_kwargs = _sampling(sent)
    request.tools = _client_tools(sent, policy)
    if "parallel_tool_calls" in sent:
        request.parallel_tool_calls = bool(sent["parallel_tool_calls"])
    return request


def _client_tools(sent: dict[str, Any], policy: RequestPolicy) -> list[CallerTool]:
    """The client's functions the model is offered (none with ``tool_choice: "none"``)."""
    raw = sent.get("tools", [])
    if not isinstance(raw, list):
        raise APIError(400, f"tools must be a list of function tools, got {type(raw).__name__}", param="tools")
    tools = []
    for index, schema in enumerate(raw):
        try:
            tools.append(CallerTool.from_schema(schema))
        except ValueError as exc:
            raise APIError(400, f"tools[{index}]: {exc}", param=f"tools[{index}]") from None
    names = [tool.name for tool in tools]
    for name in names:
        if names.count(name) > 1:
            raise APIError(400, f"tools: the function name {name!r} is used twice; names must be unique",
                           param="tools")
        if name in policy.server_tools:
            raise APIError(400, f"tools: {name!r} is a tool this server runs itself; give your function another "
                                "name", param="tools")
    choice = sent.get("tool_choice", "auto")
    if choice not in TOOL_CHOICES:
        raise APIError(400, f"tool_choice={choice!r} cannot be honoured: this server does not constrain decoding "
                            "to a tool call; send 'auto' (the model decides) or 'none'", param="tool_choice",
                       code="unsupported_field")
    return [] if choice == "none" else tools


def _refuse_unsupported(sent: dict[str, Any], policy: RequestPolicy) -> None:
    refused = []
    for key, value in sent.items():
        if key in SUPPORTED:
            if key in REMOTE_ONLY and not policy.remote:
                refused.append((key, f"{key} is only supported with a remote engine (--engine URL)"))
            continue
        if value in NO_OP_VALUES.get(key, ()):
            continue
        refused.append((key, REASONS.get(key, f"{key} is not supported by this server")))
    if not refused:
        return
    if any(key in ("tools", "functions") for key, _ in refused):  # the one a client most needs to see first
        refused.sort(key=lambda item: item[0] not in ("tools", "functions"))
    names = _names([key for key, _ in refused])
    reasons = "; ".join(dict.fromkeys(reason for _, reason in refused))
    raise APIError(400, f"this server cannot honour {names}: {reasons}", param=refused[0][0],
                   code="unsupported_field")


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """``value`` checked against the API's type of ``key`` and converted to it."""
    try:
        return _adapter(key, annotation).validate_python(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise APIError(400, f"{key}={value!r} is invalid: {first['msg']}", param=key) from None


def _max_tokens(sent: dict[str, Any]) -> int | None:
    if "max_tokens" in sent and "max_completion_tokens" in sent \
            and sent["max_tokens"] != sent["max_completion_tokens"]:
        raise APIError(400, "max_tokens and max_completion_tokens disagree; send one of them",
                       param="max_completion_tokens")
    key = "max_completion_tokens" if "max_completion_tokens" in sent else "max_tokens"
    if key not in sent:
        return None
    value = int(sent[key])
    if value < 1:
        raise APIError(400, f"{key}={value} must be at least 1", param=key)
    return value


def _sampling(sent: dict[str, Any]) -> dict[str, Any]:
    """``generate`` keywords: greedy unless a temperature above 0 is asked for."""
    temperature = float(sent.get("temperature", 0.0))
    if not 0.0 <= temperature <= 2.0:
        raise APIError(400, f"temperature={temperature:g} must be between 0 and 2", param="temperature")
    kwargs: dict[str, Any] = {"do_sample": temperature > 0}
    top_p = float(sent.get("top_p", 1.0))
    if not 0.0 < top_p <= 1.0:  # checked even where greedy decoding will not use it
        raise APIError(400, f"top_p={top_p:g} must be above 0 and at most 1", param="top_p")
    if temperature > 0:
        kwargs["temperature"] = temperature
        if "top_p" in sent:
            kwargs["top_p"] = top_p
    if "seed" in sent:
        kwargs["seed"] = int(sent["seed"])
    if "stop" in sent:
        stop = [sent["stop"]] if isinstance(sent["stop"], str) else list(sent["stop"])
        if len(stop) > MAX_STOP_SEQUENCES or not all(stop):
            raise APIError(400, f"stop={sent['stop']!r}: give 1 to {MAX_STOP_SEQUENCES} non-empty strings",
                           param="stop")
        kwargs["stop"] = stop
    return kwargs


def _messages(raw: Any) -> list[dict[str, Any]]:
    """``{"role", "content"}`` messages (with ``tool_calls`` / ``tool_call_id`` where the
    client sent them), each checked against the openai type."""
    if raw is None:
        raise APIError(400, "messages is required: a list of {'role', 'content'} objects", param="messages")
    if not isinstance(raw, list) or not raw:
        raise APIError(400, "messages must be a non-empty list of {'role', 'content'} objects", param="messages")
    messages = []
    for index, message in enumerate(raw):
        where = f"messages[{index}]"
        try:
            _message_adapter().validate_python(message)
        except ValidationError as exc:
            raise APIError(400, f"{where} is not a chat message: {_first_error(exc, message)}",
                           param=where) from None
        role = message["role"]
        if role == "function" or message.get("function_call"):
            raise APIError(400, f"{where}: function messages and function_call are the deprecated forms of tool "
                                "messages and tool_calls; send those", param=where)
        allowed = {"role", "content", *(("tool_calls",) if role == "assistant" else ()),
                   *(("tool_call_id",) if role == "tool" else ())}
        extra = sorted(set(k for k, v in message.items() if v is not None) - allowed)
        if extra:
            raise APIError(400, f"{where}: {_names(extra)} cannot be honoured (the chat template renders only "
                                "role and content, and the tool calls of a turn); remove them",
                           param=f"{where}.{extra[0]}")
        out: dict[str, Any] = {"role": "system" if role == "developer" else role,
                               "content": _text(message.get("content"), where)}
        if message.get("tool_calls"):
            out["tool_calls"] = [_tool_call(call, f"{where}.tool_calls[{i}]")
                                 for i, call in enumerate(message["tool_calls"])]
        if role == "tool":
            out["tool_call_id"] = message["tool_call_id"]
            name = _called_name(messages, message["tool_call_id"])
            if name is not None:
                out["name"] = name
        messages.append(out)
    return messages


def _tool_call(call: dict[str, Any], where: str) -> dict[str, Any]:
    """An assistant's tool call with its arguments as an object (what chat templates take)."""
    function = call.get("function") or {}
    text = function.get("arguments") or "{}"
    try:
        arguments = json.loads(text)
    except json.JSONDecodeError as exc:
        raise APIError(400, f"{where}.function.arguments is not JSON ({exc}); send the arguments as a JSON "
                            "object in a string", param=where) from None
    return {"id": call.get("id"), "type": "function", "function": {"name": function.get("name"), "arguments": arguments}}


def _called_name(messages: list[dict[str, Any]], call_id: str) -> str | None:
    """The function name of the earlier tool call ``call_id`` answers (None if not found)."""
    for message in reversed(messages):
        for call in message.get("tool_calls", ()):
            if call.get("id") == call_id:
                return call["function"]["name"]
    return None


def _text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for index, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise APIError(400, f"{where}.content[{index}] is a {kind!r} part; only text parts are supported",
                           param=f"{where}.content")
        parts.append(str(part.get("text", "")))
    return "".join(parts)


def _first_error(exc: ValidationError, message: Any) -> str:
    """The error of the message type the ``role`` asks for (not of every other member
    of the union)."""
    role = message.get("role") if isinstance(message, dict) else None
    if role not in _ROLE_TYPES:
        return f"role {role!r} is not one of {', '.join(_ROLE_TYPES)}"
    errors = [e for e in exc.errors() if e["loc"] and e["loc"][0] == _ROLE_TYPES[role]] or exc.errors()
    first = errors[0]
    return f"{'.'.join(str(p) for p in first['loc'][1:]) or 'value'}: {first['msg']}"


#: The openai message type of each role (the members of ``ChatCompletionMessageParam``).
_ROLE_TYPES = {
    "system": "ChatCompletionSystemMessageParam", "developer": "ChatCompletionDeveloperMessageParam",
    "user": "ChatCompletionUserMessageParam", "assistant": "ChatCompletionAssistantMessageParam",
    "tool": "ChatCompletionToolMessageParam", "function": "ChatCompletionFunctionMessageParam",
}


def _names(keys: list[str]) -> str:
    return ", ".join(repr(k) for k in keys)


@functools.lru_cache(maxsize=1)
def _api_fields() -> dict[str, Any]:
    """Field name → type annotation of the openai chat completions request."""
    from openai.types.chat.completion_create_params import CompletionCreateParamsBase

    hints = dict(typing.get_type_hints(CompletionCreateParamsBase))
    hints["stream"] = typing.Optional[bool]
    return hints


@functools.lru_cache(maxsize=None)
def _adapter(key: str, annotation: Any) -> TypeAdapter:
    return TypeAdapter(annotation)


@functools.lru_cache(maxsize=1)
def _message_adapter() -> TypeAdapter:
    from openai.types.chat import ChatCompletionMessageParam

    return TypeAdapter(ChatCompletionMessageParam)
