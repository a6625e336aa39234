"""The one interface a tool author meets: ``Tool.execute(unit)`` with a default line
parser, ``ValidatedTool.act(arguments)`` / ``@tool`` for JSON arguments; and the old
import paths that still work, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import sys
import threading

import pytest

from conveyor_hf.call_log import CallLog
from conveyor_hf.timeline import CallRecord
from conveyor_hf.tools import FunctionTool, SideEffect, Tool, ToolResult, UnitOutput, ValidatedTool, tool
from conveyor_hf.tools.plan import PlanTool
from parsers.lines import LineParser


class Upper(Tool):
    name = "upper"
    description = "Upper-cases each line."
    side_effect = SideEffect.PURE

    def execute(self, unit):
        return UnitOutput(unit.argument.upper())


def test_a_tool_needs_only_execute_and_gets_one_unit_per_line():
    assert isinstance(Upper().make_parser(), LineParser)
    result = Upper().run("hello\n\nworld\n")
    assert result.output == "HELLO\nWORLD" and result.error is None
    assert [r.unit.argument for r in result.units] == ["hello", "world"]


def test_json_argument_tools_say_so():
    @tool(side_effect="pure")
    def double(x: int) -> int:
        """Double a number.

        Args:
            x: the number
        """
        return 2 * x

    assert Tool.json_arguments is False and Upper.json_arguments is False
    assert ValidatedTool.json_arguments is True
    assert isinstance(double, FunctionTool) and double.json_arguments is True
    assert double.run('{"x": 21}').output == "42"


def test_a_plan_call_starts_no_idle_workers():
    plan = PlanTool(tools=[Upper()])
    call = plan.open_call()
    workers = [t.name for t in threading.enumerate() if t.name.startswith("conveyor-plan-") and t.name[-1].isdigit()]
    assert workers == []  # only the warm-up thread, and one thread per running task ("conveyor-plan-$1")
    assert call.finish().output == ""
    assert plan.run('$1 = upper("a")\njoin()\n').output == '$1 = upper("a")\nA'


def test_call_record_reads_its_result():
    record = CallRecord(row=0, round=0, tool="upper", opened=0.0)
    assert (record.units, record.output, record.error) == ([], "", None)
    record.result = ToolResult("out", error="bad", units=[], tool="upper")
    assert (record.output, record.error) == ("out", "bad")
    with pytest.raises(AttributeError):
        record.output = "changed"  # derived from result: one place holds it


@pytest.mark.parametrize("module, old, new", [
    ("conveyor_hf.scheduler", "Scheduler", CallLog),
    ("conveyor_hf.tools.validation", "ValidatedTool", ValidatedTool),
])
def test_old_import_paths_still_work_with_a_deprecation_warning(monkeypatch, module, old, new):
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.warns(DeprecationWarning, match="deprecated"):
        imported = importlib.import_module(module)
    assert getattr(imported, old) is new


def test_the_old_validation_module_keeps_every_public_name(monkeypatch):
    monkeypatch.delitem(sys.modules, "conveyor_hf.tools.validation", raising=False)
    with pytest.warns(DeprecationWarning):
        validation = importlib.import_module("conveyor_hf.tools.validation")
    from conveyor_hf.tools.location import LocationLookupTool
    from conveyor_hf.tools.us_states import US_STATES

    assert validation.LocationLookupTool is LocationLookupTool and validation.US_STATES is US_STATES
    assert all(hasattr(validation, name) for name in validation.__all__)


class Exits(Tool):
    """Calls ``sys.exit`` on the line "bad" (as a wrapped command-line helper would)."""

    name = "exits"
    description = "Echoes each line; exits on 'bad'."
    timeout = 0.2  # were SystemExit to end the worker, the call would wait this + ABANDON_GRACE

    def execute(self, unit):
        if unit.argument == "bad":
            sys.exit(3)
        return UnitOutput(unit.argument)


def test_system_exit_in_execute_is_the_units_error_and_the_call_goes_on():
    result = Exits().run("bad\ngood\n")
    bad, good = result.units
    assert bad.error == "exits raised SystemExit(3)" and not bad.skipped  # not "did not return ...; abandoned"
    assert good.output == "good" and good.error is None  # the worker survived to run the next line
    assert result.error == "exits raised SystemExit(3)"


def test_system_exit_in_warm_up_is_reported_on_every_unit():
    class ExitsAtStart(Exits):
        def warm_up(self):
            raise SystemExit("no config file")

    result = ExitsAtStart().run("a\nb\n")
    message = "exits could not start: its warm-up raised SystemExit('no config file')"
    assert [r.error for r in result.units] == [message, message]


def test_a_warm_up_that_overruns_the_limit_is_an_error_not_an_empty_success():
    release = threading.Event()

    class SlowStart(Upper):
        name = "slowstart"

        def warm_up(self):
            release.wait()  # a kernel still starting, until the test lets it go

    call = SlowStart().open_call()
    try:
        for unit in LineParser().feed("hello\nworld\n"):
            call.feed(unit)
        result = call.finish(timeout=0.05)
    finally:
        release.set()
    message = "slowstart did not start within 0.05s (its warm-up had not finished); abandoned"
    assert [(r.error, r.skipped) for r in result.units] == [(message, False), (message, False)]
    assert result.error is not None and result.error.startswith(message)
    assert message in result.output  # what the model reads, instead of "(no output)"
