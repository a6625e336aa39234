"""The ``search`` tool: one query per line, each sent the moment its line is complete.

Backends are small objects with one method, ``search(query, max_results) -> list[SearchHit]``
(the ``httpx`` transport pattern; :mod:`~conveyor_hf.tools.search_backend` defines it, with the
hit and error types). Two ship with the tool:

- :class:`~conveyor_hf.tools.search_live.LiveSearchBackend`: the live web through ``ddgs``,
  polite (rate limit), with retries, a cache and a hard time bound per query;
- :class:`~conveyor_hf.tools.search_offline.OfflineSearchBackend`: SQLite FTS5 (BM25) over a
  local document collection, by default ~10k Wikipedia summaries. It serves tests,
  benchmarks and machines with no internet; its ``latency`` option *emulates* a network
  round trip, and says so in :meth:`describe`.

``backend="auto"`` probes the network once (bounded, ~1.5 s) and picks live or offline.

Example::

    from conveyor_hf.tools import SearchTool

    tool = SearchTool(backend="offline")
    print(tool.run("Mariana Trench\\nMount Everest\\n").output)
"""

from __future__ import annotations

import re
import socket
import threading

from conveyor_hf.text import shorten
from conveyor_hf.tools.base import SideEffect, Tool, ToolResult, UnitOutput, UnitRecord
from conveyor_hf.tools.search_backend import SearchBackend, SearchError, SearchHit, SearchUnavailable
from conveyor_hf.tools.search_live import LiveSearchBackend
from conveyor_hf.tools.search_offline import OfflineSearchBackend
from parsers.lines import LineParser
from parsers.unit import Unit

#: Host the ``auto`` probe and the live backend talk to.
LIVE_PROBE_HOST = "html.duckduckgo.com"

__all__ = [
    "LiveSearchBackend",
    "OfflineSearchBackend",
    "SearchBackend",
    "SearchError",
    "SearchHit",
    "SearchTool",
    "SearchUnavailable",
    "network_available",
]


def network_available(
    host: str = LIVE_PROBE_HOST, port: int = 443, timeout: float = 1.5
) -> tuple[bool, str]:
    """Whether ``host:port`` answers a TCP connect; returns ``(ok, reason)``.

    Bounded by ``timeout`` in total, DNS included (``getaddrinfo`` cannot be given a
    timeout, so the probe runs on a daemon thread that is abandoned if it is late).
    Resolving the name matters: some sandboxes accept any TCP connect to a raw IP.
    """
    outcome: list[tuple[bool, str]] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append((True, f"{host}:{port} reachable"))
        except OSError as exc:
            outcome.append((False, f"cannot reach {host}:{port} ({type(exc).__name__}: {exc})"))

    thread = threading.Thread(target=probe, name="conveyor-search-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return False, f"no answer from {host}:{port} within {timeout:g}s"
    return outcome[0]


_LIST_MARKER = re.compile(r"^(?:[-*\u2022]\s+|\d{1,3}[.)]\s+)")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"


def clean_query(text: str, max_len: int = 300) -> str:
    """The query a model meant: list markers and surrounding quotes dropped, length capped."""
    query = " ".join(str(text).split())
    query = _LIST_MARKER.sub("", query)
    if len(query) >= 2 and query[0] in _QUOTES and query[-1] in _QUOTES:
        query = query[1:-1].strip()
    return query[:max_len]


class SearchTool(Tool):
    """Web or offline search; each line of the call is one query, run as soon as it ends.

    Args:
      backend: ``"auto"`` (live if the network answers a quick probe, else offline),
        ``"offline"``, ``"live"``, or any object with
        ``search(query, max_results) -> list[SearchHit]``.
      max_results: hits shown per query.
      max_chars: each hit's snippet is cut to this many characters for the re-prompt.
      max_concurrency: queries of one call that run in parallel.
      show_urls: print each hit's URL (when it has one) under its title.
    """

    name = "search"
    description = (
        "Search the web (or an offline encyclopedia) and return the top results. "
        "Write one query per line; several queries run in parallel."
    )
    parameters = {
        "type": "object",
        "properties": {
            "query": {
                "type": "string",
                "description": "What to look up, e.g. 'Mariana Trench depth'.",
            }
        },
        "required": ["query"],
    }
    side_effect = SideEffect.READ_ONLY

    def __init__(
        self,
        backend: str | SearchBackend = "auto",
        max_results: int = 3,
        max_chars: int = 300,
        *,
        max_concurrency: int = 4,
        show_urls: bool = True,
        timeout: float = 30.0,
    ) -> None:
        if isinstance(backend, str) and backend not in ("auto", "offline", "live"):
            raise ValueError(
                f"SearchTool(backend={backend!r}) is not a backend; use 'auto', 'offline', "
                "'live', or an object with a search(query, max_results) method"
            )
        if not isinstance(backend, str) and not callable(getattr(backend, "search", None)):
            raise TypeError(
                f"SearchTool(backend={backend!r}): a backend object needs a "
                "search(query: str, max_results: int) -> list[SearchHit] method"
            )
        if int(max_results) < 1:
            raise ValueError(f"SearchTool(max_results={max_results!r}) must be at least 1")
        if int(max_chars) < 20:
            raise ValueError(f"SearchTool(max_chars={max_chars!r}) must be at least 20")
        self._spec = backend
        self._backend: SearchBackend | None = None if isinstance(backend, str) else backend
        self._lock = threading.Lock()
        self.max_results = int(max_results)
        self.max_chars = int(max_chars)
        self.max_concurrency = int(max_concurrency)
        self.show_urls = show_urls
        self.timeout = float(timeout)
        #: Why ``auto`` picked the backend it did (None until it has picked).
        self.auto_reason: str | None = None

    # -- backend -------------------------------------------------------------------
    @property
    def backend(self) -> SearchBackend:
        """The backend in use; ``auto`` and named backends are created on first use."""
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = self._make_backend(str(self._spec))
        return self._backend

    def _make_backend(self, spec: str) -> SearchBackend:
        if spec == "offline":
            return OfflineSearchBackend()
        if spec == "live":
            return LiveSearchBackend()
        ok, reason = network_available()
        self.auto_reason = f"auto: {reason}"
        return LiveSearchBackend() if ok else OfflineSearchBackend()

    def describe(self) -> str:
        """One line saying which backend answers (and whether latency is emulated)."""
        describe = getattr(self.backend, "describe", None)
        text = describe() if callable(describe) else type(self.backend).__name__
        return f"{text} [{self.auto_reason}]" if self.auto_reason else text

    # -- Tool interface --------------------------------------------------------------
    def make_parser(self) -> LineParser:
        return LineParser()

    def warm_up(self) -> None:
        warm = getattr(self.backend, "warm_up", None)
        if callable(warm):
            warm()

    def close(self) -> None:
        backend = self._backend
        close = getattr(backend, "close", None)
        if callable(close):
            close()

    def query_of(self, unit: Unit) -> tuple[list[str], str | None]:
        """The query (or queries) a unit asks for, or an error sentence."""
        if unit.key is not None and unit.key != "query":
            return [], (
                f"search got an unknown argument {unit.key!r}; its only argument is "
                "'query', e.g. {\"query\": \"Mariana Trench\"}"
            )
        value = unit.argument
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            return [], (
                f"search query must be a string, got {value!r}; "
                "write it as {\"query\": \"Mariana Trench\"}"
            )
        queries = [q for q in (clean_query(v) for v in values) if q]
        if not queries:
            return [], f"search got an empty query ({value!r}); write what to look up"
        return queries, None

    def execute(self, unit: Unit) -> UnitOutput:
        queries, error = self.query_of(unit)
        if error is not None:
            return UnitOutput("", error)
        blocks, errors = [], []
        for query in queries:
            try:
                hits = self.backend.search(query, self.max_results)
            except SearchError as exc:
                errors.append(f'search "{query}" failed: {exc}')
                continue
            blocks.append(self.format_hits(query, hits[: self.max_results]))
        return UnitOutput("\n\n".join(blocks), "; ".join(errors) or None)

    def format_hits(self, query: str, hits: list[SearchHit]) -> str:
        """``[search: "q"]`` then numbered hits ``n. Title — snippet`` (URL below)."""
        lines = [f'[search: "{query}"]']
        if not hits:
            lines.append("no results")
        for n, hit in enumerate(hits, 1):
            snippet = shorten(hit.snippet, self.max_chars, at_word=True)
            title = shorten(hit.title, 120, at_word=True)
            lines.append(f"{n}. {title} \u2014 {snippet}" if snippet else f"{n}. {title}")
            if self.show_urls and hit.url:
                lines.append(f"   {hit.url}")
        return "\n".join(lines)

    def format_result(self, records: list[UnitRecord]) -> ToolResult:
        """One block per query, in the order the model wrote them, errors in place."""
        blocks = []
        for record in records:
            if record.output:
                blocks.append(record.output.rstrip("\n"))
            if record.error and not record.skipped:
                queries, _ = self.query_of(record.unit)
                head = f'[search: "{queries[0]}"]\n' if queries and not record.output else ""
                blocks.append(f"{head}error: {record.error}")
        return self.make_result(records, blocks)

    def __repr__(self) -> str:
        spec = self._spec if isinstance(self._spec, str) else type(self._spec).__name__
        return f"SearchTool(backend={spec!r}, max_results={self.max_results})"
