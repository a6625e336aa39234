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

The handlers that connect a call's body text to its tool live in
:mod:`conveyor_hf.call_handlers`.
"""

from __future__ import annotations

import importlib
import json
import warnings
from typing import Any, Iterable, Sequence

from parsers.calls import CallSyntax, fence_syntax, tag_syntax

from conveyor_hf.tools.base import Tool, ToolResult
from conveyor_hf.tools.caller import CallerTool

#: The info string of the block that carries a tool's output back to the model.
OUTPUT_FENCE = "output"

#: JSON tool calls, as Hermes/Qwen-style chat templates write them.
JSON_CALL = tag_syntax("", "<tool_call>", "</tool_call>", json_body=True)

#: Members of a JSON call that hold the arguments (streamed one by one).
ARGUMENT_KEYS = ("arguments", "parameters")


def syntaxes_for(tool: Tool) -> list[CallSyntax]:
    """The syntaxes that call ``tool``: its fence languages, else a ``<name>`` tag block."""
    languages = tuple(getattr(tool, "fence_languages", ()) or ())
    if languages:
        return [fence_syntax(tool.name, *languages)]
    return [tag_syntax(tool.name, f"<{tool.name}>", f"</{tool.name}>")]


def describe_call(tool: Tool | CallerTool) -> str:
    """One line telling the model how to call ``tool`` (used in the system prompt)."""
    if isinstance(tool, CallerTool):  # reached by JSON calls only
        how = (f'write {JSON_CALL.opener}{{"name": "{tool.name}", "arguments": {{...JSON arguments...}}}}'
               f"{JSON_CALL.closer}")
        about = f"{tool.description.strip()} " if tool.description.strip() else ""
        return f"- {tool.name}: {about}To use it, {how}."
    syntax = syntaxes_for(tool)[0]
    if syntax.kind == "fence":
        how = f"write a ```{syntax.languages[0]} code block"
    elif tool.json_arguments:
        how = f"write {syntax.opener}{{...JSON arguments...}}{syntax.closer}"
    else:
        how = f"write {syntax.opener} on its own line, then one input per line, then {syntax.closer}"
    return f"- {tool.name}: {tool.description.strip()} To use it, {how}."


def tool_instructions(tools: Sequence[Tool], *, json_calls: bool = False,
                      caller_tools: Sequence[CallerTool] = ()) -> str:
    """A system-prompt paragraph describing the tools and how their results come back.
    ``caller_tools`` are the caller's functions: their results come back as tool messages."""
    lines = ["You can use these tools:"]
    lines += [describe_call(tool) for tool in [*tools, *caller_tools]]
    if json_calls and tools:
        lines.append(
            'You can also call any tool as <tool_call>{"name": "<tool>", "arguments": {...}}</tool_call> '
            "with the arguments of its JSON schema."
        )
    if tools:
        lines.append(
            f"Each call runs while you write it; its result appears right after it in an "
            f"```{OUTPUT_FENCE} block. Use the result to answer."
        )
    if caller_tools:
        names = ", ".join(tool.name for tool in caller_tools)
        lines.append(f"The results of {names} come back in a tool message after your turn ends.")
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


def call_text(name: str, arguments: Any) -> str:
    """A JSON call of ``name`` as the model writes it (``arguments``: an object, or its
    JSON text as the OpenAI API sends it)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            pass  # written as sent: the model sees what the caller gave
    if isinstance(arguments, str):
        return f'{JSON_CALL.opener}{{"name": {json.dumps(name)}, "arguments": {arguments}}}{JSON_CALL.closer}'
    body = json.dumps({"name": name, "arguments": arguments if arguments is not None else {}}, ensure_ascii=False)
    return f"{JSON_CALL.opener}{body}{JSON_CALL.closer}"


def primary_argument(tool: Tool) -> str | None:
    """The string argument that carries a text-unit tool's input (``code``, ``query``)."""
    props = tool.parameters.get("properties", {})
    for name in list(tool.parameters.get("required", [])) + list(props):
        if props.get(name, {}).get("type") == "string":
            return name
    return None


def tool_turn_suffix(tokenizer, tool_name: str, content: str) -> str | None:
    """The text that ends the assistant's turn, adds a ``tool`` turn holding ``content``
    and opens the next assistant turn, as the chat template renders it (None when the
    template has no usable tool role)."""
    return tool_turns_suffix(tokenizer, [(tool_name, content)])


def tool_turns_suffix(tokenizer, turns: Sequence[tuple[str, str]]) -> str | None:
    """The text that ends the assistant's turn, adds one ``tool`` turn per
    ``(tool name, content)`` in order, and opens the next assistant turn, as the chat
    template renders them (templates that group tool results are honoured).

    Found by rendering a conversation with a sentinel as the assistant's text, with the
    tool turns after it. None when the template has no usable tool role.
    """
    sentinel = "\u2063CONVEYOR_SENTINEL\u2063"
    base = [{"role": "user", "content": "q"}, {"role": "assistant", "content": sentinel}]
    tool_turns = [{"role": "tool", "name": name, "content": content} for name, content in turns]
    try:
        full = tokenizer.apply_chat_template(base + tool_turns, tokenize=False, add_generation_prompt=True)
    except Exception:  # templates that reject a tool turn
        return None
    at = full.find(sentinel)
    if at < 0:
        return None
    suffix = full[at + len(sentinel):]
    return suffix if all(content.strip() in suffix for _, content in turns) else None


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


def __getattr__(name: str) -> Any:
    # The handlers moved to conveyor_hf.call_handlers; importable from here until then.
    if name in ("UnitCallHandler", "JsonCallHandler", "CallHandler"):
        warnings.warn(f"conveyor_hf.formats.{name} moved to conveyor_hf.call_handlers.{name}; import it from there",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("conveyor_hf.call_handlers"), name)
    raise AttributeError(f"module 'conveyor_hf.formats' has no attribute {name!r}")
