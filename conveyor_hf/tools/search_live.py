"""Live web search through ``ddgs`` (the maintained successor of ``duckduckgo-search``).

Polite and bounded by construction:

- a client-side rate limit (``min_interval`` seconds between request starts, shared by
  every thread of the backend);
- retries with exponential backoff; after ``retries + 1`` network errors in a row (from
  any queries) the backend fails fast for ``cooldown`` seconds instead of hammering a dead
  network, so a call of several queries with no network fails in about two seconds;
- an in-memory LRU cache: the same query twice sends one request;
- a hard overall bound per query (``deadline``): ddgs' own ``timeout`` bounds each HTTP
  request, but its engine pool can outlive it, so each attempt runs on a daemon thread
  that is abandoned when the deadline passes (the HTTP timeout then ends it);
- results trimmed for the re-prompt (title, url, snippet of ``snippet_chars``).

With no network, a query fails within seconds with ``web search unavailable: <reason>;
use SearchTool(backend='offline') ...`` — never a hang, never an empty success.
"""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

from conveyor_hf.text import shorten
from conveyor_hf.tools.search_backend import SearchError, SearchHit, SearchUnavailable

_OFFLINE_HINT = (
    "use SearchTool(backend='offline') for the embedded offline corpus, "
    "or check the network / proxy (DDGS_PROXY)"
)
_NETWORK_MARKERS = (
    "dns", "resolve", "connect", "network", "unreachable", "refused", "no route",
    "timed out", "timeout", "reset by peer", "name or service",
)


def default_client_factory(timeout: float) -> Callable[[], Any]:
    """A factory of ``DDGS`` clients; an actionable error when ``ddgs`` is missing."""
    try:
        from ddgs import DDGS
    except ImportError:
        try:
            from duckduckgo_search import DDGS  # the package's former name
        except ImportError:
            raise SearchUnavailable(
                "web search unavailable: the `ddgs` package is not installed; run "
                f"`pip install ddgs`, or {_OFFLINE_HINT}"
            ) from None
    per_request = max(1, int(round(timeout)))
    return lambda: DDGS(timeout=per_request)


class RateLimiter:
    """At most one request start every ``min_interval`` seconds, across threads.

    Each caller reserves the next free slot under a lock and sleeps outside it, so waiting
    callers do not block each other's bookkeeping. ``clock``/``sleep`` are injectable for
    tests.
    """

    def __init__(
        self,
        min_interval: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if min_interval < 0:
            raise ValueError(f"RateLimiter(min_interval={min_interval!r}) must be >= 0")
        self.min_interval = float(min_interval)
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")
        self._lock = threading.Lock()

    def acquire(self, deadline: float | None = None) -> bool:
        """Wait for a slot; False (and no slot taken) if it would start after ``deadline``."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            if deadline is not None and slot > deadline:
                return False
            self._next = slot + self.min_interval
        if slot > now:
            self._sleep(slot - now)
        return True


class _LRUCache:
    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[tuple[str, int], list[SearchHit]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> list[SearchHit] | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: tuple[str, int], value: list[SearchHit]) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)


def _is_network_error(message: str) -> bool:
    lowered = message.lower()
    return any(marker in lowered for marker in _NETWORK_MARKERS)


def _short_reason(exc: BaseException) -> str:
    message = str(exc) or type(exc).__name__
    if "dns" in message.lower():
        return "cannot resolve the search host (DNS error: is there an internet connection?)"
    return shorten(message, 200)


class LiveSearchBackend:
    """Web search through ``ddgs``: rate-limited, retried, cached and time-bounded.

    Args:
      min_interval: seconds between the starts of two requests (all threads together).
      retries: extra attempts after a failed one; waits ``backoff * 2**i`` (+ jitter).
      timeout: per-request HTTP timeout handed to ``DDGS(timeout=...)``.
      deadline: hard bound in seconds for one ``search`` call, waits and retries included.
      cooldown: after ``retries + 1`` network errors in a row, fail fast for this long.
      cache_size: queries kept in the LRU cache (0 disables it).
      snippet_chars: each hit's body is cut to this length.
      region, safesearch, ddgs_backend: passed to ``DDGS.text``.
      client_factory: zero-argument callable returning an object with
        ``text(query, max_results=..., **kw) -> list[dict]`` (``title``, ``href``, ``body``);
        default builds ``ddgs.DDGS``. Tests inject a fake here.
      clock, sleep: injectable time source (tests).
    """

    def __init__(
        self,
        *,
        min_interval: float = 1.0,
        retries: int = 2,
        backoff: float = 0.5,
        timeout: float = 5.0,
        deadline: float = 15.0,
        cooldown: float = 30.0,
        cache_size: int = 256,
        snippet_chars: int = 300,
        region: str = "us-en",
        safesearch: str = "moderate",
        ddgs_backend: str = "auto",
        client_factory: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if retries < 0 or backoff < 0 or timeout <= 0 or deadline <= 0:
            raise ValueError(
                "LiveSearchBackend needs retries >= 0, backoff >= 0, timeout > 0 and "
                f"deadline > 0 (got retries={retries}, backoff={backoff}, "
                f"timeout={timeout}, deadline={deadline})"
            )
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.timeout = float(timeout)
        self.deadline = float(deadline)
        self.cooldown = float(cooldown)
        self.snippet_chars = int(snippet_chars)
        self.region = region
        self.safesearch = safesearch
        self.ddgs_backend = ddgs_backend
        self.cache = _LRUCache(int(cache_size))
        #: Requests actually sent (cache hits and fast failures excluded).
        self.requests = 0
        self._factory = client_factory
        self._clock = clock
        self._sleep = sleep
        self._local = threading.local()
        self._lock = threading.Lock()
        self._down_until = float("-inf")
        self._failures = 0
        # Set while the network is considered down: wakes queries waiting for a slot.
        self._down = threading.Event()
        self.limiter = RateLimiter(min_interval, clock=clock, sleep=self._pause)
        self._down_reason = ""

    def warm_up(self) -> None:
        """Import ``ddgs`` now rather than on the first query."""
        self._client()

    def describe(self) -> str:
        return f"live web search (ddgs, backend={self.ddgs_backend!r})"

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            if self._factory is None:
                self._factory = default_client_factory(self.timeout)
            client = self._local.client = self._factory()
        return client

    # -- searching -------------------------------------------------------------------
    def search(self, query: str, max_results: int) -> list[SearchHit]:
        """Top ``max_results`` web results; raises :class:`SearchError` on failure."""
        key = (" ".join(query.split()).casefold(), int(max_results))
        cached = self.cache.get(key)
        if cached is not None:
            return list(cached)
        deadline = self._clock() + self.deadline
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            self._check_down()
            if not self.limiter.acquire(deadline):
                break
            self._check_down()
            try:
                raw = self._attempt(query, int(max_results), deadline)
            except _NoResults:
                self.cache.put(key, [])
                return []
            except SearchUnavailable:
                raise
            except Exception as exc:  # any client failure is retried, then reported
                last = exc
                if self._network_failure(exc):
                    break  # the network looks down: every query now fails fast
                if attempt < self.retries:
                    pause = self.backoff * 2**attempt * (1 + 0.25 * random.random())
                    if self._clock() + pause >= deadline:
                        break
                    self._pause(pause)
                continue
            with self._lock:
                self._failures = 0
            hits = [self._hit(item) for item in raw[: int(max_results)] if isinstance(item, dict)]
            self.cache.put(key, hits)
            return hits
        if last is None:
            raise SearchError(
                f"web search is busy: the rate limit ({self.limiter.min_interval:g}s between "
                f"requests) leaves no slot within {self.deadline:g}s; send fewer queries at once"
            )
        reason = _short_reason(last)
        if _is_network_error(str(last)):
            with self._lock:
                if self._down_until < self._clock():
                    self._down_until = self._clock() + self.cooldown
                    self._down_reason = reason
                    self._down.set()
        raise SearchUnavailable(f"web search unavailable: {reason}; {_OFFLINE_HINT}")

    def _pause(self, seconds: float) -> None:
        """Sleep, but wake up as soon as the network is declared down (real clock only)."""
        if self._sleep is time.sleep:
            self._down.wait(seconds)
        else:
            self._sleep(seconds)

    def _network_failure(self, exc: BaseException) -> bool:
        """Count a failed request; True once ``retries + 1`` network errors came in a row
        (from any queries), which opens the fail-fast window of ``cooldown`` seconds."""
        if not _is_network_error(str(exc)):
            return False
        with self._lock:
            self._failures += 1
            if self._failures <= self.retries:
                return False
            self._down_until = self._clock() + self.cooldown
            self._down_reason = _short_reason(exc)
            self._down.set()
            return True

    def _check_down(self) -> None:
        with self._lock:
            left = self._down_until - self._clock()
            reason = self._down_reason
            if left <= 0 and self._down.is_set():
                self._down.clear()
                self._failures = 0
        if left > 0:
            raise SearchUnavailable(
                f"web search unavailable: {reason} (not retried for another {left:.0f}s); "
                f"{_OFFLINE_HINT}"
            )

    def _attempt(self, query: str, max_results: int, deadline: float) -> list[dict]:
        """One request, abandoned (as a daemon thread) if it outlives ``deadline``."""
        outcome: list[tuple[bool, Any]] = []
        client = self._client()
        kwargs = {
            "max_results": max_results,
            "region": self.region,
            "safesearch": self.safesearch,
            "backend": self.ddgs_backend,
        }

        def request() -> None:
            try:
                outcome.append((True, client.text(query, **kwargs)))
            except BaseException as exc:  # handed to the waiting thread
                outcome.append((False, exc))

        with self._lock:
            self.requests += 1
        thread = threading.Thread(target=request, name="conveyor-ddgs", daemon=True)
        thread.start()
        thread.join(max(0.0, deadline - self._clock()))
        if not outcome:
            raise TimeoutError(f"no answer within {self.deadline:g}s (timed out)")
        ok, value = outcome[0]
        if ok:
            return list(value or [])
        if "no results found" in str(value).lower():
            raise _NoResults()
        raise value

    def _hit(self, item: dict) -> SearchHit:
        return SearchHit(
            title=shorten(str(item.get("title") or ""), 200, at_word=True),
            url=str(item.get("href") or item.get("url") or ""),
            snippet=shorten(str(item.get("body") or item.get("snippet") or ""), self.snippet_chars, at_word=True),
        )

    def __repr__(self) -> str:
        return f"LiveSearchBackend(min_interval={self.limiter.min_interval:g})"


class _NoResults(Exception):
    """ddgs reports an empty result as an exception; it is a success with no hits."""
