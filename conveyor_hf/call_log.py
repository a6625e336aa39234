"""Opens the tool calls of a ``generate`` run and records each in its timeline.

The tool loop opens calls through :class:`CallLog` (on the decode thread; nothing here
blocks) and finishes them between rounds. In ``partial`` mode a call runs each unit as
soon as it is fed; in ``lazy`` mode (the baseline) it buffers the units and runs them all
when the call closes. Both modes use the same parsers, tools and re-prompting, so under
greedy decoding they produce the same text. When each unit runs is the call's business
(:class:`~conveyor_hf.tools.base.ToolCall`; a plan's tasks:
:class:`~conveyor_hf.tools.plan_scheduler.PlanCall`); this module opens calls in the run's
mode and keeps one :class:`~conveyor_hf.timeline.CallRecord` per call.
"""

from __future__ import annotations

import time
from typing import Callable, Literal

from conveyor_hf.timeline import CallRecord, Timeline
from conveyor_hf.tools.base import Tool, ToolCall, ToolResult, UnitRecord

__all__ = ["MODES", "CallLog", "Mode"]

Mode = Literal["partial", "lazy"]
MODES = ("partial", "lazy")


class CallLog:
    """Opens tool calls for batch rows in one mode and records them in ``timeline``.

    ``on_unit_done(row, tool_name, record)`` is told of every unit that ends (streaming).
    """

    def __init__(
        self,
        timeline: Timeline,
        mode: Mode = "partial",
        on_unit_done: Callable[[int, str, UnitRecord], None] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not supported; use one of {MODES}")
        self.timeline = timeline
        self.mode = mode
        self.on_unit_done = on_unit_done
        self._records: dict[int, CallRecord] = {}

    def open(self, row: int, round_index: int, tool: Tool) -> ToolCall:
        """Open a call of ``tool`` for ``row``; returns at once (warm-up runs on a worker)."""
        notify = self.on_unit_done
        callback = None if notify is None else (lambda record: notify(row, tool.name, record))
        call = tool.open_call(early=self.mode == "partial", on_unit_done=callback)
        record = CallRecord(
            row=row, round=round_index, tool=tool.name, opened=call.opened, lanes=tool.max_concurrency
        )
        self.timeline.calls.append(record)
        self._records[id(call)] = record
        return call

    def finish(self, call: ToolCall, result: ToolResult | None = None) -> ToolResult:
        """Wait for ``call`` (unless ``result`` is already known) and record its result."""
        if result is None:
            result = call.finish()
        record = self._records.pop(id(call))
        record.closed = call.closed if call.closed is not None else time.perf_counter()
        record.result = result
        return result
