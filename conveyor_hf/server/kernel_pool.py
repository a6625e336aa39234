"""``KernelPool``: started instances of one stateful tool (a Python kernel each), never reused.

A conversation gets its own instance of every stateful tool — a
:meth:`~conveyor_hf.tools.Tool.fork` of the configured one, with its own kernel — the
first time it calls that tool (see :mod:`~conveyor_hf.server.conversation_tools`).
Starting a kernel takes about a second of CPU, so the pool keeps ``size`` forks started
and warm; taking one starts its replacement in the background at once. An instance that
was used is never handed out again: whatever happened in it (a finished answer, a
cancelled request, a client that went away mid-statement) it is closed (its kernel
killed) in the background, so no conversation sees another's variables or files.

Builder threads (a fixed few) start and close instances; :meth:`take` returns a
``concurrent.futures.Future``, so a caller can wait with a timeout or give up. An
instance that fails to start fails the taker waiting for it (with the tool's message)
and is retried with backoff, so a broken sandbox or kernel never hangs a request and
never leaves the pool short for good.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from conveyor_hf.tools.base import Tool

logger = logging.getLogger("conveyor_hf.server")

#: Job priorities: closing frees memory and processes, so it goes first.
_CLOSE, _BUILD, _STOP = 0, 1, 2


@dataclass
class PoolStats:
    """What ``/health`` and ``/metrics`` show about the pool."""

    size: int
    ready: int
    starting: int
    waiting: int
    started: int
    closed: int
    failures: int
    last_error: str | None
    failing: bool = False  # the latest start failed and none has succeeded since


class KernelPool:
    """Keeps ``size`` forks of ``template`` started; :meth:`take` hands one out,
    :meth:`discard` closes it.

    Args:
      template: the configured tool (never started itself: build it with ``prestart=False``).
      size: instances kept ready (0: start one when it is taken).
      builders: threads that start and close instances.
    """

    def __init__(self, template: Tool, size: int, *, builders: int = 2,
                 retry_backoff: tuple[float, float] = (0.5, 30.0)) -> None:
        if size < 0 or builders < 1:
            raise ValueError(f"size={size} must be >= 0 and builders={builders} >= 1")
        self.template = template
        self.size = size
        self._backoff = retry_backoff
        self._lock = threading.Lock()
        self._ready: deque[Tool] = deque()
        self._waiters: deque[Future] = deque()
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._starting = 0
        self._started = self._closed_count = self._failures = 0
        self._failing_for = 0
        self._last_error: str | None = None
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._work, name=f"conveyor-pool-{template.name}-{i}", daemon=True)
                         for i in range(builders)]
        for thread in self._threads:
            thread.start()
        with self._lock:
            self._top_up()

    # -- public ------------------------------------------------------------------------
    def take(self) -> "Future[Tool]":
        """A future of a started instance; its replacement starts at once. Cancel the
        future to give up waiting (the instance goes to the next taker or back to the pool)."""
        future: Future = Future()
        with self._lock:
            if self._ready:
                future.set_result(self._ready.popleft())
            else:
                self._waiters.append(future)
            self._top_up()
        future.add_done_callback(self._on_waiter_done)
        return future

    def discard(self, tool: Tool) -> None:
        """Close a used instance in the background (it is never handed out again)."""
        self._put(_CLOSE, tool)

    def wait_ready(self, timeout: float) -> None:
        """Block until ``size`` instances are ready (server start-up); raise with the tools'
        message as soon as one fails to start, or when ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping.is_set():
            with self._lock:
                if len(self._ready) >= self.size or self._failures:
                    break
            self._stopping.wait(0.05)
        with self._lock:
            if len(self._ready) < self.size:
                reason = self._last_error or f"only {len(self._ready)} of {self.size} ready after {timeout:g} s"
                raise RuntimeError(f"{self.template.name} could not be started: {reason}")

    def give_up(self, future: "Future[Tool]") -> None:
        """The taker of ``future`` went away: cancel it, or discard the instance it brings."""
        if future.cancel():
            return
        future.add_done_callback(
            lambda f: self.discard(f.result()) if not f.cancelled() and f.exception() is None else None)

    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(size=self.size, ready=len(self._ready), starting=self._starting,
                             waiting=sum(1 for w in self._waiters if not w.done()), started=self._started,
                             closed=self._closed_count, failures=self._failures, last_error=self._last_error,
                             failing=self._failing_for > 0)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the builders, close every ready instance and the template; idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        with self._lock:
            ready, self._ready = list(self._ready), deque()
            waiters, self._waiters = list(self._waiters), deque()
        for waiter in waiters:
            if waiter.set_running_or_notify_cancel():
                waiter.set_exception(RuntimeError("the server is shutting down"))
        for tool in ready:
            self._put(_CLOSE, tool)
        for _ in self._threads:
            self._put(_STOP, None)
        for thread in self._threads:
            thread.join(timeout)
        self.template.close()

    # -- internals ---------------------------------------------------------------------
    def _put(self, priority: int, item: Tool | None) -> None:
        self._jobs.put((priority, next(self._order), item))

    def _top_up(self) -> None:
        """(Lock held.) Start instances until ready + starting covers the pool and the waiters."""
        if self._stopping.is_set():
            return
        waiting = sum(1 for w in self._waiters if not w.done())
        missing = self.size + waiting - len(self._ready) - self._starting
        for _ in range(max(0, missing)):
            self._starting += 1
            self._put(_BUILD, None)

    def _on_waiter_done(self, future: Future) -> None:
        if future.cancelled():
            with self._lock:
                if future in self._waiters:
                    self._waiters.remove(future)

    def _work(self) -> None:
        while True:
            priority, _, item = self._jobs.get()
            if priority == _STOP:
                return
            if priority == _CLOSE:
                item.close()
                with self._lock:
                    self._closed_count += 1
                continue
            self._build_one()

    def _build_one(self) -> None:
        if self._stopping.is_set():
            with self._lock:
                self._starting -= 1
            return
        try:
            tool = self._build()
        except Exception as exc:  # it cannot start: report it, retry later
            message = f"{type(exc).__name__}: {exc}"
            logger.warning("starting %s failed: %s", self.template.name, message)
            with self._lock:
                self._starting -= 1
                self._failures += 1
                self._failing_for += 1
                self._last_error = message
                waiter = self._next_waiter()
                delay = min(self._backoff[1], self._backoff[0] * 2 ** (self._failing_for - 1))
            if waiter is not None:
                waiter.set_exception(RuntimeError(f"{self.template.name} could not be started: {message}"))
            if not self._stopping.wait(delay):
                with self._lock:
                    self._top_up()
            return
        with self._lock:
            self._starting -= 1
            self._started += 1
            self._failing_for = 0
            if self._stopping.is_set():
                waiter, extra = None, tool
            else:
                waiter = self._next_waiter()
                extra = None
                if waiter is None:
                    if len(self._ready) < self.size:
                        self._ready.append(tool)
                    else:
                        extra = tool  # its taker went away and the pool is full
        if waiter is not None:
            waiter.set_result(tool)
        if extra is not None:
            self._put(_CLOSE, extra)

    def _next_waiter(self) -> Future | None:
        """(Lock held.) The first waiter still waiting, marked running so it cannot be cancelled."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.set_running_or_notify_cancel():
                return waiter
        return None

    def _build(self) -> Tool:
        tool = self.template.fork()
        try:
            tool.warm_up()
        except BaseException:
            tool.close()
            raise
        return tool
