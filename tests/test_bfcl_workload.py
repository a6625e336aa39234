"""The BFCL parallel-calls workload: replayed ground truth through the loop, checked."""

import pytest

from benchmarks.workloads import BenchContext

pytest.importorskip("bfcl_eval", reason="bfcl-eval is installed by scripts/install.sh --test")


def test_a_parallel_case_runs_its_calls_during_the_turn_and_matches_the_ground_truth(tiny_model, tokenizer):
    from benchmarks.workloads.bfcl_calls import BfclWorkload

    workload = BfclWorkload()
    ctx = BenchContext(model=tiny_model, tokenizer=tokenizer, repeats=1)
    [case] = [c for c in workload.all_cases(ctx) if c.info["category"] == "parallel"]
    runs = {v.key: workload.run_once(ctx, case, v, 0) for v in workload.variants}
    assert runs["lazy"].errors == [] and runs["partial"].errors == []  # calls and state as in BFCL
    assert runs["lazy"].text == runs["partial"].text
    partial = runs["partial"].timeline
    first_round = partial.rounds[0]
    calls = [c for c in partial.calls if c.round == 0]
    assert len(calls) == case.info["calls"]  # all in the one turn
    ran = [u for c in calls for u in c.units if u.output]  # each function's run (the others check arguments)
    assert len(ran) == len(calls)
    assert min(u.start for u in ran) < first_round.decode_end  # a call ran while the turn was decoded
    lazy = runs["lazy"].timeline
    assert all(u.start >= lazy.rounds[0].decode_end for c in lazy.calls for u in c.units)
