"""Find tool calls in a stream of model text.

A :class:`CallDetector` is fed the text deltas of one answer and splits them into
events: ``text`` outside any call, ``open`` (the opener, e.g. ```` ```python\\n ````),
``body`` (the call's content, to be fed to the tool's unit parser) and ``close`` (the
closer). Concatenating the texts of all events gives back the fed text.

Two kinds of syntax are understood:

* fences: a line starting with ```` ``` ```` and an info string; the first word of the
  info string picks the tool (```` ```python ```` and ```` ```py ```` → ``python``). A fence
  whose language is not a tool (```` ```bash ````) is plain text, closer included.
  A call closes at the first line starting with ```` ``` ````; the closer is emitted as
  soon as its three backticks arrive, so decoding can stop without waiting for a newline.
* tags: a literal opener and closer anywhere in the text (``<tool_call>`` …
  ``</tool_call>``, ``<search>`` … ``</search>``).

Text that might be the start of an opener or closer is held back until the next feed
decides it, so the held text is never more than one opener long.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

EventKind = Literal["text", "open", "body", "close"]

_FENCE = "```"
_MAX_INFO = 200  # an info string longer than this is not a fence opener


@dataclass(frozen=True)
class CallSyntax:
    """How one kind of call looks. Build with :func:`fence_syntax` or :func:`tag_syntax`.

    ``tool`` is the tool the call goes to ("" when the body names it, as JSON calls do).
    For fences ``languages`` are the info-string words that open it. ``json_body``: the
    body is JSON, so a closer inside a JSON string (``"</tool_call>"`` as an argument
    value) does not end the call.
    """

    tool: str
    kind: Literal["fence", "tag"]
    opener: str = _FENCE
    closer: str = _FENCE
    languages: tuple[str, ...] = ()
    json_body: bool = False


def fence_syntax(tool: str, *languages: str) -> CallSyntax:
    """A markdown fence call: ``fence_syntax("python", "python", "py")``."""
    if not languages:
        raise ValueError(f"fence_syntax({tool!r}) needs at least one language, e.g. 'python'")
    return CallSyntax(tool=tool, kind="fence", languages=tuple(lang.lower() for lang in languages))


def tag_syntax(tool: str, opener: str, closer: str, *, json_body: bool = False) -> CallSyntax:
    """A tag call: ``tag_syntax("", "<tool_call>", "</tool_call>", json_body=True)``."""
    if not opener or not closer:
        raise ValueError(f"tag_syntax({tool!r}) needs a non-empty opener and closer")
    return CallSyntax(tool=tool, kind="tag", opener=opener, closer=closer, json_body=json_body)


@dataclass(frozen=True)
class CallEvent:
    """One piece of the stream. ``closed`` is False on a ``close`` event made by
    :meth:`CallDetector.close` for a call the text never closed."""

    kind: EventKind
    text: str
    tool: str = ""
    syntax: CallSyntax | None = None
    closed: bool = True


class CallDetector:
    """Streaming splitter of model text into text and tool-call events. Never raises."""

    def __init__(self, syntaxes: Iterable[CallSyntax]) -> None:
        self.syntaxes = tuple(syntaxes)
        self._fences: dict[str, CallSyntax] = {}
        for syntax in self.syntaxes:
            for language in syntax.languages:
                self._fences[language] = syntax
        self._tags = [s for s in self.syntaxes if s.kind == "tag"]
        self.reset()

    def reset(self) -> None:
        """Forget everything; the next text starts a fresh answer at a line start."""
        self._buf = ""
        self._state: Literal["outside", "info", "call", "other_fence"] = "outside"
        self._syntax: CallSyntax | None = None
        self._line_start = True
        self._events: list[CallEvent] = []
        self._in_string = self._escaped = False  # JSON string state of a json_body call

    @property
    def in_call(self) -> bool:
        """True while a call is open (its opener seen, its closer not yet)."""
        return self._state == "call"

    @property
    def open_syntax(self) -> CallSyntax | None:
        """The syntax of the open call, if any."""
        return self._syntax if self._state == "call" else None

    def skip(self, text: str) -> None:
        """Account for text appended by the caller (a tool result) that must not be
        parsed: only the line-start state is updated."""
        if text:
            self._line_start = text.endswith("\n")

    def drop_held(self) -> int:
        """Forget text fed but not yet emitted (held while it may start an opener or a
        closer); returns how many characters were dropped. For callers that stop
        reading the stream at a call's closer."""
        held, self._buf = len(self._buf), ""
        return held

    def feed(self, text: str) -> list[CallEvent]:
        """Consume a text delta; return the events it completed."""
        self._buf += text
        while self._buf and self._step():
            pass
        return self._take()

    def close(self) -> list[CallEvent]:
        """End of the answer: flush held text; an open call gets an unclosed ``close``."""
        rest, self._buf = self._buf, ""
        if self._state == "call" and self._syntax is not None:
            self._emit("body", rest)
            self._events.append(CallEvent("close", "", self._syntax.tool, self._syntax, closed=False))
        else:
            self._emit("text", rest)
        self._state, self._syntax = "outside", None
        return self._take()

    # -- internals -------------------------------------------------------------------
    def _take(self) -> list[CallEvent]:
        events, self._events = self._events, []
        merged: list[CallEvent] = []
        for event in events:
            if merged and event.kind in ("text", "body") and merged[-1].kind == event.kind:
                merged[-1] = CallEvent(event.kind, merged[-1].text + event.text, event.tool, event.syntax)
            else:
                merged.append(event)
        return merged

    def _emit(self, kind: EventKind, text: str, syntax: CallSyntax | None = None) -> None:
        if not text and kind in ("text", "body"):
            return
        syntax = syntax if syntax is not None else (self._syntax if kind != "text" else None)
        self._events.append(CallEvent(kind, text, syntax.tool if syntax else "", syntax))
        if text:
            self._line_start = text.endswith("\n")

    def _consume(self, n: int) -> str:
        head, self._buf = self._buf[:n], self._buf[n:]
        return head

    def _step(self) -> bool:
        """Advance the state machine once; False when more input is needed."""
        if self._state == "outside":
            return self._step_outside()
        if self._state == "info":
            return self._step_info()
        if self._state == "call" and self._syntax is not None and self._syntax.kind == "tag":
            return self._step_tag_body(self._syntax)
        return self._step_fence_body()

    def _step_outside(self) -> bool:
        full, partial = _find_fence(self._buf, self._line_start) if self._fences else (None, None)
        full_pos = full[0] if full else None
        tag_hit: CallSyntax | None = None
        for syntax in self._tags:
            pos = self._buf.find(syntax.opener)
            if pos >= 0 and (full_pos is None or pos < full_pos):
                full_pos, tag_hit, full = pos, syntax, None
            held = _partial_suffix(self._buf, syntax.opener)
            if held is not None and (partial is None or held < partial):
                partial = held
        if partial is not None and (full_pos is None or partial < full_pos):
            self._emit("text", self._consume(partial))
            return False
        if full_pos is None:
            self._emit("text", self._consume(len(self._buf)))
            return False
        self._emit("text", self._consume(full_pos))
        if tag_hit is not None:
            self._syntax, self._state = tag_hit, "call"
            self._emit("open", self._consume(len(tag_hit.opener)), tag_hit)
        else:
            self._state = "info"
        return True

    def _step_info(self) -> bool:
        newline = self._buf.find("\n")
        if newline < 0:
            if len(self._buf) > _MAX_INFO:
                self._state = "outside"
                self._emit("text", self._consume(len(self._buf)))
            return False
        line = self._consume(newline + 1)
        info = line.strip()[len(_FENCE):].strip()
        language = info.split()[0].lower() if info else ""
        syntax = self._fences.get(language)
        if syntax is not None and not info.startswith("`"):
            self._syntax, self._state = syntax, "call"
            self._emit("open", line, syntax)
        else:
            self._state = "other_fence"
            self._emit("text", line)
        return True

    def _step_fence_body(self) -> bool:
        kind: EventKind = "body" if self._state == "call" else "text"
        full, partial = _find_fence(self._buf, self._line_start)
        if full is not None:
            start, end = full
            self._emit(kind, self._consume(start))
            closer = self._consume(end - start)
            if kind == "body":
                self._emit("close", closer)
            else:
                self._emit("text", closer)
            self._state, self._syntax = "outside", None
            return True
        cut = partial if partial is not None else len(self._buf)
        self._emit(kind, self._consume(cut))
        return False

    def _step_tag_body(self, syntax: CallSyntax) -> bool:
        if syntax.json_body:
            pos, ends_in_string, _ = _scan_json(self._buf, self._in_string, self._escaped, syntax.closer)
        else:
            pos, ends_in_string = self._buf.find(syntax.closer), False
        if pos >= 0:
            self._emit("body", self._consume(pos))
            self._emit("close", self._consume(len(syntax.closer)))
            self._state, self._syntax = "outside", None
            self._in_string = self._escaped = False
            return True
        held = None if ends_in_string else _partial_suffix(self._buf, syntax.closer)
        body = self._consume(held if held is not None else len(self._buf))
        if syntax.json_body:
            _, self._in_string, self._escaped = _scan_json(body, self._in_string, self._escaped)
        self._emit("body", body)
        return False


def _scan_json(text: str, in_string: bool, escaped: bool, closer: str = "") -> tuple[int, bool, bool]:
    """Scan JSON text from the given string state (inside a string, after a backslash).

    Returns ``(position of the first closer outside a string, or -1; the string state
    there, or at the end of text)``. Without a ``closer`` it only tracks the state.
    """
    for i, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif closer and char == closer[0] and text.startswith(closer, i):
            return i, in_string, escaped
    return -1, in_string, escaped


def _find_fence(buf: str, line_start: bool) -> tuple[tuple[int, int] | None, int | None]:
    """Find a line-initial ```` ``` ```` (after optional blanks) in ``buf``.

    Returns ``(full, partial)``: ``full`` is ``(line_pos, end_of_backticks)`` of the first
    complete marker; ``partial`` the position of a line start whose text so far could
    still become one (only before ``full``, and only at the end of the buffer).
    """
    pos = 0 if line_start else buf.find("\n") + 1 or len(buf) + 1
    n = len(buf)
    while pos <= n:
        q = pos
        while q < n and buf[q] in " \t":
            q += 1
        if buf.startswith(_FENCE, q):
            return (pos, q + len(_FENCE)), None
        if _FENCE.startswith(buf[q:]):  # the rest of the buffer may become a fence
            return None, pos
        nxt = buf.find("\n", q)
        if nxt < 0:
            return None, None
        pos = nxt + 1
    return None, None


def _partial_suffix(buf: str, literal: str) -> int | None:
    """Start of the longest suffix of ``buf`` that is a proper prefix of ``literal``."""
    for k in range(min(len(literal) - 1, len(buf)), 0, -1):
        if buf.endswith(literal[:k]):
            return len(buf) - k
    return None
