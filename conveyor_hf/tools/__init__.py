"""Tools the model can call, and the base class for writing your own.

To write a tool, subclass ``Tool`` and implement ``execute(unit)`` (one line of the call
per unit by default), subclass ``ValidatedTool`` and implement ``act(arguments)`` for JSON
arguments, or decorate a typed, documented function with ``@tool``; see
:mod:`conveyor_hf.tools.base`.

The tools (``PythonTool``, ``SearchTool``, ``CalculatorTool``, ``SQLTool``,
``PlanTool``, ``LocationLookupTool``, ``ScriptedTool``) and the function-tool helpers
(``tool``, ``FunctionTool``: any typed, documented function as a tool) are imported lazily, so that
``import conveyor_hf.tools`` stays cheap and a missing optional dependency only matters
for the tool that needs it. Third-party tools register through the entry-point group
``conveyor_hf.tools`` (see :mod:`conveyor_hf.tools.registry`).
"""

from __future__ import annotations

import importlib
from typing import Any

from conveyor_hf.tools.base import (
    SideEffect,
    Tool,
    ToolCall,
    ToolResult,
    UnitOutput,
    UnitRecord,
)

_LAZY = {
    "PythonTool": "conveyor_hf.tools.python",
    "SearchTool": "conveyor_hf.tools.search",
    "CalculatorTool": "conveyor_hf.tools.calculator",
    "SQLTool": "conveyor_hf.tools.sql",
    "PlanTool": "conveyor_hf.tools.plan",
    "ValidatedTool": "conveyor_hf.tools.validated",
    "LocationLookupTool": "conveyor_hf.tools.location",
    "ScriptedTool": "conveyor_hf.tools.scripted",
    "FunctionTool": "conveyor_hf.tools.function",
    "SandboxPolicy": "conveyor_hf.tools.sandbox",
    "SandboxUnavailable": "conveyor_hf.tools.sandbox",
    "tool": "conveyor_hf.tools.function",
}

__all__ = [
    "CalculatorTool",
    "FunctionTool",
    "LocationLookupTool",
    "PlanTool",
    "PythonTool",
    "SandboxPolicy",
    "SandboxUnavailable",
    "SQLTool",
    "ScriptedTool",
    "SearchTool",
    "ValidatedTool",
    "SideEffect",
    "Tool",
    "ToolCall",
    "ToolResult",
    "UnitOutput",
    "UnitRecord",
    "tool",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'conveyor_hf.tools' has no attribute {name!r}")
