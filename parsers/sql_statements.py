"""SQL statements from a stream of SQL text, each emitted the moment its ``;`` arrives.

A statement is complete at its terminating ``;`` outside strings, quoted names and
comments, a ``CREATE TRIGGER`` body included, as :func:`sqlite3.complete_statement`
decides (:func:`complete_statement`), or at the end of the text (``close()``).
"""

from __future__ import annotations

import sqlite3

from parsers.unit import Unit

__all__ = ["SQLStatementParser", "complete_statement", "split_statements"]

_NORMAL, _SQUOTE, _DQUOTE, _BACKTICK, _BRACKET, _LINE_COMMENT, _BLOCK_COMMENT = range(7)
_OPENERS = {"'": _SQUOTE, '"': _DQUOTE, "`": _BACKTICK, "[": _BRACKET}
_CLOSERS = {_SQUOTE: "'", _DQUOTE: '"', _BACKTICK: "`", _BRACKET: "]"}


class SQLStatementParser:
    """Splits SQL text into statements, each emitted the moment its ``;`` arrives.

    ``Unit.text`` is the statement with everything fed before it since the previous
    unit (white space, comments, empty statements), so concatenating every unit gives
    back the fed text less trailing white space and comments. ``Unit.value`` is the
    statement alone, from its first keyword (leading comments dropped) to its ``;``.
    ``close()`` emits an unterminated last statement. Never raises: an unterminated
    string or comment at ``close()`` is reported in ``Unit.error``.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._buffer = ""
        self._pos = 0  # next character to scan
        self._start = 0  # where the current statement's own text begins in the buffer
        self._state = _NORMAL
        self._index = 0
        self.error: str | None = None

    def feed(self, text: str) -> list[Unit]:
        self._buffer += text
        units: list[Unit] = []
        buf = self._buffer
        i, n = self._pos, len(buf)
        while i < n:
            c = buf[i]
            state = self._state
            if state == _NORMAL:
                if c == ";":
                    i += 1
                    unit = self._statement_end(i)
                    if unit is not None:
                        units.append(unit)
                        buf, i, n = self._buffer, 0, len(self._buffer)
                    continue
                if c in _OPENERS:
                    self._state = _OPENERS[c]
                elif c in "-/":
                    if i + 1 >= n:
                        break  # need the next character to tell a comment from an operator
                    if c == "-" and buf[i + 1] == "-":
                        self._state, i = _LINE_COMMENT, i + 1
                    elif c == "/" and buf[i + 1] == "*":
                        self._state, i = _BLOCK_COMMENT, i + 1
            elif state == _LINE_COMMENT:
                if c == "\n":
                    self._state = _NORMAL
            elif state == _BLOCK_COMMENT:
                if c == "*":
                    if i + 1 >= n:
                        break
                    if buf[i + 1] == "/":
                        self._state, i = _NORMAL, i + 1
            elif c == _CLOSERS[state]:  # '' inside a string closes and reopens: same result
                self._state = _NORMAL
            i += 1
        self._pos = i
        return units

    def close(self) -> list[Unit]:
        rest = self._buffer
        statement = rest[self._start :]
        state = self._state
        self._buffer, self._pos, self._start, self._state = "", 0, 0, _NORMAL
        if not _has_code(statement):
            return []
        error = None
        if state in (_SQUOTE, _DQUOTE, _BACKTICK, _BRACKET):
            error = (
                f"the last SQL statement is incomplete: a {_CLOSERS[state]} quote is never closed; "
                "close it and end the statement with ';'"
            )
        elif state == _BLOCK_COMMENT:
            error = "the last SQL statement is incomplete: a /* comment is never closed; close it with */"
        if error is not None:
            self.error = error
        value = statement[_code_start(statement) :].strip()
        unit = Unit(text=rest, index=self._index, key="query", value=value, error=error)
        self._index += 1
        return [unit]

    def _statement_end(self, end: int) -> Unit | None:
        """A ``;`` outside strings and comments ends at ``end``; emit it if complete."""
        statement = self._buffer[self._start : end]
        if not _has_code(statement[:-1]):  # an empty statement: its text travels onwards
            self._start = end
            return None
        if not complete_statement(statement):  # inside CREATE TRIGGER … BEGIN … END
            return None
        text, self._buffer = self._buffer[:end], self._buffer[end:]
        self._start = 0
        value = statement[_code_start(statement) :].strip()
        unit = Unit(text=text, index=self._index, key="query", value=value)
        self._index += 1
        return unit


def _code_start(text: str) -> int:
    """Index of the first character of ``text`` that is not white space, a comment or
    ``;`` (``len(text)`` when there is none)."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace() or c == ";":
            i += 1
        elif text.startswith("--", i):
            newline = text.find("\n", i)
            i = n if newline < 0 else newline + 1
        elif text.startswith("/*", i):
            close = text.find("*/", i + 2)
            i = n if close < 0 else close + 2
        else:
            return i
    return n


def _has_code(text: str) -> bool:
    """Whether ``text`` holds anything but white space, comments and ``;``."""
    return _code_start(text) < len(text)


def split_statements(text: str) -> list[Unit]:
    """All statements of ``text`` (what the parser emits for it in one go)."""
    parser = SQLStatementParser()
    return parser.feed(text) + parser.close()


def complete_statement(statement: str) -> bool:
    """``sqlite3.complete_statement``, which raises on a NUL character instead of answering."""
    return sqlite3.complete_statement(statement.replace("\x00", " "))
