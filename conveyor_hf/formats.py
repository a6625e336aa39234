"""How tool calls appear in the model's text, and how their results are put back.

Two families of syntax are recognised at once:

* native: a markdown fence when the tool names ``fence_languages`` (```` ```python ````
  for :class:`~conveyor_hf.tools.PythonTool`), otherwise a tag block named after it
  (``<search>`` … ``</search>``) whose body the tool's own parser splits into units.
  Results go back into the assistant's turn as an ```` ```output ```` block, the way
  code-interpreter transcripts show them.
* JSON, as modern chat templates render tool calls (Hermes, Qwen):
  ``<tool_call>{"name": "search", "arguments": {"query": "…"}}</tool_call>``. The name
  opens the tool's call as soon as it is complete (the tool warms up) and each argument
  is handed over as soon as its value is complete. Results go back as a ``tool`` turn
  through the chat template when it has one (:func:`tool_turn_suffix`).

:class:`UnitCallHandler` and :class:`JsonCallHandler` connect a call's body text to the
tool: body → units → ``ToolCall.feed``; the call's closer → ``ToolCall.close``.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from parsers.calls import CallSyntax, fence_syntax, tag_syntax
from parsers.json_object import JsonObjectParser
from parsers.unit import IncrementalParser, Unit

from conveyor_hf.hooks import CallHandler
from conveyor_hf.tools.base import Tool, ToolCall, ToolResult

#: The info string of the block that carries a tool's output back to the model.
OUTPUT_FENCE = "output"

#: JSON tool calls, as Hermes/Qwen-style chat templates write them.
JSON_CALL = tag_syntax("", "<tool_call>", "</tool_call>")

#: Members of a JSON call that hold the arguments (streamed one by one).
ARGUMENT_KEYS = ("arguments", "parameters")


def syntaxes_for(tool: Tool) -> list[CallSyntax]:
    """The syntaxes that call ``tool``: its fence languages, else a ``<name>`` tag block."""
    languages = tuple(getattr(tool, "fence_languages", ()) or ())
    if languages:
        return [fence_syntax(tool.name, *languages)]
    return [tag_syntax(tool.name, f"<{tool.name}>", f"</{tool.name}>")]


def describe_call(tool: Tool) -> str:
    """One line telling the model how to call ``tool`` (used in the system prompt)."""
    syntax = syntaxes_for(tool)[0]
    if syntax.kind == "fence":
        how = f"write a ```{syntax.languages[0]} code block"
    elif isinstance(tool.make_parser(), JsonObjectParser):
        how = f"write {syntax.opener}{{...JSON arguments...}}{syntax.closer}"
    else:
        how = f"write {syntax.opener} on its own line, then one input per line, then {syntax.closer}"
    return f"- {tool.name}: {tool.description.strip()} To use it, {how}."


def tool_instructions(tools: Sequence[Tool], *, json_calls: bool = False) -> str:
    """A system-prompt paragraph describing the tools and how their results come back."""
    lines = ["You can use these tools:"]
    lines += [describe_call(tool) for tool in tools]
    if json_calls:
        lines.append(
            'You can also call any tool as <tool_call>{"name": "<tool>", "arguments": {...}}</tool_call> '
            "with the arguments of its JSON schema."
        )
    lines.append(
        f"Each call runs while you write it; its result appears right after it in an "
        f"```{OUTPUT_FENCE} block. Use the result to answer."
    )
    return "\n".join(lines)


def render_result(result: ToolResult, text_so_far: str, *, unclosed: CallSyntax | None = None) -> str:
    """The text appended after a call: its closer if the model never wrote one, then
    the output block. Never empty, so the model always sees that the call ran."""
    prefix = ""
    if unclosed is not None:
        prefix = ("" if text_so_far.endswith("\n") else "\n") + unclosed.closer
        text_so_far += prefix
    body = result.output.strip("\n")
    if not body and result.error:
        body = f"Error: {result.error}"
    if not body:
        body = "(no output)"
    lead = "" if text_so_far.endswith("\n") else "\n"
    return f"{prefix}{lead}```{OUTPUT_FENCE}\n{body}\n```\n"


class UnitCallHandler(CallHandler):
    """One open call: routes body text through ``parser`` into ``call``."""

    def __init__(self, tool: Tool, call: ToolCall, parser: IncrementalParser, syntax: CallSyntax) -> None:
        self.tool = tool
        self.call = call
        self.parser = parser
        self.syntax = syntax
        self.unclosed = False

    def feed(self, text: str) -> None:
        for unit in self.parser.feed(text):
            self.call.feed(unit)

    def close(self, closed: bool) -> None:
        units = self.parser.close()
        for unit in units:
            self.call.feed(unit)
        problem = getattr(self.parser, "error", None)
        if problem and not any(r.unit.error for r in self.call.records):
            self.call.feed(Unit("", len(self.call.records), error=problem))  # never lose it
        self.unclosed = not closed
        self.call.close()

    @property
    def failed(self) -> bool:
        return self.call.failed

    def finish(self, *, aborted: bool = False) -> ToolResult:
        """Wait for the call; note in the result how it ended if not by its closer."""
        result = self.call.finish()
        opener = f"{self.syntax.opener}{(self.syntax.languages or ('',))[0]}"
        note = None
        if aborted:
            note = f"stopped early: a part of this {opener} call failed, so decoding of the call was cut short"
        elif self.unclosed:
            note = (
                f"the {opener} call was not closed before the answer ended; "
                "it was closed and its complete parts were run"
            )
        if note is not None:
            result.error = f"{note}; {result.error}" if result.error else note
            result.output = f"{result.output}\n[{note}]".lstrip("\n")
        return result


def primary_argument(tool: Tool) -> str | None:
    """The string argument that carries a text-unit tool's input (``code``, ``query``)."""
    props = tool.parameters.get("properties", {})
    for name in list(tool.parameters.get("required", [])) + list(props):
        if props.get(name, {}).get("type") == "string":
            return name
    return None


class JsonCallHandler(CallHandler):
    """One ``<tool_call>`` JSON call: the name opens the tool, arguments become units.

    A tool whose own parser takes JSON members (``JsonObjectParser``) gets each argument
    as a unit (``key`` = argument name). A tool whose parser splits text (Python
    statements, lines) gets its primary string argument split by that parser, so a
    ``code`` argument still runs statement by statement. Problems (malformed JSON, an
    unknown tool, a missing name) end the call with an error the model can read.
    """

    def __init__(
        self,
        open_tool: Callable[[str], tuple[Tool, ToolCall] | None],
        tool_names: Sequence[str],
        syntax: CallSyntax = JSON_CALL,
    ) -> None:
        self.open_tool = open_tool
        self.tool_names = list(tool_names)
        self.syntax = syntax
        self.parser = JsonObjectParser(expand=ARGUMENT_KEYS)
        self.tool: Tool | None = None
        self.call: ToolCall | None = None
        self.early: list[Unit] = []  # arguments written before the name
        self.error: str | None = None
        self.unclosed = False
        self._text_parser: IncrementalParser | None = None
        self._streamed: set[str] = set()

    def feed(self, text: str) -> None:
        for unit in self.parser.feed(text):
            self._route(unit)

    def close(self, closed: bool) -> None:
        for unit in self.parser.close():
            self._route(unit)
        self.unclosed = not closed
        if self.parser.error and self.error is None:
            self.error = f"malformed tool call JSON: {self.parser.error}"
        if self.call is None and self.error is None:
            self.error = 'the tool call has no "name"; write {"name": "<tool>", "arguments": {...}}'
        if self.call is not None:
            for unit in self.early:
                self._to_tool(unit)
            self.early.clear()
            if self._text_parser is not None:
                for unit in self._text_parser.close():
                    self.call.feed(unit)
            self.call.close()

    @property
    def failed(self) -> bool:
        return self.error is not None or (self.call is not None and self.call.failed)

    def finish(self, *, aborted: bool = False) -> ToolResult:
        if self.call is not None:
            result = self.call.finish()
        else:  # the call never reached a tool (unknown name, malformed JSON)
            result = ToolResult("", tool=self.tool.name if self.tool else "")
        notes = [self.error] if self.error else []
        if aborted and not self.error:
            notes.append("stopped early: a part of this tool call failed")
        if self.unclosed:
            notes.append("the <tool_call> was not closed before the answer ended")
        if notes:
            note = "; ".join(notes)
            result.error = f"{note}; {result.error}" if result.error else note
            result.output = f"{result.output}\nError: {note}".lstrip("\n")
        return result

    def _route(self, unit: Unit) -> None:
        if unit.parent is None and unit.key == "name":
            self._open(unit.value)
        elif unit.parent in ARGUMENT_KEYS:
            self._streamed.add(unit.parent)
            if self.call is None:
                self.early.append(unit)
            else:
                self._to_tool(unit)
        elif unit.parent is None and unit.key in ARGUMENT_KEYS and unit.key not in self._streamed:
            if not isinstance(unit.value, dict):
                self.error = f'"{unit.key}" must be a JSON object of arguments, got {unit.value!r}'

    def _open(self, name: object) -> None:
        if self.tool is not None or self.error is not None:
            return
        if not isinstance(name, str) or name not in self.tool_names:
            self.error = f"unknown tool {name!r}; available tools: {', '.join(self.tool_names)}"
            return
        opened = self.open_tool(name)
        if opened is None:
            self.error = f"tool {name!r} could not be opened"
            return
        self.tool, self.call = opened
        probe = self.tool.make_parser()
        if not isinstance(probe, JsonObjectParser):
            self._text_parser = probe
        for unit in self.early:
            self._to_tool(unit)
        self.early.clear()

    def _to_tool(self, unit: Unit) -> None:
        assert self.tool is not None and self.call is not None
        if self._text_parser is not None and unit.key == primary_argument(self.tool) and isinstance(unit.value, str):
            text = unit.value if unit.value.endswith("\n") else unit.value + "\n"
            for piece in self._text_parser.feed(text):
                self.call.feed(piece)
            return
        self.call.feed(Unit(unit.text, unit.index, key=unit.key, value=unit.value, parent=unit.parent))


def tool_turn_suffix(tokenizer, tool_name: str, content: str) -> str | None:
    """The text that ends the assistant's turn, adds a ``tool`` turn holding ``content``
    and opens the next assistant turn, as the chat template renders it.

    Found by rendering a conversation with a sentinel as the assistant's text, with and
    without the tool turn. None when the template has no usable tool role.
    """
    sentinel = "\u2063CONVEYOR_SENTINEL\u2063"
    base = [{"role": "user", "content": "q"}, {"role": "assistant", "content": sentinel}]
    turn = {"role": "tool", "name": tool_name, "content": content}
    try:
        full = tokenizer.apply_chat_template(base + [turn], tokenize=False, add_generation_prompt=True)
    except Exception:  # templates that reject a tool turn
        return None
    at = full.find(sentinel)
    if at < 0:
        return None
    suffix = full[at + len(sentinel):]
    return suffix if content.strip() in suffix else None


def unique_syntaxes(tools: Iterable[Tool]) -> list[CallSyntax]:
    """All call syntaxes of ``tools``; two tools may not claim the same opener."""
    seen: dict[str, str] = {}
    out: list[CallSyntax] = []
    for tool in tools:
        for syntax in syntaxes_for(tool):
            keys = [f"```{lang}" for lang in syntax.languages] if syntax.kind == "fence" else [syntax.opener]
            for key in keys:
                if key in seen:
                    raise ValueError(
                        f"tools {seen[key]!r} and {tool.name!r} both use {key!r}; "
                        f"give one of them other fence_languages"
                    )
                seen[key] = tool.name
            out.append(syntax)
    return out
