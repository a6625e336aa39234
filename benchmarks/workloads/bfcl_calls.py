"""Parallel tool calls in one turn, on BFCL: ground-truth calls replayed as ``<tool_call>`` turns.

The PyPI package ``bfcl-eval`` ships the Berkeley Function-Calling Leaderboard data and
its executable multi-turn backends (file system, math, trading, travel, ...). Each case
replays the ground-truth calls of one entry's first turn as one assistant turn of
``<tool_call>`` blocks, then the end of the turn, through the model; the backends are
wrapped as function tools (:mod:`benchmarks.bfcl`). ``partial`` runs each call as soon
as it closes while the rest of the turn is decoded (pure calls in parallel, stateful ones
in call order); ``lazy`` runs the turn's calls after the turn, one after another. Every
run starts on fresh backends and is checked: the calls executed and the backend state
must equal the ground truth's.

The backends answer in microseconds, so every call gets a labelled emulated latency (a
sleep before the call), as a networked API would take. ``parallel`` and
``parallel_multiple`` ship no executable code: their functions are recorders.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from benchmarks.workloads import QUICK_REPEATS_SHORT, ABWorkload, BenchContext, Case, RunRecord, Variant
from benchmarks.workloads.data import DataUnavailable

#: Seconds of emulated latency per call (the backends themselves take microseconds).
LATENCY = 0.4
#: (category, how many entries to take) in case order.
PLAN = (("multi_turn_base", 2), ("parallel_multiple", 1), ("parallel", 1))


class BfclWorkload(ABWorkload):
    name = "bfcl"
    title = "parallel tool calls in one turn (BFCL ground truth, function tools)"
    note = (f"emulated latency {LATENCY:g} s per call (BFCL's backends answer in microseconds); lazy runs the "
            "turn's calls after the turn, one after another; every run is checked against the ground truth")
    case_count = (4, 1)
    quick_cases = ("parallel_0",)  # its prompt lists few functions: a short prefill
    repeats = (3, QUICK_REPEATS_SHORT)  # parallel_0 decodes for 4.5 s
    needs_local_model = True
    local_model_reason = "it replays BFCL's ground truth (forcing text needs the logits) to check the calls"

    variants: ClassVar[tuple[Variant, ...]] = (Variant("lazy", "lazy"), Variant("partial", "partial"))

    def __init__(self) -> None:
        super().__init__()
        self._entries: dict[str, Any] = {}
        self.failed_checks: list[str] = []

    def all_cases(self, ctx: BenchContext) -> list[Case]:
        from benchmarks import bfcl

        end = ctx.tokenizer.eos_token
        if not end:
            raise ValueError("the bfcl workload needs a tokenizer with an EOS token to end the assistant turn")
        cases = []
        for category, count in PLAN:
            taken = 0
            try:
                entries = bfcl.load_entries(category)
            except bfcl.BfclUnavailable as exc:
                raise DataUnavailable(str(exc)) from exc
            for entry in entries:
                first = dataclasses.replace(entry, turns=entry.turns[:1], ground_truth=entry.ground_truth[:1])
                calls = first.ground_truth[0] if first.ground_truth else []
                if len(calls) < 2 or bfcl.schema_problems(first):
                    continue  # one call has nothing to run beside it; broken ground truth is skipped
                self._entries[first.id] = first
                replay = bfcl.render_calls(calls) + end + "Done: all the calls ran."
                cases.append(Case(first.id, list(first.turns[0]), replay, source=f"BFCL {category}",
                                  max_new_tokens=len(ctx.tokenizer(replay)["input_ids"]) + 40,
                                  info={"calls": len(calls), "category": category}))
                taken += 1
                if taken == count:
                    break
        return cases

    def make_tools(self, variant: Variant) -> list[Any]:
        return []  # fresh backends per run: see run_once

    def warm_up_model(self, ctx: BenchContext, tools: list[Any], case: Case) -> None:
        from benchmarks import bfcl

        env = bfcl.BfclEnvironment(self._entries[case.name], latency=0.0)
        ctx.generator(env.tools, mode="partial").generate(case.messages, replay=[case.replay], max_new_tokens=12,
                                                          do_sample=False)

    def run_once(self, ctx: BenchContext, case: Case, variant: Variant, repeat: int) -> RunRecord:
        from benchmarks import bfcl

        entry = self._entries[case.name]
        env = bfcl.BfclEnvironment(entry, latency=LATENCY)
        gen = ctx.generator(env.tools, mode=variant.mode, on_error=variant.on_error)
        out = gen.generate(case.messages, replay=[case.replay], max_new_tokens=case.max_new_tokens, do_sample=False)
        outcome = bfcl.check(entry, env)
        errors = [f"{c.tool}: {c.error}" for c in out.tool_calls if c.error]
        if not outcome.ok:
            errors += [f"ground truth check: {p}" for p in outcome.problems]
            self.failed_checks.append(f"{case.name}/{variant.key}/{repeat}")
        return RunRecord(case.name, variant.key, repeat, out.timeline.summary(), out.timeline, out.text, errors)

    def details(self) -> dict[str, Any]:
        return {"data": "bfcl-eval (Berkeley Function-Calling Leaderboard), first turn of each entry",
                "latency": f"emulated {LATENCY:g} s per call, a sleep before the backend call",
                "checked": "calls executed and backend state equal the ground truth's on fresh backends",
                "failed_checks": list(self.failed_checks)}
