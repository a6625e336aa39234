"""The tool developer interface: ``Tool``, its per-call ``ToolCall``, and the records.

A tool author meets one interface, in one of three forms:

- subclass :class:`Tool`, set its data (``name``, ``description``, a JSON-schema
  ``parameters`` dict for chat templates, a ``side_effect`` class) and implement
  ``execute(unit)``: the work of one unit, blocking until it is done. By default a unit is
  one line of the call body, and ``unit.argument`` is what to act on (see
  :class:`parsers.unit.Unit`); override ``make_parser`` for other units (statements);
- subclass :class:`~conveyor_hf.tools.validated.ValidatedTool` and implement
  ``act(arguments)`` for a tool that takes a JSON object of arguments
  (``json_arguments = True``), each checked against its schema as it is written;
- decorate a typed, documented function with :func:`~conveyor_hf.tools.function.tool`
  (a ``ValidatedTool`` whose ``act`` calls the function).

``execute`` runs on a worker thread owned by the call, never on the decode thread.
Per tool call the generator opens a :class:`ToolCall` and hands it units as the model
writes them: ``feed(unit)`` returns at once, ``finish()`` waits for what is left and
returns a :class:`ToolResult`. ``Tool.run(text)`` does the same in one shot.

Work that may hang must run somewhere it can be stopped (a kernel that can be
interrupted, a child process that can be killed): threads cannot be killed. ``execute``
runs on a thread of the decoding process, so CPU-heavy pure-Python work there competes
with decoding for the GIL; put it in a child process or kernel too (as ``PythonTool``
and ``CalculatorTool`` do). Waiting on I/O, sockets or SQLite releases the GIL and is fine. As a last
line of defence ``ToolCall.finish`` stops waiting for a unit ``timeout + grace`` seconds
after it started, reports it as an error and abandons its (daemon) thread, so a broken
tool can never hang ``generate``.

Example, a complete tool::

    class Upper(Tool):
        name = "upper"
        description = "Upper-cases each line."
        side_effect = SideEffect.PURE

        def execute(self, unit):
            return UnitOutput(unit.argument.upper())

    Upper().run("hello\\nworld\\n").output  # 'HELLO\\nWORLD'
"""

from __future__ import annotations

import enum
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

from parsers.lines import LineParser
from parsers.unit import IncrementalParser, Unit

#: Seconds ``ToolCall.finish`` waits beyond a unit's own timeout before abandoning it.
ABANDON_GRACE = 5.0

#: The error of a unit a ``stop_on_error`` tool skips after an earlier unit failed.
SKIPPED_AFTER_FAILURE = "skipped: an earlier part of this call failed"


class SideEffect(str, enum.Enum):
    """What running a tool does to the world; decides whether it may run early.

    ``pure`` and ``read_only`` tools can run any complete unit at once; ``stateful``
    tools (a Python kernel) run units in order, at once; ``mutating`` tools wait for the
    whole call to be decoded unless the tool sets ``allow_early = True``.
    """

    PURE = "pure"
    READ_ONLY = "read_only"
    STATEFUL = "stateful"
    MUTATING = "mutating"


@dataclass
class UnitOutput:
    """What ``Tool.execute`` returns for one unit."""

    output: str = ""
    error: str | None = None


@dataclass
class UnitRecord:
    """One unit of a call and what happened to it. Times are ``time.perf_counter()``."""

    unit: Unit
    emitted: float
    start: float | None = None
    end: float | None = None
    output: str = ""
    error: str | None = None
    skipped: bool = False

    @property
    def duration(self) -> float:
        """Seconds the tool spent on this unit (0 if it never ran)."""
        if self.start is None or self.end is None:
            return 0.0
        return self.end - self.start

    @property
    def done(self) -> bool:
        return self.end is not None


@dataclass
class ToolResult:
    """The outcome of one tool call: ``output`` is what the model is shown."""

    output: str
    error: str | None = None
    units: list[UnitRecord] = field(default_factory=list)
    tool: str = ""


def unit_errors(records: Iterable[UnitRecord]) -> list[str]:
    """The errors of the units that failed, in order; skipped units are left out (their
    error only repeats that an earlier one failed)."""
    return [r.error for r in records if r.error and not r.skipped]


#: What a tool's own code may raise that becomes an error of its call: every ``Exception``
#: and ``SystemExit`` (``sys.exit``, argparse, click), which would otherwise end the worker
#: thread silently and leave the call waiting out its timeout. ``KeyboardInterrupt`` still
#: propagates: it is the user stopping the program, not the tool failing.
TOOL_FAILURES: tuple[type[BaseException], ...] = (Exception, SystemExit)


def exit_failure(name: str, exc: SystemExit) -> str:
    """The error of work that called ``sys.exit`` (``exc``), e.g. ``"cli raised SystemExit(2)"``:
    its exit code is all it tells (argparse prints its message to stderr)."""
    return f"{name} raised SystemExit({exc.code!r})"


def tool_failure(name: str, exc: BaseException) -> str:
    """The error of tool ``name``'s work that raised ``exc`` (one of :data:`TOOL_FAILURES`)."""
    if isinstance(exc, SystemExit):
        return exit_failure(name, exc)
    return f"{type(exc).__name__}: {exc}"


def run_unit(tool: "Tool", unit: Unit, *, after_failure: bool = False) -> tuple[UnitOutput, bool]:
    """Run one unit on ``tool`` on this thread: ``(what it gave, whether it was skipped)``.

    Never raises. ``after_failure``: an earlier unit of the call failed, so a
    ``stop_on_error`` tool skips this one; a unit its parser marked malformed gives the
    parser's error unless the tool sets ``run_malformed``; an exception (or ``SystemExit``,
    see :data:`TOOL_FAILURES`) from ``execute`` becomes the unit's error. This is what a
    call's worker does with each unit (and what a plan does with a sub-tool's units).
    """
    if tool.stop_on_error and after_failure:
        return UnitOutput("", SKIPPED_AFTER_FAILURE), True
    if unit.error is not None and not tool.run_malformed:
        return UnitOutput("", unit.error), False
    try:
        result = tool.execute(unit)
    except TOOL_FAILURES as exc:  # a tool bug becomes a tool error, not a crash (or a silent end)
        return UnitOutput("", tool_failure(tool.name, exc)), False
    return UnitOutput(result.output, result.error), False


def start_failure(tool: "Tool", exc: BaseException) -> str:
    """The error every unit of a call reports when ``tool.warm_up()`` raised ``exc``."""
    if isinstance(exc, SystemExit):
        return f"{tool.name} could not start: its warm-up raised SystemExit({exc.code!r})"
    return f"{tool.name} could not start: {type(exc).__name__}: {exc}"


def start_timeout(tool: "Tool", limit: float) -> str:
    """The error of the units of a call whose ``tool.warm_up()`` outlived ``limit`` seconds:
    none of them started, and the model must read that, not an empty success."""
    return f"{tool.name} did not start within {limit:g}s (its warm-up had not finished); abandoned"


class _StateLock:
    """The lock that guards a call's records; every release wakes ``finish()``.

    Every change to a record (a unit starts, ends or is abandoned) happens under this lock,
    here and in subclasses (``PlanCall``), so ``finish()`` can sleep until something changed
    or a unit's deadline passed, instead of waking up to poll. Used as ``with call._lock:``.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())

    def __enter__(self) -> "_StateLock":
        self._condition.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._condition.notify_all()
        finally:
            self._condition.release()

    def wait(self, timeout: float | None) -> None:
        """Release the lock until the next release by another thread or ``timeout`` seconds
        (None: no limit); held again on return. Call with the lock held."""
        self._condition.wait(timeout)


class ToolCall:
    """One call of a tool: units in (non-blocking), one :class:`ToolResult` out.

    Units run on ``workers`` daemon worker threads (default ``tool.max_concurrency``), in
    feeding order when that is 1; a subclass that runs units its own way (``PlanCall``)
    passes ``workers=0``. ``tool.warm_up()`` runs first, on its own thread, as soon as the
    call opens. Nothing here polls: idle workers block on the queue, and ``finish()`` blocks
    on the call's state lock (woken by every unit that starts or ends) with a timeout set to
    the earliest moment a unit must be abandoned, so tool bookkeeping costs the decoding
    thread no wake-ups.
    """

    def __init__(
        self,
        tool: "Tool",
        *,
        early: bool = True,
        on_unit_done: Callable[[UnitRecord], None] | None = None,
        workers: int | None = None,
    ) -> None:
        self.tool = tool
        self.early = early
        self.records: list[UnitRecord] = []
        self.opened = time.perf_counter()
        self.closed: float | None = None
        self._on_unit_done = on_unit_done
        self._queue: queue.Queue[UnitRecord | None] = queue.Queue()
        self._pending: list[UnitRecord] = []
        self._failed = threading.Event()
        self._lock = _StateLock()
        self._warm_done = threading.Event()
        self._warm_error: str | None = None
        self._result: ToolResult | None = None
        count = max(1, int(tool.max_concurrency)) if workers is None else workers
        self._workers = [
            threading.Thread(target=self._work, name=f"conveyor-{tool.name}-{i}", daemon=True)
            for i in range(count)
        ]
        threading.Thread(target=self._warm, name=f"conveyor-{tool.name}-warm", daemon=True).start()
        for worker in self._workers:
            worker.start()

    @property
    def failed(self) -> bool:
        """True once any unit of this call has failed (used for early abort)."""
        return self._failed.is_set()

    def feed(self, unit: Unit) -> UnitRecord:
        """Hand one complete unit to the tool; returns at once."""
        if self.closed is not None:
            raise RuntimeError(f"{self.tool.name}: feed() after close(); open a new call")
        record = UnitRecord(unit=unit, emitted=time.perf_counter())
        self.records.append(record)
        if self.early:
            self._queue.put(record)
        else:
            self._pending.append(record)
        return record

    def close(self) -> None:
        """No more units: start what was buffered (lazy mode). Returns at once."""
        if self.closed is not None:
            return
        self.closed = time.perf_counter()
        for record in self._pending:
            self._queue.put(record)
        self._pending.clear()
        for _ in self._workers:
            self._queue.put(None)

    def finish(self, timeout: float | None = None) -> ToolResult:
        """Close the call, wait for every unit, and return the call's result.

        ``timeout`` bounds each unit (default ``tool.timeout + ABANDON_GRACE``); a unit
        that outlives it is reported as an error and abandoned, never waited on forever.
        """
        if self._result is not None:
            return self._result
        self.close()
        limit = timeout if timeout is not None else self.tool.timeout + ABANDON_GRACE
        self._wait_all(limit)
        self._result = self.tool.format_result(self.records)
        return self._result

    # -- worker side -----------------------------------------------------------------
    def _warm(self) -> None:
        try:
            self.tool.warm_up()
        except TOOL_FAILURES as exc:  # reported on every unit; the call still finishes
            self._warm_error = start_failure(self.tool, exc)
        finally:
            self._warm_done.set()
            with self._lock:  # wake finish(): the warm-up deadline no longer applies
                pass

    def _work(self) -> None:
        while True:
            record = self._queue.get()
            if record is None:
                return
            self._run(record)

    def _run(self, record: UnitRecord) -> None:
        self._warm_done.wait()
        with self._lock:
            if record.end is not None:  # abandoned by finish() while queued
                return
            record.start = time.perf_counter()
        if self._warm_error is not None:
            result, skipped = UnitOutput("", self._warm_error), False
        else:
            result, skipped = run_unit(self.tool, record.unit, after_failure=self._failed.is_set())
        with self._lock:
            if record.end is not None:  # finish() gave up on it meanwhile
                return
            record.output, record.error, record.skipped = result.output, result.error, skipped
            record.end = time.perf_counter()
            if result.error is not None and not skipped:
                self._failed.set()  # before finish() can see the end: failed is final by then
        self._notify(record)

    def _notify(self, record: UnitRecord) -> None:
        """Tell ``on_unit_done`` that ``record`` has ended (lock not held)."""
        if self._on_unit_done is not None:
            try:
                self._on_unit_done(record)
            except Exception:  # a display callback must not break tool work
                pass

    def _wait_all(self, limit: float) -> None:
        """Block until every unit has ended, abandoning them all once one has run (or the
        warm-up has taken) more than ``limit`` seconds. Sleeps on the state lock: woken
        by each unit that starts or ends, or when the earliest such deadline is due."""
        with self._lock:
            while True:
                waiting = [r for r in self.records if r.end is None]
                if not waiting:
                    return
                deadlines = [r.start + limit for r in waiting if r.start is not None]
                warming = not self._warm_done.is_set()
                if warming:
                    deadlines.append(self.opened + limit)
                due = min(deadlines) if deadlines else None
                now = time.perf_counter()
                if due is not None and now >= due:
                    self._abandon(now, limit, warming=warming)
                    return
                # No deadline: every waiting unit is queued behind a unit that ends (or
                # starts, for plan tasks waiting on dependencies) under this lock, waking us.
                self._lock.wait(None if due is None else due - now)

    def _abandon(self, now: float, limit: float, *, warming: bool = False) -> None:
        """Give up on every unfinished unit (lock held). The first started one is the stuck
        one, the units queued behind it are skipped; ``warming``: the warm-up is what
        overran, so no unit could start, and each reports that as its error (skipped units
        are left out of the result, which would then read as an empty success)."""
        message = f"{self.tool.name} did not return within {limit:g}s; abandoned"
        for record in self.records:
            if record.end is None:
                if record.start is None:
                    record.start = now
                    if warming:
                        record.error = start_timeout(self.tool, limit)
                    else:
                        record.skipped = True
                        record.error = "skipped: an earlier part of this call did not finish"
                else:
                    record.error = message
                record.end = now
                self._failed.set()


class Tool:
    """Base class of every tool: subclass it, set the class attributes, implement ``execute``.

    ``execute(unit)`` is the one method to write (see the module docstring for the JSON-
    argument and function forms); everything else has a default.

    Class attributes:
      name, description, parameters: how the tool is presented to the model (the
        ``parameters`` JSON schema is what ``apply_chat_template(tools=...)`` renders).
      side_effect: see :class:`SideEffect`.
      fence_languages: markdown fence languages that call the tool (```` ```python ````);
        empty means a ``<name>`` tag block (see ``conveyor_hf.formats``).
      allow_early: let a ``mutating`` tool start before its call is complete.
      max_concurrency: units of one call that may run at the same time (1 keeps order).
      stop_on_error: once a unit fails, skip the remaining units of the call (as a
        notebook cell stops at its first exception).
      run_malformed: still execute units the parser marked with an error (a Python
        kernel reports a syntax error better than the parser can); otherwise the
        parser's error is the unit's result.
      json_arguments: the tool takes a JSON object of arguments, one unit per member
        (``ValidatedTool``); otherwise its parser splits text (lines, statements).
      timeout: seconds one unit may take; the tool should enforce it itself, the call
        abandons the unit ``ABANDON_GRACE`` seconds later in any case.
      call_class: the :class:`ToolCall` (sub)class ``open_call`` makes; a tool whose calls
        do more than run units (a plan, argument validation) names its own.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}, "required": []}
    side_effect: ClassVar[SideEffect] = SideEffect.READ_ONLY
    fence_languages: ClassVar[tuple[str, ...]] = ()
    allow_early: bool = False
    max_concurrency: int = 1
    stop_on_error: bool = False
    run_malformed: bool = False
    timeout: float = 60.0
    json_arguments: bool = False
    call_class: ClassVar[type[ToolCall]] = ToolCall

    # -- what subclasses provide ---------------------------------------------------
    def make_parser(self) -> IncrementalParser:
        """A fresh incremental parser that splits this tool's call body into units.

        Default: a :class:`~parsers.lines.LineParser`, one unit per non-blank line.
        """
        return LineParser()

    def execute(self, unit: Unit) -> UnitOutput:
        """Do the work of one unit; blocks; runs on a worker thread of the call.

        ``unit.argument`` is what to act on (a line, without its newline, by default).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement execute(unit)")

    def warm_up(self) -> None:
        """Expensive set-up for a call (start a kernel, open a connection).

        Called on the call's worker thread when the call opens, before any unit runs.
        """

    def format_result(self, records: list[UnitRecord]) -> ToolResult:
        """Combine unit records into the call's result. Default: outputs joined, then the
        errors that the outputs do not already show."""
        parts = [r.output for r in records if r.output]
        parts += [r.error for r in records if r.error and not r.skipped and r.error not in r.output]
        return self.make_result(records, (p.rstrip("\n") for p in parts), separator="\n")

    def fork(self) -> "Tool":
        """A tool for another conversation (another batch row).

        Stateless tools return ``self``; tools with per-conversation state (a kernel)
        return a fresh instance with the same settings.
        """
        return self

    def close(self) -> None:
        """Release resources (processes, connections). Idempotent."""

    # -- what the framework provides -----------------------------------------------
    @property
    def may_run_early(self) -> bool:
        """Whether units may run before the call is complete: not for a ``mutating`` tool,
        unless it sets ``allow_early``."""
        return self.side_effect is not SideEffect.MUTATING or self.allow_early

    def open_call(
        self,
        *,
        early: bool = True,
        on_unit_done: Callable[[UnitRecord], None] | None = None,
    ) -> ToolCall:
        """Open a call (a ``call_class``). ``early=False`` buffers units until ``finish``
        (lazy mode), as does a tool that may not run early (``may_run_early``)."""
        return self.call_class(self, early=early and self.may_run_early, on_unit_done=on_unit_done)

    def make_result(
        self,
        records: list[UnitRecord],
        blocks: Iterable[str],
        *,
        errors: Iterable[str] | None = None,
        separator: str = "\n\n",
    ) -> ToolResult:
        """The call's :class:`ToolResult`: ``blocks`` (what ``format_result`` rendered)
        joined by ``separator``; ``error`` joins ``errors`` (default :func:`unit_errors`)."""
        errors = unit_errors(records) if errors is None else list(errors)
        return ToolResult(
            output=separator.join(blocks),
            error="; ".join(errors) if errors else None,
            units=list(records),
            tool=self.name,
        )

    def run(self, text: str, *, early: bool = True) -> ToolResult:
        """One-shot call: parse ``text`` into units, run them all, return the result
        (``early=False``: as in lazy mode, nothing runs before every unit is in)."""
        parser = self.make_parser()
        call = self.open_call(early=early)
        for unit in parser.feed(text) + parser.close():
            call.feed(unit)
        return call.finish()

    def schema(self) -> dict[str, Any]:
        """The function schema chat templates take in ``tools=[...]``."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    @classmethod
    def from_function(
        cls,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        side_effect: SideEffect | str = "mutating",
        **options: Any,
    ) -> "Tool":
        """A tool from a typed, documented Python function (a
        :class:`~conveyor_hf.tools.function.FunctionTool`; ``options`` go to it).

        ``side_effect`` decides when it may start; the default ``"mutating"`` waits for its
        call to close. See :mod:`conveyor_hf.tools.function`.
        """
        from conveyor_hf.tools.function import FunctionTool  # lazy: function.py imports this module

        return FunctionTool(fn, name=name, side_effect=side_effect, **options)

    def __enter__(self) -> "Tool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
