"""The record every incremental parser emits, and the protocol parsers follow.

A *unit* is the smallest piece of a tool call that a tool can start work on: one
top-level Python statement, one JSON member, one search query, one plan task.
Parsers never raise on malformed input; they put the problem in ``Unit.error`` or in
their own ``error`` attribute, which the caller can query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Unit:
    """One complete part of a tool call.

    ``text`` is the exact source text of the unit as it was fed (for Python: the
    statement with its trailing newline). ``index`` counts units within one call,
    from 0. ``key`` and ``value`` carry parsed content where the format has it (a JSON
    member's name and ``json.loads`` value, a plan task's id and task); ``parent`` names
    the enclosing member when a parser streams the members of a nested object (the
    ``arguments`` of a JSON tool call). ``error`` is set
    when the parser could not make sense of the unit; the unit is still emitted so the
    tool can report the problem to the model.
    """

    text: str
    index: int = 0
    key: str | None = None
    value: Any = None
    error: str | None = None
    parent: str | None = None

    @property
    def argument(self) -> Any:
        """What a one-argument tool acts on: the parsed ``value`` where the format has
        one (a JSON member), else the unit's source ``text`` (a line, a statement)."""
        return self.value if self.value is not None else self.text


@runtime_checkable
class IncrementalParser(Protocol):
    """Text in, complete units out. Fed deltas of a token stream, in order."""

    def feed(self, text: str) -> list[Unit]:
        """Consume ``text``; return the units this text completed (maybe none)."""
        ...

    def close(self) -> list[Unit]:
        """End of input: return whatever is left as units (maybe none)."""
        ...
