"""What tool work beside decoding cost the decoding, with the machine's drift taken out.

``decode_change`` (partial decode / lazy decode - 1) compares two whole runs, so it also
holds whatever the machine did between them: on a shared 2-core VM two decodes of the
same tokens differ by several percent. This module splits the comparison by decoding
step instead. A replayed answer decodes the same tokens in both modes, so step *i* of the
partial run is step *i* of the lazy run. In the partial run some steps ran while a tool
unit was busy (**beside** tools), the others while none was (**apart**). On the steps
apart nothing differs between the two runs but the machine, so their time ratio is the
machine's pace in the partial run against the lazy one; the steps beside, rescaled by that
pace, show what running the tools beside decoding cost::

    pace     = apart_partial / apart_lazy
    cost     = beside_partial / pace - beside_lazy        (seconds)
    slowdown = cost / steps_lazy                          (share of the lazy run's step time)

The same computation with the partial run replaced by the next repeat's lazy run (the
partial run still marking which steps are beside) is this figure's own **noise**: it
measures no tool at all. conveyor_hf's work on each token (``feed``) is the same in both
modes and falls on every step, so it cancels in ``pace``; it is reported on its own.

The same split gives the **efficiency with the drift taken out** (``efficiency_steps``).
The whole-run efficiency, ``(lazy - partial) / (lazy - ideal)``, counts any change in
decoding time between the two runs as a gain or a loss of partial execution; where there is
little tool time to hide (0.4 s against 6 s of decoding in ``codegen_live``) the machine's
own change from run to run (about 1%) moves it by more than 0.1. Here the partial run's
decoding is replaced by the lazy run's plus what the tools cost it step by step::

    partial at the lazy pace = partial - decode_partial + decode_lazy + cost
    efficiency_steps         = (lazy - partial at the lazy pace) / (lazy - ideal)

so what the tools cost decoding still counts against partial execution; only the drift is
gone. Its noise is ``cost``'s own noise (the next lazy run in place of the partial one)
over the same bound.

Why ``pace`` is taken over the whole run and not near each step: a local pace (the
median ratio of the 16 steps apart nearest to each step beside) was tried on 2026-12-07,
on 5 repeats each of codegen, planning and bfcl and on 10 of codegen_live. It lowered the
noise of bfcl (0.14% to 0.09%) and of one outlying pair of codegen_live (2.7% to 0.9%),
but raised it on codegen (0.32% to 0.46%) and planning (0.17% to 0.46%), whose steps
beside tools come in long blocks, so that the nearest steps apart are few and far away.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from benchmarks.workloads import WorkloadResult, noise_figure, value_range
from conveyor_hf.timeline import Interval, Timeline

__all__ = [
    "MIN_APART_STEPS", "RepeatCost", "StepSplit", "beside_tools", "efficiency_steps", "repeat_costs", "split_steps",
    "tool_slowdown",
]

#: Steps apart from tool work needed to measure the pace of a run (fewer: no figure).
MIN_APART_STEPS = 16


@dataclass(frozen=True)
class StepSplit:
    """Step time of one run and of its reference run, split by one mask of steps."""

    beside: float  # seconds of the run's steps beside tool work
    apart: float  # seconds of its other steps
    beside_ref: float  # the same steps in the reference run
    apart_ref: float
    apart_steps: int

    @property
    def cost(self) -> float | None:
        """Seconds the steps beside tools took beyond the reference, at the run's own pace."""
        if self.apart_steps < MIN_APART_STEPS or self.apart <= 0 or self.apart_ref <= 0:
            return None
        return self.beside * self.apart_ref / self.apart - self.beside_ref

    @property
    def reference(self) -> float:
        """Seconds of all steps of the reference run."""
        return self.beside_ref + self.apart_ref


def beside_tools(timeline: Timeline, row: int = 0) -> list[bool]:
    """For each decoding step of ``row``: whether a tool unit was busy during it."""
    busy = timeline.busy_intervals()
    marks, first = [], 0
    for begin, end in timeline.decode_steps(row):  # in time order, like ``busy``
        while first < len(busy) and busy[first][1] <= begin:
            first += 1
        marks.append(first < len(busy) and busy[first][0] < end)
    return marks


def split_steps(run: Timeline, reference: Timeline, beside: list[bool], row: int = 0) -> StepSplit | None:
    """``run``'s and ``reference``'s step times split by ``beside`` (one flag per step);
    None when the runs did not decode the same number of steps (not the same tokens)."""
    steps, steps_ref = _durations(run.decode_steps(row)), _durations(reference.decode_steps(row))
    if not steps or len(steps) != len(steps_ref) or len(steps) != len(beside):
        return None
    on = [i for i, flag in enumerate(beside) if flag]
    off = [i for i, flag in enumerate(beside) if not flag]
    return StepSplit(sum(steps[i] for i in on), sum(steps[i] for i in off),
                     sum(steps_ref[i] for i in on), sum(steps_ref[i] for i in off), len(off))


def _durations(steps: list[Interval]) -> list[float]:
    return [end - begin for begin, end in steps]


@dataclass(frozen=True)
class RepeatCost:
    """What tool work cost the decoding in one repeat, summed over the workload's cases."""

    cost: float  # seconds: StepSplit.cost summed
    reference: float  # seconds of the lazy runs' steps
    beside_reference: float  # of which beside tool work (by the partial runs' masks)
    noise: float | None  # the same cost with the next repeat's lazy runs in place of the partial ones


def repeat_costs(result: WorkloadResult) -> dict[int, RepeatCost]:
    """Per repeat in which every case has a figure: the tools' step-by-step cost.

    Empty unless the workload compares lazy with partial on the same tokens.
    """
    w = result.workload
    if (w.baseline, w.contender) != ("lazy", "partial"):
        return {}
    names = [c.name for c in result.cases]
    runs = {(r.case, r.variant, r.repeat): r.timeline for r in result.runs}
    costs: dict[int, RepeatCost] = {}
    for repeat in sorted({r.repeat for r in result.runs}):
        pairs = [(runs.get((case, "partial", repeat)), runs.get((case, "lazy", repeat)),
                  runs.get((case, "lazy", repeat + 1))) for case in names]
        if any(partial is None or lazy is None for partial, lazy, _ in pairs):
            continue
        masks = [beside_tools(partial) for partial, _, _ in pairs]
        splits = [split_steps(partial, lazy, mask) for (partial, lazy, _), mask in zip(pairs, masks)]
        cost = _summed_cost(splits)
        if cost is None:
            continue
        noise = None
        if all(following is not None for _, _, following in pairs):
            noise = _summed_cost([split_steps(following, lazy, m) for (_, lazy, following), m in zip(pairs, masks)])
        costs[repeat] = RepeatCost(cost, sum(s.reference for s in splits),  # type: ignore[union-attr]
                                   sum(s.beside_ref for s in splits), noise)  # type: ignore[union-attr]
    return costs


def tool_slowdown(result: WorkloadResult, costs: dict[int, RepeatCost] | None = None) -> dict[str, Any] | None:
    """The workload's ``slowdown`` per repeat (every case's cost over every case's lazy step
    time), its median, range and noise, and the share of lazy step time beside tools.

    None unless the workload compares lazy with partial on the same tokens in every case
    of at least one repeat. ``costs``: :func:`repeat_costs` of ``result``, if already known.
    """
    costs = repeat_costs(result) if costs is None else costs
    kept = [c for c in costs.values() if c.reference > 0]
    if not kept:
        return None
    slowdowns = [c.cost / c.reference for c in kept]
    noise = [c.noise / c.reference for c in kept if c.noise is not None]
    return {
        "median": round(statistics.median(slowdowns), 4),
        "range": value_range(slowdowns),
        "per_repeat": [round(s, 4) for s in slowdowns],
        "beside_share": round(statistics.median(c.beside_reference / c.reference for c in kept), 4),
        "noise": noise_figure(noise, f"{len(noise)} consecutive pairs of lazy repeats"),
        "over": f"{len(slowdowns)} repeats, each over all {len(result.cases)} case(s)",
    }


def efficiency_steps(costs: dict[int, RepeatCost], lazy: dict[int, dict[str, float]],
                     partial: dict[int, dict[str, float]], min_ideal_reduction: float) -> dict[str, Any] | None:
    """The efficiency of each repeat with the machine's drift between its lazy and partial
    runs taken out (see the module docstring), its median, range and noise.

    ``lazy``/``partial``: per repeat, the runs' ``latency``, ``decode`` and (lazy)
    ``ideal`` summed over the cases. None where no repeat has a cost figure or the bound
    leaves less than ``min_ideal_reduction`` to hide (the ratio would be noise).
    """
    values, noise = [], []
    for repeat, cost in sorted(costs.items()):
        base, contender = lazy.get(repeat), partial.get(repeat)
        if base is None or contender is None or base["latency"] <= 0:
            continue
        bound = base["latency"] - base["ideal"]
        if bound / base["latency"] < min_ideal_reduction:
            continue
        at_lazy_pace = contender["latency"] - contender["decode"] + base["decode"] + cost.cost
        values.append((base["latency"] - at_lazy_pace) / bound)
        if cost.noise is not None:
            noise.append(cost.noise / bound)
    if not values:
        return None
    return {
        "median": round(statistics.median(values), 4),
        "range": value_range(values),
        "per_repeat": [round(v, 4) for v in values],
        "noise": noise_figure(noise, f"{len(noise)} consecutive pairs of lazy repeats, over the same bound"),
        "over": f"{len(values)} repeats",
    }


def _summed_cost(splits: list[StepSplit | None]) -> float | None:
    """Summed cost in seconds, or None if any case has no figure."""
    if any(s is None or s.cost is None for s in splits):
        return None
    return sum(s.cost for s in splits)  # type: ignore[union-attr, misc]
