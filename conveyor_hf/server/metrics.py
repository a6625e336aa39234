"""``ServerMetrics``: what ``GET /metrics`` reports, in the Prometheus text format (0.0.4).

Counters accumulate over the server's life (requests by outcome, tool units run, tool
and exposed tool seconds, decoded tokens); the request latency is a histogram; gauges
that describe the present (requests running and queued, kernels ready) are read from
their owners when the page is scraped. ``conveyor_tokens_per_second`` is the decoded
tokens of the requests that finished in the last ``window`` seconds, divided by it; a
Prometheus server computes finer rates from ``conveyor_decoded_tokens_total``.

The format is small enough to write directly (``# HELP``, ``# TYPE``, one sample per
line), so the server needs no metrics client library.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Mapping

#: Request outcomes counted by ``conveyor_requests_total{outcome=...}``.
OUTCOMES = ("completed", "disconnected", "rejected", "invalid", "failed")

#: Upper bounds (seconds) of the latency histogram's buckets.
LATENCY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class ServerMetrics:
    """Thread-safe counters of a running server; :meth:`render` writes the exposition text."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self._lock = threading.Lock()
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.tool_units = 0
        self.tool_seconds = 0.0
        self.exposed_tool_seconds = 0.0
        self.decoded_tokens = 0
        self._bucket_counts = [0] * len(LATENCY_BUCKETS)
        self._latency_sum = 0.0
        self._latency_count = 0
        self._recent: deque[tuple[float, int]] = deque()

    def count(self, outcome: str) -> None:
        """One more request that ended with ``outcome`` (one of :data:`OUTCOMES`)."""
        with self._lock:
            self.outcomes[outcome] += 1

    def record_answer(self, summary: Mapping[str, float], latency: float) -> None:
        """A finished answer: its timeline summary and its latency as the client saw it."""
        tokens = int(summary.get("new_tokens", 0))
        now = time.monotonic()
        with self._lock:
            self.tool_units += int(summary.get("units", 0))
            self.tool_seconds += float(summary.get("tool", 0.0))
            self.exposed_tool_seconds += float(summary.get("exposed_tool", 0.0))
            self.decoded_tokens += tokens
            for i, bound in enumerate(LATENCY_BUCKETS):
                if latency <= bound:
                    self._bucket_counts[i] += 1
            self._latency_sum += latency
            self._latency_count += 1
            self._recent.append((now, tokens))
            self._forget(now)

    def tokens_per_second(self) -> float:
        """Decoded tokens of requests finished in the last ``window`` seconds, per second."""
        with self._lock:
            self._forget(time.monotonic())
            return sum(tokens for _, tokens in self._recent) / self.window

    def render(self, gauges: Mapping[str, tuple[str, float]]) -> str:
        """The exposition text; ``gauges`` maps a metric name to ``(help, value)``."""
        rate = self.tokens_per_second()
        lines: list[str] = []
        with self._lock:
            _family(lines, "conveyor_requests_total", "counter", "Chat completion requests by how they ended.",
                    [(f'{{outcome="{k}"}}', v) for k, v in self.outcomes.items()])
            _family(lines, "conveyor_tool_units_total", "counter", "Tool units (statements, queries, ...) run.",
                    [("", self.tool_units)])
            _family(lines, "conveyor_tool_seconds_total", "counter", "Seconds tools were busy.",
                    [("", self.tool_seconds)])
            _family(lines, "conveyor_exposed_tool_seconds_total", "counter",
                    "Seconds of tool work during which no decoding ran (what users waited for tools).",
                    [("", self.exposed_tool_seconds)])
            _family(lines, "conveyor_decoded_tokens_total", "counter", "Tokens the model decoded.",
                    [("", self.decoded_tokens)])
            buckets = [(f'_bucket{{le="{bound:g}"}}', n) for bound, n in zip(LATENCY_BUCKETS, self._bucket_counts)]
            buckets += [('_bucket{le="+Inf"}', self._latency_count), ("_sum", self._latency_sum),
                        ("_count", self._latency_count)]
            _family(lines, "conveyor_request_latency_seconds", "histogram",
                    "Latency of answered requests, from arrival (queueing included) to the complete answer.", buckets)
        _family(lines, "conveyor_tokens_per_second", "gauge",
                f"Decoded tokens per second over the last {self.window:g} s.", [("", rate)])
        for name, (text, value) in gauges.items():
            _family(lines, name, "gauge", text, [("", value)])
        return "\n".join(lines) + "\n"

    def _forget(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - self.window:
            self._recent.popleft()


def _family(lines: list[str], name: str, kind: str, text: str, samples: list[tuple[str, float]]) -> None:
    lines.append(f"# HELP {name} {text}")
    lines.append(f"# TYPE {name} {kind}")
    for suffix, value in samples:
        lines.append(f"{name}{suffix} {_number(value)}")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
