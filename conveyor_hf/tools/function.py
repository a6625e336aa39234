"""Function tools: any typed, documented Python function becomes a tool.

::

    from conveyor_hf.tools import tool

    @tool(side_effect="pure")
    def scale(x: float, factor: float = 2.0) -> float:
        '''Multiply a number by a factor.

        Args:
            x: the number
            factor: what to multiply it by
        '''
        return x * factor

    scale.run('{"x": 21}').output     # '42.0'
    scale(21)                          # 42.0: still a plain function for Python callers

The JSON schema the model is shown is what ``transformers.utils.get_json_schema`` makes
of the function's signature and Google-style docstring: the same schema
``apply_chat_template(tools=[fn])`` renders. Names may contain dots
(``math_toolkit.sum_of_multiples``, as BFCL writes them).

A function tool is a :class:`~conveyor_hf.tools.validated.ValidatedTool` (so
``json_arguments`` is True): a call
``<tool_call>{"name": "scale", "arguments": {"x": 21}}</tool_call>`` hands over each
argument the moment its JSON value is complete, and each is checked against its schema
(``jsonschema``) at once, so a bad value fails the call while the model is still writing
it. The whole argument object is checked once more just before the function runs. When it
runs depends on the side-effect class the caller gives (the default is the cautious
``mutating``):

- ``pure`` / ``read_only``: as soon as every *required* argument is in, before the call's
  closing tag (when the call opens if nothing is required). If an optional argument
  arrives after that, the function runs again, once, with every argument, when they can no
  longer change (the last parameter is in or the call closes); the call's result is that
  run's. Running twice is harmless only because the function promises no side effects.
  An early run's exception is held back until that point, since the late argument may
  fix it.
- ``stateful``: once every parameter is in, else when the call closes; runs once.
- ``mutating``: only when the call closes (after ``</tool_call>``); runs once.

In lazy mode every call runs once, at its close. The return value becomes the tool
result: a ``str`` as it is, anything else as JSON (dataclasses and pydantic models
included). Errors (an invalid or unknown argument, a missing required one, the function
raising) come back as a tool error that names the value and the fix.

The function runs on the call's worker thread in this process: it must not hang (the call
stops waiting ``timeout + ABANDON_GRACE`` seconds after it started, but a thread cannot be
killed), and CPU-heavy pure-Python work competes with decoding for the GIL. Every
conversation of a batch calls the same function (``fork()`` returns the tool itself).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import re
import typing
from typing import Any, Callable, overload

from conveyor_hf.text import shorten
from conveyor_hf.tools.base import SideEffect, ToolResult
from conveyor_hf.tools.json_schema import compile_schema, describe_schema_error
from conveyor_hf.tools.validated import ValidatedTool

__all__ = ["FunctionTool", "render_value", "tool"]

#: Tool names: letters, digits, ``_``, ``-`` and dots (``math_toolkit.sum_of_multiples``).
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")

#: How many characters of the arguments an error message quotes.
_QUOTE_CHARS = 240


def _side_effect(value: SideEffect | str) -> SideEffect:
    if isinstance(value, SideEffect):
        return value
    try:
        return SideEffect(value)
    except ValueError:
        options = ", ".join(repr(s.value) for s in SideEffect)
        raise ValueError(
            f"side_effect={value!r} is not a side-effect class; use one of {options} "
            "(the default 'mutating' runs the function only when its call is complete)"
        ) from None


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    dump = getattr(value, "model_dump", None)  # pydantic models
    if callable(dump):
        return dump()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return str(value)


def render_value(value: Any) -> str:
    """The tool result for a function's return value: a ``str`` as is, else JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=_json_default)


def _quote(arguments: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False, default=repr)}" for k, v in arguments.items())
    return shorten(text, _QUOTE_CHARS)


def _function_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """``get_json_schema(fn)``, its errors turned into what to change in the function."""
    from transformers.utils import get_json_schema

    label = getattr(fn, "__qualname__", None) or repr(fn)
    try:
        schema = get_json_schema(fn)
    except Exception as exc:  # DocstringParsingException, TypeHintParsingException, ...
        raise ValueError(
            f"cannot make a tool from {label}: {exc}. A function tool needs a type hint on every "
            "parameter and a Google-style docstring: a description, then 'Args:' with one "
            "'name: description' line per parameter (what transformers.utils.get_json_schema reads); "
            "or pass description= and parameters= yourself"
        ) from exc
    if not schema.get("function", {}).get("description", "").strip():
        raise ValueError(f"cannot make a tool from {label}: its docstring has no description line; add one")
    return schema


def _tuple_parameters(fn: Callable[..., Any]) -> frozenset[str]:
    """Parameters annotated ``tuple[...]``: JSON gives them as lists."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: nothing to convert
        return frozenset()
    return frozenset(name for name, hint in hints.items()
                     if hint is tuple or typing.get_origin(hint) is tuple)


class FunctionTool(ValidatedTool):
    """A Python function as a JSON-argument tool; see the module docstring.

    Args:
      fn: the function (or bound method). Typed, with a Google-style docstring, unless
        ``description`` and ``parameters`` are both given.
      name: the name the model calls; default the function's ``__name__``. Dots allowed.
      side_effect: ``"pure"``, ``"read_only"``, ``"stateful"`` or ``"mutating"``
        (default): decides when the function may start (module docstring).
      description: overrides the docstring's description.
      parameters: a JSON schema (``type: object``) that replaces the generated one, for a
        function whose signature says too little (``**kwargs``).
      timeout: seconds one run may take before the call stops waiting for it.
    """

    early_action = True  # takes effect for pure/read_only functions only (action_policy)

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        side_effect: SideEffect | str = SideEffect.MUTATING,
        description: str | None = None,
        parameters: dict[str, Any] | None = None,
        timeout: float = 60.0,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"FunctionTool needs a function, got {fn!r}")
        if parameters is not None and description is not None:
            function = {"name": getattr(fn, "__name__", ""), "description": description}
            schema: dict[str, Any] = {"type": "function", "function": function}
        else:
            schema = _function_schema(fn)
        function = dict(schema["function"])
        if description is not None:
            function["description"] = description
        if parameters is not None:
            if not isinstance(parameters, dict) or parameters.get("type") != "object":
                raise ValueError(f"parameters must be a JSON schema with type 'object', got {parameters!r}")
            function["parameters"] = parameters
        function.setdefault("parameters", {"type": "object", "properties": {}})
        name = function["name"] if name is None else name
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                f"tool name {name!r} is not usable; start with a letter or '_' and use letters, digits, "
                "'_', '-' and '.' (e.g. 'math_toolkit.sum_of_multiples'); pass name=..."
            )
        function["name"] = name
        # Instance attributes shadow the class-level declarations of Tool.
        self.name = name  # type: ignore[misc]
        self.description = function["description"]  # type: ignore[misc]
        self.parameters = function["parameters"]  # type: ignore[misc]
        self.side_effect = _side_effect(side_effect)  # type: ignore[misc]
        self.timeout = float(timeout)
        self.fn = fn
        self._schema = {**schema, "function": function}
        self._object_validator = compile_schema(self.parameters)
        for prop in self.properties:  # a broken property schema fails here, not mid-call
            self.property_validator(prop)
        self._tuples = _tuple_parameters(fn)
        self._coroutine = inspect.iscoroutinefunction(fn)
        self.__wrapped__ = fn
        self.__doc__ = getattr(fn, "__doc__", None)

    # -- presentation ----------------------------------------------------------------
    def schema(self) -> dict[str, Any]:
        """The function schema for ``apply_chat_template(tools=...)`` (``get_json_schema``'s)."""
        return json.loads(json.dumps(self._schema))  # a copy the caller may change

    # -- the work ----------------------------------------------------------------------
    def act(self, arguments: dict[str, Any]) -> str:
        """Check the whole argument object, call the function, render what it returns."""
        errors = list(self._object_validator.iter_errors(arguments))
        if errors:
            raise _InvalidArguments("; ".join(describe_schema_error("arguments", e) for e in errors))
        call = {k: tuple(v) if k in self._tuples and isinstance(v, list) else v for k, v in arguments.items()}
        value = self.fn(**call)
        if self._coroutine or inspect.isawaitable(value):
            value = asyncio.run(_awaited(value))
        run = self.current_run
        if run is not None:
            run.value = value  # kept beside the rendered output, for callers that want it
        return render_value(value)

    def check_arguments(self, arguments: dict[str, Any]) -> list[str]:
        """Every problem with ``arguments``, the whole-object schema check included."""
        errors = super().check_arguments(arguments)
        if not errors:
            errors = [describe_schema_error("arguments", e) for e in self._object_validator.iter_errors(arguments)]
        return errors

    def describe_failure(self, arguments: dict[str, Any], exc: BaseException) -> str:
        if isinstance(exc, _InvalidArguments):
            return f"{exc}; {self.name} was not run, fix the arguments and call it again"
        if isinstance(exc, SystemExit):  # argparse-style: its message went to stderr, the code is left
            raised = f"SystemExit({exc.code!r})"
        else:
            raised = f"{type(exc).__name__}: {str(exc) or '(no message)'}"
        return f"{self.name}({_quote(arguments)}) raised {raised}; check these arguments and call it again"

    def run(self, text: str, *, early: bool = False) -> ToolResult:
        """One-shot call with the arguments ``text`` (a JSON object): by default the
        function runs once, as in lazy mode, since every argument is known at once."""
        return super().run(text, early=early)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function itself (a decorated function stays usable from Python)."""
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"FunctionTool(name={self.name!r}, side_effect={self.side_effect.value!r})"


class _InvalidArguments(ValueError):
    """The argument object failed the whole-schema check right before the call."""


async def _awaited(value: Any) -> Any:
    return await value


@overload
def tool(fn: Callable[..., Any], /) -> FunctionTool: ...


@overload
def tool(
    *, name: str | None = None, side_effect: SideEffect | str = SideEffect.MUTATING, **options: Any
) -> Callable[[Callable[..., Any]], FunctionTool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    side_effect: SideEffect | str = SideEffect.MUTATING,
    **options: Any,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Decorator: ``@tool`` or ``@tool(name=..., side_effect=...)`` makes a :class:`FunctionTool`.

    ``options`` go to :class:`FunctionTool` (``description``, ``parameters``, ``timeout``).
    The decorated name is the tool; calling it still calls the function.
    """
    if isinstance(fn, (str, SideEffect)):
        raise TypeError(f"@tool({fn!r}): give the settings by keyword, e.g. @tool(side_effect={fn!r})")
    if fn is not None:
        return FunctionTool(fn, name=name, side_effect=side_effect, **options)

    def decorate(function: Callable[..., Any]) -> FunctionTool:
        return FunctionTool(function, name=name, side_effect=side_effect, **options)

    return decorate
