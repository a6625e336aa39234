"""One conversation of the tool loop, independent of who decodes it.

An engine (``conveyor_hf.engines``) decodes; a :class:`Conversation` is fed what it
decodes, one token id (:meth:`Conversation.feed_token`) or one text delta
(:meth:`Conversation.feed_text`) at a time. It runs the call detector and the open
call's handler (the tools start on each complete unit at once) and answers with its
stop reason: ``None`` (go on), ``"call"`` (a call closed: stop decoding this
conversation), ``"abort"`` (a unit failed and ``on_error="abort"``), ``"eos"`` or
``"length"`` (the answer, or its budget, ended). After a stop the tool loop closes the
round (:meth:`close_round`), finishes the calls (:meth:`finish_calls`: waits only for
unfinished tool work and renders each result) and, if the answer goes on, appends the
result (:meth:`append`) and asks the engine to resume from prompt + tokens. A round that
called a tool the caller runs (:mod:`conveyor_hf.tools.caller`) ends the answer instead,
with stop reason ``"tool_calls"`` and the calls in :attr:`Conversation.caller_calls`.

Nothing here knows about ``model.generate``, HTTP or batches: the same object serves the
``generate`` engine (ids, one row of a batch) and remote engines (text deltas).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

from parsers.calls import CallDetector, CallEvent

from conveyor_hf.call_handlers import CallHandler, render_tool_turns, result_body
from conveyor_hf.detokenizer import IncrementalDetokenizer
from conveyor_hf.formats import render_result

if TYPE_CHECKING:
    from conveyor_hf.tools.base import ToolResult
    from conveyor_hf.tools.caller import CallerToolCall

StopReason = Literal["call", "eos", "length", "abort", "error", "cancelled", "tool_calls"]

#: Stop reasons after which the answer goes on once the call's result is appended.
RESUMING: tuple[StopReason, ...] = ("call", "abort")


@dataclass
class ConversationRules:
    """What all conversations of one request share.

    ``open_call(conversation, event)`` returns the handler of a call that just opened;
    ``eos_token_ids`` end an answer (token engines); ``on_text(row, text)`` sees the
    answer's text as the call detector releases it (streaming), without the text of calls
    handed to the caller; ``abort_on_error`` stops a call at its first failed unit;
    once ``cancelled`` is set every conversation stops at its next token (the caller went
    away: a server's client disconnected).
    """

    open_call: Callable[["Conversation", CallEvent], "CallHandler"]
    eos_token_ids: frozenset[int] = frozenset()
    on_text: Callable[[int, str], None] | None = None
    abort_on_error: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class Conversation:
    """Everything one conversation carries across decoding steps and rounds.

    ``prompt`` and ``tokens`` are its ids (without padding): the prompt, then what was
    kept of each round and the ids appended after each call; ``pieces`` is the text of
    the answer (tool results included). ``generated`` counts decoded tokens over the
    whole answer against ``budget``. ``round_index`` counts the rounds it resumed.
    ``caller_calls`` are the calls handed to the caller when the answer stopped with
    ``"tool_calls"``; ``hidden_spans`` where the text of calls of caller tools lies in
    ``text`` (they are not part of :attr:`content`), and ``shown_spans`` where a tool
    result lies that the chat template framed as ``tool`` turns, with the output blocks a
    chat client is shown in its place (the template's special tokens are the model's
    business, not the reader's). ``feed_seconds`` is the time spent in
    :meth:`feed_token` / :meth:`feed_delta` (detokenizing, parsing, starting tool units):
    conveyor_hf's own work inside the engine's decoding loop, which the timeline reports.
    ``token_times`` holds when each token (or text delta) reached the conversation: the
    decoding steps that the benchmark compares between lazy and partial runs.
    """

    row: int
    detector: CallDetector
    detokenizer: IncrementalDetokenizer
    budget: int
    prompt: list[int] = field(default_factory=list)
    generated: int = 0
    tokens: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    handlers: list["CallHandler"] = field(default_factory=list)
    call_open: bool = False  # the last of ``handlers`` is still being written
    stop: StopReason | None = None
    stop_length: int | None = None
    dropped_eos: bool = False
    round_index: int = 0
    rules: ConversationRules | None = None
    error: str | None = None
    ordered_calls: list["CallHandler"] = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)
    turn_start: int = 0  # where the current assistant turn begins in ``text``
    caller_calls: list["CallerToolCall"] = field(default_factory=list)
    hidden_spans: list[tuple[int, int]] = field(default_factory=list)
    shown_spans: list[tuple[int, int, str]] = field(default_factory=list)
    feed_seconds: float = 0.0
    token_times: list[float] = field(default_factory=list)
    _released: int = 0  # how much of ``text`` the call detector has released as events
    _call_start: int = 0  # where the open call's opener begins in ``text``
    _held: list[str] | None = None  # shown text of a JSON call whose tool is not known yet
    _hiding: bool = False  # inside a call of a caller tool: not shown

    @property
    def text(self) -> str:
        """The answer so far, tool results included."""
        return "".join(self.pieces)

    @property
    def handler(self) -> "CallHandler | None":
        """The handler of the call being written now (None between calls)."""
        return self.handlers[-1] if self.call_open else None

    @property
    def content(self) -> str:
        """The answer as a chat client shows it: :attr:`text` without the calls of tools
        the caller runs (those come back as ``tool_calls``), tool results as output blocks."""
        return self.shown_since(0)

    def shown_since(self, start: int) -> str:
        """``text[start:]`` as a chat client shows it (see :attr:`content`)."""
        return _as_shown(self.text, self.hidden_spans, self.shown_spans, start=start)

    def messages(self) -> list[dict[str, Any]]:
        """The answer as chat messages: assistant turns (their text, native tool output
        blocks included) and the ``tool`` turns that came back at each turn's end; the
        last assistant turn carries the ``tool_calls`` handed to the caller."""
        tail = self.shown_since(self.turn_start)
        if not (tail or self.caller_calls or not self.turns):
            return list(self.turns)
        last: dict[str, Any] = {"role": "assistant", "content": tail}
        if self.caller_calls:
            last["tool_calls"] = [call.as_message_call() for call in self.caller_calls]
        return [*self.turns, last]

    @property
    def resumes(self) -> bool:
        """Whether this round's stop lets the answer go on after the results."""
        return self.stop in RESUMING or self.dropped_eos

    # -- decoding ----------------------------------------------------------------------
    def begin_round(self) -> None:
        """Forget the previous round's stop and calls; decoding starts (again)."""
        self.stop, self.stop_length, self.dropped_eos = None, None, False
        self.handlers, self.call_open = [], False
        self.ordered_calls = []

    def feed_token(self, token: int, length: int | None = None) -> StopReason | None:
        """One decoded token id (``length``: the sequence length it brings, for the
        engine's bookkeeping); returns the stop reason, None to go on."""
        begin = time.perf_counter()
        self.token_times.append(begin)
        try:
            return self._feed_token(token, length)
        finally:
            self.feed_seconds += time.perf_counter() - begin

    def _feed_token(self, token: int, length: int | None) -> StopReason | None:
        rules = self._rules()
        if rules.cancelled.is_set():
            self.stop, self.stop_length = "cancelled", length
            return self.stop
        self.generated += 1
        if token in rules.eos_token_ids:
            self.stop, self.stop_length = "eos", length
            return self.stop
        delta = self.detokenizer.push(token)
        if delta:
            self.feed_text(delta)
        if self.stop is None and self.generated >= self.budget:
            self.stop, self.stop_length = "length", length
        elif self.stop == "call":
            self.stop_length = length
        elif rules.abort_on_error and self.handler is not None and self.handler.failed:
            self.stop, self.stop_length = "abort", length
        return self.stop

    def feed_delta(self, text: str) -> StopReason | None:
        """One text delta from an engine that streams text (it may hold several tokens);
        returns the stop reason, None to go on.

        What follows a call's closer in the same delta is dropped: the engine stops
        decoding this conversation there. The engine counts tokens into ``generated``.
        """
        begin = time.perf_counter()
        self.token_times.append(begin)
        try:
            return self._feed_delta(text)
        finally:
            self.feed_seconds += time.perf_counter() - begin

    def _feed_delta(self, text: str) -> StopReason | None:
        rules = self._rules()
        if rules.cancelled.is_set():
            self.stop = "cancelled"
            return self.stop
        self.feed_text(text, cut_after_call=True)
        if self.stop is None and rules.abort_on_error and self.handler is not None and self.handler.failed:
            self.stop = "abort"
        return self.stop

    def feed_text(self, text: str, *, cut_after_call: bool = False) -> None:
        """Route decoded text through the call detector into the open call.

        Token engines feed one token's text: what follows a call's closer inside the same
        token is kept as plain text (``cut_after_call=False``).
        """
        events = self.detector.feed(text)
        if cut_after_call:
            text, events = self._cut_after_close(text, events)
        self.pieces.append(text)
        for event in events:
            at = self._released
            self._released += len(event.text)
            self._dispatch(event, at)

    def end_of_text(self) -> None:
        """No more text this round: flush held text and close a call left open."""
        rest = self.detokenizer.flush()
        if rest:
            self.feed_text(rest)
        if self.stop != "call" and self.detector.in_call:
            for event in self.detector.close():
                at = self._released
                self._released += len(event.text)
                self._dispatch(event, at)

    # -- after a stop ------------------------------------------------------------------
    def close_round(self, new_ids: Sequence[int], *, eos_token_last: bool) -> int:
        """Keep this round's decoded ids; returns how many were kept.

        An EOS written inside an open call closes the call, and an EOS that ends a turn
        whose calls' results come at the turn's end ends only that turn: either way it is
        ignored (the engine masks it, or leaves it out of the next prompt) so the model can
        read the results and go on; ``eos_token_last`` says whether ``new_ids`` end with
        that EOS id (token engines) or the engine only reported it (text engines).
        """
        self.end_of_text()
        self.dropped_eos = self.stop == "eos" and not self._hands_over() and any(
            h.unclosed or getattr(h, "at_turn_end", False) for h in self.handlers)
        drop = int(self.dropped_eos and eos_token_last)
        kept = list(new_ids[: len(new_ids) - drop])
        self.tokens.extend(kept)
        return len(kept)

    def finish_calls(
        self, *, tokenizer, on_result: Callable[["CallHandler", "ToolResult"], None] | None = None,
    ) -> str | None:
        """Wait for this round's calls and render their results.

        Returns the text to append (already added to the answer), None if no call ran.
        Results of calls that stopped decoding follow their call; results that come at the
        turn's end (JSON calls of one turn) follow, together, in call order. ``on_result``
        sees each handler with its result (to record it in the timeline).

        A round that called tools the caller runs ends the answer (stop reason
        ``"tool_calls"``): the calls go to :attr:`caller_calls`, and the results of this
        round's own tools are appended as output blocks in the assistant's turn (a client
        that sends the turn back sends them with it).
        """
        if not self.handlers:
            return None
        aborted = self.stop == "abort"
        handing_over = self._hands_over()
        finished = []
        for handler in self.handlers:
            if handing_over and handler.caller_request is not None:
                self.caller_calls.append(handler.caller_request)
                continue
            result = handler.finish(aborted=aborted)
            if on_result is not None:
                on_result(handler, result)
            finished.append((handler, result))
        if handing_over:
            self.stop = "tool_calls"
            appended = ""
            for handler, result in finished:
                appended += render_result(result, self.text + appended, unclosed=handler.needs_closer(aborted))
            self.pieces.append(appended)
            return appended
        appended = ""
        for handler, result in finished:
            if not handler.at_turn_end:
                appended += self._rendered(
                    lambda tok, so_far: handler.render(result, so_far, tokenizer=tok, aborted=aborted),
                    appended, tokenizer)
        at_end = [(h, r) for h, r in finished if h.at_turn_end]
        if at_end:
            turn_text = self.text + appended
            appended += self._rendered(
                lambda tok, so_far: render_tool_turns(at_end, so_far, tokenizer=tok, aborted=aborted),
                appended, tokenizer)
            self.turns.append({"role": "assistant", "content": turn_text[self.turn_start:]})
            self.turns += [{"role": "tool", "name": h.tool_name, "content": result_body(r)} for h, r in at_end]
        self.pieces.append(appended)
        if at_end:
            self.turn_start = len(self.text)
        return appended

    def append(self, text: str, ids: Sequence[int]) -> None:
        """Account for ``text`` (as ``ids``) appended after a call: not parsed, not
        counted against the budget; decoding resumes after it."""
        self.tokens.extend(ids)
        self.detector.skip(text)
        self._released = len(self.text)
        self.detokenizer.restart(self.prompt + self.tokens)
        self.round_index += 1

    # -- internals ---------------------------------------------------------------------
    def _rendered(self, render: Callable[[Any, str], str], appended: str, tokenizer: Any) -> str:
        """``render(tokenizer, text_so_far)``: a result as the model reads it, to append
        after ``appended``. Where the chat template framed it as ``tool`` turns, the same
        result as output blocks (``render(None, …)``) is what a client is shown there."""
        so_far = self.text + appended
        text = render(tokenizer, so_far)
        shown = render(None, so_far)
        if shown != text:
            start = len(so_far)
            self.shown_spans.append((start, start + len(text), shown))
        return text

    def _rules(self) -> ConversationRules:
        if self.rules is None:
            raise RuntimeError(f"conversation {self.row} has no rules; the engine must bind them before decoding")
        return self.rules

    def _hands_over(self) -> bool:
        """Whether this round ends the answer by handing calls to the caller: it called a
        caller tool well, and the turn ended (``eos``) or a call stopped decoding."""
        return self.stop in ("eos", "call") and any(
            getattr(h, "caller_request", None) is not None for h in self.handlers)

    def _dispatch(self, event: CallEvent, at: int) -> None:
        """Route one detector event (it starts at ``at`` in :attr:`text`), then show it."""
        handler = self.handler
        if self.stop == "call":  # text after the closer in the same token: kept as text only
            self._show(event.text)
            return
        if event.kind == "open":
            handler = self._rules().open_call(self, event)
            self.handlers.append(handler)
            self.call_open = True
            self._call_start = at
            if event.syntax is not None and event.syntax.json_body:
                self._held = []  # shown once its tool is known not to be the caller's
        elif event.kind == "body" and handler is not None:
            handler.feed(event.text)
        elif event.kind == "close" and handler is not None:
            self.call_open = False
            handler.close(event.closed)
            handler.span = (self._call_start, at + len(event.text))
            if getattr(handler, "for_caller", False):
                self.hidden_spans.append(handler.span)
            if event.closed and not getattr(handler, "at_turn_end", False):
                self.stop = "call"
        self._show_call_text(event, handler)

    def _show_call_text(self, event: CallEvent, handler: CallHandler | None) -> None:
        """Show ``event``'s text unless it belongs to a call of a caller tool; a JSON call's
        text is held until its tool is known."""
        if self._held is not None:
            self._held.append(event.text)
            if getattr(handler, "for_caller", False):
                self._held, self._hiding = None, True
            elif handler is None or event.kind == "close" or getattr(handler, "tool", None) is not None \
                    or getattr(handler, "error", None) is not None:
                held, self._held = "".join(self._held), None
                self._show(held)
        elif not self._hiding:
            self._show(event.text)
        if event.kind == "close":
            self._held, self._hiding = None, False

    def _show(self, text: str) -> None:
        on_text = self._rules().on_text
        if on_text is not None and text:
            on_text(self.row, text)

    def _cut_after_close(self, text: str, events: list[CallEvent]) -> tuple[str, list[CallEvent]]:
        """``text`` up to the end of the first closer it completes (all of it if none), and
        the events up to that closer."""
        if self.stop == "call":
            return text, events
        for at, event in enumerate(events):
            if event.kind == "close" and event.closed:
                after = sum(len(e.text) for e in events[at + 1:]) + self.detector.drop_held()
                return text[: max(0, len(text) - after)], events[: at + 1]
        return text, events


def _as_shown(text: str, hidden: Sequence[tuple[int, int]], shown: Sequence[tuple[int, int, str]], *,
              start: int = 0) -> str:
    """``text[start:]`` with the ``hidden`` spans cut out and each ``shown`` span
    ``(begin, end, replacement)`` replaced (offsets into ``text``; spans never overlap)."""
    kept, at = [], start
    for begin, end, replacement in sorted([(b, e, "") for b, e in hidden] + list(shown)):
        if end <= at:
            continue
        kept.append(text[at:max(at, begin)])
        if begin >= at:
            kept.append(replacement)
        at = end
    kept.append(text[at:])
    return "".join(kept)
