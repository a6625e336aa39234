"""The ``plan`` tool: LLMCompiler-style task graphs, each task run as soon as it can be.

The model writes a ```` ```plan ```` block, one task per line, and closes it with
``join()``::

    $1 = search("Mariana Trench")
    $2 = search("Puerto Rico Trench")
    $3 = calculator("$1 * 0.8")
    join()

Each task is dispatched the moment its line is complete *and* every task it references
is done, so independent tasks run in parallel with each other and with the decoding of
the rest of the plan (bounded by ``max_parallel``, and per sub-tool by that tool's
``max_concurrency``). A task's ``UnitRecord.start`` is when it really started running,
not when its line was written, so the timeline shows the true schedule.

References. ``$N`` (or ``${N}``) in an argument is replaced, when the task starts, by the
output text of task N (stripped). For a *numeric* sub-tool (``numeric_tools``, by default
the calculator) it is replaced by a number instead, in parentheses: a calculator
result's exact value (``2*sqrt(2)`` from ``sqrt(8) = 2*sqrt(2) ≈ 2.83``), otherwise the
first number in the text (``11,034`` → ``11034``; ``[search: …]`` headers, list markers
and URLs are skipped). If there is no number the task fails and says so.

Failures stay local: a task that fails (an error, an unknown tool, a reference to a task
the plan never defines, a dependency cycle) fails only itself; each task depending on it
is skipped with the reason (``skipped: $1 failed: …``) and the rest of the plan runs.

Lazy mode (the baseline, ``open_call(early=False)``): nothing runs until the plan is
closed; then with ``lazy_sequential=True`` (default) tasks run one after another in plan
order, like a ReAct agent calling one tool at a time (the Conveyor paper's lazy
baseline), and with ``lazy_sequential=False`` independent tasks run in parallel (the
stronger, LLMCompiler-without-streaming baseline).

Example::

    from conveyor_hf.tools import CalculatorTool, SearchTool
    from conveyor_hf.tools.plan import PlanTool

    plan = PlanTool(tools=[SearchTool(backend="offline"), CalculatorTool()])
    print(plan.run('$1 = search("Cheetah")\\n$2 = calculator("$1 * 1.2")\\njoin()\\n').output)
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any, Callable, Collection, Iterable, Sequence

from conveyor_hf.tools.base import (
    ABANDON_GRACE,
    SideEffect,
    Tool,
    ToolCall,
    ToolResult,
    UnitRecord,
)
from parsers.plan import PlanParser, PlanTask
from parsers.unit import Unit

__all__ = ["PlanCall", "PlanTool", "numeric_value"]

_REF = re.compile(r"\$\{?(\d+)\}?")
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")
_HEADER_LINE = re.compile(r"^\s*\[[^\]]*\]\s*$", re.MULTILINE)
_LIST_MARKER = re.compile(r"^\s*\d{1,3}[.)]\s+", re.MULTILINE)
_URL = re.compile(r"\S+://\S+")
_CALC_RESULT = re.compile(r"=\s*([^=\u2248\n]+?)\s*(?:\u2248\s*(\S+))?\s*$")
_SEVERITY = [SideEffect.PURE, SideEffect.READ_ONLY, SideEffect.STATEFUL, SideEffect.MUTATING]
_RESERVED = frozenset(["join", "finish", "plan"])


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


class PlanTool(Tool):
    """Runs an LLMCompiler-style plan of sub-tool calls, each task as soon as it can.

    Args:
      tools: the sub-tools tasks may call, by their ``name``; default
        ``[SearchTool(), CalculatorTool()]``.
      max_parallel: tasks of one plan running at the same time.
      lazy_sequential: in lazy mode run tasks one at a time in plan order (True), or
        independent tasks in parallel (False). Partial mode always runs them in parallel.
      numeric_tools: sub-tools whose ``$N`` references become numbers (see module doc).
      aliases: other names for sub-tools (``{"math": "calculator"}``).
    """

    name = "plan"
    description = (
        "Run several tool calls as a plan, independent ones in parallel. Write a ```plan "
        "block with one task per line, e.g. $1 = search(\"Mariana Trench\"), then "
        "$2 = calculator(\"$1 * 0.8\") ($N is replaced by task N's output), and end with join()."
    )
    parameters = {
        "type": "object",
        "properties": {
            "plan": {
                "type": "string",
                "description": "One task per line: '$1 = search(\"…\")', '$2 = calculator(\"$1 / 2\")', 'join()'.",
            }
        },
        "required": ["plan"],
    }
    fence_languages = ("plan",)

    def __init__(
        self,
        tools: Iterable[Tool] | None = None,
        max_parallel: int = 4,
        lazy_sequential: bool = True,
        *,
        numeric_tools: Collection[str] = ("calculator",),
        aliases: dict[str, str] | None = None,
    ) -> None:
        if tools is None:  # LLMCompiler's set-up: look-ups and arithmetic
            from conveyor_hf.tools.calculator import CalculatorTool
            from conveyor_hf.tools.search import SearchTool

            tools = [SearchTool(), CalculatorTool()]
        tools = list(tools)
        if not tools:
            raise ValueError("PlanTool(tools=[...]) needs at least one sub-tool, e.g. [SearchTool(), CalculatorTool()]")
        for tool in tools:
            if not isinstance(tool, Tool):
                raise TypeError(f"PlanTool tools must be conveyor_hf.tools.Tool instances, got {tool!r}")
            if isinstance(tool, PlanTool):
                raise ValueError("a PlanTool cannot run another PlanTool; give it the sub-tools directly")
            if tool.name in _RESERVED:
                raise ValueError(f"a sub-tool cannot be named {tool.name!r} (reserved by the plan syntax); rename it")
        names = [t.name for t in tools]
        if len(set(names)) != len(names):
            raise ValueError(f"PlanTool sub-tool names must be unique, got {names}")
        if int(max_parallel) < 1:
            raise ValueError(f"PlanTool(max_parallel={max_parallel!r}) must be at least 1")
        self.tools: dict[str, Tool] = {t.name: t for t in tools}
        self.aliases = dict(aliases or {})
        for alias, target in self.aliases.items():
            if target not in self.tools:
                raise ValueError(f"PlanTool alias {alias!r} -> {target!r}: no sub-tool is named {target!r}")
        self.max_parallel = int(max_parallel)
        self.max_concurrency = self.max_parallel  # the timeline's lanes for this call
        self.lazy_sequential = bool(lazy_sequential)
        self.numeric_tools = frozenset(numeric_tools)
        self.side_effect = max((t.side_effect for t in tools), key=_SEVERITY.index)
        self.allow_early = all(t.side_effect is not SideEffect.MUTATING or t.allow_early for t in tools)
        self.timeout = max(t.timeout for t in tools) + ABANDON_GRACE
        #: Sub-tools whose ``warm_up`` failed at the last call's start: name -> reason.
        self.warm_errors: dict[str, str] = {}
        listed = ", ".join(f"{t.name} ({t.description.split('.')[0].strip()})" for t in tools)
        self.description = f"{type(self).description} Tools: {listed}."

    # -- Tool interface --------------------------------------------------------------------
    def make_parser(self) -> PlanParser:
        return PlanParser()

    def open_call(
        self,
        *,
        early: bool = True,
        on_unit_done: Callable[[UnitRecord], None] | None = None,
    ) -> "PlanCall":
        may_run_early = self.side_effect is not SideEffect.MUTATING or self.allow_early
        return PlanCall(self, early=early and may_run_early, on_unit_done=on_unit_done)

    def warm_up(self) -> None:
        """Warm every sub-tool (in parallel) while the model writes the plan.

        A sub-tool that fails to start fails only the tasks that use it
        (``warm_errors`` maps its name to the reason).
        """
        errors: dict[str, str] = {}

        def warm(tool: Tool) -> None:
            try:
                tool.warm_up()
            except Exception as exc:
                errors[tool.name] = f"{tool.name} could not start: {type(exc).__name__}: {exc}"

        threads = [threading.Thread(target=warm, args=(t,), daemon=True) for t in self.tools.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.warm_errors = errors

    def execute(self, unit: Unit):  # pragma: no cover - PlanCall runs tasks itself
        raise RuntimeError("PlanTool tasks run through PlanTool.open_call(); use plan.run(text) for one shot")

    def fork(self) -> "PlanTool":
        return PlanTool(
            [t.fork() for t in self.tools.values()], self.max_parallel, self.lazy_sequential,
            numeric_tools=self.numeric_tools, aliases=self.aliases,
        )

    def close(self) -> None:
        for tool in self.tools.values():
            tool.close()

    def resolve(self, name: str) -> Tool:
        """The sub-tool a task names; a :class:`PlanError` naming the available ones."""
        tool = self.tools.get(self.aliases.get(name, name))
        if tool is None:
            available = ", ".join(sorted(self.tools))
            raise PlanError(f"unknown tool {name!r}; this plan can use: {available}")
        return tool

    def units_for(self, tool: Tool, args: Sequence[Any], kwargs: dict[str, Any]) -> list[Unit]:
        """The units a task's (substituted) arguments become for ``tool``.

        Positional arguments are one unit each (``value`` and ``text`` the argument),
        the way one line of a line-based tool is; for a JSON-argument tool (a
        :class:`~conveyor_hf.tools.validation.ValidatedTool`) they are matched to its
        parameters in order. Keyword arguments are JSON-call units (``key`` = name).
        """
        from conveyor_hf.tools.validation import ValidatedTool

        units: list[Unit] = []
        if isinstance(tool, ValidatedTool):
            names = list(tool.properties)
            if len(args) > len(names):
                raise PlanError(
                    f"{tool.name} takes at most {len(names)} arguments ({', '.join(names)}), got {len(args)}"
                )
            kwargs = {**dict(zip(names, args)), **kwargs}
            args = ()
        for value in args:
            text = value if isinstance(value, str) else str(value)
            units.append(Unit(text=text, index=len(units), value=value))
        for key, value in kwargs.items():
            units.append(Unit(text=f"{key}={value!r}", index=len(units), key=key, value=value))
        return units

    def format_result(self, records: list[UnitRecord]) -> ToolResult:
        """Each task's id, call and output (or error), in plan order."""
        blocks, errors = [], []
        for record in records:
            task = record.unit.value if isinstance(record.unit.value, PlanTask) else None
            if record.unit.key is None and record.error is None:
                continue  # text that was not a task
            if task is not None and task.is_join and record.error is None:
                continue
            head = _task_head(record, task)
            lines = [head]
            if record.output:
                lines.append(record.output.rstrip("\n"))
            if record.error:
                if record.error not in record.output:
                    lines.append(f"error: {record.error}")
                if not record.skipped:
                    key = record.unit.key or "plan"
                    named = record.error.startswith(f"task {key}")
                    errors.append(record.error if named else f"{key}: {record.error}")
            elif not record.output:
                lines.append("(no output)")
            blocks.append("\n".join(lines))
        return ToolResult(
            output="\n\n".join(blocks),
            error="; ".join(errors) if errors else None,
            units=list(records),
            tool=self.name,
        )

    def __repr__(self) -> str:
        return f"PlanTool(tools=[{', '.join(self.tools)}], max_parallel={self.max_parallel})"


def _task_head(record: UnitRecord, task: PlanTask | None) -> str:
    if task is not None:
        line = task.raw.strip()
    else:
        text = record.unit.text.strip()
        line = text.splitlines()[0] if text else ""
    key = record.unit.key
    if key and not line.startswith(key):
        line = f"{key}: {line}"
    return line or (key or "plan")


def _run_inline(tool: Tool, units: list[Unit]) -> list[UnitRecord]:
    """Run ``units`` on ``tool`` one after another on this thread, as a call would."""
    records: list[UnitRecord] = []
    failed = False
    for unit in units:
        record = UnitRecord(unit=unit, emitted=time.perf_counter())
        record.start = record.emitted
        if tool.stop_on_error and failed:
            record.error, record.skipped = "skipped: an earlier part of this call failed", True
        elif unit.error is not None:
            record.error = unit.error
        else:
            try:
                result = tool.execute(unit)
                record.output, record.error = result.output, result.error
            except Exception as exc:  # a tool bug becomes a task error, not a crash
                record.error = f"{type(exc).__name__}: {exc}"
        record.end = time.perf_counter()
        failed = failed or (record.error is not None and not record.skipped)
        records.append(record)
    return records


class PlanCall(ToolCall):
    """One plan: tasks dispatched as their lines complete and their dependencies finish.

    Keeps :class:`ToolCall`'s contract: ``feed`` returns at once, ``records`` has one
    record per unit in feeding order, ``finish`` waits (abandoning a task that outlives
    ``tool.timeout + ABANDON_GRACE``), ``failed`` is set by the first task that fails.
    Each task runs on its own daemon thread as a call of its sub-tool.
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
        super().__init__(tool, **kwargs)
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
        super().close()  # sets `closed` and stops the base class's idle workers
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
                except Exception as exc:  # a tool bug becomes a task error, not a crash
                    error = f"task {record.unit.key}: {type(exc).__name__}: {exc}"
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
        if type(tool).open_call is not Tool.open_call:  # the tool has its own call semantics
            call = tool.open_call(early=True)
            for unit in units:
                call.feed(unit)
            result = call.finish()
        else:  # run the units right here: no extra threads, no polling delay
            result = tool.format_result(_run_inline(tool, units))
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

    def _notify(self, record: UnitRecord) -> None:
        if self._on_unit_done is not None:
            try:
                self._on_unit_done(record)
            except Exception:  # a display callback must not break tool work
                pass
