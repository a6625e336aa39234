"""The plan scheduler: runs one plan's tasks, each the moment it can start.

:class:`PlanCall` is the call a :class:`~conveyor_hf.tools.plan.PlanTool` opens. It
keeps a plan's tasks in three states, under the call's state lock: *waiting* (its line
is in, but a task it references is not done, or its sub-tool or the plan has no free
lane), *running* (on its own daemon thread, as a call of its sub-tool) and *done*.
Every change (a line fed, a task ended, the plan closed) runs :meth:`PlanCall._pump`,
which starts every waiting task that may start now, skips those whose dependencies
failed, and fails those that never can (an undefined reference, a dependency cycle).

A task's ``$N`` references are replaced when it starts (:meth:`PlanCall._substitute`):
by task N's output text, or for a numeric sub-tool by the number that output stands for
(:func:`numeric_value`). See :mod:`conveyor_hf.tools.plan` for the plan syntax.
"""

from __future__ import annotations

import re
import threading
import time
from typing import TYPE_CHECKING, Any

from conveyor_hf.tools.base import TOOL_FAILURES, Tool, ToolCall, UnitRecord, run_unit, tool_failure
from parsers.plan import PlanParser, PlanTask
from parsers.unit import Unit

if TYPE_CHECKING:
    from conveyor_hf.tools.plan import PlanTool

__all__ = ["PlanCall", "PlanError", "numeric_value"]

_REF = re.compile(r"\$\{?(\d+)\}?")
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")
_HEADER_LINE = re.compile(r"^\s*\[[^\]]*\]\s*$", re.MULTILINE)
_LIST_MARKER = re.compile(r"^\s*\d{1,3}[.)]\s+", re.MULTILINE)
_URL = re.compile(r"\S+://\S+")
_CALC_RESULT = re.compile(r"=\s*([^=\u2248\n]+?)\s*(?:\u2248\s*(\S+))?\s*$")


class PlanError(Exception):
    """A task cannot run as written; the message says why and what to do."""


def numeric_value(output: str, *, from_calculator: bool = False) -> str | None:
    """The number a task's output stands for, as calculator text, or None.

    A calculator result (``expr = exact ≈ approx``) gives its exact value; any other text
    its first number, with thousands separators removed (headers like ``[search: "…"]``,
    list markers and URLs are skipped first).
    """
    text = output.strip()
    if from_calculator and text:
        match = _CALC_RESULT.search(text.splitlines()[-1])
        if match:
            return match.group(1).strip()
    text = _URL.sub(" ", _LIST_MARKER.sub("", _HEADER_LINE.sub("", text)))
    match = _NUMBER.search(text)
    return match.group(0).replace(",", "").lstrip("+") if match else None


def _run_inline(tool: Tool, units: list[Unit]) -> list[UnitRecord]:
    """Run ``units`` on ``tool`` one after another on this thread, as a one-lane call would
    (the sub-tool was warmed up with the plan): no extra threads, no hand-over delay."""
    records: list[UnitRecord] = []
    for unit in units:
        record = UnitRecord(unit=unit, emitted=time.perf_counter())
        record.start = record.emitted
        failed = any(r.error is not None and not r.skipped for r in records)
        result, record.skipped = run_unit(tool, unit, after_failure=failed)
        record.output, record.error, record.end = result.output, result.error, time.perf_counter()
        records.append(record)
    return records


def _runs_units_only(tool: Tool) -> bool:
    """Whether ``tool``'s calls do nothing but run units (no call class of its own), so a
    task may run its units inline."""
    return tool.call_class is ToolCall and type(tool).open_call is Tool.open_call


class PlanCall(ToolCall):
    """One plan: tasks dispatched as their lines complete and their dependencies finish.

    Keeps :class:`ToolCall`'s contract: ``feed`` returns at once, ``records`` has one
    record per unit in feeding order, ``finish`` waits (abandoning a task that outlives
    ``tool.timeout + ABANDON_GRACE``), ``failed`` is set by the first task that fails.
    It uses the base call's warm-up thread and none of its workers: each task runs on its
    own daemon thread as a call of its sub-tool, started by :meth:`_pump`.
    """

    tool: PlanTool

    def __init__(self, tool: PlanTool, **kwargs: Any) -> None:
        self._waiting: list[UnitRecord] = []  # tasks not yet started, in plan order
        self._buffered: list[UnitRecord] = []  # lazy mode: units held until close
        self._by_id: dict[str, UnitRecord] = {}
        self._sub_tool: dict[int, Tool] = {}  # id(record) -> sub-tool
        self._running: dict[str, int] = {}  # sub-tool name -> tasks running
        self._running_total = 0
        self._plan_closed = False
        self._newly_done: list[UnitRecord] = []  # finished, not yet announced (lock held)
        super().__init__(tool, workers=0, **kwargs)
        lazy = not self.early
        self.limit = 1 if (lazy and tool.lazy_sequential) else tool.max_parallel

    # -- feeding -------------------------------------------------------------------------
    def feed(self, unit: Unit) -> UnitRecord:
        """Hand one plan line to the call; its task starts once its dependencies are done."""
        if self.closed is not None:
            raise RuntimeError(f"{self.tool.name}: feed() after close(); open a new call")
        if unit.key == "plan" and isinstance(unit.value, str) and unit.error is None:
            return self._feed_plan_text(unit)
        record = UnitRecord(unit=unit, emitted=time.perf_counter())
        with self._lock:
            self.records.append(record)
            if self.early:
                self._register(record)
            else:
                self._buffered.append(record)
        self._pump()
        return record

    def _feed_plan_text(self, unit: Unit) -> UnitRecord:
        """A JSON call's ``{"plan": "…"}`` argument: split it into task lines."""
        parser = PlanParser()
        units = parser.feed(unit.value) + parser.close()
        if not units:
            message = "the plan has no task lines; write '$1 = tool(\"…\")' lines"
            units = [Unit(text=unit.text, key="plan", error=message)]
        records = [self.feed(u) for u in units]
        return records[-1]

    def close(self) -> None:
        """The plan is complete: start what lazy mode held; fail what can never run."""
        if self.closed is not None:
            return
        with self._lock:
            for record in self._buffered:
                self._register(record)
            self._buffered.clear()
            self._plan_closed = True
        super().close()  # sets `closed`
        self._pump()

    def _register(self, record: UnitRecord) -> None:
        """Classify a fed unit (lock held): a task to wait, or a record finished at once."""
        unit = record.unit
        task = unit.value if isinstance(unit.value, PlanTask) else None
        key = unit.key
        if key is not None and key in self._by_id:
            self._finish_now(record, error=f"task {key} is defined twice; give each task its own number")
            return
        if key is not None:
            self._by_id[key] = record
        if unit.error is not None:
            self._finish_now(record, error=unit.error)
        elif task is None:
            self._finish_now(record)  # text that is not a task (a comment, a thought)
        elif task.is_join:
            self._finish_now(record)
        else:
            try:
                self._sub_tool[id(record)] = self.tool.resolve(task.tool)
            except PlanError as exc:
                self._finish_now(record, error=f"task {key}: {exc}")
                return
            self._waiting.append(record)

    def _finish_now(self, record: UnitRecord, *, error: str | None = None, skipped: bool = False) -> None:
        now = time.perf_counter()
        record.start = record.start if record.start is not None else now
        record.error, record.skipped, record.end = error, skipped, now
        if error is not None and not skipped:
            self._failed.set()
        self._newly_done.append(record)

    # -- dispatching ---------------------------------------------------------------------
    def _pump(self) -> None:
        """Start every task that may start; skip those whose dependencies failed."""
        while True:
            starting: list[UnitRecord] = []
            with self._lock:
                done, self._newly_done = self._newly_done, []
                for record in list(self._waiting):
                    state, reason = self._readiness(record)
                    if state == "wait":
                        continue
                    if state in ("skip", "fail"):
                        self._waiting.remove(record)
                        self._finish_now(record, error=reason, skipped=state == "skip")
                        continue
                    tool = self._sub_tool[id(record)]
                    busy = self._running.get(tool.name, 0) >= max(1, int(tool.max_concurrency))
                    if busy or self._running_total >= self.limit:
                        continue
                    self._waiting.remove(record)
                    self._running_total += 1
                    self._running[tool.name] = self._running.get(tool.name, 0) + 1
                    starting.append(record)
                if (
                    self._plan_closed and not starting and not self._newly_done
                    and self._running_total == 0 and self._waiting
                ):
                    for record in self._waiting:  # nothing runs and nothing can: a cycle
                        deps = ", ".join(record.unit.value.deps)
                        self._finish_now(record, error=(
                            f"task {record.unit.key} waits for {deps}, which can never finish (a "
                            "dependency cycle); a task may only use tasks that do not wait for it"
                        ))
                    self._waiting.clear()
                done += self._newly_done
                self._newly_done = []
            for record in done:
                self._notify(record)
            for record in starting:
                threading.Thread(
                    target=self._run_task, args=(record,), name=f"conveyor-plan-{record.unit.key}", daemon=True
                ).start()
            if not done:
                return

    def _readiness(self, record: UnitRecord) -> tuple[str, str | None]:
        """``("ready"|"wait"|"skip"|"fail", reason)`` for a waiting task (lock held)."""
        task: PlanTask = record.unit.value
        for dep in task.deps:
            dep_record = self._by_id.get(dep)
            if dep_record is None:
                if self._plan_closed:
                    return "fail", (
                        f"task {task.id} uses {dep}, which the plan does not define; "
                        "refer only to tasks written in the plan"
                    )
                return "wait", None
            if dep_record.end is None:
                return "wait", None
            if dep_record.error is not None:
                if dep_record.skipped:
                    cause = dep_record.error.removeprefix("skipped: ")
                    return "skip", f"skipped: {dep} did not run ({cause})"
                return "skip", f"skipped: {dep} failed: {dep_record.error}"
        return "ready", None

    def _run_task(self, record: UnitRecord) -> None:
        tool = self._sub_tool[id(record)]
        self._warm_done.wait()
        with self._lock:
            abandoned = record.end is not None
            if not abandoned:
                record.start = time.perf_counter()
        output, error = "", None
        if not abandoned:
            if self._warm_error is not None:
                error = self._warm_error
            elif tool.name in self.tool.warm_errors:
                error = self.tool.warm_errors[tool.name]
            else:
                try:
                    output, error = self._call_sub_tool(record, tool)
                except PlanError as exc:
                    error = f"task {record.unit.key}: {exc}"
                except TOOL_FAILURES as exc:  # a task error, not a crash nor a thread ended silently
                    error = f"task {record.unit.key}: {tool_failure(tool.name, exc)}"
        with self._lock:
            self._running_total -= 1
            self._running[tool.name] -= 1
            if record.end is None:
                record.output, record.error, record.end = output, error, time.perf_counter()
                if error is not None:
                    self._failed.set()
                self._newly_done.append(record)
        self._pump()

    def _call_sub_tool(self, record: UnitRecord, tool: Tool) -> tuple[str, str | None]:
        task: PlanTask = record.unit.value
        numeric = tool.name in self.tool.numeric_tools
        args = [self._substitute(a, task, numeric) for a in task.args]
        kwargs = {k: self._substitute(v, task, numeric) for k, v in task.kwargs.items()}
        units = self.tool.units_for(tool, args, kwargs)
        if not units:
            raise PlanError(f"{tool.name}() got no arguments; write e.g. {tool.name}(\"…\")")
        if _runs_units_only(tool):
            result = tool.format_result(_run_inline(tool, units))
        else:  # the tool's calls do more than run units (validate arguments, act at close)
            call = tool.open_call(early=True)
            for unit in units:
                call.feed(unit)
            result = call.finish()
        return result.output, result.error

    def _substitute(self, value: Any, task: PlanTask, numeric: bool) -> Any:
        """``value`` with ``$N`` references replaced (see the module docstring)."""
        if isinstance(value, list):
            return [self._substitute(v, task, numeric) for v in value]
        if isinstance(value, dict):
            return {k: self._substitute(v, task, numeric) for k, v in value.items()}
        if not isinstance(value, str):
            return value

        def replace(match: re.Match[str]) -> str:
            ref = f"${match.group(1)}"
            with self._lock:
                dep = self._by_id.get(ref)
            if dep is None or dep.end is None or ref not in task.deps:
                return match.group(0)
            if not numeric:
                return dep.output.strip()
            dep_tool = self._sub_tool.get(id(dep))
            from_calc = dep_tool is not None and dep_tool.name in self.tool.numeric_tools
            number = numeric_value(dep.output, from_calculator=from_calc)
            if number is None:
                snippet = " ".join(dep.output.split())[:80]
                raise PlanError(
                    f"{ref} has no number in its output ({snippet!r}), so it cannot be used in "
                    f"{value!r}; look up a number first"
                )
            return f"({number})"

        return _REF.sub(replace, value)
