"""The tool developer interface: ``Tool``, its per-call ``ToolCall``, and the records.

A tool is a small class. It declares data (``name``, ``description``, a JSON-schema
``parameters`` dict for chat templates, a ``side_effect`` class) and one behaviour:
``execute(unit)``, which does the work of one unit and blocks until it is done.
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

        def make_parser(self):
            return LineParser()

        def execute(self, unit):
            return UnitOutput(unit.text.strip().upper())
"""

from __future__ import annotations

import enum
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from parsers.unit import IncrementalParser, Unit

#: Seconds ``ToolCall.finish`` waits beyond a unit's own timeout before abandoning it.
ABANDON_GRACE = 5.0


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


class Tool:
    """Base class of every tool. Subclasses set the class attributes and ``execute``.

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
      timeout: seconds one unit may take; the tool should enforce it itself, the call
        abandons the unit ``ABANDON_GRACE`` seconds later in any case.
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

    # -- what subclasses provide ---------------------------------------------------
    def make_parser(self) -> IncrementalParser:
        """A fresh incremental parser that splits this tool's call body into units."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_parser()")

    def execute(self, unit: Unit) -> UnitOutput:
        """Do the work of one unit; blocks; runs on a worker thread of the call."""
        raise NotImplementedError(f"{type(self).__name__} must implement execute(unit)")

    def warm_up(self) -> None:
        """Expensive set-up for a call (start a kernel, open a connection).

        Called on the call's worker thread when the call opens, before any unit runs.
        """

    def format_result(self, records: list[UnitRecord]) -> ToolResult:
        """Combine unit records into the call's result. Default: outputs joined."""
        parts = [r.output for r in records if r.output]
        errors = [r.error for r in records if r.error and not r.skipped]
        for r in records:
            if r.error and not r.skipped and r.error not in r.output:
                parts.append(r.error)
        return ToolResult(
            output="\n".join(p.rstrip("\n") for p in parts),
            error="; ".join(errors) if errors else None,
            units=list(records),
            tool=self.name,
        )

    def fork(self) -> "Tool":
        """A tool for another conversation (another batch row).

        Stateless tools return ``self``; tools with per-conversation state (a kernel)
        return a fresh instance with the same settings.
        """
        return self

    def close(self) -> None:
        """Release resources (processes, connections). Idempotent."""

    # -- what the framework provides -----------------------------------------------
    def open_call(
        self,
        *,
        early: bool = True,
        on_unit_done: Callable[[UnitRecord], None] | None = None,
    ) -> "ToolCall":
        """Open a call. ``early=False`` buffers units until ``finish`` (lazy mode)."""
        may_run_early = self.side_effect is not SideEffect.MUTATING or self.allow_early
        return ToolCall(self, early=early and may_run_early, on_unit_done=on_unit_done)

    def run(self, text: str) -> ToolResult:
        """One-shot call: parse ``text`` into units, run them all, return the result."""
        parser = self.make_parser()
        call = self.open_call(early=True)
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

    Units run on up to ``tool.max_concurrency`` daemon worker threads, in feeding order
    when that is 1. ``tool.warm_up()`` runs first, on a worker, as soon as the call opens.
    Nothing here polls: idle workers block on the queue, and ``finish()`` blocks on the
    call's state lock (woken by every unit that starts or ends) with a timeout set to the
    earliest moment a unit must be abandoned, so tool bookkeeping costs the decoding thread
    no wake-ups.
    """

    def __init__(
        self,
        tool: Tool,
        *,
        early: bool = True,
        on_unit_done: Callable[[UnitRecord], None] | None = None,
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
        self._workers = [
            threading.Thread(target=self._work, name=f"conveyor-{tool.name}-{i}", daemon=True)
            for i in range(max(1, int(tool.max_concurrency)))
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
        except Exception as exc:  # reported on every unit; the call still finishes
            self._warm_error = f"{self.tool.name} could not start: {type(exc).__name__}: {exc}"
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
            output, error = "", self._warm_error
        elif self.tool.stop_on_error and self._failed.is_set():
            output, error = "", "skipped: an earlier part of this call failed"
            record.skipped = True
        elif record.unit.error is not None and not self.tool.run_malformed:
            output, error = "", record.unit.error
        else:
            try:
                result = self.tool.execute(record.unit)
                output, error = result.output, result.error
            except Exception as exc:  # a tool bug becomes a tool error, not a crash
                output, error = "", f"{type(exc).__name__}: {exc}"
        with self._lock:
            if record.end is not None:  # finish() gave up on it meanwhile
                return
            record.output, record.error, record.end = output, error, time.perf_counter()
            if error is not None and not record.skipped:
                self._failed.set()  # before finish() can see the end: failed is final by then
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
                if not self._warm_done.is_set():
                    deadlines.append(self.opened + limit)
                due = min(deadlines) if deadlines else None
                now = time.perf_counter()
                if due is not None and now >= due:
                    self._abandon(now, limit)
                    return
                # No deadline: every waiting unit is queued behind a unit that ends (or
                # starts, for plan tasks waiting on dependencies) under this lock, waking us.
                self._lock.wait(None if due is None else due - now)

    def _abandon(self, now: float, limit: float) -> None:
        """Give up on every unfinished unit (lock held). The first is the stuck one."""
        message = f"{self.tool.name} did not return within {limit:g}s; abandoned"
        for record in self.records:
            if record.end is None:
                if record.start is None:
                    record.start = now
                    record.skipped = True
                    record.error = "skipped: an earlier part of this call did not finish"
                else:
                    record.error = message
                record.end = now
                self._failed.set()
