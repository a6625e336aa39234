"""The tools of one conversation on the server: shared stateless ones, pooled stateful ones.

A stateless tool (``fork()`` returns itself: search, calculator) is shared by every
request. A stateful tool (its own ``fork()``: the Python kernel) is stood in for by a
:class:`PooledTool`, which takes a started instance from the tool's
:class:`~conveyor_hf.server.kernel_pool.KernelPool` when the conversation *first calls*
it — in the call's warm-up, on the call's worker thread, never on the decode thread —
and hands it back to be closed when the request ends. A chat answer that never runs
Python costs no kernel at all; one that does gets a kernel that no one else has used.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, TimeoutError
from typing import Sequence

from conveyor_hf.server.kernel_pool import KernelPool
from conveyor_hf.tools.base import Tool, ToolResult, UnitOutput, UnitRecord
from parsers.unit import IncrementalParser, Unit

#: Attributes a stand-in copies from its template: how the tool is shown and called.
_PRESENTATION = ("name", "description", "parameters", "side_effect", "fence_languages", "allow_early",
                 "max_concurrency", "stop_on_error", "run_malformed", "timeout", "json_arguments")

#: Seconds a first call waits for a started instance before it fails.
TAKE_TIMEOUT = 120.0


def is_stateful(tool: Tool) -> bool:
    """Whether each conversation needs its own instance (the tool overrides ``fork``)."""
    return type(tool).fork is not Tool.fork


class PooledTool(Tool):
    """One conversation's instance of a pooled tool, taken from the pool on first use.

    ``close()`` kills the instance now (the client went away); ``release()`` hands it
    to the pool to be closed in the background (the answer is done). Either way it is
    never used again.
    """

    def __init__(self, pool: KernelPool, *, take_timeout: float = TAKE_TIMEOUT) -> None:
        self._pool = pool
        self._template = pool.template
        for attribute in _PRESENTATION:
            setattr(self, attribute, getattr(self._template, attribute))
        self._take_timeout = take_timeout
        self._lock = threading.Lock()
        self._future = None
        self._tool: Tool | None = None
        self._closed = self._released = False

    # -- Tool interface ----------------------------------------------------------------
    def make_parser(self) -> IncrementalParser:
        return self._template.make_parser()

    def warm_up(self) -> None:
        """Take a started instance from the pool (waits only if none is ready)."""
        with self._lock:
            if self._tool is not None:
                return
            if self._closed:
                raise RuntimeError(f"{self.name}: the request was cancelled")
            if self._future is None:
                self._future = self._pool.take()
            future = self._future
        try:
            tool = future.result(timeout=self._take_timeout)
        except CancelledError:
            raise RuntimeError(f"{self.name}: the request was cancelled") from None
        except TimeoutError:
            raise RuntimeError(f"no {self.name} instance was ready within {self._take_timeout:g}s; the server "
                               "is overloaded (raise --kernel-pool or lower --max-concurrency)") from None
        with self._lock:
            closed = self._closed  # then close() gave the future up: its instance goes back to be closed
            if not closed:
                self._tool = tool
        if closed:
            raise RuntimeError(f"{self.name}: the request was cancelled")

    def execute(self, unit: Unit) -> UnitOutput:
        if self._tool is None:
            self.warm_up()
        return self._tool.execute(unit)

    def format_result(self, records: list[UnitRecord]) -> ToolResult:
        return (self._tool or self._template).format_result(records)

    def fork(self) -> "PooledTool":
        return PooledTool(self._pool, take_timeout=self._take_timeout)

    def close(self) -> None:
        """Kill the instance now (or stop waiting for one); idempotent."""
        with self._lock:
            self._closed = True
            tool, future = self._tool, self._future
        if tool is not None:
            tool.close()
        elif future is not None:
            self._pool.give_up(future)

    # -- server side -------------------------------------------------------------------
    def release(self) -> None:
        """The request is over: the pool closes the instance in the background."""
        with self._lock:
            if self._released:
                return
            self._released = self._closed = True
            tool, future = self._tool, self._future
        if tool is not None:
            self._pool.discard(tool)
        elif future is not None:
            self._pool.give_up(future)

    @property
    def used(self) -> bool:
        return self._future is not None

    @property
    def kernel_pid(self) -> int | None:
        return getattr(self._tool, "kernel_pid", None)


class ConversationTools:
    """The tools one request runs with: the shared templates and a stand-in per pool."""

    def __init__(self, templates: Sequence[Tool], pools: dict[str, KernelPool]) -> None:
        self.tools: list[Tool] = [PooledTool(pools[t.name]) if t.name in pools else t for t in templates]

    @property
    def pooled(self) -> list[PooledTool]:
        return [tool for tool in self.tools if isinstance(tool, PooledTool)]

    def close(self) -> None:
        """Kill this request's instances now (the client went away)."""
        for tool in self.pooled:
            tool.close()

    def release(self) -> None:
        """Hand this request's instances to their pools to be closed."""
        for tool in self.pooled:
            tool.release()
