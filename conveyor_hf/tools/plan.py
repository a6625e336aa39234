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
and URLs are skipped: :func:`~conveyor_hf.tools.plan_scheduler.numeric_value`). If there
is no number the task fails and says so.

Failures stay local: a task that fails (an error, an unknown tool, a reference to a task
the plan never defines, a dependency cycle) fails only itself; each task depending on it
is skipped with the reason (``skipped: $1 failed: …``) and the rest of the plan runs.

Lazy mode (the baseline, ``open_call(early=False)``): nothing runs until the plan is
closed; then with ``lazy_sequential=True`` (default) tasks run one after another in plan
order, like a ReAct agent calling one tool at a time (the Conveyor paper's lazy
baseline), and with ``lazy_sequential=False`` independent tasks run in parallel (the
stronger, LLMCompiler-without-streaming baseline).

This module holds the tool (its sub-tools, how a task's arguments become their units, how
a plan's result reads); :mod:`conveyor_hf.tools.plan_scheduler` runs the tasks.

Example::

    from conveyor_hf.tools import CalculatorTool, SearchTool
    from conveyor_hf.tools.plan import PlanTool

    plan = PlanTool(tools=[SearchTool(backend="offline"), CalculatorTool()])
    print(plan.run('$1 = search("Cheetah")\\n$2 = calculator("$1 * 1.2")\\njoin()\\n').output)
"""

from __future__ import annotations

import threading
from typing import Any, Collection, Iterable, Sequence

from conveyor_hf.tools.base import ABANDON_GRACE, SideEffect, Tool, ToolResult, UnitRecord, start_failure
from conveyor_hf.tools.plan_scheduler import PlanCall, PlanError
from parsers.plan import PlanParser, PlanTask
from parsers.unit import Unit

__all__ = ["PlanTool"]

_SEVERITY = [SideEffect.PURE, SideEffect.READ_ONLY, SideEffect.STATEFUL, SideEffect.MUTATING]
_RESERVED = frozenset(["join", "finish", "plan"])


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
    call_class = PlanCall

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
                errors[tool.name] = start_failure(tool, exc)

        threads = [threading.Thread(target=warm, args=(t,), daemon=True) for t in self.tools.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.warm_errors = errors

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
        the way one line of a line-based tool is; for a JSON-argument tool
        (``json_arguments``: a :class:`~conveyor_hf.tools.validated.ValidatedTool`) they are
        matched to its parameters in order. Keyword arguments are JSON-call units (``key`` = name).
        """
        units: list[Unit] = []
        if tool.json_arguments:
            names = list(tool.parameters.get("properties", {}))
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
        return self.make_result(records, blocks, errors=errors)

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
