"""Function tools: a typed, documented function becomes a tool whose arguments are checked
as they are written, and which starts as early as its side-effect class allows."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Literal, Optional

import pytest
from transformers import LogitsProcessor
from transformers.utils import get_json_schema

from conveyor_hf import ConveyorGenerator
from conveyor_hf.tools import FunctionTool, SideEffect, Tool, tool
from conveyor_hf.tools.function import render_value
from conveyor_hf.tools.json_schema import check_value
from conveyor_hf.tools.validated import ACTION, START, ValidatedCall
from parsers.json_object import JsonObjectParser
from parsers.unit import Unit
from helpers import wait_until


def power(base: int, exponent: int = 2) -> int:
    """Raise a number to a power.

    Args:
        base: the number
        exponent: the power to raise it to
    """
    return base**exponent


def members(body: str) -> list[Unit]:
    """The argument units a ``<tool_call>`` hands over, one per argument, in order."""
    parser = JsonObjectParser(expand=("arguments",))
    units = parser.feed('{"name": "f", "arguments": ' + body + "}") + parser.close()
    return [u for u in units if u.parent == "arguments"]


def recording(side_effect: str, log: list, name: str = "power") -> FunctionTool:
    def fn(base: int, exponent: int = 2) -> int:
        log.append((base, exponent))
        return base**exponent

    fn.__doc__ = power.__doc__
    return FunctionTool(fn, name=name, side_effect=side_effect)


# -- making tools -------------------------------------------------------------------------
def test_the_schema_is_what_get_json_schema_makes_and_names_may_have_dots():
    made = tool(name="math_toolkit.power", side_effect="pure")(power)
    expected = get_json_schema(power)
    expected["function"]["name"] = "math_toolkit.power"
    assert made.schema() == expected
    assert made.name == "math_toolkit.power" and made.side_effect is SideEffect.PURE
    assert made.parameters["required"] == ["base"] and made.description == "Raise a number to a power."
    assert made(3) == 9  # a decorated function still works as a function


def test_decorator_forms_and_from_function_default_to_mutating():
    bare = tool(power)
    assert isinstance(bare, FunctionTool) and bare.name == "power" and bare.side_effect is SideEffect.MUTATING
    made = Tool.from_function(power)
    assert isinstance(made, FunctionTool) and made.side_effect is SideEffect.MUTATING
    named = Tool.from_function(power, name="pow", side_effect=SideEffect.READ_ONLY)
    assert named.name == "pow" and named.side_effect is SideEffect.READ_ONLY
    assert repr(named) == "FunctionTool(name='pow', side_effect='read_only')"


def untyped(x):
    """Echo.

    Args:
        x: anything
    """


def undocumented_argument(x: int) -> int:
    """Echo."""


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: Tool.from_function(lambda x: x), ValueError, "has no docstring"),
        (lambda: Tool.from_function(untyped), ValueError, "missing a type hint"),
        (lambda: Tool.from_function(undocumented_argument), ValueError, "no description for the argument 'x'"),
        (lambda: Tool.from_function(power, name="two words"), ValueError, "tool name 'two words' is not usable"),
        (lambda: Tool.from_function(power, side_effect="safe"), ValueError, "use one of 'pure', 'read_only'"),
        (lambda: tool("pure"), TypeError, "@tool(side_effect='pure')"),
        (lambda: FunctionTool(42), TypeError, "needs a function"),
    ],
)
def test_bad_definitions_say_what_to_change(make, error, message):
    with pytest.raises(error) as info:
        make()
    assert message in str(info.value)


def test_a_function_without_usable_docs_can_be_described_explicitly():
    def anything(**kwargs):
        return sorted(kwargs)

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    made = FunctionTool(anything, name="lookup.any", description="Takes a.", parameters=schema)
    assert made.schema()["function"] == {"name": "lookup.any", "description": "Takes a.", "parameters": schema}
    assert made.run('{"a": 1}').output == '["a"]'


# -- results and errors ---------------------------------------------------------------------
@dataclasses.dataclass
class Point:
    x: int
    y: int


@pytest.mark.parametrize(
    "value, text",
    [("plain text", "plain text"), ({"a": [1, 2]}, '{"a": [1, 2]}'), (3.5, "3.5"), (None, "null"),
     (Point(1, 2), '{"x": 1, "y": 2}'), ("日本", "日本"), ({"s": "é"}, '{"s": "é"}')],
)
def test_return_values_are_rendered_str_as_is_else_json(value, text):
    assert render_value(value) == text


def test_a_valid_call_runs_once_and_returns_the_rendered_value():
    log: list = []
    result = recording("mutating", log).run('{"base": 3, "exponent": 3}')
    assert result.error is None and result.output == "27" and log == [(3, 3)]


@pytest.mark.parametrize(
    "body, message",
    [
        ('{"base": "3"}', "argument 'base' must be an integer, got \"3\" (string); write it without quotes"),
        ('{"base": 2.5}', "argument 'base' must be an integer, got 2.5 (number)"),
        ('{"base": 3, "power": 2}', "unknown argument 'power'; power takes: base, exponent"),
        ('{"exponent": 2}', "missing required argument 'base' (the number); call power again with it"),
        ('{"base": 3, "base": 4}', "argument 'base' is given twice"),
        ('{"base": 3,', "the arguments are not valid JSON"),
    ],
)
def test_bad_arguments_are_rejected_before_the_function_runs(body, message):
    log: list = []
    result = recording("pure", log).run(body)
    assert result.error is not None and message in result.error, result.error
    assert "power was not run; fix the arguments and call it again." in result.output
    assert log == []


def test_an_exception_names_the_arguments_and_the_fix():
    @tool(side_effect="pure")
    def divide(a: float, b: float) -> float:
        """Divide a by b.

        Args:
            a: the dividend
            b: the divisor
        """
        return a / b

    result = divide.run('{"a": 1, "b": 0}')
    assert result.error == (
        "divide(a=1, b=0) raised ZeroDivisionError: division by zero; check these arguments and call it again"
    )
    assert result.output == f"error: {result.error}"


def test_schema_checks_use_jsonschema_for_nested_values_enums_and_optionals():
    seen = []

    @tool(side_effect="pure")
    def pick(values: list[int], mode: Literal["min", "max"] = "max", scale: Optional[float] = None,
             pair: tuple[int, str] = (0, "")) -> int:
        """Pick one of the values.

        Args:
            values: the candidates
            mode: which one to pick
            scale: multiply the pick by this
            pair: carried along
        """
        seen.append(pair)
        best = max(values) if mode == "max" else min(values)
        return best * (scale or 1)

    assert "argument 'values[1]' must be an integer, got \"x\" (string)" in pick.run('{"values": [1, "x"]}').error
    assert "argument 'mode' is \"mid\"; it must be one of \"min\", \"max\"" in pick.run(
        '{"values": [1], "mode": "mid"}').error
    assert pick.run('{"values": [4, 2], "mode": "min", "scale": null, "pair": [1, "a"]}').output == "2"
    assert seen == [(1, "a")]  # a JSON array for a tuple parameter arrives as a tuple
    assert check_value("n", 3.0, {"type": "integer"}) == (3, None)
    assert check_value("x", 1.5, {"type": ["integer", "number"]}) == (1.5, None)
    assert "greater than 0" in check_value("x", 0, {"type": "number", "exclusiveMinimum": 0})[1]
    assert "'xs' has 1 items; give at least 2" in check_value("xs", [1], {"type": "array", "minItems": 2})[1]


def test_the_whole_argument_object_is_checked_before_the_call():
    calls = []

    def window(**kwargs):
        calls.append(kwargs)
        return "ok"

    schema = {"type": "object", "properties": {"start": {"type": "integer"}, "end": {"type": "integer"}},
              "dependentRequired": {"start": ["end"]}}
    made = FunctionTool(window, name="window", description="A window.", parameters=schema, side_effect="pure")
    result = made.run('{"start": 1}')
    assert "'end' is a dependency of 'start'" in result.error and "window was not run" in result.error
    assert calls == []
    assert made.run('{"start": 1, "end": 2}').output == "ok" and calls == [{"start": 1, "end": 2}]


def test_async_functions_are_awaited():
    @tool(side_effect="pure")
    async def later(x: int) -> int:
        """Return x later.

        Args:
            x: the value
        """
        return x + 1

    assert later.run('{"x": 41}').output == "42"


# -- when the function runs ---------------------------------------------------------------
def test_pure_function_starts_on_its_required_arguments_and_reruns_for_a_late_optional_one():
    log: list = []
    call = recording("pure", log).open_call()
    assert isinstance(call, ValidatedCall)
    base, exponent = members('{"base": 3, "exponent": 4}')
    first = call.feed(base)
    assert wait_until(lambda: first.done)
    assert log == [(3, 2)] and call.closed is None  # ran before the call was complete
    assert not call.failed
    call.feed(exponent)
    result = call.finish()
    assert log == [(3, 2), (3, 4)]  # the optional argument arrived: run again, once
    assert result.error is None and result.output == "81"
    assert [run.arguments for run in call.runs] == [{"base": 3}, {"base": 3, "exponent": 4}]
    assert [run.value for run in call.runs] == [9, 81]


def test_pure_function_that_got_everything_early_runs_once():
    log: list = []
    call = recording("read_only", log).open_call()
    record = call.feed(members('{"base": 5}')[0])
    assert wait_until(lambda: record.done) and log == [(5, 2)]
    result = call.finish()
    assert log == [(5, 2)] and result.output == "25"
    assert result.units[-1].unit.value is ACTION and result.units[-1].output == ""  # nothing left to do


def test_schema_defaults_are_filled_in_without_causing_a_rerun():
    calls = []

    def scaled(**kwargs):
        calls.append(kwargs)
        return kwargs["x"] * kwargs["factor"]

    schema = {"type": "object", "required": ["x"],
              "properties": {"x": {"type": "integer"}, "factor": {"type": "integer", "default": 10}}}
    made = FunctionTool(scaled, name="scaled", description="Scale x.", parameters=schema, side_effect="pure")
    call = made.open_call()
    record = call.feed(members('{"x": 4}')[0])
    assert wait_until(lambda: record.done) and calls == [{"x": 4, "factor": 10}]
    assert call.finish().output == "40" and len(calls) == 1  # the close found nothing new
    assert call.runs[0].arguments == {"x": 4}  # as written


def test_an_early_failure_waits_for_the_optional_argument_that_may_fix_it():
    def invert(x: float, shift: float = 0.0) -> float:
        """Invert a shifted number.

        Args:
            x: the number
            shift: added first
        """
        return 1 / (x + shift)

    fixed = Tool.from_function(invert, side_effect="pure").open_call()
    x, shift = members('{"x": 0, "shift": 1}')
    first = fixed.feed(x)
    assert wait_until(lambda: first.done)
    assert not fixed.failed and first.error is None  # held back: "shift" may still come
    fixed.feed(shift)
    result = fixed.finish()
    assert result.error is None and result.output == "1.0"
    unfixed = Tool.from_function(invert, side_effect="pure").open_call()
    unfixed.feed(x)
    result = unfixed.finish()
    assert unfixed.failed and "invert(x=0) raised ZeroDivisionError" in result.error


def test_mutating_function_checks_arguments_early_but_runs_only_at_close():
    log: list = []
    made = recording("mutating", log)
    call = made.open_call()
    records = [call.feed(u) for u in members('{"base": 2, "exponent": 5}')]
    assert wait_until(lambda: all(r.done for r in records))
    assert log == [] and call.closed is None  # checked, not run
    result = call.finish()
    assert log == [(2, 5)] and result.output == "32"
    assert result.units[-1].unit.value is ACTION and result.units[-1].start >= call.closed
    bad = made.open_call()
    record = bad.feed(members('{"base": "2"}')[0])
    assert wait_until(lambda: record.done)
    assert bad.failed and bad.closed is None  # rejected while the call is still being written
    assert bad.finish().error.startswith("argument 'base' must be an integer") and log == [(2, 5)]


def test_stateful_function_runs_once_every_parameter_is_in():
    log: list = []
    call = recording("stateful", log).open_call()
    base, exponent = members('{"base": 2, "exponent": 3}')
    first = call.feed(base)
    assert wait_until(lambda: first.done) and log == []  # "exponent" may still come
    second = call.feed(exponent)
    assert wait_until(lambda: second.done) and log == [(2, 3)] and call.closed is None
    assert call.finish().output == "8" and log == [(2, 3)]


def test_a_pure_function_without_required_arguments_starts_when_its_call_opens():
    started = threading.Event()

    @tool(side_effect="read_only")
    def clock(utc: bool = True) -> str:
        """Tell the time.

        Args:
            utc: in UTC
        """
        started.set()
        return "12:00" + (" UTC" if utc else "")

    call = clock.open_call()
    assert started.wait(10) and call.records[0].unit.value is START  # before any argument
    assert call.finish().output == "12:00 UTC"
    rerun = clock.open_call()
    rerun.feed(members('{"utc": false}')[0])
    assert rerun.finish().output == "12:00" and [r.arguments for r in rerun.runs] == [{}, {"utc": False}]


def test_lazy_mode_runs_once_after_every_argument_was_checked():
    log: list = []
    made = recording("pure", log)
    call = made.open_call(early=False)
    for unit in members('{"base": 3, "exponent": 4}'):
        call.feed(unit)
    assert call.finish().output == "81" and log == [(3, 4)]
    call = made.open_call(early=False)
    for unit in members('{"base": 3, "exponent": 4, "note": "x"}'):
        call.feed(unit)
    assert "unknown argument 'note'" in call.finish().error and log == [(3, 4)]  # never ran


def test_llama_style_parameters_wrapper_is_accepted():
    parser = JsonObjectParser(expand=("parameters",))
    units = parser.feed('{"name": "power", "parameters": {"base": 4}}') + parser.close()
    call = Tool.from_function(power, side_effect="pure").open_call()
    for unit in units:
        if unit.parent == "parameters":
            call.feed(unit)
    assert call.finish().output == "16"


# -- through the tool loop ----------------------------------------------------------------
class StartGate(LogitsProcessor):
    """Watches the answer decode. Once ``after`` is in it, notes whether the function has
    started; with ``hold`` it first holds decoding until it has (bounded), so the order
    of events is fixed by the events themselves, never by how fast anything ran."""

    def __init__(self, tokenizer, after: str, started: threading.Event, *, hold: bool) -> None:
        self.tokenizer, self.after, self.started, self.hold = tokenizer, after, started, hold
        self.prompt: int | None = None
        self.started_after: bool | None = None
        self.text_then = ""

    def __call__(self, input_ids, scores):
        if self.prompt is None:
            self.prompt = input_ids.shape[1]
        text = self.tokenizer.decode(input_ids[0, self.prompt:])
        if self.started_after is None and self.after in text:
            if self.hold:
                self.started.wait(30)
            self.started_after, self.text_then = self.started.is_set(), text
        return scores


SCRIPT = ('Let me compute it.<tool_call>\n{"name": "math_toolkit.power", "arguments": '
          '{"base": 7, "exponent": 3}}\n</tool_call>Done.')


def loop_run(tiny_model, tokenizer, side_effect: str, *, hold: bool):
    started = threading.Event()
    ran: list[float] = []

    def fn(base: int, exponent: int = 2) -> int:
        ran.append(time.perf_counter())
        started.set()
        return base**exponent

    fn.__doc__ = power.__doc__
    made = Tool.from_function(fn, name="math_toolkit.power", side_effect=side_effect)
    gate = StartGate(tokenizer, '"base": 7,', started, hold=hold)
    with ConveyorGenerator(tiny_model, tokenizer, tools=[made]) as gen:
        out = gen.generate([{"role": "user", "content": "7 cubed?"}], replay=[SCRIPT], max_new_tokens=120,
                           logits_processor=[gate])
    [call] = out.tool_calls
    return out, call, gate, ran


def test_through_the_loop_a_pure_function_starts_before_its_call_is_closed(tiny_model, tokenizer):
    out, call, gate, ran = loop_run(tiny_model, tokenizer, "pure", hold=True)
    assert gate.started_after is True and "</tool_call>" not in gate.text_then  # running mid-call
    assert ran[0] < call.closed  # the first run started before </tool_call> was decoded
    assert len(ran) == 2  # and ran again once "exponent" was in
    assert call.tool == "math_toolkit.power" and call.error is None and call.output == "343"
    assert "<|im_start|>tool\n343<|im_end|>" in out.text and "Done." in out.text


def test_through_the_loop_a_mutating_function_starts_only_after_its_call_is_closed(tiny_model, tokenizer):
    out, call, gate, ran = loop_run(tiny_model, tokenizer, "mutating", hold=False)
    assert gate.started_after is False  # arguments complete, function not started
    assert len(ran) == 1 and ran[0] >= call.closed
    action = call.units[-1]
    assert action.unit.value is ACTION and action.start >= call.closed
    assert all(u.error is None for u in call.units) and call.output == "343"
    assert "<|im_start|>tool\n343<|im_end|>" in out.text and "Done." in out.text


def test_through_the_loop_a_call_without_arguments_runs(tiny_model, tokenizer):
    @tool(name="clock.now", side_effect="read_only")
    def now() -> dict:
        """Tell the time."""
        return {"time": "12:00"}

    with ConveyorGenerator(tiny_model, tokenizer, tools=[now]) as gen:
        out = gen.generate([{"role": "user", "content": "time?"}], max_new_tokens=80,
                           replay=['<tool_call>\n{"name": "clock.now", "arguments": {}}\n</tool_call>ok'])
    [call] = out.tool_calls
    assert call.error is None and call.output == '{"time": "12:00"}'
    assert call.units[0].unit.value is START  # it could start as soon as the name was known


def test_modes_agree_on_function_calls(tiny_model, tokenizer):
    texts = []
    for mode in ("lazy", "partial"):
        made = Tool.from_function(power, name="math_toolkit.power", side_effect="pure")
        with ConveyorGenerator(tiny_model, tokenizer, tools=[made], mode=mode) as gen:
            texts.append(gen.generate([{"role": "user", "content": "7 cubed?"}], replay=[SCRIPT],
                                      max_new_tokens=120).text)
    assert texts[0] == texts[1]


def test_a_function_that_exits_reports_it_instead_of_hanging_the_call():
    """argparse-style ``SystemExit`` is the call's error; were it to end the worker thread,
    the call would only report "did not return ...; abandoned" after its timeout."""

    def cli(n: int) -> int:
        """Run a command-line style helper.

        Args:
            n: a number
        """
        import argparse

        parser = argparse.ArgumentParser(prog="cli")
        parser.add_argument("--n", type=int, required=True)
        parser.parse_args([])  # SystemExit(2): argparse's way to report bad input
        return n

    exits = FunctionTool(cli, side_effect="pure", timeout=0.2)
    result = exits.run('{"n": 1}')
    assert result.error == "cli(n=1) raised SystemExit(2); check these arguments and call it again"
    early = exits.open_call()  # the early-action path: it runs on the worker as soon as "n" is in
    for unit in members('{"n": 1}'):
        early.feed(unit)
    assert early.finish().error == result.error
