"""BFCL building blocks: the data loads, the backends work as function tools (the same
state as calling them directly), the replay text reads back, and the check catches misses."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("bfcl_eval", reason="needs the BFCL data: pip install --no-deps bfcl-eval (scripts/install.sh)")

from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import state_checker  # noqa: E402

from benchmarks.bfcl import (  # noqa: E402
    CATEGORIES,
    BfclEnvironment,
    GroundTruthCall,
    bfcl_json_schema,
    check,
    load_entries,
    render_calls,
    schema_problems,
)
from conveyor_hf import ConveyorGenerator  # noqa: E402
from conveyor_hf.tools import FunctionTool, SideEffect  # noqa: E402
from conveyor_hf.tools.function import render_value  # noqa: E402

#: The first multi-turn entry of each backend class (file system, posting, tickets,
#: messages, math, vehicle, trading, travel).
MULTI_TURN = ["multi_turn_base_0", "multi_turn_base_2", "multi_turn_base_14", "multi_turn_base_15",
              "multi_turn_base_50", "multi_turn_base_100", "multi_turn_base_150"]
PARALLEL = [("parallel", "parallel_0"), ("parallel", "parallel_2"), ("parallel", "parallel_29"),
            ("parallel_multiple", "parallel_multiple_0"), ("parallel_multiple", "parallel_multiple_75")]


def entry(entry_id: str, category: str = "multi_turn_base"):
    [found] = load_entries(category, ids=[entry_id])
    return found


# -- loading --------------------------------------------------------------------------------
def test_the_three_categories_load_with_questions_docs_and_ground_truth():
    for category in CATEGORIES:
        entries = load_entries(category)
        assert len(entries) == 200 and all(e.category == category for e in entries)
        assert all(e.turns and e.functions and e.calls for e in entries if category != "multi_turn_base")
    assert len(load_entries("parallel", limit=3)) == 3
    with pytest.raises(ValueError, match="use one of parallel, parallel_multiple, multi_turn_base"):
        load_entries("simple")


def test_multi_turn_ground_truth_is_read_with_ast_and_positional_arguments_get_their_names():
    first = entry("multi_turn_base_0")
    assert first.turns[0][0]["content"].startswith("Move 'final_report.pdf' within document directory")
    assert first.ground_truth[0] == [GroundTruthCall("cd", {"folder": "document"}),
                                     GroundTruthCall("mkdir", {"dir_name": "temp"}),
                                     GroundTruthCall("mv", {"source": "final_report.pdf", "destination": "temp"})]
    assert first.ground_truth[2] == [GroundTruthCall("sort", {"file_name": "final_report.pdf"})]  # sort('...')
    assert first.involved_classes == ["TwitterAPI", "GorillaFileSystem"] and first.executable
    names = {doc["name"] for doc in first.functions}
    assert {"cd", "mv", "post_tweet"} <= names and "cp" not in names  # "cp" is excluded in this entry


def test_parallel_ground_truth_takes_the_first_accepted_value_and_leaves_out_what_may_be_absent():
    assert entry("parallel_0", "parallel").ground_truth == [[
        GroundTruthCall("spotify.play", {"artist": "Taylor Swift", "duration": 20}),
        GroundTruthCall("spotify.play", {"artist": "Maroon 5", "duration": 15})]]
    assert entry("parallel_2", "parallel").calls[0].arguments["resistivity"] == "copper"  # ["copper", ""]
    assert "year" not in entry("parallel_185", "parallel").calls[2].arguments  # [""]: left out
    [sums, _] = entry("parallel_multiple_0", "parallel_multiple").calls
    assert sums == GroundTruthCall("math_toolkit.sum_of_multiples",
                                   {"lower_limit": 1, "upper_limit": 1000, "multiples": [3, 5]})
    nested = entry("parallel_29", "parallel").calls[0].arguments["population"]
    assert nested == {"adults": 2, "children": 2, "singles": 0}  # a dict parameter: first value per key


def test_bfcl_types_become_json_schema():
    schema = {"type": "dict", "required": ["x"],
              "properties": {"x": {"type": "float"}, "pair": {"type": "tuple", "items": {"type": "any"}},
                             "rows": {"type": "array", "items": {"type": "dict", "properties": {}}}}}
    assert bfcl_json_schema(schema) == {
        "type": "object", "required": ["x"],
        "properties": {"x": {"type": "number"}, "pair": {"type": "array", "items": {}},
                       "rows": {"type": "array", "items": {"type": "object", "properties": {}}}}}


# -- the backends as function tools ---------------------------------------------------------
@pytest.mark.parametrize("entry_id", MULTI_TURN)
def test_ground_truth_through_the_function_tools_leaves_the_state_direct_execution_leaves(entry_id):
    bfcl = entry(entry_id)
    through, direct = BfclEnvironment(bfcl), BfclEnvironment(bfcl)
    assert all(isinstance(t, FunctionTool) for t in through.tools)
    for call in bfcl.calls:
        result = through.run_tool(call)
        assert result.error is None, result.error
        assert result.output == render_value(direct.execute(call))  # same result, rendered as JSON
    assert state_checker(through.instances, direct.instances)["valid"]
    assert through.state() == direct.state()
    assert [(c.name, c.arguments) for c in through.calls] == [(c.name, c.arguments) for c in bfcl.calls]
    verdict = check(bfcl, through)
    assert verdict.ok, verdict.problems


def test_side_effect_classes_and_the_emulated_latency_label():
    math = BfclEnvironment(entry("multi_turn_base_15"), latency=0.25)
    assert math.tool("mean").side_effect is SideEffect.PURE  # MathAPI is stateless
    assert math.tool("cd").side_effect is SideEffect.STATEFUL
    assert math.tool("mean").emulated_latency == 0.25
    assert math.latency_label == "executable BFCL backends; emulated latency 0.25 s per call (a sleep before each call)"
    recorded = BfclEnvironment(entry("parallel_0", "parallel"))
    assert recorded.tool("spotify.play").side_effect is SideEffect.READ_ONLY
    assert "BFCL ships no executable functions" in recorded.latency_label
    with pytest.raises(ValueError, match="latency=-1"):
        BfclEnvironment(entry("parallel_0", "parallel"), latency=-1)


def test_check_catches_a_missing_call_and_a_wrong_argument():
    bfcl = entry("multi_turn_base_0")
    missing = BfclEnvironment(bfcl)
    for call in bfcl.calls[:-1]:
        missing.run_tool(call)
    verdict = check(bfcl, missing)
    assert bfcl.calls[-1].name == "diff"
    assert not verdict.ok and any(p.startswith("ground-truth call diff(") and p.endswith("did not run")
                                  for p in verdict.problems)
    wrong = BfclEnvironment(bfcl)
    for call in bfcl.calls:
        wrong.run_tool(GroundTruthCall("mkdir", {"dir_name": "tmp"}) if call.name == "mkdir" else call)
    verdict = check(bfcl, wrong)
    assert not verdict.ok
    assert any(p.startswith('unexpected call mkdir(dir_name="tmp")') for p in verdict.problems)
    assert any("GorillaFileSystem does not match the state" in p for p in verdict.problems)


@pytest.mark.parametrize("category, entry_id", PARALLEL)
def test_parallel_calls_are_recorded_and_checked_against_the_accepted_answers_in_any_order(category, entry_id):
    bfcl = entry(entry_id, category)
    env = BfclEnvironment(bfcl)
    for call in reversed(bfcl.calls):
        result = env.run_tool(call)
        assert result.error is None and result.output.startswith(f"recorded {call.name}")
    verdict = check(bfcl, env)
    assert verdict.ok, verdict.problems


def test_parallel_check_uses_bfcl_string_rules_and_rejects_wrong_values():
    bfcl = entry("parallel_0", "parallel")
    loose = BfclEnvironment(bfcl)
    loose.run_tool(GroundTruthCall("spotify.play", {"artist": "taylor swift", "duration": 20}))  # case-insensitive
    loose.run_tool(GroundTruthCall("spotify.play", {"artist": "Maroon5", "duration": 15}))  # spaces ignored
    assert check(bfcl, loose).ok
    wrong = BfclEnvironment(bfcl)
    wrong.run_tool(GroundTruthCall("spotify.play", {"artist": "Taylor Swift", "duration": 15}))
    wrong.run_tool(GroundTruthCall("spotify.play", {"artist": "Maroon 5", "duration": 20}))
    assert not check(bfcl, wrong).ok
    short = BfclEnvironment(bfcl)
    short.run_tool(bfcl.calls[0])
    assert check(bfcl, short).problems[0].startswith("1 calls ran, the ground truth has 2")


def test_schema_problems_name_ground_truth_that_breaks_its_own_schema():
    assert schema_problems(entry("multi_turn_base_0")) == []
    [problem] = schema_problems(entry("multi_turn_base_173"))
    assert problem.startswith("close_ticket: argument 'ticket_id' must be an integer, got \"ticket_001\"")


# -- the replay text ---------------------------------------------------------------------------
def test_render_calls_writes_hermes_tool_call_blocks():
    calls = [GroundTruthCall("cd", {"folder": "document"}), GroundTruthCall("mkdir", {"dir_name": "temp"})]
    text = render_calls(calls)
    assert text == ('<tool_call>\n{"name": "cd", "arguments": {"folder": "document"}}\n</tool_call>\n'
                    '<tool_call>\n{"name": "mkdir", "arguments": {"dir_name": "temp"}}\n</tool_call>')
    blocks = [json.loads(b.split("</tool_call>")[0]) for b in text.split("<tool_call>")[1:]]
    assert blocks == [c.to_json() for c in calls]
    assert render_calls([]) == ""


@pytest.mark.parametrize("mode", ["partial", "lazy"])
def test_a_replayed_turn_through_the_tool_loop_leaves_the_ground_truth_state(tiny_model, tokenizer, mode):
    bfcl = entry("multi_turn_base_0")
    turn = bfcl.ground_truth[0]
    env, direct = BfclEnvironment(bfcl), BfclEnvironment(bfcl)
    with ConveyorGenerator(tiny_model, tokenizer, tools=env.tools, mode=mode, tool_prompt=False) as gen:
        out = gen.generate(bfcl.turns[0], replay=[render_calls(turn) + "\nDone."], max_new_tokens=400)
    assert [call.tool for call in out.tool_calls] == ["cd", "mkdir", "mv"]
    assert all(call.error is None for call in out.tool_calls)
    assert [(c.name, c.arguments) for c in env.calls] == [(c.name, c.arguments) for c in turn]
    for call in turn:
        direct.execute(call)
    assert state_checker(env.instances, direct.instances)["valid"]
    assert "Done." in out.text
