"""How tool calls appear in the model's text, and how their results are put back.

A tool is called with a markdown fence when it names ``fence_languages`` (```` ```python ````
for :class:`~conveyor_hf.tools.PythonTool`), otherwise with a tag block named after it
(``<search>`` … ``</search>``), one unit per line. Results go back into the assistant's
text as an ```` ```output ```` block, the way code-interpreter transcripts show them.

:class:`UnitCallHandler` connects a call's body text to the tool: body → the tool's unit
parser → ``ToolCall.feed``; the call's closer → ``ToolCall.close``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from parsers.calls import CallSyntax, fence_syntax, tag_syntax
from parsers.unit import IncrementalParser

from conveyor_hf.hooks import CallHandler
from conveyor_hf.tools.base import Tool, ToolCall, ToolResult

#: The info string of the block that carries a tool's output back to the model.
OUTPUT_FENCE = "output"


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
    else:
        how = f"write {syntax.opener} on its own line, then one input per line, then {syntax.closer}"
    return f"- {tool.name}: {tool.description.strip()} To use it, {how}."


def tool_instructions(tools: Sequence[Tool]) -> str:
    """A system-prompt paragraph describing the tools and how their results come back."""
    lines = ["You can use these tools:"]
    lines += [describe_call(tool) for tool in tools]
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
        for unit in self.parser.close():
            self.call.feed(unit)
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
