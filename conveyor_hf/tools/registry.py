"""Finding tools by name: the built-ins and third-party tools from entry points.

A package registers a tool class in its ``pyproject.toml``::

    [project.entry-points."conveyor_hf.tools"]
    weather = "my_package.tools:WeatherTool"

It is validated when loaded: a :class:`~conveyor_hf.tools.base.Tool` subclass whose
``name`` matches the entry point, with a description and an object JSON schema.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import Iterable

from conveyor_hf.tools.base import SideEffect, Tool

GROUP = "conveyor_hf.tools"

BUILTIN = {
    "python": "conveyor_hf.tools.python:PythonTool",
    "search": "conveyor_hf.tools.search:SearchTool",
    "calculator": "conveyor_hf.tools.calculator:CalculatorTool",
    "sql": "conveyor_hf.tools.sql:SQLTool",
    "locate": "conveyor_hf.tools.location:LocationLookupTool",
    "plan": "conveyor_hf.tools.plan:PlanTool",
}


def available_tools() -> dict[str, str]:
    """Tool name → ``module:Class`` for the built-ins and every installed entry point."""
    found = dict(BUILTIN)
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def load_tool_class(name: str) -> type[Tool]:
    """Import and validate the tool class registered as ``name``."""
    targets = available_tools()
    if name not in targets:
        raise KeyError(f"no tool named {name!r}; available: {', '.join(sorted(targets))}")
    module_name, _, attr = targets[name].partition(":")
    cls = getattr(import_module(module_name), attr)
    validate_tool_class(cls, name)
    return cls


def validate_tool_class(cls: object, name: str | None = None) -> None:
    """Raise ``ValueError`` naming the problem if ``cls`` is not a usable tool class."""
    if not (isinstance(cls, type) and issubclass(cls, Tool)):
        raise ValueError(f"tool {name!r} must be a subclass of conveyor_hf.tools.Tool, got {cls!r}")
    if not cls.name or (name is not None and cls.name != name):
        raise ValueError(f"{cls.__name__}.name is {cls.name!r}; it must equal the entry-point name {name!r}")
    if not cls.description.strip():
        raise ValueError(f"{cls.__name__}.description is empty; the model needs it to know when to call the tool")
    params = cls.parameters
    if not isinstance(params, dict) or params.get("type") != "object":
        raise ValueError(f"{cls.__name__}.parameters must be a JSON schema with type 'object', got {params!r}")
    if not isinstance(cls.side_effect, SideEffect):
        raise ValueError(f"{cls.__name__}.side_effect must be a SideEffect, got {cls.side_effect!r}")


def make_tools(names: Iterable[str]) -> list[Tool]:
    """Instances of the named tools with their default settings."""
    tools = []
    for name in names:
        cls = load_tool_class(name)
        try:
            tools.append(cls())
        except TypeError as exc:
            raise ValueError(
                f"tool {name!r} needs settings ({exc}); construct {cls.__name__}(...) in Python "
                "and pass it to ConveyorGenerator(tools=[...])"
            ) from exc
    return tools
