"""Argument validation while the call is being written: reject a bad call early.

A JSON tool call arrives member by member (``{"location": "Paris, XY", "days": 3}``):
:class:`~parsers.json_object.JsonObjectParser` emits each argument the moment its value is
complete. :class:`ValidatedTool` checks each argument as soon as it arrives, against its
property in the tool's JSON schema (with the ``jsonschema`` package: types, ``enum``,
bounds, lengths, ``items``, ``pattern`` ...) and against the tool's own ``validators``, so an
invalid argument fails the call while the model is still writing the rest (with
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
        validators = {"location": check_us_location}

        def act(self, args):
            return f"{args['location']}: sunny for {args['days']} day(s)"

    Weather().run('{"location": "Paris, TX", "days": 3}').output
"""

from __future__ import annotations

import copy
import functools
import json
import re
import threading
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator as SchemaValidator

from conveyor_hf.tools.base import SideEffect, Tool, ToolCall, ToolResult, UnitOutput, UnitRecord
from parsers.json_object import JsonObjectParser
from parsers.unit import IncrementalParser, Unit

__all__ = [
    "ACTION",
    "START",
    "US_STATES",
    "LocationLookupTool",
    "ReportingJsonParser",
    "ValidatedCall",
    "ValidatedTool",
    "Validator",
    "check_us_location",
    "check_value",
    "compile_schema",
    "describe_schema_error",
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


# -- schema checks ----------------------------------------------------------------------
_JSON_TYPES: dict[str, str] = {
    "string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
    "array": "an array", "object": "an object", "null": "null",
}


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _standard(schema: Any) -> Any:
    """``schema`` as standard JSON Schema: transformers' ``"nullable": true`` (what
    ``get_json_schema`` writes for ``Optional[...]``) becomes a ``"null"`` type."""
    if isinstance(schema, list):
        return [_standard(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _standard(value) for key, value in schema.items() if key != "nullable"}
    if schema.get("nullable") is True and "type" in out:
        types = [out["type"]] if isinstance(out["type"], str) else list(out["type"])
        out["type"] = types if "null" in types else types + ["null"]
    return out


def compile_schema(schema: dict[str, Any]) -> SchemaValidator:
    """A ``jsonschema`` validator for one property (or a whole parameters) schema.

    Draft 2020-12 (so ``3.0`` is an integer); a malformed schema is a ``ValueError``
    naming it, raised here rather than while the model writes a call. Validators are
    shared between equal schemas (they hold no per-check state).
    """
    try:
        key = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid JSON schema {schema!r}: it is not JSON ({exc})") from exc
    return _compiled(key)


@functools.lru_cache(maxsize=1024)
def _compiled(key: str) -> SchemaValidator:
    """Checking a schema costs about a millisecond: do it once per distinct schema."""
    schema = json.loads(key)
    standard = _standard(schema)
    try:
        Draft202012Validator.check_schema(standard)
    except Exception as exc:  # jsonschema's SchemaError, with the offending part
        raise ValueError(f"invalid JSON schema {schema!r}: {getattr(exc, 'message', exc)}") from exc
    return Draft202012Validator(standard)


def _where(name: str, path: Any) -> str:
    return name + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _bounds(schema: dict[str, Any]) -> str:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        parts = [f"between {low} and {high}"]
    else:
        parts = [f"at least {low}"] if low is not None else [f"at most {high}"] if high is not None else []
    if schema.get("exclusiveMinimum") is not None:
        parts.append(f"greater than {schema['exclusiveMinimum']}")
    if schema.get("exclusiveMaximum") is not None:
        parts.append(f"less than {schema['exclusiveMaximum']}")
    return " and ".join(parts)


def describe_schema_error(name: str, error: ValidationError) -> str:
    """One sentence for a ``jsonschema`` error in argument ``name``: the value and the fix."""
    where = _where(name, error.absolute_path)
    value, schema, keyword = error.instance, error.schema, error.validator
    shown = json.dumps(value, ensure_ascii=False, default=repr)
    if keyword == "type":
        types = [schema["type"]] if isinstance(schema["type"], str) else list(schema["type"])
        expected = " or ".join(_JSON_TYPES.get(t, t) for t in types)
        hint = ""
        if not error.absolute_path and isinstance(value, str) and any(
                t in ("integer", "number", "boolean") for t in types):
            hint = f"; write it without quotes, e.g. \"{name}\": {value.strip() or 1}"
        elif not error.absolute_path and "string" in types:
            hint = f"; write it in double quotes, e.g. \"{name}\": \"{value}\""
        return f"argument {where!r} must be {expected}, got {shown} ({_json_kind(value)}){hint}"
    if keyword == "enum":
        options = ", ".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
        return f"argument {where!r} is {shown}; it must be one of {options}"
    if keyword == "const":
        return f"argument {where!r} is {shown}; it must be {json.dumps(schema['const'], ensure_ascii=False)}"
    if keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"argument {where!r} is {shown}; it must be {_bounds(schema)}"
    if keyword == "minLength":
        return f"argument {where!r} ({value!r}) is too short; give at least {schema['minLength']} characters"
    if keyword == "maxLength":
        return f"argument {where!r} is {len(value)} characters long; give at most {schema['maxLength']}"
    if keyword == "minItems":
        return f"argument {where!r} has {len(value)} items; give at least {schema['minItems']}"
    if keyword == "maxItems":
        return f"argument {where!r} has {len(value)} items; give at most {schema['maxItems']}"
    if keyword == "required":
        return f"argument {where!r} ({shown}) {error.message}; add it"
    return f"argument {where!r}: {error.message}"


def _pick(errors: list[ValidationError]) -> ValidationError:
    """The error to report: the shallowest, type errors before the others."""
    return min(errors, key=lambda e: (len(e.absolute_path), e.validator != "type"))


def check_value(
    name: str, value: Any, schema: dict[str, Any], validator: SchemaValidator | None = None
) -> tuple[Any, str | None]:
    """Check ``value`` of argument ``name`` against its property ``schema`` (``jsonschema``).

    Returns ``(value, None)`` (an integral float such as ``3.0`` becomes ``3`` for an
    ``integer``) or ``(value, error sentence)``. ``validator``: ``compile_schema(schema)``,
    when the caller keeps one.
    """
    validator = validator if validator is not None else compile_schema(schema)
    errors = list(validator.iter_errors(value))
    if errors:
        return value, describe_schema_error(name, _pick(errors))
    wanted = schema.get("type")
    types = [wanted] if isinstance(wanted, str) else list(wanted or [])
    if isinstance(value, float) and "integer" in types and "number" not in types and value.is_integer():
        value = int(value)
    return value, None


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

    ``arguments`` holds the valid arguments received so far, ``errors`` the problems,
    ``runs`` every run of the action (see :class:`ActionRun`).
    """

    def __init__(self, tool: "ValidatedTool", **kwargs: Any) -> None:
        super().__init__(tool, **kwargs)
        self._state = tool._arguments_state()
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
        items = tool._argument_items(unit, self._state, peek=True)
        self._state.fed.update(name for name, _ in items or ())
        self.complete = self.complete or set(tool.properties) <= self._state.fed
        return super().feed(unit)

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

    def describe_failure(self, arguments: dict[str, Any], exc: Exception) -> str:
        """The error the model is shown when ``act`` raised ``exc``."""
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

    def open_call(
        self,
        *,
        early: bool = True,
        on_unit_done: Callable[[UnitRecord], None] | None = None,
    ) -> ValidatedCall:
        """Open a call on a shallow copy of this tool that holds the call's arguments.

        Arguments are validated as they arrive even for a ``mutating`` tool (checking has
        no side effect); its action waits for the call to close (``action_policy``).
        Shared resources (a search backend) must be created in ``__init__`` so that the
        copy shares them; per-call state lives only on the copy.
        """
        scope = copy.copy(self)
        scope._call_arguments = _Arguments()
        return ValidatedCall(scope, early=early, on_unit_done=on_unit_done)

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
                except Exception as exc:  # a validator bug must not pass the value
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
                except ValueError:
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
        except Exception as exc:
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
        errors = [r.error for r in records if r.error and not r.skipped]
        if state is not None and state.runs:
            last = state.runs[-1]  # an early run cut short by an error is not the call's result
            shown = last.output and last.error is None and (last.final or not errors)
            outputs = [last.output.rstrip("\n")] if shown else []
        else:  # records from elsewhere: the last output they hold
            outputs = [r.output.rstrip("\n") for r in records if r.output][-1:]
        if errors:
            acted = bool(state.runs) if state is not None else any(r.output for r in records)
            lines = [f"error: {e}" for e in errors]
            if not acted:
                lines.append(f"{self.name} was not run; fix the arguments and call it again.")
            output = "\n".join(outputs + lines)
        else:
            output = "\n".join(outputs)
        return ToolResult(
            output=output, error="; ".join(errors) if errors else None, units=list(records), tool=self.name
        )


# -- US places ------------------------------------------------------------------------------
#: Postal abbreviations of the 50 states, the District of Columbia and the inhabited territories.
US_STATES: dict[str, str] = {
    "AL": "Alabama", "AK": "Alaska", "AZ": "Arizona", "AR": "Arkansas", "CA": "California",
    "CO": "Colorado", "CT": "Connecticut", "DE": "Delaware", "FL": "Florida", "GA": "Georgia",
    "HI": "Hawaii", "ID": "Idaho", "IL": "Illinois", "IN": "Indiana", "IA": "Iowa",
    "KS": "Kansas", "KY": "Kentucky", "LA": "Louisiana", "ME": "Maine", "MD": "Maryland",
    "MA": "Massachusetts", "MI": "Michigan", "MN": "Minnesota", "MS": "Mississippi",
    "MO": "Missouri", "MT": "Montana", "NE": "Nebraska", "NV": "Nevada", "NH": "New Hampshire",
    "NJ": "New Jersey", "NM": "New Mexico", "NY": "New York", "NC": "North Carolina",
    "ND": "North Dakota", "OH": "Ohio", "OK": "Oklahoma", "OR": "Oregon", "PA": "Pennsylvania",
    "RI": "Rhode Island", "SC": "South Carolina", "SD": "South Dakota", "TN": "Tennessee",
    "TX": "Texas", "UT": "Utah", "VT": "Vermont", "VA": "Virginia", "WA": "Washington",
    "WV": "West Virginia", "WI": "Wisconsin", "WY": "Wyoming",
    "DC": "District of Columbia",
    "PR": "Puerto Rico", "GU": "Guam", "VI": "U.S. Virgin Islands", "AS": "American Samoa",
    "MP": "Northern Mariana Islands",
}
_BY_NAME = {name.casefold(): code for code, name in US_STATES.items()}
_LOCATION = re.compile(r"\s*([^,]+?)\s*,\s*([^,]+?)\s*")


def _state_code(text: str) -> str | None:
    code = text.replace(".", "").replace(" ", "").upper()
    return code if code in US_STATES else None


def split_us_location(value: str) -> tuple[str, str]:
    """``"Austin, tx"`` → ``("Austin", "TX")``; raises ValueError if it is not valid."""
    error = check_us_location(value)
    if error is not None:
        raise ValueError(error)
    match = _LOCATION.fullmatch(value)
    assert match is not None  # checked above
    return match.group(1), _state_code(match.group(2)) or ""


def check_us_location(value: Any) -> str | None:
    """Validator: ``value`` must be ``"City, ST"`` with ST a US state/territory code."""
    if not isinstance(value, str):
        return f"{value!r} is not a place name; write 'City, ST', e.g. 'Austin, TX'"
    match = _LOCATION.fullmatch(value)
    if match is None:
        return (
            f"{value!r} is not of the form 'City, ST'; write the city, a comma and the "
            "two-letter state code, e.g. 'Austin, TX'"
        )
    city, state = match.groups()
    if not any(c.isalpha() for c in city):
        return f"{city!r} in {value!r} is not a city name; write 'City, ST', e.g. 'Austin, TX'"
    if _state_code(state) is not None:
        return None
    code = _BY_NAME.get(state.casefold())
    if code is not None:
        return f"{state!r} in {value!r} is a state name, not its abbreviation; write '{city}, {code}'"
    return (
        f"{state!r} in {value!r} is not a US state or territory abbreviation; use a two-letter "
        "code such as TX, CA or NY (this tool only knows US places)"
    )


def _norm(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return " ".join("".join(c for c in decomposed if c.isalnum() or c.isspace()).split())


class LocationLookupTool(ValidatedTool):
    """Looks up a US city in an encyclopedia and returns its summary.

    The ``location`` argument must be ``"City, ST"`` (a real US state or territory
    abbreviation); a bad one is rejected the moment its closing quote is written. The
    lookup uses :class:`~conveyor_hf.tools.search_offline.OfflineSearchBackend` (Wikipedia
    summaries, offline) unless another search backend is given.

    Args:
      backend: any object with ``search(query, max_results) -> list[SearchHit]``; None
        (default) builds the offline Wikipedia backend on first use.
      snippet_chars: each summary is cut to this many characters.
    """

    name = "locate"
    description = (
        "Look up a US city in the encyclopedia and return its summary. Arguments as JSON: "
        "location ('City, ST', e.g. 'Austin, TX'), optional max_results (1-5)."
    )
    parameters = {
        "type": "object",
        "properties": {
            "location": {
                "type": "string",
                "description": "a US city and two-letter state code, e.g. 'Austin, TX'",
            },
            "max_results": {
                "type": "integer",
                "minimum": 1,
                "maximum": 5,
                "default": 1,
                "description": "how many matching entries to return",
            },
        },
        "required": ["location"],
    }
    validators = {"location": check_us_location}
    side_effect = SideEffect.READ_ONLY
    timeout = 30.0

    def __init__(self, backend: Any = None, *, snippet_chars: int = 400) -> None:
        if backend is not None and not callable(getattr(backend, "search", None)):
            raise TypeError(
                f"LocationLookupTool(backend={backend!r}): a backend needs a "
                "search(query: str, max_results: int) -> list[SearchHit] method"
            )
        if backend is None:
            from conveyor_hf.tools.search_offline import OfflineSearchBackend

            backend = OfflineSearchBackend(snippet_chars=max(int(snippet_chars), 200))
        self.backend = backend  # created here so that every call's copy shares it
        self.snippet_chars = int(snippet_chars)

    def warm_up(self) -> None:
        """Open (or build) the search index while the model writes the arguments."""
        warm = getattr(self.backend, "warm_up", None)
        if callable(warm):
            warm()

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()

    def act(self, arguments: dict[str, Any]) -> str:
        city, code = split_us_location(arguments["location"])
        state = US_STATES[code]
        wanted = int(arguments.get("max_results", 1))
        city_n, state_n = _norm(city), _norm(state)
        exact = {city_n, f"{city_n} {state_n}", f"{city_n} city", f"{city_n} {_norm(code)}"}
        found: list[tuple[int, int, Any]] = []  # (0 for the city's own article, order, hit)
        seen: list[str] = []
        for query in (f"{city}, {state}", city, f"{city} {state}"):
            for hit in self.backend.search(query, max(5, wanted)):
                if hit.title in seen:
                    continue
                seen.append(hit.title)
                title_n, text_n = _norm(hit.title), _norm(f"{hit.title} {hit.snippet}")
                if title_n.startswith(city_n) and state_n in text_n:
                    found.append((0 if title_n in exact else 1, len(found), hit))
            if sum(1 for rank, _, _ in found if rank == 0) >= wanted:
                break
        found.sort(key=lambda item: item[:2])
        place = f"{city}, {code}"
        if not found:
            nearest = f" (nearest entries: {', '.join(seen[:3])})" if seen else ""
            return f"No encyclopedia entry found for {place} ({city}, {state}){nearest}."
        lines = []
        for _, _, hit in found[:wanted]:
            snippet = " ".join(hit.snippet.split())
            if len(snippet) > self.snippet_chars:
                snippet = snippet[: self.snippet_chars].rsplit(" ", 1)[0] + "\u2026"
            lines.append(f"{place} \u2014 {hit.title}: {snippet}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"LocationLookupTool(backend={type(self.backend).__name__})"
