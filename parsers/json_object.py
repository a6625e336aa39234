"""The members of one JSON object, each as soon as its value is complete.

A JSON tool call (``{"name": "search", "arguments": {"query": "…", "k": 3}}``) is usable
member by member: the tool can start once ``name`` and the first arguments are known.
This module validates the object with a character-level state machine (so an error is
found at the character that causes it) and decodes each finished member with
``json.loads`` on its own source text, so values are exactly what ``json.loads`` gives.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection

from parsers.unit import Unit

# States of the machine.
(
    _START, _VALUE, _VALUE_OR_END, _KEY, _KEY_OR_END, _COLON, _AFTER, _STRING, _NUMBER,
    _LITERAL, _DONE, _ERROR,
) = range(12)

_WHITE = frozenset(" \t\n\r")
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_ESCAPES = frozenset('"\\/bfnrtu')
_LITERALS = {"t": "true", "f": "false", "n": "null"}
_STRING_RUN = re.compile(r'[^"\\\x00-\x1f]+')
_EXPECTED = {
    _START: "'{' to open the object",
    _VALUE: "a value",
    _VALUE_OR_END: "a value or ']'",
    _KEY: "a member name in double quotes",
    _KEY_OR_END: "a member name in double quotes or '}'",
    _COLON: "':' after the member name",
}
# Number automaton: state -> (accepting?, transitions). Digits are "d".
_NUM_SIGN, _NUM_ZERO, _NUM_INT, _NUM_DOT, _NUM_FRAC, _NUM_E, _NUM_ESIGN, _NUM_EXP = range(8)
_NUM_ACCEPTS = {_NUM_ZERO, _NUM_INT, _NUM_FRAC, _NUM_EXP}
_NUM_NEXT = {
    _NUM_SIGN: {"d0": _NUM_ZERO, "d": _NUM_INT},
    _NUM_ZERO: {".": _NUM_DOT, "e": _NUM_E},
    _NUM_INT: {"d0": _NUM_INT, "d": _NUM_INT, ".": _NUM_DOT, "e": _NUM_E},
    _NUM_DOT: {"d0": _NUM_FRAC, "d": _NUM_FRAC},
    _NUM_FRAC: {"d0": _NUM_FRAC, "d": _NUM_FRAC, "e": _NUM_E},
    _NUM_E: {"d0": _NUM_EXP, "d": _NUM_EXP, "+": _NUM_ESIGN, "-": _NUM_ESIGN},
    _NUM_ESIGN: {"d0": _NUM_EXP, "d": _NUM_EXP},
    _NUM_EXP: {"d0": _NUM_EXP, "d": _NUM_EXP},
}


def _number_class(char: str) -> str:
    if char == "0":
        return "d0"
    if char in _DIGITS:
        return "d"
    if char in "eE":
        return "e"
    return char


class _Frame:
    """An open object or array; for objects, where the current member's parts are."""

    __slots__ = ("is_object", "key_start", "key_end", "value_start", "streamed", "key")

    def __init__(self, is_object: bool) -> None:
        self.is_object = is_object
        self.key_start = self.key_end = self.value_start = 0
        self.streamed = False  # an object whose members are emitted too (``expand``)
        self.key: str | None = None  # for a streamed object: the outer member's name


class JsonObjectParser:
    """Emits a unit for each top-level member of one JSON object, fed in pieces.

    ``Unit.text`` is the member's source text from its name's opening quote to the end
    of its value (``"k": 3``), ``Unit.key`` its name and ``Unit.value`` what
    ``json.loads`` gives for the value. A unit comes out in the ``feed`` call that
    completes the value: the closing quote, bracket or literal letter, or for a number
    the character after it (``12`` could still become ``123``).

    ``expand`` names top-level members whose value, when it is an object, is streamed as
    well: each inner member comes out as its own unit (``key`` = inner name, ``parent`` =
    outer name) as soon as it completes, and the outer member still comes out whole
    when its object closes. A string value (e.g. OpenAI's JSON-encoded ``arguments``) is
    not expanded.

    Leading white space is allowed; once the object has closed, ``done`` is True and
    further input is ignored (non-white-space is noted in ``error``). Malformed input
    never raises: ``error`` names the position (a character offset into everything fed)
    and the problem, no more units come out, and ``close()`` returns nothing; an object
    still open at ``close()`` is an error too. Duplicate names give one unit each
    (``json.loads`` would keep only the last). NaN/Infinity are rejected, as the JSON
    standard says (``json.loads`` accepts them).
    """

    def __init__(self, expand: Collection[str] = ()) -> None:
        self.expand = frozenset(expand)
        self.reset()

    def reset(self) -> None:
        """Forget all input; the next ``feed`` starts a new object."""
        self.error: str | None = None
        self.done = False
        self._index = 0
        self._state = _START
        self._stack: list[_Frame] = []
        self._chunks: list[str] = []  # fed text still needed, from absolute offset _start
        self._start = 0
        self._pos = 0  # absolute offset of the next character to be fed
        self._in_key = False  # the open string is a member name
        self._esc = 0  # in a string: 1 after "\", 2..5 hex digits still expected (u)
        self._num = _NUM_SIGN
        self._literal = ""
        self._literal_at = 0

    # -- public API -------------------------------------------------------------------

    def feed(self, text: str) -> list[Unit]:
        """Consume ``text``; return the members it completed (maybe none)."""
        if not isinstance(text, str) or not text or self._state == _ERROR:
            return []
        units: list[Unit] = []
        if self._state == _DONE:
            self._after_done(text, 0)
            self._pos += len(text)
            return units
        self._chunks.append(text)
        try:
            self._scan(text, units)
        except Exception as exc:  # a bug here must not take the decode loop down
            self._fail(self._pos, f"internal parser error: {exc!r}")
        self._pos += len(text)
        return units

    def close(self) -> list[Unit]:
        """End of input: nothing more comes out; an unfinished object sets ``error``."""
        if self._state not in (_DONE, _ERROR):
            if self._state == _START:
                self._fail(self._pos, "no JSON object in the input")
            else:
                self._fail(self._pos, "unterminated JSON object at end of input")
        self._chunks = []
        return []

    # -- helpers ----------------------------------------------------------------------

    def _fail(self, offset: int, problem: str) -> None:
        if self.error is None:
            self.error = f"invalid JSON at position {offset}: {problem}"
        self._state = _ERROR
        self._chunks = []

    def _unexpected(self, offset: int, char: str, expected: str) -> None:
        self._fail(offset, f"expected {expected}, got {char!r}")

    def _text(self, start: int, end: int) -> str:
        joined = "".join(self._chunks)
        self._chunks = [joined]
        return joined[start - self._start : end - self._start]

    def _after_done(self, text: str, i: int) -> None:
        rest = text[i:]
        stray = rest.lstrip(" \t\n\r")
        if stray and self.error is None:
            offset = self._pos + i + len(rest) - len(stray)
            self.error = (
                f"text after the JSON object at position {offset} ignored"
                f" (starts with {stray[0]!r})"
            )

    def _value_done(self, end: int, units: list[Unit]) -> None:
        """A value ended just before absolute offset ``end``; emit members as due."""
        self._state = _AFTER
        if not self._stack:
            return
        frame = self._stack[-1]
        depth = len(self._stack)
        if not frame.is_object or not (depth == 1 or frame.streamed):
            return
        text = self._text(frame.key_start, end)
        value_at = frame.value_start - frame.key_start
        try:
            key = json.loads(text[: frame.key_end - frame.key_start])
            value = json.loads(text[value_at:])
        except (ValueError, RecursionError) as exc:
            self._fail(frame.value_start, f"cannot decode value: {exc}")
            return
        parent = frame.key if depth > 1 else None
        units.append(Unit(text=text, index=self._index, key=key, value=value, parent=parent))
        self._index += 1
        if depth == 1:  # text before the next member is never needed again
            self._chunks = [self._text(end, self._pos + 10**12)]
            self._start = end

    def _open(self, is_object: bool) -> None:
        frame = _Frame(is_object)
        if len(self._stack) == 1 and is_object and self.expand:
            outer = self._stack[0]
            name = json.loads(self._text(outer.key_start, outer.key_end))
            if name in self.expand:
                frame.streamed = True
                frame.key = name
        self._stack.append(frame)
        self._state = _KEY_OR_END if is_object else _VALUE_OR_END

    def _close(self, offset: int, units: list[Unit]) -> None:
        self._stack.pop()
        if not self._stack:
            self.done = True
            self._state = _DONE
            self._chunks = []
            return
        self._value_done(offset + 1, units)

    # -- the machine --------------------------------------------------------------------

    def _scan(self, text: str, units: list[Unit]) -> None:
        base = self._pos
        i = 0
        n = len(text)
        while i < n:
            state = self._state
            if state == _STRING:
                i = self._scan_string(text, i, units)
                continue
            char = text[i]
            if state == _NUMBER:
                step = _NUM_NEXT[self._num].get(_number_class(char))
                if step is not None:
                    self._num = step
                    i += 1
                    continue
                if self._num not in _NUM_ACCEPTS:
                    self._unexpected(base + i, char, "a digit")
                    return
                self._value_done(base + i, units)
                continue  # the character after the number is read in _AFTER
            if state == _LITERAL:
                if char != self._literal[self._literal_at]:
                    self._unexpected(base + i, char, f"{self._literal!r}")
                    return
                self._literal_at += 1
                i += 1
                if self._literal_at == len(self._literal):
                    self._value_done(base + i, units)
                continue
            if char in _WHITE:
                i += 1
                continue
            offset = base + i
            if state == _AFTER:
                frame = self._stack[-1]
                if char == ",":
                    self._state = _KEY if frame.is_object else _VALUE
                elif char == ("}" if frame.is_object else "]"):
                    self._close(offset, units)
                    if self._state == _DONE:
                        self._after_done(text, i + 1)
                        return
                else:
                    closer = "'}'" if frame.is_object else "']'"
                    self._unexpected(offset, char, f"',' or {closer}")
                    return
            elif state in (_KEY, _KEY_OR_END):
                if char == '"':
                    frame = self._stack[-1]
                    frame.key_start = offset
                    self._in_key = True
                    self._esc = 0
                    self._state = _STRING
                elif char == "}" and state == _KEY_OR_END:
                    self._close(offset, units)
                    if self._state == _DONE:
                        self._after_done(text, i + 1)
                        return
                else:
                    self._unexpected(offset, char, _EXPECTED[state])
                    return
            elif state == _COLON:
                if char != ":":
                    self._unexpected(offset, char, _EXPECTED[state])
                    return
                self._state = _VALUE
            elif state == _START:
                if char != "{":
                    self._unexpected(offset, char, _EXPECTED[state])
                    return
                self._open(True)
            elif state in (_VALUE, _VALUE_OR_END):
                if char == "]" and state == _VALUE_OR_END:
                    self._close(offset, units)
                    i += 1
                    continue
                frame = self._stack[-1]
                if frame.is_object:
                    frame.value_start = offset
                if char == "{" or char == "[":
                    self._open(char == "{")
                elif char == '"':
                    self._in_key = False
                    self._esc = 0
                    self._state = _STRING
                elif char == "-" or char in _DIGITS:
                    self._num = _NUM_SIGN if char == "-" else (
                        _NUM_ZERO if char == "0" else _NUM_INT
                    )
                    self._state = _NUMBER
                elif char in _LITERALS:
                    self._literal = _LITERALS[char]
                    self._literal_at = 1
                    self._state = _LITERAL
                else:
                    self._unexpected(offset, char, _EXPECTED[state])
                    return
            else:  # _DONE or _ERROR: nothing more to read
                return
            i += 1

    def _scan_string(self, text: str, i: int, units: list[Unit]) -> int:
        """Consume string content from ``text[i]``; return where to go on."""
        esc = self._esc
        if esc:
            char = text[i]
            if esc == 1:
                if char not in _ESCAPES:
                    self._unexpected(self._pos + i, char, "a valid escape after '\\'")
                    return len(text)
                self._esc = 2 if char == "u" else 0
            elif char not in _HEX:
                self._unexpected(self._pos + i, char, "a hex digit in '\\u' escape")
                return len(text)
            else:
                self._esc = esc + 1 if esc < 5 else 0
            return i + 1
        match = _STRING_RUN.match(text, i)
        if match is not None:
            i = match.end()
            if i == len(text):
                return i
        char = text[i]
        if char == "\\":
            self._esc = 1
        elif char == '"':
            offset = self._pos + i
            if self._in_key:
                self._stack[-1].key_end = offset + 1
                self._state = _COLON
            else:
                self._value_done(offset + 1, units)
        else:
            self._unexpected(self._pos + i, char, "no control character in a string")
            return len(text)
        return i + 1
