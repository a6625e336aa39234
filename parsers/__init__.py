"""Incremental parsers for tool calls: text in, complete units out.

Standard library only, so the same parsers serve any token stream (transformers, an
OpenAI-compatible server, a replayed trace). Each parser has ``feed(text) -> list[Unit]``
and ``close() -> list[Unit]`` and never raises on malformed input. Names are imported
lazily: ``import parsers`` costs nothing until a parser is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CallDetector": "parsers.calls",
    "CallEvent": "parsers.calls",
    "CallSyntax": "parsers.calls",
    "fence_syntax": "parsers.calls",
    "tag_syntax": "parsers.calls",
    "IncrementalParser": "parsers.unit",
    "Unit": "parsers.unit",
    "JsonObjectParser": "parsers.json_object",
    "LineParser": "parsers.lines",
    "PythonStatementParser": "parsers.python_statements",
    "SQLStatementParser": "parsers.sql_statements",
    "PlanParser": "parsers.plan",
    "PlanTask": "parsers.plan",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'parsers' has no attribute {name!r}")
