"""``ValidatedTool``: a JSON-argument tool whose bad call fails while it is being written.

A JSON tool call arrives member by member (``{"location": "Paris, XY", "days": 3}``):
:class:`~parsers.json_object.JsonObjectParser` emits each argument the moment its value is
complete. :class:`ValidatedTool` checks each argument as soon as it arrives, against its
property in the tool's JSON schema (:mod:`conveyor_hf.tools.json_schema`, on the
``jsonschema`` package: types, ``enum``, bounds, lengths, ``items``, ``pattern`` ...) and
against the tool's own ``validators``, so an invalid argument fails the call while the
model is still writing the rest (with
``ConveyorGenerator(on_error="abort")`` decoding of the call stops right there and the
model is re-prompted with the error).

When the action runs: the tool's action ``act(arguments)`` runs on the call's worker, at
the point its side-effect class allows (the *action policy*):

- ``stateful`` and ``read_only``/``pure`` tools by default: once the unit that completes the last
  *declared* parameter has been validated (nothing more can come: unknown names are
  errors), right after it, in that unit's record, so it overlaps the rest of decoding
  (the closing tag); otherwise (an optional parameter was left out) when the call closes,
  in an extra record with empty ``text`` that the call adds at its close;
- ``pure``/``read_only`` tools that set ``early_action = True`` (every function tool of
  those classes): as soon as every *required* parameter is in (when the call opens if none
  is required). If an optional argument still arrives after that run, the action runs once
  more, with all arguments, when they can no longer change (the last declared parameter
  is in, or the call closes); the call's result is that last run. This is safe only
  because such an action has no side effects, which is what the class promises;
- ``mutating`` tools (unless ``allow_early``): arguments are still validated as they arrive,
  but the action runs only when the call closes;
- in lazy mode (``open_call(early=False)``) everything runs when the call closes: the
  action once, after every argument has been checked.

It never runs if any argument was invalid, unknown or given twice, or a required one is
missing; the result then lists every problem. Schema ``default`` values fill in
optional parameters the model left out.

Example, a complete validated tool::

    class Weather(ValidatedTool):
        name = "weather"
        description = "Forecast for a US city."
        parameters = {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "'City, ST'"},
                "days": {"type": "integer", "minimum": 1, "maximum": 7, "default": 1},
            },
            "required": ["location"],
        }
        validators = {"location": check_us_location}  # from conveyor_hf.tools.us_states

        def act(self, args):
            return f"{args['location']}: sunny for {args['days']} day(s)"

    Weather().run('{"location": "Paris, TX", "days": 3}').output
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

from conveyor_hf.tools.base import (
    TOOL_FAILURES,
    SideEffect,
    Tool,
    ToolCall,
    ToolResult,
    UnitOutput,
    UnitRecord,
    exit_failure,
    unit_errors,
)
from conveyor_hf.tools.json_schema import SchemaValidator, check_value, compile_schema
from parsers.json_object import JsonObjectParser
from parsers.unit import IncrementalParser, Unit

__all__ = [
    "ACTION",
    "START",
    "ActionPolicy",
    "ActionRun",
    "ReportingJsonParser",
    "ValidatedCall",
    "ValidatedTool",
    "Validator",
]

#: A validator gets one argument's value; it returns None if the value is fine, else an
#: error sentence naming the value and the fix.
Validator = Callable[[Any], "str | None"]

#: When a call's action may run (see the module docstring).
ActionPolicy = Literal["required", "declared", "close"]

#: Members of a ``<tool_call>`` JSON call that wrap the arguments rather than being ones
#: (Hermes/Qwen write ``arguments``, Llama 3.x ``parameters``).
_WRAPPER_NAME, _WRAPPER_ARGUMENTS = "name", ("arguments", "parameters")


class _Action:
    """Marks a record the call adds itself to run the action (no argument in it)."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __repr__(self) -> str:
        return self.label


#: ``Unit.value`` of the unit :class:`ValidatedCall` adds at close to run the action.
ACTION = _Action("ACTION")
#: ``Unit.value`` of the unit a call adds when it opens, for an ``early_action`` tool
#: with no required parameter: its action may start before any argument is written.
START = _Action("START")


class ReportingJsonParser(JsonObjectParser):
    """A ``JsonObjectParser`` whose syntax ``error`` also comes out as a unit with
    ``Unit.error`` set, once, from the ``feed`` call that finds it (or ``close``), so the
    call fails at once and the model is told what is wrong with its JSON."""

    def reset(self) -> None:
        super().reset()
        self._reported = False

    def feed(self, text: str) -> list[Unit]:
        return self._report(super().feed(text))

    def close(self) -> list[Unit]:
        return self._report(super().close())

    def _report(self, units: list[Unit]) -> list[Unit]:
        if self.error is not None and not self._reported and not self.done:
            self._reported = True
            message = f"the arguments are not valid JSON: {self.error}"
            units = [*units, Unit(text="", index=self._index, error=message)]
            self._index += 1
        return units


# -- per-call state -------------------------------------------------------------------------
@dataclass
class ActionRun:
    """One run of a call's action: the arguments it got (before defaults), what it gave.

    ``final`` is False for an early run whose arguments could still change: its error is
    held back (an optional argument may still fix it) until the call knows more.
    """

    arguments: dict[str, Any]
    output: str = ""
    error: str | None = None
    final: bool = True
    value: Any = None  # what the action returned before it was rendered, if the tool keeps it


@dataclass
class _Arguments:
    """What one call has received so far (lives on the call's copy of the tool)."""

    values: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    fed: set[str] = field(default_factory=set)  # names fed so far (decode thread)
    streamed: bool = False  # saw members of a streamed "arguments" object
    policy: ActionPolicy = "declared"
    runs: list[ActionRun] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def acted(self) -> bool:
        return bool(self.runs)


class ValidatedCall(ToolCall):
    """A call of a :class:`ValidatedTool`; adds the action record at close if needed.

    The call runs on a shallow copy of the tool that holds the call's arguments: shared
    resources (a search backend) must be created in the tool's ``__init__`` so that the
    copy shares them; per-call state lives only on the copy. ``arguments`` holds the valid
    arguments received so far, ``errors`` the problems, ``runs`` every run of the action
    (see :class:`ActionRun`).
    """

    def __init__(self, tool: "ValidatedTool", **kwargs: Any) -> None:
        scope = copy.copy(tool)
        self._state = scope._call_arguments = _Arguments()
        super().__init__(scope, **kwargs)
        self._state.policy = tool.action_policy(early=self.early)
        #: True once the fed names cover every declared parameter (the action then runs
        #: after the unit that completed them, and close() adds nothing).
        self.complete = False
        if self._state.policy == "required" and not tool.required:
            super().feed(Unit(text="", index=0, value=START))  # nothing to wait for

    @property
    def arguments(self) -> dict[str, Any]:
        return dict(self._state.values)

    @property
    def errors(self) -> list[str]:
        return list(self._state.errors)

    @property
    def runs(self) -> list[ActionRun]:
        return list(self._state.runs)

    def feed(self, unit: Unit) -> UnitRecord:
        tool: ValidatedTool = self.tool  # type: ignore[assignment]
        self._state.fed.update(self._peek_names(unit))
        self.complete = self.complete or set(tool.properties) <= self._state.fed
        return super().feed(unit)

    def _peek_names(self, unit: Unit) -> list[str]:
        """The argument names ``unit`` carries, to know when every parameter is in.

        Never raises: ``feed`` runs on the decode thread, which must not see a tool's
        parsing exception. A unit that cannot be read here names nothing (the action then
        waits for the close); the worker's ``execute`` reads it again and reports the problem.
        """
        tool: ValidatedTool = self.tool  # type: ignore[assignment]
        try:
            items = tool._argument_items(unit, self._state, peek=True)
            return [name for name, _ in items or ()]
        except TOOL_FAILURES:
            return []

    def close(self) -> None:
        broken = any(r.unit.error is not None for r in self.records)  # e.g. invalid JSON
        needs_action = not self.complete or self._state.policy == "close"
        if self.closed is None and needs_action and not broken:
            early, self.early = self.early, False  # buffered: queued by close() once `closed` is set,
            try:  # so the action never starts before the call's close time
                super().feed(Unit(text="", index=len(self.records), value=ACTION))
            finally:
                self.early = early
        super().close()


class ValidatedTool(Tool):
    """A JSON-argument tool whose arguments are checked the moment each is written.

    Subclasses set ``name``, ``description``, ``parameters`` (a JSON schema with
    ``properties`` and ``required``), optionally ``validators`` (argument name →
    :data:`Validator`), and implement ``act(arguments) -> str``. See the module docstring
    for when ``act`` runs (``early_action`` lets a ``pure``/``read_only`` tool start as
    soon as its required arguments are in). The call body is one JSON object
    (``<weather>{"location": "Paris, TX"}</weather>``); argument units from a
    ``<tool_call>`` JSON call (``parent == "arguments"``) work as well.
    """

    json_arguments = True
    call_class = ValidatedCall

    validators: ClassVar[dict[str, Validator]] = {}
    side_effect = SideEffect.READ_ONLY
    max_concurrency = 1  # arguments are checked in the order they were written
    #: ``pure``/``read_only`` only: act once the required arguments are in (see the module docstring).
    early_action: bool = False

    # -- what subclasses provide ------------------------------------------------------
    def act(self, arguments: dict[str, Any]) -> str:
        """Do the tool's work with every argument valid; return what the model is shown.

        Raise an exception with an actionable message to report a failure.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement act(arguments)")

    def describe_failure(self, arguments: dict[str, Any], exc: BaseException) -> str:
        """The error the model is shown when ``act`` raised ``exc`` (an ``Exception`` or
        ``SystemExit``)."""
        if isinstance(exc, SystemExit):
            return exit_failure(self.name, exc)
        return f"{self.name} failed: {str(exc) or type(exc).__name__}"

    # -- schema access -------------------------------------------------------------------
    @property
    def properties(self) -> dict[str, dict[str, Any]]:
        return dict(self.parameters.get("properties", {}))

    @property
    def required(self) -> list[str]:
        return list(self.parameters.get("required", []))

    def property_validator(self, name: str) -> SchemaValidator:
        """The compiled ``jsonschema`` validator of parameter ``name`` (kept per tool)."""
        cache = self.__dict__.setdefault("_property_validators", {})
        validator = cache.get(name)
        if validator is None:
            validator = cache[name] = compile_schema(self.properties[name])
        return validator

    def action_policy(self, *, early: bool = True) -> ActionPolicy:
        """When this tool's action may run in a call opened with ``early``; see the module docstring."""
        if not early:
            return "close"  # every unit runs at close anyway: act once, after all are checked
        if self.side_effect is SideEffect.MUTATING and not self.allow_early:
            return "close"
        if self.early_action and self.side_effect in (SideEffect.PURE, SideEffect.READ_ONLY):
            return "required"
        return "declared"

    # -- Tool interface ------------------------------------------------------------------
    def make_parser(self) -> IncrementalParser:
        """A :class:`~parsers.json_object.JsonObjectParser` that also turns its syntax
        error into a unit with ``error`` set, the moment the error is found."""
        return ReportingJsonParser()

    def example(self) -> dict[str, Any]:
        """Example arguments for messages: each property's ``examples[0]``/``default``."""
        example = {}
        for name, spec in self.properties.items():
            for key in ("examples", "default"):
                if key in spec:
                    example[name] = spec[key][0] if key == "examples" else spec[key]
                    break
            else:
                if name in self.required:
                    example[name] = "…"
        return example

    @property
    def may_run_early(self) -> bool:
        """Always: arguments are validated as they arrive even for a ``mutating`` tool
        (checking has no side effect); its action waits for the call to close
        (``action_policy``)."""
        return True

    @property
    def current_run(self) -> ActionRun | None:
        """The latest run of the action in this call (inside ``act``: the run it is part of;
        one worker per call), or None before the first."""
        runs = self._arguments_state().runs
        return runs[-1] if runs else None

    def _arguments_state(self) -> _Arguments:
        state = self.__dict__.get("_call_arguments")
        if state is None:  # execute() called directly, outside a call
            state = self._call_arguments = _Arguments()
        return state

    def execute(self, unit: Unit) -> UnitOutput:
        """Validate the argument(s) ``unit`` carries; run the action when its policy allows."""
        state = self._arguments_state()
        if unit.value is ACTION:
            return self._act_if_ready(state, final=True)
        if unit.value is START:
            return self._act_if_ready(state, final=False)
        if unit.key is None:
            return UnitOutput("", (
                f"{self.name} takes its arguments as one JSON object, e.g. "
                f"<{self.name}>{json.dumps(self.example())}</{self.name}>"
            ))
        items = self._argument_items(unit, state)
        if items is None:  # a wrapper member ("name" of a <tool_call>): nothing to check
            return UnitOutput("")
        errors = []
        for name, value in items:
            error = self.validate_argument(name, value, state)
            if error is not None:
                errors.append(error)
        with state.lock:
            state.errors.extend(errors)
        if errors:
            return UnitOutput("", "; ".join(errors))
        if state.policy == "close":
            return UnitOutput("")
        if set(self.properties) <= set(state.values):
            return self._act_if_ready(state, final=True)
        if state.policy == "required" and set(self.required) <= set(state.values):
            return self._act_if_ready(state, final=False)
        return UnitOutput("")

    def validate_argument(self, name: str, value: Any, state: _Arguments | None = None) -> str | None:
        """Check one argument; record it in ``state`` if valid. Returns the error or None."""
        state = state if state is not None else self._arguments_state()
        properties = self.properties
        if name not in properties:
            known = ", ".join(properties) or "no arguments"
            return f"unknown argument {name!r}; {self.name} takes: {known}"
        if name in state.values:
            return f"argument {name!r} is given twice; give it once"
        value, error = check_value(name, value, properties[name], self.property_validator(name))
        if error is None:
            validator = self.validators.get(name)
            if validator is not None:
                try:
                    message = validator(value)
                except TOOL_FAILURES as exc:  # a validator bug must not pass the value
                    message = f"could not be checked ({type(exc).__name__}: {exc})"
                if message:
                    error = f"argument {name!r}: {message}"
        if error is None:
            with state.lock:
                state.values[name] = value
        return error

    def _argument_items(self, unit: Unit, state: _Arguments, peek: bool = False) -> list[tuple[str, Any]] | None:
        """``[(name, value)]`` that ``unit`` carries, or None for a wrapper member."""
        if unit.error is not None or unit.key is None:
            return []  # the base call reports unit.error; keyless text is not an argument
        properties = self.properties
        if unit.parent in _WRAPPER_ARGUMENTS and unit.parent not in properties:
            if not peek:
                state.streamed = True
            return [(unit.key, unit.value)]
        if unit.parent is not None:
            return [(f"{unit.parent}.{unit.key}", unit.value)]
        if unit.key == _WRAPPER_NAME and _WRAPPER_NAME not in properties and unit.value == self.name:
            return None
        if unit.key in _WRAPPER_ARGUMENTS and unit.key not in properties:
            if state.streamed or peek and state.fed:
                return None  # its members came one by one already
            value = unit.value
            if isinstance(value, str):  # OpenAI style: arguments as a JSON string
                try:
                    value = json.loads(value)
                except (ValueError, RecursionError):  # not JSON, or nested too deep to decode
                    return [(unit.key, value)]
            if isinstance(value, dict):
                return list(value.items())
        return [(unit.key, unit.value)]

    def _act_if_ready(self, state: _Arguments, *, final: bool) -> UnitOutput:
        """Run the action if the arguments allow it now.

        ``final``: the arguments can no longer change (the last declared parameter is in,
        or the call closed). A non-final run happens at most once (``early_action``); a
        final one runs only if no run had exactly these arguments, and otherwise reports
        the error an early run held back.
        """
        with state.lock:
            if state.errors:
                return UnitOutput("")
            missing = [name for name in self.required if name not in state.values]
            if missing:
                if not final:
                    return UnitOutput("")
                error = self._missing_message(missing)
                state.errors.append(error)
                return UnitOutput("", error)
            arguments = dict(state.values)
            last = state.runs[-1] if state.runs else None
            if last is not None and last.arguments == arguments:
                if final and not last.final:
                    last.final = True
                    return UnitOutput("", last.error)  # the early run was the real one
                return UnitOutput("")
            if last is not None and not final:
                return UnitOutput("")  # a re-run waits until the arguments are settled
            run = ActionRun(dict(arguments), final=final)  # as written: defaults are filled in below
            state.runs.append(run)
        for name, spec in self.properties.items():
            if name not in arguments and "default" in spec:
                arguments[name] = spec["default"]
        try:
            run.output = str(self.act(arguments))
        except TOOL_FAILURES as exc:  # SystemExit too: it would end the worker and hang the call
            run.error = self.describe_failure(arguments, exc)
        if not final:  # its error waits: an optional argument may still change the call
            return UnitOutput(run.output)
        return UnitOutput(run.output, run.error)

    def check_arguments(self, arguments: dict[str, Any]) -> list[str]:
        """Every problem with a complete argument object (unknown, invalid, missing), as a
        call would report them, without running the action: for checking calls offline."""
        state = _Arguments()
        errors = [e for name, value in arguments.items() if (e := self.validate_argument(name, value, state))]
        missing = [name for name in self.required if name not in arguments]
        if missing:
            errors.append(self._missing_message(missing))
        return errors

    def _missing_message(self, missing: list[str]) -> str:
        parts = []
        for name in missing:
            about = self.properties.get(name, {}).get("description")
            parts.append(f"{name!r} ({about})" if about else repr(name))
        noun = "argument" if len(missing) == 1 else "arguments"
        return f"missing required {noun} {', '.join(parts)}; call {self.name} again with it"

    def format_result(self, records: list[UnitRecord]) -> ToolResult:
        """The last action run's output, or every problem with the call and whether it ran."""
        state = self.__dict__.get("_call_arguments")
        errors = unit_errors(records)
        if state is not None and state.runs:
            last = state.runs[-1]  # an early run cut short by an error is not the call's result
            shown = last.output and last.error is None and (last.final or not errors)
            outputs = [last.output.rstrip("\n")] if shown else []
        else:  # records from elsewhere: the last output they hold
            outputs = [r.output.rstrip("\n") for r in records if r.output][-1:]
        lines = [f"error: {e}" for e in errors]
        acted = bool(state.runs) if state is not None else any(r.output for r in records)
        if errors and not acted:
            lines.append(f"{self.name} was not run; fix the arguments and call it again.")
        return self.make_result(records, outputs + lines, errors=errors, separator="\n")
