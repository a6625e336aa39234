"""Call handlers: one open tool call in the model's text, from its body to its result.

When the call detector sees a call open, the conversation asks for a :class:`CallHandler`
and from then on feeds it the call's body as it is decoded. A handler turns the body into
units for its :class:`~conveyor_hf.tools.base.ToolCall` (the tools start on them at once),
hears when the closer arrives, answers whether a unit failed (early abort), and after
decoding stops finishes the call and renders the text the model reads next.

:class:`UnitCallHandler` serves the native syntaxes (a fence or a tag block whose body the
tool's own parser splits); :class:`JsonCallHandler` serves ``<tool_call>{...}</tool_call>``.
"""

from __future__ import annotations

import abc
import threading
from typing import Any, Callable, Sequence

from parsers.calls import CallSyntax
from parsers.json_object import JsonObjectParser
from parsers.unit import IncrementalParser, Unit

from conveyor_hf.formats import ARGUMENT_KEYS, JSON_CALL, primary_argument, render_result, tool_turns_suffix
from conveyor_hf.tools.base import Tool, ToolCall, ToolResult
from conveyor_hf.tools.caller import CallerCall, CallerToolCall


class CallHandler(abc.ABC):
    """The protocol between a conversation and one open tool call.

    During decoding the conversation calls :meth:`feed` with body text, :meth:`close`
    when the call ends, and reads :attr:`failed` (for ``on_error="abort"``). After the
    conversation stopped, the tool loop calls :meth:`finish` (waits for unfinished tool
    work) and :meth:`render` (the text appended for the model). ``call`` is the tool
    call this handler opened (None if none was, e.g. an unknown tool name), ``unclosed``
    is True when the text ended before the call's closer, ``syntax`` how the call looks.
    ``at_turn_end``: the model goes on writing after the call's closer, and the result
    comes back when its turn ends (parallel tool calls in one turn); otherwise decoding
    stops at the closer and the result follows the call.
    ``span`` is where the call's text (opener to closer) lies in the answer, set by the
    conversation when the call closes.
    """

    syntax: CallSyntax
    call: ToolCall | CallerCall | None = None
    unclosed: bool = False
    at_turn_end: bool = False
    span: tuple[int, int] | None = None

    @abc.abstractmethod
    def feed(self, text: str) -> None:
        """More body text of the call, as decoded; returns at once."""

    @abc.abstractmethod
    def close(self, closed: bool) -> None:
        """The call ended: by its closer (``closed``) or by the end of the text."""

    @property
    def failed(self) -> bool:
        """True once a unit of the call failed (the call may be aborted early)."""
        return False

    @abc.abstractmethod
    def finish(self, *, aborted: bool = False) -> ToolResult:
        """Wait for the call's tool work; ``aborted`` if decoding of it was cut short."""

    @abc.abstractmethod
    def render(self, result: ToolResult, text_so_far: str, *, tokenizer: Any, aborted: bool = False) -> str:
        """The text appended after the call (closing it first if the model did not)."""

    @property
    def tool_name(self) -> str:
        """The name of the tool the call went to ("tool" if it reached none)."""
        tool = getattr(self, "tool", None)
        return tool.name if tool is not None else "tool"

    @property
    def for_caller(self) -> bool:
        """Whether the call went to a tool the caller runs (nothing runs here)."""
        return isinstance(self.call, CallerCall)

    @property
    def caller_request(self) -> CallerToolCall | None:
        """The call to hand to the caller: a well-formed call of a caller tool, else None."""
        return self.call.request if isinstance(self.call, CallerCall) and not self.failed else None

    def needs_closer(self, aborted: bool) -> CallSyntax | None:
        """The syntax whose closer the appended text must write first, if any."""
        return self.syntax if (self.unclosed or aborted) else None


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

    def render(self, result: ToolResult, text_so_far: str, *, tokenizer: Any, aborted: bool = False) -> str:
        """An output block right after the call, in the assistant's turn."""
        return render_result(result, text_so_far, unclosed=self.needs_closer(aborted))


class JsonCallHandler(CallHandler):
    """One ``<tool_call>`` JSON call: the name opens the tool, arguments become units.

    A tool that takes JSON arguments (``tool.json_arguments``) gets each argument as a
    unit (``key`` = argument name). A tool whose parser splits text (Python
    statements, lines) gets its primary string argument split by that parser, so a
    ``code`` argument still runs statement by statement. Problems (malformed JSON, an
    unknown tool, a missing name) end the call with an error the model can read.

    With ``at_turn_end`` the call's tool work starts as in a single call (partial mode:
    as each argument completes) while the model writes the rest of its turn, and the
    result comes back with the turn's other results when the turn ends.
    ``hold_until_finish`` (lazy mode) starts the work only when the turn has ended.
    :meth:`wait_for` orders calls: a ``stateful``/``mutating`` call hands nothing to its
    tool until the previous such call of the turn has finished, so they run in call order
    (``cd`` before ``ls``).
    """

    def __init__(
        self,
        open_tool: Callable[[str], tuple[Tool, ToolCall | CallerCall] | None],
        tool_names: Sequence[str],
        syntax: CallSyntax = JSON_CALL,
        *,
        at_turn_end: bool = False,
        hold_until_finish: bool = False,
    ) -> None:
        self.at_turn_end = at_turn_end
        self.hold_until_finish = hold_until_finish
        self.released = threading.Event()  # set once this handler closed its call itself
        self._held = False
        self._order_lock = threading.Lock()
        self._backlog: list[Unit] | None = None  # units held while an earlier call runs
        self._close_pending = False
        self._earlier: JsonCallHandler | None = None
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
                    self._feed_call(unit)
            self._start()
        else:
            self.released.set()

    def wait_for(self, earlier: "JsonCallHandler | None") -> None:
        """Hand nothing to the tool until ``earlier`` (a call of the same turn) finished.
        Called by ``open_tool`` while this call opens."""
        if earlier is not None:
            self._earlier = earlier
            self._backlog = []

    def _after(self, earlier: "JsonCallHandler") -> None:
        try:
            earlier.released.wait()
            if earlier.call is not None:
                earlier.call.finish()  # already closed by its handler; its result is kept
        finally:  # never leave this call waiting, whatever the earlier one did
            with self._order_lock:
                backlog, self._backlog = self._backlog or [], None
                for unit in backlog:
                    self.call.feed(unit)
                if self._close_pending:
                    self.call.close()
                    self.released.set()

    def _feed_call(self, unit: Unit) -> None:
        with self._order_lock:
            if self._backlog is not None:
                self._backlog.append(unit)
            else:
                self.call.feed(unit)

    def _start(self) -> None:
        """Let the call's work start: now, once an earlier call finished, or (held) at finish."""
        assert self.call is not None
        if self.hold_until_finish and not self.for_caller:  # a caller's call holds no work
            self._held = True
            return
        with self._order_lock:
            if self._backlog is not None:
                self._close_pending = True
                return
        self.call.close()
        self.released.set()

    @property
    def failed(self) -> bool:
        return self.error is not None or (self.call is not None and self.call.failed)

    def finish(self, *, aborted: bool = False) -> ToolResult:
        if self.call is not None:
            if self._held:
                self._held = False
                self.call.close()
                self.released.set()
            self.released.wait()  # an ordered call: its order thread hands over its units first
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

    def render(self, result: ToolResult, text_so_far: str, *, tokenizer: Any, aborted: bool = False) -> str:
        """A ``tool`` turn through the chat template when it has one (and ``tokenizer`` is
        given), else an output block."""
        return render_tool_turns([(self, result)], text_so_far, tokenizer=tokenizer, aborted=aborted)

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
        if self._earlier is not None:
            threading.Thread(target=self._after, args=(self._earlier,), name=f"conveyor-{name}-order",
                             daemon=True).start()
        if not self.tool.json_arguments:
            self._text_parser = self.tool.make_parser()
        for unit in self.early:
            self._to_tool(unit)
        self.early.clear()

    def _to_tool(self, unit: Unit) -> None:
        assert self.tool is not None and self.call is not None
        if self._text_parser is not None and unit.key == primary_argument(self.tool) and isinstance(unit.value, str):
            text = unit.value if unit.value.endswith("\n") else unit.value + "\n"
            for piece in self._text_parser.feed(text):
                self._feed_call(piece)
            return
        self._feed_call(Unit(unit.text, unit.index, key=unit.key, value=unit.value, parent=unit.parent))


def render_tool_turns(results: Sequence[tuple[CallHandler, ToolResult]], text_so_far: str, *,
                      tokenizer: Any, aborted: bool = False) -> str:
    """The results of JSON calls as ``tool`` turns, in call order, through the chat
    template (one turn each, grouped as the template groups them); without a usable tool
    role, or with ``tokenizer`` None, one output block per result in the assistant's turn."""
    bodies = [(h.tool_name, result_body(r)) for h, r in results]
    unclosed = results[-1][0].needs_closer(aborted) if results else None
    suffix = tool_turns_suffix(tokenizer, bodies) if tokenizer is not None else None
    if suffix is None:
        text = ""
        for handler, result in results:
            text += render_result(result, text_so_far + text, unclosed=handler.needs_closer(aborted))
        return text
    return (unclosed.closer if unclosed is not None else "") + suffix


def result_body(result: ToolResult) -> str:
    """What a tool turn holds for ``result``: its output, else its error, never nothing."""
    return result.output.strip("\n") or (f"Error: {result.error}" if result.error else "(no output)")
