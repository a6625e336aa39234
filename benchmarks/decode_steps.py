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
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from benchmarks.workloads import WorkloadResult, value_range
from conveyor_hf.timeline import Interval, Timeline

__all__ = ["MIN_APART_STEPS", "StepSplit", "beside_tools", "split_steps", "tool_slowdown"]

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


def tool_slowdown(result: WorkloadResult) -> dict[str, Any] | None:
    """The workload's ``slowdown`` per repeat (every case's cost over every case's lazy step
    time), its median, range and noise, and the share of lazy step time beside tools.

    None unless the workload compares lazy with partial on the same tokens in every case
    of at least one repeat.
    """
    w = result.workload
    if (w.baseline, w.contender) != ("lazy", "partial"):
        return None
    names = [c.name for c in result.cases]
    runs = {(r.case, r.variant, r.repeat): r.timeline for r in result.runs}
    repeats = sorted({r.repeat for r in result.runs})
    slowdowns, noise, shares = [], [], []
    for repeat in repeats:
        pairs = [(runs.get((case, "partial", repeat)), runs.get((case, "lazy", repeat)),
                  runs.get((case, "lazy", repeat + 1))) for case in names]
        if any(partial is None or lazy is None for partial, lazy, _ in pairs):
            continue
        masks = [beside_tools(partial) for partial, _, _ in pairs]
        splits = [split_steps(partial, lazy, mask) for (partial, lazy, _), mask in zip(pairs, masks)]
        figure = _slowdown(splits)
        if figure is not None:
            slowdowns.append(figure)
            shares.append(sum(s.beside_ref for s in splits) / sum(s.reference for s in splits))  # type: ignore[union-attr]
        if all(following is not None for _, _, following in pairs):
            floor = _slowdown([split_steps(following, lazy, m) for (_, lazy, following), m in zip(pairs, masks)])
            if floor is not None:
                noise.append(floor)
    if not slowdowns:
        return None
    return {
        "median": round(statistics.median(slowdowns), 4),
        "range": value_range(slowdowns),
        "per_repeat": [round(s, 4) for s in slowdowns],
        "beside_share": round(statistics.median(shares), 4),
        "noise": {"median_abs": round(statistics.median(abs(n) for n in noise), 4), "range": value_range(noise),
                  "over": f"{len(noise)} consecutive pairs of lazy repeats"} if noise else None,
        "over": f"{len(slowdowns)} repeats, each over all {len(names)} case(s)",
    }


def _slowdown(splits: list[StepSplit | None]) -> float | None:
    """Summed cost over summed reference step time, or None if any case has no figure."""
    if any(s is None or s.cost is None for s in splits):
        return None
    reference = sum(s.reference for s in splits)  # type: ignore[union-attr]
    return sum(s.cost for s in splits) / reference if reference > 0 else None  # type: ignore[union-attr, misc]
