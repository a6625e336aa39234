"""``Admission``: how many requests run at once, how many wait, and when to say 429.

At most ``max_running`` requests hold a slot (decoding or running tools); up to
``max_queue`` more wait for one, first come first served; a request beyond that is
refused at once with :class:`QueueFull`, which carries a ``Retry-After`` estimate: the
requests ahead of it times the mean time recent requests held a slot, divided by the slots.
All methods run on the server's event loop (worker threads hand releases to it with
``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque


class QueueFull(Exception):
    """Every slot is taken and the queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int, running: int, queued: int) -> None:
        super().__init__(f"the server is at capacity ({running} requests running, {queued} queued); "
                         f"retry after {retry_after} s")
        self.retry_after = retry_after


class Admission:
    """A FIFO counting semaphore with a bounded wait queue (event-loop only)."""

    def __init__(self, max_running: int, max_queue: int, *, initial_latency: float = 5.0) -> None:
        if max_running < 1 or max_queue < 0:
            raise ValueError(f"max_running={max_running} must be >= 1 and max_queue={max_queue} >= 0")
        self.max_running = max_running
        self.max_queue = max_queue
        self.running = 0
        self._waiters: deque[asyncio.Future] = deque()
        self._mean_latency = initial_latency

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        return sum(1 for w in self._waiters if not w.done())

    async def acquire(self) -> None:
        """Take a slot, waiting in line if needed; :class:`QueueFull` if the line is full.
        Cancelling the wait (the client left) gives up the place, or the slot if granted."""
        if self.running < self.max_running and not self.queued:
            self.running += 1
            return
        if self.queued >= self.max_queue:
            raise QueueFull(self.retry_after(), self.running, self.queued)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # granted just as it was cancelled
                self.release()
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release(self) -> None:
        """Give a slot back: the next waiter in line gets it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; running stays the same
                return
        self.running -= 1

    def note_latency(self, seconds: float) -> None:
        """Feed how long a finished request held its slot into the Retry-After estimate."""
        self._mean_latency = 0.8 * self._mean_latency + 0.2 * seconds

    def retry_after(self) -> int:
        """Whole seconds until a slot is likely free for a new request (1 to 120)."""
        ahead = self.queued + 1
        return int(min(120, max(1, math.ceil(self._mean_latency * ahead / self.max_running))))
