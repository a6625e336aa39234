"""What happened when, during one ``generate`` call: decode rounds and tool units.

All times are ``time.perf_counter()`` seconds. :meth:`Timeline.summary` turns the
records into latency metrics: how long decoding and tool work took, how much tool time
nobody decoded through (what the user waited for), and the ``ideal`` latency of a
zero-overhead pipeline with the same measured times. :meth:`Timeline.to_chrome_trace`
exports the records for Perfetto / ``chrome://tracing``; the pictures are drawn by
:mod:`conveyor_hf.plots` (:meth:`Timeline.plot` is a shortcut to it), which this module
does not import until a picture is asked for.
"""

from __future__ import annotations

import bisect
import heapq
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from conveyor_hf.text import shorten
from conveyor_hf.tools.base import ToolResult, UnitRecord

Interval = tuple[float, float]


@dataclass
class RoundRecord:
    """One decoding round of the tool loop (one ``model.generate`` call, or one streamed
    request of one conversation).

    ``start``..``decode_end`` is decoding (prefill included); ``decode_end``..``end`` is
    waiting for tool work and preparing the re-prompt. ``row`` is None for a round that
    decodes all rows of a batch together; engines that decode each conversation on its
    own (remote engines) record one round per conversation and request, with its row.
    """

    index: int
    start: float
    decode_end: float = 0.0
    end: float = 0.0
    new_tokens: int = 0
    prefill_tokens: int = 0
    row: int | None = None

    @property
    def decode(self) -> float:
        return max(0.0, self.decode_end - self.start)


@dataclass
class CallRecord:
    """One tool call: which row and round it belongs to, and its result once finished.

    ``units``, ``output`` and ``error`` read ``result`` (empty while the call runs).
    """

    row: int
    round: int
    tool: str
    opened: float
    lanes: int = 1
    closed: float | None = None
    result: ToolResult | None = None

    @property
    def units(self) -> list[UnitRecord]:
        """The call's unit records, in feeding order ([] until it has finished)."""
        return self.result.units if self.result is not None else []

    @property
    def output(self) -> str:
        """What the model was shown ("" until the call has finished)."""
        return self.result.output if self.result is not None else ""

    @property
    def error(self) -> str | None:
        """The call's error, if any (None until it has finished)."""
        return self.result.error if self.result is not None else None


@dataclass
class Timeline:
    """The record of one ``generate`` call; see :meth:`summary` for the metrics."""

    start: float = 0.0
    end: float = 0.0
    mode: str = "partial"
    rounds: list[RoundRecord] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    #: Seconds the engine spent handing decoded tokens to the conversations (part of decode).
    feed: float = 0.0
    #: Per conversation row: when each decoded token (or text delta) reached it.
    token_times: list[list[float]] = field(default_factory=list)

    # -- metrics ----------------------------------------------------------------------
    def decode_intervals(self) -> list[Interval]:
        return [(r.start, r.decode_end) for r in self.rounds if r.decode_end > r.start]

    def unit_intervals(self) -> list[Interval]:
        return [
            (u.start, u.end)
            for c in self.calls
            for u in c.units
            if u.start is not None and u.end is not None and u.end > u.start
        ]

    def busy_intervals(self) -> list[Interval]:
        """When any tool unit was running: the unit intervals merged, in time order."""
        return _union(self.unit_intervals())

    def decode_steps(self, row: int = 0) -> list[Interval]:
        """The decoding steps of conversation ``row``: from one token's arrival to the next
        within a round. A round's first token, which waits for the prefill (and, after a
        call, for the tools), begins no step; an engine that streams text deltas makes
        one step per delta."""
        times = self.token_times[row] if row < len(self.token_times) else []
        starts = sorted(r.start for r in self.rounds if r.row is None or r.row == row)
        steps = []
        for before, after in zip(times, times[1:]):
            if bisect.bisect_right(starts, after) == bisect.bisect_right(starts, before):  # no round began between
                steps.append((before, after))
        return steps

    def exposed_intervals(self) -> list[Interval]:
        """Tool-busy time during which no decoding ran: what the user waited for."""
        return _subtract(self.busy_intervals(), _union(self.decode_intervals()))

    def ideal(self) -> float:
        """Latency of a zero-overhead pipeline with the measured decode and tool times.

        Per round: each unit starts when its text was decoded (its ``emitted`` time), a
        lane of its call is free and (plan tasks) its dependencies are done; the round
        ends when both its decoding and all its units are done. Rounds follow one another; nothing else costs time.
        Conversations decoded on their own (rounds with a ``row``) run side by side: the
        ideal is that of the slowest one.
        """
        per_row: dict[int | None, float] = {}
        for rnd in self.rounds:
            finish = rnd.decode
            for call in self.calls:
                if call.round == rnd.index and (rnd.row is None or call.row == rnd.row):
                    finish = max(finish, _pipelined_finish(call, rnd.start, rnd.decode))
            per_row[rnd.row] = per_row.get(rnd.row, 0.0) + finish
        return max(per_row.values(), default=0.0)

    def summary(self) -> dict[str, Any]:
        """Metrics in seconds (``rounds``, ``units``, ``new_tokens`` are counts).

        ``latency`` (the whole call), ``decode`` and ``tool`` (busy time of each, overlaps
        counted once), ``exposed_tool`` (tool time with no decoding beside it: what the user
        waited for), ``ideal`` (see :meth:`ideal`), ``wait`` (time rounds spent after their
        decoding, summed), ``feed`` (the part of decoding spent handing decoded tokens to
        the conversations: detokenizing, parsing, starting tool units, summed over rows),
        ``tokens_per_s`` over decode time, and ``prefill_tokens`` per round.
        """
        decode = _length(_union(self.decode_intervals()))  # rounds of several rows may overlap
        tokens = sum(r.new_tokens for r in self.rounds)
        return {
            "latency": self.end - self.start,
            "decode": decode,
            "tool": _length(self.busy_intervals()),
            "exposed_tool": _length(self.exposed_intervals()),
            "ideal": self.ideal(),
            "wait": sum(max(0.0, r.end - r.decode_end) for r in self.rounds),
            "feed": self.feed,
            "rounds": len(self.rounds),
            "units": sum(len(c.units) for c in self.calls),
            "new_tokens": tokens,
            "tokens_per_s": tokens / decode if decode > 0 else 0.0,
            "prefill_tokens": [r.prefill_tokens for r in self.rounds],
        }

    # -- exports ----------------------------------------------------------------------
    def to_chrome_trace(self, path: str | Path | None = None) -> dict[str, Any]:
        """Chrome trace-event JSON (open in https://ui.perfetto.dev). Writes ``path`` if given."""
        events: list[dict[str, Any]] = [
            {"ph": "M", "pid": 1, "tid": 0, "name": "thread_name", "args": {"name": "decode"}},
        ]

        def span(name: str, tid: int, begin: float, end: float, **args: Any) -> None:
            events.append(
                {
                    "name": name,
                    "ph": "X",
                    "pid": 1,
                    "tid": tid,
                    "ts": (begin - self.start) * 1e6,
                    "dur": max(0.0, end - begin) * 1e6,
                    "args": args,
                }
            )

        for rnd in self.rounds:
            label = f"decode round {rnd.index}" + ("" if rnd.row is None else f" · row {rnd.row}")
            span(label, 0, rnd.start, rnd.decode_end,
                 new_tokens=rnd.new_tokens, prefill_tokens=rnd.prefill_tokens)
            if rnd.end > rnd.decode_end:
                span("wait for tools", 0, rnd.decode_end, rnd.end)
        for lane, (name, units) in enumerate(self.lanes(), start=1):
            events.append({"ph": "M", "pid": 1, "tid": lane, "name": "thread_name", "args": {"name": name}})
            for u in units:
                if u.start is not None and u.end is not None:
                    span(shorten(u.unit.text.strip().splitlines()[0], 60) if u.unit.text.strip() else "unit",
                         lane, u.start, u.end, error=u.error, output=shorten(u.output, 200))
        trace = {"traceEvents": events, "displayTimeUnit": "ms", "metadata": {"mode": self.mode}}
        if path is not None:
            Path(path).write_text(json.dumps(trace))
        return trace

    def plot(self, path: str | Path, *, title: str | None = None, others: Iterable[Timeline] = ()) -> Path:
        """Draw this timeline (and ``others`` below it, e.g. lazy above partial) to a PNG.

        A shortcut to :func:`conveyor_hf.plots.plot_timelines`, imported here on first use
        so that recording a timeline never imports the drawing code (or matplotlib).
        """
        from conveyor_hf.plots import plot_timelines

        return plot_timelines([self, *others], path, title=title)

    def lanes(self) -> list[tuple[str, list[UnitRecord]]]:
        """The tool lanes: ``(name, units)`` per tool target ``"row R · tool"``, in the order of
        their first call in :attr:`calls`, with the units of all its calls (every round).

        What the trace export and the pictures draw as one row of bars each.
        """
        lanes: dict[str, list[UnitRecord]] = {}
        for call in self.calls:
            lanes.setdefault(f"row {call.row} · {call.tool}", []).extend(call.units)
        return list(lanes.items())


def _pipelined_finish(call: CallRecord, round_start: float, decode: float) -> float:
    """When ``call``'s units would finish in the ideal pipeline (relative to the round).

    A unit is ready when its text was decoded; a unit with no text of its own (the action
    a validated call adds when it closes, which in lazy mode is recorded only at the turn's
    end) is ready when the text before it in the call was, so the bound lets the action
    start at the call's last argument, as partial mode may. A unit whose value names
    dependencies (a plan task's ``deps``) also waits for the ideal end of each unit of the
    same call whose ``key`` it names. Units that took no time (``join()``, skipped tasks)
    occupy no lane.
    """
    lanes = [0.0] * max(1, call.lanes)
    ends: dict[str, float] = {}
    finish = 0.0
    decoded = max(0.0, call.opened - round_start)  # when the call's text so far was decoded
    for unit in call.units:
        if unit.unit.text:
            decoded = max(0.0, unit.emitted - round_start)
        ready = min(decoded, decode)
        for dep in getattr(unit.unit.value, "deps", None) or ():
            ready = max(ready, ends.get(dep, 0.0))
        if unit.duration > 0:
            free = heapq.heappop(lanes)
            end = max(ready, free) + unit.duration
            heapq.heappush(lanes, end)
        else:
            end = ready
        if unit.unit.key is not None:
            ends[unit.unit.key] = end
        finish = max(finish, end)
    return finish


def _union(intervals: Iterable[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for begin, end in sorted(intervals):
        if merged and begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((begin, end))
    return merged


def _subtract(a: list[Interval], b: list[Interval]) -> list[Interval]:
    """Parts of the (merged) intervals ``a`` not covered by the (merged) intervals ``b``."""
    out: list[Interval] = []
    for begin, end in a:
        cursor = begin
        for b_begin, b_end in b:
            if b_end <= cursor or b_begin >= end:
                continue
            if b_begin > cursor:
                out.append((cursor, b_begin))
            cursor = max(cursor, b_end)
        if cursor < end:
            out.append((cursor, end))
    return out


def _length(intervals: Iterable[Interval]) -> float:
    return sum(end - begin for begin, end in intervals)
