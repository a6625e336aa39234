"""Tools the caller runs: function schemas without an implementation here.

A chat client (or any caller of ``generate``) may offer the model functions of its own,
as the OpenAI and transformers ``tools=[{"type": "function", "function": {...}}]``
schemas do. conveyor_hf cannot run them, so it hands their calls back: when the model
calls one (``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``), the answer
ends with stop reason ``"tool_calls"`` and the parsed call, for the caller to run and
send back as a ``tool`` message. The tools conveyor_hf runs itself keep running while
the model decodes, in the same answer.

:class:`CallerTool` describes such a function; :class:`CallerCall` is one call of it in
an answer (it collects the arguments as the model writes them and checks them against
the schema once the call closes); :class:`CallerToolCall` is what the caller receives.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from typing import Any

from jsonschema.exceptions import best_match

from conveyor_hf.tools.base import ToolResult
from conveyor_hf.tools.json_schema import compile_schema
from parsers.unit import Unit

_counter = itertools.count()


@dataclass(frozen=True)
class CallerTool:
    """A function the caller runs, described by its JSON schema.

    Build it with :meth:`from_schema` from the ``{"type": "function", "function":
    {"name", "description", "parameters"}}`` form (or the bare ``function`` object).
    Its arguments are a JSON object (``json_arguments``), checked against
    ``parameters`` when the call closes.
    """

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    json_arguments = True

    @classmethod
    def from_schema(cls, schema: Any) -> "CallerTool":
        """The tool of a function schema; :class:`ValueError` naming what is wrong."""
        if not isinstance(schema, dict):
            raise ValueError(f"a caller tool is a function schema (a dict), got {type(schema).__name__}")
        function = schema.get("function", schema) if schema.get("type", "function") == "function" else None
        if function is None:
            raise ValueError(f"tool type {schema.get('type')!r} is not supported; only 'function' tools are")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise ValueError(f"a function tool needs a non-empty string 'name', got {schema!r}")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise ValueError(f"tool {function['name']!r}: 'parameters' must be a JSON schema object, "
                             f"got {parameters!r}")
        try:
            compile_schema(parameters)
        except ValueError as exc:
            raise ValueError(f"tool {function['name']!r}: 'parameters' is not a valid JSON schema ({exc})") from None
        return cls(function["name"], str(function.get("description") or ""), parameters)

    def schema(self) -> dict[str, Any]:
        """The function schema chat templates take in ``tools=[...]``."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def argument_problem(self, arguments: dict[str, Any]) -> str | None:
        """Why ``arguments`` do not fit this tool's schema (None when they do)."""
        error = best_match(compile_schema(self.parameters).iter_errors(arguments))
        if error is None:
            return None
        where = "/".join(str(part) for part in error.absolute_path)
        return f"arguments of {self.name!r} do not fit its schema{f' at {where}' if where else ''}: {error.message}"


@dataclass
class CallerToolCall:
    """A call the caller must run: its id, the function's name and the arguments."""

    id: str
    name: str
    arguments: dict[str, Any]

    def as_message_call(self) -> dict[str, Any]:
        """The entry of an assistant message's ``tool_calls``, as chat templates take it
        (``arguments`` as an object; the OpenAI wire format sends it as a JSON string)."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def as_openai(self) -> dict[str, Any]:
        """The entry of an OpenAI ``message.tool_calls`` (``arguments`` as a JSON string)."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)}}


class CallerCall:
    """One call of a :class:`CallerTool` in an answer: nothing runs, the arguments are kept.

    It takes the place of a :class:`~conveyor_hf.tools.base.ToolCall` for the JSON call
    handler: ``feed`` receives the argument members as they complete, ``close`` checks
    them against the schema, and :attr:`request` is the call to hand back (None if the
    model's call was unusable: then ``problem`` says why, and the model reads it as the
    call's result and may try again).
    """

    def __init__(self, tool: CallerTool) -> None:
        self.tool = tool
        self.id = f"call_{os.getpid():x}{next(_counter):06x}"
        self.arguments: dict[str, Any] = {}
        self.problem: str | None = None
        self.closed = False

    def feed(self, unit: Unit) -> None:
        if unit.error and self.problem is None:
            self.problem = unit.error
        elif unit.key is not None:
            self.arguments[unit.key] = unit.value

    def close(self) -> None:
        if not self.closed and self.problem is None:
            self.problem = self.tool.argument_problem(self.arguments)
        self.closed = True

    @property
    def failed(self) -> bool:
        return self.problem is not None

    @property
    def request(self) -> CallerToolCall | None:
        """The call to hand to the caller, once closed with arguments that fit."""
        if not self.closed or self.problem is not None:
            return None
        return CallerToolCall(self.id, self.tool.name, dict(self.arguments))

    def finish(self) -> ToolResult:
        """What the model reads when this call is *not* handed over (its problem, or the
        turn was cut short before it could be)."""
        note = self.problem or f"{self.tool.name} was not called: the turn was cut short before it ended"
        return ToolResult("", tool=self.tool.name, error=note)
