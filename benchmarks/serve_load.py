"""Load test of ``conveyor-hf serve``: simulated users with Poisson arrivals, partial vs lazy side by side.

    python -m benchmarks.serve_load --users 1,2,4 --duration 60 --json serve.json --plot serve.png
    python -m benchmarks.serve_load --leak-check 200        # 200 requests, a third abandoned mid-answer

For each variant (engine × mode; default: the local engine in ``partial`` and ``lazy``
mode) the benchmark starts one server on a free loopback port (a child process, stopped by
its own process id at the end) and drives them one after the other at each load level,
alternating which goes first. A level is N simulated users: each sends a request at
Poisson arrival times (exponential gaps of mean ``--think`` seconds) but never has two in
flight, for ``--duration`` seconds; then the level drains. Every variant gets the same
request sequence (seeded per level and user). Requests are streamed chat completions
through the ``openai`` client, greedy, so partial and lazy decode the same text.

Workloads (``--search-share`` of the requests are search-like, the rest codegen):

- codegen: "Use Python to compute …" prompts; the model writes a ```python block that runs
  in a real kernel. Its statements take milliseconds, so each statement also waits
  ``--python-latency`` seconds (**emulated** tool work: a heavier computation or a remote
  sandbox round trip; labelled in the output and the JSON).
- search-like: "Search for …" prompts with the ``search`` tool on the offline corpus and an
  **emulated** ``--search-latency`` per query. The small default model mostly answers them
  with Python or plain text; the report counts which tools were really called.

Reported per variant and level: completed requests, 429s, errors, throughput (requests/s
and decoded tokens/s over the level's span), p50/p95 latency (request sent to last byte),
p50 time to first token, and mean tool and exposed-tool seconds per request from the
answer's ``conveyor`` timeline. ``reduction`` compares partial with lazy at the same level.
The plot draws p50 (solid) and p95 (dashed) latency against the number of users.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CODEGEN_PROMPTS = [
    "Use Python to compute the sum of the squares of the integers from 1 to 100, then tell me the result.",
    "Use Python to compute the factorial of 20, then tell me the result.",
    "Use Python to compute the sum of the cubes of the integers from 1 to 50, then tell me the result.",
    "Use Python to compute the average of the even numbers from 1 to 1000, then tell me the result.",
]
SEARCH_PROMPTS = [
    "Search for the height of Mount Everest, then tell me the answer.",
    "Search for who wrote Pride and Prejudice, then tell me the answer.",
    "Search for the capital of Australia, then tell me the answer.",
    "Search for the year the Eiffel Tower was completed, then tell me the answer.",
]
MODEL_NAME = "served"  # --served-model-name of the child servers


# -- the child server ---------------------------------------------------------------------


def child(argv: list[str]) -> int:
    """``serve_load child ...``: one server whose tools carry the emulated latencies."""
    parser = argparse.ArgumentParser(prog="serve_load child")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--engine", default="local")
    parser.add_argument("--mode", default="partial")
    parser.add_argument("--python-latency", type=float, default=0.0)
    parser.add_argument("--search-latency", type=float, default=0.0)
    parser.add_argument("--search", action="store_true")
    parser.add_argument("--max-concurrency", type=int, default=4)
    parser.add_argument("--max-queue", type=int, default=16)
    parser.add_argument("--kernel-pool", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    from conveyor_hf.server import ServerSettings, serve

    _exit_with_parent()

    tools: list[Any] = [EmulatedPythonTool(prestart=False, extra_latency=args.python_latency)]
    if args.search:
        from conveyor_hf.tools.search import SearchTool
        from conveyor_hf.tools.search_offline import OfflineSearchBackend

        tools.append(SearchTool(backend=OfflineSearchBackend(latency=args.search_latency)))
    settings = ServerSettings(port=args.port, engine=args.engine, mode=args.mode, tools=[t.name for t in tools],
                              max_concurrency=args.max_concurrency, max_queue=args.max_queue,
                              kernel_pool=args.kernel_pool, max_tokens=args.max_tokens, threads=args.threads,
                              served_model_name=MODEL_NAME)
    serve(settings, templates=tools)
    return 0


def _exit_with_parent() -> None:
    """Stop this server (gracefully: its kernels are closed) if the benchmark that
    started it dies without stopping it."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="serve-load-parent-watch", daemon=True).start()


@functools.lru_cache(maxsize=1)
def _emulated_python_class():
    from conveyor_hf.tools.python import PythonTool

    class _EmulatedPythonTool(PythonTool):
        """``PythonTool`` whose every statement also waits ``extra_latency`` seconds
        (emulated tool work, outside the GIL: the kernel itself stays real)."""

        def __init__(self, *, extra_latency: float = 0.0, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.extra_latency = float(extra_latency)

        def execute(self, unit):
            result = super().execute(unit)
            if unit.text.strip() and self.extra_latency > 0:
                time.sleep(self.extra_latency)
            return result

        def fork(self):
            tool = super().fork()
            tool.extra_latency = self.extra_latency
            return tool

    return _EmulatedPythonTool


def EmulatedPythonTool(**kwargs: Any):  # noqa: N802  (a class built on first use: no torch import at module load)
    return _emulated_python_class()(**kwargs)


class Server:
    """A child server on a free loopback port, stopped by its own process id."""

    def __init__(self, variant: "Variant", args: argparse.Namespace) -> None:
        self.variant = variant
        self.port = _free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "benchmarks.serve_load", "child", "--port", str(self.port),
                "--engine", variant.engine, "--mode", variant.mode, "--python-latency", str(args.python_latency),
                "--search-latency", str(args.search_latency), "--max-concurrency", str(args.max_concurrency),
                "--max-queue", str(args.max_queue), "--kernel-pool", str(args.kernel_pool),
                "--max-tokens", str(args.max_tokens), "--threads", str(args.threads)]
        if args.search_share > 0:
            argv.append("--search")
        self.log = Path(tempfile.mkstemp(prefix=f"serve-load-{variant.label.replace('/', '-')}-", suffix=".log")[1])
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
                                         start_new_session=True, cwd=Path(__file__).resolve().parents[1])
        self._wait_healthy(limit=300)

    def _wait_healthy(self, limit: float) -> None:
        import httpx

        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.variant.label}: the server exited:\n{self.tail()}")
            try:
                health = httpx.get(self.root + "/health", timeout=2)
                if health.status_code == 200:
                    self.health = health.json()
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.variant.label}: not healthy within {limit:g}s:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def metrics(self) -> dict[str, float]:
        import httpx

        values = {}
        for line in httpx.get(self.root + "/metrics", timeout=10).text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the load -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    engine: str
    mode: str

    @property
    def label(self) -> str:
        engine = self.engine if not self.engine.startswith("http") else "remote"
        return f"{engine}/{self.mode}"


@dataclass
class Sample:
    """One request as a simulated user saw it (seconds from the level's start)."""

    user: int
    index: int
    kind: str
    sent: float
    status: str = "ok"
    first_token: float | None = None
    done: float | None = None
    completion_tokens: int = 0
    tool: float = 0.0
    exposed_tool: float = 0.0
    tools_called: list[str] = field(default_factory=list)
    error: str | None = None


def request_plan(level: int, users: int, duration: float, think: float, search_share: float, seed: int,
                 max_per_user: int) -> list[list[tuple[float, str, str]]]:
    """Per user: (arrival offset, kind, prompt) for the arrivals within ``duration``, at
    most ``max_per_user`` — identical for every variant."""
    plans = []
    for user in range(users):
        rng = random.Random(f"{seed}:{level}:{user}")
        t, plan = rng.expovariate(1.0 / think), []
        while t < duration and len(plan) < max_per_user:
            kind = "search" if rng.random() < search_share else "codegen"
            prompt = rng.choice(SEARCH_PROMPTS if kind == "search" else CODEGEN_PROMPTS)
            plan.append((t, kind, prompt))
            t += rng.expovariate(1.0 / think)
        plans.append(plan)
    return plans


def run_level(server: Server, plans: list[list[tuple[float, str, str]]], max_tokens: int,
              timeout: float) -> tuple[list[Sample], float]:
    """Drive one level; returns the samples and the span (first send to last answer).
    Every planned request is sent (so every variant answers the same ones); a user that
    falls behind its arrivals sends the next as soon as its answer is in."""
    import openai

    client = openai.OpenAI(base_url=f"{server.root}/v1", api_key="none", max_retries=0, timeout=timeout)
    samples: list[Sample] = []
    lock = threading.Lock()
    start = time.perf_counter()

    def user(index: int, plan: list[tuple[float, str, str]]) -> None:
        for number, (offset, kind, prompt) in enumerate(plan):
            delay = start + offset - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sample = Sample(user=index, index=number, kind=kind,
                            sent=time.perf_counter() - start)
            _ask(client, prompt, max_tokens, sample, start)
            with lock:
                samples.append(sample)

    threads = [threading.Thread(target=user, args=(i, plan), daemon=True) for i, plan in enumerate(plans)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = [s.done for s in samples if s.done is not None]
    span = (max(done) - min(s.sent for s in samples)) if done else 0.0
    return samples, span


def _ask(client: Any, prompt: str, max_tokens: int, sample: Sample, start: float) -> None:
    import openai

    try:
        stream = client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, stream=True,
            stream_options={"include_usage": True})
        for chunk in stream:
            if not chunk.choices:
                sample.completion_tokens = chunk.usage.completion_tokens if chunk.usage else 0
                continue
            choice = chunk.choices[0]
            if choice.delta.content and sample.first_token is None:
                sample.first_token = time.perf_counter() - start
            extension = (chunk.model_extra or {}).get("conveyor")
            if extension:
                sample.tool = float(extension["summary"]["tool"])
                sample.exposed_tool = float(extension["summary"]["exposed_tool"])
                sample.tools_called = [call["tool"] for call in extension["calls"]]
        sample.done = time.perf_counter() - start
    except openai.RateLimitError:
        sample.status = "429"
    except (openai.APIError, OSError) as exc:
        sample.status, sample.error = "error", f"{type(exc).__name__}: {exc}"[:300]


def summarize(samples: list[Sample], span: float) -> dict[str, Any]:
    ok = [s for s in samples if s.status == "ok" and s.done is not None]
    latencies = sorted(s.done - s.sent for s in ok)
    ttfts = sorted(s.first_token - s.sent for s in ok if s.first_token is not None)
    tokens = sum(s.completion_tokens for s in ok)
    calls: dict[str, int] = {}
    for s in ok:
        for tool in s.tools_called:
            calls[tool] = calls.get(tool, 0) + 1
    return {
        "requests": len(samples), "completed": len(ok),
        "rejected_429": sum(s.status == "429" for s in samples), "errors": sum(s.status == "error" for s in samples),
        "span_s": span,
        "requests_per_s": len(ok) / span if span > 0 else 0.0,
        "tokens_per_s": tokens / span if span > 0 else 0.0,
        "p50_latency_s": _quantile(latencies, 0.5), "p95_latency_s": _quantile(latencies, 0.95),
        "p50_ttft_s": _quantile(ttfts, 0.5),
        "mean_tool_s": statistics.fmean([s.tool for s in ok]) if ok else math.nan,
        "mean_exposed_tool_s": statistics.fmean([s.exposed_tool for s in ok]) if ok else math.nan,
        "tool_calls": calls,
        "by_kind": {kind: len([s for s in ok if s.kind == kind]) for kind in ("codegen", "search")},
    }


def _quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile of sorted ``values`` (NaN when empty)."""
    if not values:
        return math.nan
    pos = (len(values) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return values[low] + (values[high] - values[low]) * (pos - low)


# -- the leak check ----------------------------------------------------------------------


def leak_check(server: Server, requests: int, concurrency: int, pool_size: int) -> dict[str, Any]:
    """``requests`` requests, every third abandoned once the model writes Python; then the
    server's kernels must be back to the pool size and its threads (OS threads, counted
    after a warm-up) to their resting count."""
    import openai
    import psutil

    from concurrent.futures import ThreadPoolExecutor

    process = psutil.Process(server.proc.pid)
    client = openai.OpenAI(base_url=f"{server.root}/v1", api_key="none", max_retries=0, timeout=300)

    def one(i: int) -> str:
        if i % 3 == 0:
            return _abandon(server.port, CODEGEN_PROMPTS[i % len(CODEGEN_PROMPTS)])
        prompt = ["Name a colour.", "Name a fruit.", "What is 2+2?", "Say hello."][i % 4]
        if i % 3 == 1:
            prompt = CODEGEN_PROMPTS[i % len(CODEGEN_PROMPTS)]
        answer = client.chat.completions.create(model=MODEL_NAME, max_tokens=48 if i % 3 == 1 else 6,
                                                messages=[{"role": "user", "content": prompt}])
        return "completed" if answer.choices[0].message.content else "empty"

    with ThreadPoolExecutor(concurrency) as pool:  # warm-up: native threads (torch, zmq) start on first use
        list(pool.map(one, range(2 * concurrency)))
    _wait_idle(server, pool_size)
    threads_before, kernels_before = process.num_threads(), len(_kernels(process))
    before = server.metrics()
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(one, range(requests)))
    elapsed = time.perf_counter() - started
    idle = _wait_idle(server, pool_size)
    deadline = time.monotonic() + 60  # threads of the last answers end a moment after them
    while time.monotonic() < deadline and not (process.num_threads() <= threads_before
                                               and len(_kernels(process)) == pool_size):
        time.sleep(0.2)
    threads_after = process.num_threads()
    kernels_after = len(_kernels(process))
    after = server.metrics()
    counted = ("conveyor_requests_total", "conveyor_kernel_pool_started", "conveyor_kernel_pool_closed")
    m = {k: after[k] - before.get(k, 0) for k in after if k.startswith(counted)}
    return {
        "requests": requests, "concurrency": concurrency, "seconds": elapsed,
        "outcomes": {k: outcomes.count(k) for k in sorted(set(outcomes))},
        "server_counts": {k.split('"')[1]: int(v) for k, v in m.items() if k.startswith("conveyor_requests_total")},
        "kernels_closed": int(m["conveyor_kernel_pool_closed"]),
        "kernels_started": int(m["conveyor_kernel_pool_started"]),
        "kernel_pool_size": pool_size, "kernels_before": kernels_before, "kernels_after": kernels_after,
        "threads_before": threads_before, "threads_after": threads_after, "idle": idle,
        "leak_free": idle and kernels_after == pool_size and threads_after <= threads_before,
    }


def _abandon(port: int, prompt: str) -> str:
    """Stream ``prompt`` over a raw socket and hang up once the answer is inside a Python call."""
    body = json.dumps({"model": MODEL_NAME, "stream": True, "max_tokens": 96,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=300) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        received = b""
        while b"def" not in received and b"[DONE]" not in received:
            data = sock.recv(4096)
            if not data:
                return "closed by server"
            received += data
    return "abandoned"


def _kernels(process: Any) -> list[int]:
    found = []
    for child in process.children(recursive=True):
        try:
            cmd = child.cmdline()
        except Exception:  # gone meanwhile
            continue
        if cmd and "python" in Path(cmd[0]).name and "ipykernel_launcher" in cmd:
            found.append(child.pid)
    return found


def _wait_idle(server: Server, pool_size: int, limit: float = 120.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        m = server.metrics()
        in_use = m["conveyor_kernel_pool_started"] - m["conveyor_kernel_pool_closed"] - m["conveyor_kernel_pool_ready"]
        if (m["conveyor_requests_in_flight"] == 0 and m["conveyor_queue_length"] == 0 and in_use == 0
                and m["conveyor_kernel_pool_ready"] == pool_size and m["conveyor_kernel_pool_starting"] == 0):
            return True
        time.sleep(0.2)
    return False


# -- report ---------------------------------------------------------------------------------


def print_table(results: list[dict[str, Any]], variants: list[Variant], runs: list[dict[str, Any]]) -> None:
    """The table of ``results`` (merged rows); ``runs`` (with samples) give the paired ratios."""
    head = (f"{'variant':18s} {'users':>5s} {'done':>5s} {'429':>4s} {'err':>4s} {'req/s':>6s} {'tok/s':>6s} "
            f"{'p50 s':>7s} {'p95 s':>7s} {'ttft50':>7s} {'tool s':>7s} {'exposed':>8s}  calls")
    print(head)
    print("-" * len(head))
    for row in results:
        s = row["summary"]
        print(f"{row['variant']:18s} {row['users']:5d} {s['completed']:5d} {s['rejected_429']:4d} {s['errors']:4d} "
              f"{s['requests_per_s']:6.3f} {s['tokens_per_s']:6.1f} {s['p50_latency_s']:7.2f} "
              f"{s['p95_latency_s']:7.2f} {s['p50_ttft_s']:7.2f} {s['mean_tool_s']:7.2f} "
              f"{s['mean_exposed_tool_s']:8.2f}  {s['tool_calls']}")
    modes = {v.mode for v in variants}
    if {"partial", "lazy"} <= modes:
        print("\nreduction = 1 - partial/lazy (same engine, same users):")
        for engine in dict.fromkeys(v.engine for v in variants):
            for users in sorted({r["users"] for r in results}):
                pick = {r["mode"]: r["summary"] for r in results if r["engine"] == engine and r["users"] == users}
                if "partial" in pick and "lazy" in pick:
                    p, lz = pick["partial"], pick["lazy"]
                    paired = _paired_ratio(runs, engine, users)
                    speed = (f"×{p['requests_per_s'] / lz['requests_per_s']:.2f}" if lz["requests_per_s"] else "n/a")
                    print(f"  {engine:10s} users {users}: p50 {_reduction(p['p50_latency_s'], lz['p50_latency_s'])}, "
                          f"p95 {_reduction(p['p95_latency_s'], lz['p95_latency_s'])}, throughput {speed}, "
                          f"exposed tool {lz['mean_exposed_tool_s']:.2f} → {p['mean_exposed_tool_s']:.2f} s, "
                          f"paired median partial/lazy {paired}")


def print_engine_comparison(results: list[dict[str, Any]]) -> None:
    """Continuous batching against one request at a time, same mode and users."""
    engines = list(dict.fromkeys(r["engine"] for r in results))
    if not {"continuous", "generate"} <= set(engines):
        return
    print("\ncontinuous batching vs one request at a time (continuous / generate, same mode and users):")
    for mode in dict.fromkeys(r["mode"] for r in results):
        for users in sorted({r["users"] for r in results}):
            pick = {r["engine"]: r["summary"] for r in results if r["mode"] == mode and r["users"] == users}
            if "continuous" in pick and "generate" in pick:
                c, g = pick["continuous"], pick["generate"]
                print(f"  {mode:8s} users {users}: p50 ×{_ratio(c['p50_latency_s'], g['p50_latency_s'])}, "
                      f"p95 ×{_ratio(c['p95_latency_s'], g['p95_latency_s'])}, "
                      f"throughput ×{_ratio(c['requests_per_s'], g['requests_per_s'])}, "
                      f"tokens/s ×{_ratio(c['tokens_per_s'], g['tokens_per_s'])}")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b and not math.isnan(a) and not math.isnan(b) else "n/a"


def _paired_ratio(results: list[dict[str, Any]], engine: str, users: int) -> str:
    """Median over the same requests (user, index, repeat) of partial latency / lazy latency."""
    def latencies(mode: str) -> dict[tuple, float]:
        return {(r.get("repeat", 0), s["user"], s["index"]): s["done"] - s["sent"]
                for r in results if r["engine"] == engine and r["users"] == users and r["mode"] == mode
                for s in r.get("samples", []) if s["status"] == "ok" and s["done"] is not None}

    partial, lazy = latencies("partial"), latencies("lazy")
    ratios = sorted(partial[k] / lazy[k] for k in partial.keys() & lazy.keys() if lazy[k] > 0)
    return f"{_quantile(ratios, 0.5):.3f} (n={len(ratios)})" if ratios else "n/a"


def _reduction(partial: float, lazy: float) -> str:
    return f"{1 - partial / lazy:+.1%}" if lazy and not math.isnan(lazy) and not math.isnan(partial) else "n/a"


def plot(results: list[dict[str, Any]], path: str, note: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label in dict.fromkeys(r["variant"] for r in results):
        rows = sorted((r for r in results if r["variant"] == label), key=lambda r: r["users"])
        users = [r["users"] for r in rows]
        line, = ax.plot(users, [r["summary"]["p50_latency_s"] for r in rows], marker="o", label=f"{label} p50")
        ax.plot(users, [r["summary"]["p95_latency_s"] for r in rows], marker="x", linestyle="--",
                color=line.get_color(), label=f"{label} p95")
    ax.set_xticks(sorted({r["users"] for r in results}))
    ax.set_xlabel("concurrent simulated users (Poisson arrivals)")
    ax.set_ylabel("request latency (s)")
    ax.set_title("conveyor-hf serve: latency against load")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, note, fontsize=6, alpha=0.7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["child"]:
        return child(argv[1:])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the servers
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__.split("\n")[0])
    parser.add_argument("--users", default="1,2,4", help="load levels: concurrent simulated users")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals per level and variant")
    parser.add_argument("--think", type=float, default=20.0, help="mean seconds between a user's arrivals")
    parser.add_argument("--max-per-user", type=int, default=3, help="requests per user and level at most")
    parser.add_argument("--search-share", type=float, default=0.5, help="fraction of search-like requests")
    parser.add_argument("--engines", default="local", help="comma-separated: local, generate, continuous or a URL")
    parser.add_argument("--modes", default="partial,lazy")
    parser.add_argument("--repeats", type=int, default=1, help="passes over the levels (order alternates)")
    parser.add_argument("--python-latency", type=float, default=0.5, help="emulated seconds added per statement")
    parser.add_argument("--search-latency", type=float, default=0.8, help="emulated seconds per search query")
    parser.add_argument("--max-concurrency", type=int, default=4)
    parser.add_argument("--max-queue", type=int, default=16)
    parser.add_argument("--kernel-pool", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one request may take")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--leak-check", type=int, default=0, metavar="N",
                        help="instead of the load levels: N requests, a third abandoned, then count leaks")
    parser.add_argument("--leak-concurrency", type=int, default=4)
    parser.add_argument("--json", default=None, help="write all results here")
    parser.add_argument("--plot", default="serve-load.png", help="latency-against-load PNG")
    args = parser.parse_args(argv)
    if not 0.0 <= args.search_share <= 1.0:
        parser.error("--search-share must be between 0 and 1")
    if args.duration <= 0 or args.duration > 1800 or args.think <= 0:
        parser.error("--duration must be in (0, 1800] seconds and --think above 0")
    levels = [int(u) for u in args.users.split(",") if u.strip()]
    if not levels or min(levels) < 1 or max(levels) > 64:
        parser.error("--users takes 1 to 64 users per level")

    if args.leak_check:
        server = Server(Variant(args.engines.split(",")[0], "partial"), args)
        try:
            report = leak_check(server, args.leak_check, args.leak_concurrency, args.kernel_pool)
        finally:
            server.stop()
        print(json.dumps(report, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps({"leak_check": report}, indent=2))
        return 0 if report["leak_free"] else 1

    variants = [Variant(engine, mode) for engine in args.engines.split(",") for mode in args.modes.split(",")]
    servers: dict[Variant, Server] = {}
    skipped: dict[str, str] = {}
    try:
        for variant in variants:
            try:
                servers[variant] = Server(variant, args)
                print(f"[{variant.label}] {servers[variant].health['engine_detail']}", file=sys.stderr)
            except RuntimeError as exc:
                skipped[variant.label] = str(exc).splitlines()[-1]
                print(f"[{variant.label}] skipped: {skipped[variant.label]}", file=sys.stderr)
        active = [v for v in variants if v in servers]
        results = []
        for repeat in range(args.repeats):
            for index, users in enumerate(levels):
                plans = request_plan(index, users, args.duration, args.think, args.search_share, args.seed + repeat,
                                     args.max_per_user)
                order = active if (index + repeat) % 2 == 0 else list(reversed(active))
                for variant in order:
                    samples, span = run_level(servers[variant], plans, args.max_tokens, args.timeout)
                    summary = summarize(samples, span)
                    results.append({"variant": variant.label, "engine": variant.engine, "mode": variant.mode,
                                    "users": users, "repeat": repeat, "summary": summary,
                                    "samples": [asdict(s) for s in samples]})
                    print(f"[{variant.label}] users {users}: {summary['completed']} done, "
                          f"p50 {summary['p50_latency_s']:.2f}s p95 {summary['p95_latency_s']:.2f}s", file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()
    merged = _merge_repeats(results)
    note = (f"{os.cpu_count()} CPUs · --threads {args.threads} · python +{args.python_latency:g}s/statement and "
            f"search {args.search_latency:g}s/query EMULATED · max_tokens {args.max_tokens} · think {args.think:g}s "
            f"· {args.duration:g}s per level")
    print_table(merged, [v for v in variants if v in servers], results)
    print_engine_comparison(merged)
    print(f"\n{note}")
    if skipped:
        print(f"skipped: {skipped}")
    if merged:
        print(f"plot: {plot(merged, args.plot, note)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "note": note, "skipped": skipped,
                                               "results": merged, "runs": results}, indent=2, default=str))
    return 0


def _merge_repeats(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant and level: the samples of every repeat together, with the
    spread of the per-repeat p50."""
    merged = []
    for key in dict.fromkeys((r["variant"], r["users"]) for r in results):
        rows = [r for r in results if (r["variant"], r["users"]) == key]
        samples = [Sample(**s) for r in rows for s in r["samples"]]
        summary = summarize(samples, sum(r["summary"]["span_s"] for r in rows))
        summary["p50_spread_s"] = [min(r["summary"]["p50_latency_s"] for r in rows),
                                   max(r["summary"]["p50_latency_s"] for r in rows)]
        merged.append({k: rows[0][k] for k in ("variant", "engine", "mode", "users")} | {"summary": summary})
    return merged


if __name__ == "__main__":
    raise SystemExit(main())
