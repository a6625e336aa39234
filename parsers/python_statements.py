"""Top-level Python statements from a stream of source text.

A code tool can run each top-level statement of a code block the moment the model has
finished writing it. This module finds those statements incrementally: every character
is looked at once, by a small lexer that knows just enough Python to find logical lines
(strings of every kind incl. 3.12-style nested f-strings, comments, brackets, backslash
continuations) and which logical lines open a compound statement.
"""

from __future__ import annotations

import re

from parsers.unit import Unit

# Lexer modes. CODE/COMMENT live at the bottom of the context stack; the rest are frames.
_CODE, _COMMENT, _OPENQ, _STRING, _FIELD, _SPEC = range(6)

_SPACE = frozenset(" \t\f\r")
_OPEN = frozenset("([{")
_CLOSE = frozenset(")]}")
_PREFIX = frozenset("rRbBuUfFtT")
_COMPOUND = frozenset(
    ["if", "elif", "else", "for", "while", "try", "except", "finally", "with", "def", "class"]
)
_HEADER = re.compile(r"(?:async[ \t\f]+)?([A-Za-z_]\w*)")
# What may continue a compound statement, by the keyword of its latest clause.
_CONTINUATIONS = {
    "if": ("elif", "else"),
    "elif": ("elif", "else"),
    "for": ("else",),
    "while": ("else",),
    "try": ("except", "finally"),
    "except": ("except", "else", "finally"),
}
_ANY = ("*",)  # after a decorator every top-level line continues the unit
# Fast-forward patterns inside a string: the next character that can matter.
_STRING_STOP = {
    (quote, fmt): re.compile("[\\\\\n" + quote + ("{}" if fmt else "") + "]")
    for quote in "'\""
    for fmt in (False, True)
}


def _is_name_char(char: str) -> bool:
    return char.isalnum() or char == "_"


class PythonStatementParser:
    """Emits each top-level statement of a Python source stream as soon as it is complete.

    ``Unit.text`` is the exact source of one top-level statement: a simple statement
    with its newline, or a compound statement (``if``/``for``/``while``/``try``/``with``/
    ``def``/``class``/``match``/``async``, decorators included) with its whole body and
    all its clauses. Blank lines and comments before a statement travel with it.
    Concatenating every unit from ``feed`` and ``close`` gives back the fed text exactly.

    When units come out:

    * a simple statement: in the ``feed`` call that delivers its terminating newline.
      Several statements on one line (``a = 1; b = 2``) form one unit;
    * a compound statement: in the ``feed`` call that delivers the first character of the
      next top-level code line that rules out a continuation. After an ``if`` block, a
      line ``elapsed = 1`` rules it out at its ``a`` (``e`` and ``el`` may still begin
      ``elif``/``else``); after a ``def`` or ``with`` block the first character does.
      Comments and blank lines between them never decide anything and travel with the
      next statement;
    * anything left: in ``close()``. A last unit may hold only blank lines or comments
      (they must come back somewhere); a unit cut short by the end of input (open
      string, bracket or backslash) has ``error`` set, and so has the parser.

    "Top-level" means "indented no deeper than the first line of the current unit", so a
    block that is indented as a whole (code quoted inside a list item) splits the same
    way. Code that does not parse is still emitted at the best boundary the lexer sees;
    the parser never raises. A newline ends an unterminated single-quoted string (as
    it ends the line for Python), so one bad quote cannot swallow the rest of the block.
    Lone ``\\r`` is treated as white space, ``\\r\\n`` as a newline. ``match``/``case``/
    ``type`` are soft keywords: ``match = 3`` is a simple statement.
    ``Unit.value`` is None; ``Unit.index`` counts units from 0.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget all input and start a new block (unit indices start again at 0)."""
        self.error: str | None = None
        self._index = 0
        self._chunks: list[str] = []  # fed text not emitted yet
        self._start = 0  # absolute offset of the first character in _chunks
        self._pos = 0  # absolute offset of the next character to be fed
        self._tail = ""  # the last characters fed, to find string prefixes
        self._reset_lexer()

    def _reset_lexer(self) -> None:
        self._mode = _CODE
        self._stack: list[list] = []  # frames: ["s", quote, triple, raw, fmt] / ["f", depth]
        self._depth = 0  # bracket depth in CODE
        self._backslash = False  # CODE: a backslash waits for its newline
        self._esc = 0  # STRING: 1 after "\", 2 after "\N" (f-string), 3 inside "\N{...}"
        self._quotes = 0  # STRING: closing quotes seen in a row; OPENQ: opening quotes
        self._fdepth = 0  # FIELD: bracket depth inside an f-string replacement field
        self._fresh = False  # FIELD: just opened, so "{" makes "{{"
        self._at_line_start = True
        self._indent = 0
        self._last_sig = ""  # last significant code character of the logical line
        self._line_start = 0  # absolute offset of the current line's first code character
        self._line_top = False  # the current logical line is a top-level line of the unit
        self._open = False  # a unit has started and is not emitted yet
        self._unit_indent = 0
        self._opener: str | None = None  # first compound keyword of the unit
        self._cont: tuple[str, ...] = ()  # keywords that may continue the open unit
        self._deciding = False  # reading the first word of a top-level line
        self._head = ""
        self._code_end = 0  # absolute offset just after the last code line's newline

    # -- public API -------------------------------------------------------------------

    def feed(self, text: str) -> list[Unit]:
        """Consume ``text``; return the statements it completed (maybe none)."""
        if not isinstance(text, str) or not text:
            return []
        self._chunks.append(text)
        units: list[Unit] = []
        try:
            self._scan(text, units)
        except Exception as exc:  # a lexer bug must not take the decode loop down
            self.error = f"internal parser error: {exc!r}"
            self._mode, self._stack = _CODE, []
        self._pos += len(text)
        self._tail = (self._tail + text)[-3:]
        return units

    def close(self) -> list[Unit]:
        """End of input: return what is left (an unfinished statement gets ``error``)."""
        units: list[Unit] = []
        if self._deciding:
            self._deciding = False
            if self._head not in self._cont and self._cont is not _ANY:
                self._emit(self._code_end, units)
        rest = "".join(self._chunks)
        if rest:
            problem = self._unfinished()
            if problem:
                self.error = problem
            units.append(self._unit(rest, problem))
        self._chunks, self._start = [], self._pos
        self._reset_lexer()
        return units

    # -- emission ---------------------------------------------------------------------

    def _unit(self, text: str, error: str | None = None) -> Unit:
        unit = Unit(text=text, index=self._index, value=None, error=error)
        self._index += 1
        return unit

    def _text(self, start: int, end: int) -> str:
        joined = "".join(self._chunks)
        self._chunks = [joined]
        return joined[start - self._start : end - self._start]

    def _emit(self, cut: int, units: list[Unit]) -> None:
        """Emit the pending text up to absolute offset ``cut`` as one unit."""
        joined = "".join(self._chunks)
        split = cut - self._start
        if split <= 0:
            return
        units.append(self._unit(joined[:split]))
        self._chunks = [joined[split:]] if split < len(joined) else []
        self._start = cut
        self._open = False

    def _unfinished(self) -> str | None:
        if self._stack:
            if self._mode == _OPENQ and len(self._stack) == 1 and self._quotes == 2:
                return None  # '' or "" ended exactly at the end of input
            return "unterminated string at end of input"
        if self._depth:
            return "unclosed bracket at end of input"
        if self._backslash:
            return "backslash continuation at end of input"
        return None

    # -- line structure ---------------------------------------------------------------

    def _start_line(self, offset: int, units: list[Unit]) -> None:
        """The first code character of a physical line that begins a logical line."""
        self._line_start = offset
        self._last_sig = ""
        if not self._open:
            self._begin_unit()
        elif self._indent > self._unit_indent:
            self._line_top = False  # part of the open block's body
        elif self._cont is _ANY:
            self._line_top = True
        elif not self._cont:
            self._emit(self._code_end, units)
            self._begin_unit()
        else:
            self._line_top = True
            self._deciding = True
            self._head = ""

    def _begin_unit(self) -> None:
        self._open = True
        self._unit_indent = self._indent
        self._line_top = True
        self._opener = None
        self._cont = ()

    def _decide(self, char: str, units: list[Unit]) -> None:
        """One more character of a top-level line's first word: continuation or not?"""
        if _is_name_char(char):
            self._head += char
            head = self._head
            for keyword in self._cont:
                if keyword.startswith(head):
                    return
        elif self._head in self._cont:
            self._deciding = False
            return
        self._deciding = False
        self._emit(self._code_end, units)
        self._begin_unit()

    def _end_line(self, offset: int, units: list[Unit]) -> None:
        """A NEWLINE token (depth 0, outside strings) at absolute ``offset``."""
        end = offset + 1
        self._code_end = end
        self._at_line_start = True
        self._indent = 0
        if not self._line_top:
            return
        line = self._text(self._line_start, offset)
        if line.startswith("@"):
            self._cont = _ANY
            return
        match = _HEADER.match(line)
        keyword = match.group(1) if match else ""
        if keyword not in _COMPOUND:
            # A header ends with ":" (``match x:``, a soft keyword); nothing else does.
            keyword = "" if self._last_sig == ":" else None  # None: simple statement
        if keyword is None:
            self._emit(end, units)
            return
        if self._opener is None:
            self._opener = keyword
        if keyword == "else":
            self._cont = ("finally",) if self._opener == "try" else ()
        else:
            self._cont = _CONTINUATIONS.get(keyword, ())

    # -- the lexer --------------------------------------------------------------------

    def _prefix(self, text: str, i: int) -> str:
        """The string prefix (``rb``, ``f`` …) written just before the quote at ``i``."""
        before = text[i - 3 : i] if i >= 3 else (self._tail + text[:i])[-3:]
        size = 0
        while size < len(before) and before[-1 - size] in _PREFIX:
            size += 1
        if size == 0 or size > 2:
            return ""
        if size < len(before) and _is_name_char(before[-1 - size]):
            return ""  # the letters end a longer name: not a prefix
        return before[-size:].lower()

    def _push_string(self, quote: str, prefix: str) -> None:
        raw = "r" in prefix
        fmt = "f" in prefix or "t" in prefix
        self._stack.append(["s", quote, False, raw, fmt])
        self._mode = _OPENQ
        self._quotes = 1

    def _pop(self) -> None:
        """Leave the innermost frame."""
        self._stack.pop()
        if not self._stack:
            self._mode = _CODE
            return
        top = self._stack[-1]
        if top[0] == "s":
            self._mode = _STRING
            self._esc = 0
            self._quotes = 0
        elif top[0] == "f":
            self._mode = _FIELD
            self._fdepth = top[1]
            self._fresh = False
        else:
            self._mode = _SPEC

    def _innermost_string(self) -> list | None:
        for frame in reversed(self._stack):
            if frame[0] == "s":
                return frame
        return None

    def _unwind_line(self) -> None:
        """A newline inside a single-quoted string: end the string (and its fields)."""
        while self._stack:
            string = self._innermost_string()
            if string is None or string[2]:
                break
            while self._stack and self._stack[-1] is not string:
                self._stack.pop()
            self._pop()
        if not self._stack:
            self._mode = _CODE
            self._last_sig = "'"

    def _scan(self, text: str, units: list[Unit]) -> None:
        base = self._pos
        i = 0
        n = len(text)
        while i < n:
            mode = self._mode
            char = text[i]
            if mode == _CODE:
                if self._at_line_start:
                    if char in _SPACE:
                        self._indent += 1
                        i += 1
                        continue
                    if char == "\n":
                        self._indent = 0
                        i += 1
                        continue
                    if char == "#":
                        self._mode = _COMMENT
                        i += 1
                        continue
                    self._at_line_start = False
                    self._start_line(base + i, units)
                if self._deciding:
                    self._decide(char, units)
                if self._backslash:
                    if char == "\r":
                        i += 1
                        continue
                    self._backslash = False
                    if char == "\n":
                        i += 1
                        continue
                if char == "\n":
                    if self._depth == 0:
                        self._end_line(base + i, units)
                elif char in _SPACE:
                    pass
                elif char == "#":
                    self._mode = _COMMENT
                elif char == "'" or char == '"':
                    self._push_string(char, self._prefix(text, i))
                elif char in _OPEN:
                    self._depth += 1
                    self._last_sig = char
                elif char in _CLOSE:
                    if self._depth:
                        self._depth -= 1
                    self._last_sig = char
                elif char == "\\":
                    self._backslash = True
                else:
                    self._last_sig = char
                i += 1
            elif mode == _COMMENT:
                newline = text.find("\n", i)
                if newline < 0:
                    return
                self._mode = _CODE
                i = newline  # the newline itself is handled in CODE
            elif mode == _STRING:
                i = self._scan_string(text, i)
            elif mode == _OPENQ:
                frame = self._stack[-1]
                if char == frame[1]:
                    self._quotes += 1
                    i += 1
                    if self._quotes == 3:
                        frame[2] = True
                        self._mode = _STRING
                        self._quotes = 0
                        self._esc = 0
                    continue
                if self._quotes == 2:  # an empty string: '' or ""
                    self._pop()
                    if self._mode == _CODE:
                        self._last_sig = frame[1]
                    continue  # re-read this character in the outer context
                self._mode = _STRING
                self._quotes = 0
                self._esc = 0
            elif mode == _FIELD:
                i = self._scan_field(text, i)
            else:  # _SPEC
                string = self._innermost_string()
                if char == "{":
                    self._stack.append(["f", 0])
                    self._mode = _FIELD
                    self._fdepth = 0
                    self._fresh = False
                elif char == "}":
                    self._pop()
                elif char == "\n" and string is not None and not string[2]:
                    self._unwind_line()
                    continue
                elif string is not None and char == string[1] and not string[2]:
                    while self._stack[-1] is not string:
                        self._stack.pop()
                    self._pop()
                    if self._mode == _CODE:
                        self._last_sig = char
                i += 1

    def _scan_string(self, text: str, i: int) -> int:
        """Consume string content from ``text[i]``; return where to go on."""
        frame = self._stack[-1]
        quote, triple, raw, fmt = frame[1], frame[2], frame[3], frame[4]
        esc = self._esc
        if esc:
            char = text[i]
            if esc == 1:
                if fmt and char in "{}":
                    self._esc = 0
                    return i  # "\{" in an f-string: the brace still counts
                self._esc = 2 if (char == "N" and fmt and not raw) else 0
                if char == "\r":
                    self._esc = 1  # "\\\r\n" continues the line
                return i + 1
            if esc == 2:
                self._esc = 3 if char == "{" else 0
                return i + 1 if char == "{" else i
            self._esc = 0 if char == "}" else 3  # inside \N{...}
            return i + 1
        match = _STRING_STOP[quote, fmt].search(text, i)
        if match is None:
            self._quotes = 0
            return len(text)
        stop = match.start()
        if stop > i:
            self._quotes = 0
        char = text[stop]
        if char == "\\":
            self._esc = 1
            self._quotes = 0
        elif char == quote:
            if not triple:
                self._pop()
                if self._mode == _CODE:
                    self._last_sig = quote
                return stop + 1
            self._quotes += 1
            if self._quotes == 3:
                self._pop()
                if self._mode == _CODE:
                    self._last_sig = quote
        elif char == "\n":
            self._quotes = 0
            if not triple:
                self._unwind_line()
                return stop  # the newline belongs to the outer context
        elif char == "{":
            self._quotes = 0
            self._stack.append(["f", 0])
            self._mode = _FIELD
            self._fdepth = 0
            self._fresh = True
        else:  # "}" in an f-string: literal ("}}") or an error; either way text
            self._quotes = 0
        return stop + 1

    def _scan_field(self, text: str, i: int) -> int:
        """One character of an f-string replacement field ``{...}``."""
        char = text[i]
        if self._fresh:
            self._fresh = False
            if char == "{":  # "{{" is a literal brace, not a field
                self._stack.pop()
                self._mode = _STRING
                self._quotes = 0
                return i + 1
        if char == "'" or char == '"':
            self._stack[-1][1] = self._fdepth
            self._push_string(char, self._prefix(text, i))
        elif char in _OPEN:
            self._fdepth += 1
        elif char in _CLOSE:
            if self._fdepth == 0:
                if char == "}":
                    self._pop()
            else:
                self._fdepth -= 1
        elif char == ":" and self._fdepth == 0:
            self._stack[-1] = ["p"]
            self._mode = _SPEC
        elif char == "\n":
            string = self._innermost_string()
            if string is not None and not string[2]:
                self._unwind_line()
                return i
        return i + 1
