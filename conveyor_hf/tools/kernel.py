"""One Jupyter kernel in a child process, driven by the one thread that owns its client.

:class:`KernelSession` starts an IPython kernel (``jupyter_client`` + ``ipykernel``) and
runs code in it. ``jupyter_client`` sockets are not thread-safe, so every kernel
operation (start, execute, interrupt, restart, shutdown) happens on one dedicated
daemon thread per session, fed through a queue; the public methods only enqueue a
request and wait for its result, so any thread may call them.

Guarantees: a unit of code never hangs its caller (a timeout interrupts the kernel and,
if it does not go idle within ``interrupt_grace`` seconds, kills and restarts it); a
kernel that dies is reported and replaced by a fresh one right away; output is capped
(head and tail kept) while it is being collected; the kernel's data segment is limited
with ``RLIMIT_DATA``; closing the session, or dropping it, kills the kernel's whole
process group.

Example::

    from conveyor_hf.tools.kernel import KernelSession

    with KernelSession() as kernel:
        kernel.execute("x = 6 * 7")
        print(kernel.execute("x").output)        # 42
        print(kernel.execute("1/0").error)       # ZeroDivisionError: division by zero
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

#: Seconds between two liveness checks of the kernel process while waiting for output.
_ALIVE_EVERY = 0.1
#: Seconds one wait for an iopub message may block before timeouts are re-checked.
_POLL = 0.05

#: The "(1234567.py, line 1)" IPython appends to a SyntaxError raised in a cell.
_CELL_LOCATION = re.compile(r" \(\d+\.py, line \d+\)$")
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences (colours, cursor moves)."""
    return _ANSI.sub("", text)


class CappedText:
    """A text sink that keeps at most ``limit`` characters: the head and the tail.

    Memory stays bounded however much is written, so a statement that prints gigabytes
    cannot exhaust the collector. ``limit=None`` keeps everything.

    >>> sink = CappedText(10)
    >>> sink.write("0123456789" * 3)
    >>> sink.getvalue()
    '01234\\n... [20 characters cut] ...\\n56789'
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.total = 0
        self._head: list[str] = []
        self._head_room = limit - limit // 2 if limit is not None else None
        self._tail: collections.deque[str] = collections.deque()
        self._tail_len = 0
        self._tail_limit = limit // 2 if limit is not None else 0

    def write(self, text: str) -> None:
        if not text:
            return
        self.total += len(text)
        if self._head_room is None:
            self._head.append(text)
            return
        if self._head_room > 0:
            taken = text[: self._head_room]
            self._head.append(taken)
            self._head_room -= len(taken)
            text = text[len(taken) :]
        if not text or self._tail_limit == 0:
            return
        if len(text) >= self._tail_limit:
            self._tail.clear()
            self._tail.append(text[-self._tail_limit :])
            self._tail_len = self._tail_limit
            return
        self._tail.append(text)
        self._tail_len += len(text)
        while self._tail_len > self._tail_limit:
            excess = self._tail_len - self._tail_limit
            first = self._tail[0]
            if len(first) <= excess:
                self._tail.popleft()
                self._tail_len -= len(first)
            else:
                self._tail[0] = first[excess:]
                self._tail_len -= excess

    @property
    def cut(self) -> int:
        """How many characters were dropped from the middle."""
        kept = sum(map(len, self._head)) + self._tail_len
        return self.total - kept

    def getvalue(self) -> str:
        head, tail = "".join(self._head), "".join(self._tail)
        cut = self.total - len(head) - len(tail)
        if cut <= 0:
            return head + tail
        before = "" if not head or head.endswith("\n") else "\n"
        return f"{head}{before}... [{cut} characters cut] ...\n{tail}"


@dataclass
class Execution:
    """What running one piece of code produced.

    ``output`` is stdout, stderr, displayed values (``text/plain``) and the formatted
    traceback, in the order they arrived, ANSI-free and capped. ``error`` is a one-line
    message (``ZeroDivisionError: division by zero``, a timeout, a dead kernel) or None.
    ``status`` is ``ok``, ``error``, ``timeout``, ``restarted`` (timed out and the kernel
    had to be restarted), ``died`` or ``closed``.
    """

    output: str = ""
    error: str | None = None
    status: str = "ok"
    duration: float = 0.0


class KernelError(RuntimeError):
    """The kernel could not be started."""


class SessionClosed(KernelError):
    """The session was closed; create a new one."""


# -- the worker: owns the KernelManager and client; lives on its own thread ----------


class _Worker:
    """The kernel's owner. Only its thread touches ``km`` and ``kc``."""

    def __init__(
        self,
        *,
        kernel_name: str,
        cwd: str,
        memory_limit_mb: int | None,
        startup_timeout: float,
        interrupt_grace: float,
        label: str,
    ) -> None:
        self.kernel_name = kernel_name
        self.cwd = cwd
        self.memory_limit_mb = memory_limit_mb
        self.startup_timeout = startup_timeout
        self.interrupt_grace = interrupt_grace
        self.requests: queue.Queue[tuple[str, tuple[Any, ...], concurrent.futures.Future]] = (
            queue.Queue()
        )
        self.closing = threading.Event()
        self.km: Any = None
        self.kc: Any = None
        self.pid: int | None = None
        self.pgid: int | None = None
        self.needs_restart = False
        self.thread = threading.Thread(
            target=self.loop, name=f"conveyor-{label}-kernel", daemon=True
        )
        self.thread.start()

    # -- request loop ----------------------------------------------------------------
    def submit(self, kind: str, *args: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self.closing.is_set() and kind != "close":
            future.set_exception(SessionClosed("the Python kernel session is closed"))
            return future
        self.requests.put((kind, args, future))
        return future

    def loop(self) -> None:
        try:
            while True:
                kind, args, future = self.requests.get()
                if kind == "close" or self.closing.is_set():
                    self.shutdown()
                    if kind == "close":
                        future.set_result(None)
                    else:
                        future.set_exception(SessionClosed("the Python kernel session is closed"))
                    self._fail_pending()
                    return
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    result = getattr(self, f"do_{kind}")(*args)
                except BaseException as exc:  # delivered to the caller, never lost
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                if self.needs_restart and not self.closing.is_set():
                    self._replace_quietly()
        finally:
            self.shutdown()
            self._close_event_loop()

    def _fail_pending(self) -> None:
        while True:
            try:
                _, _, future = self.requests.get_nowait()
            except queue.Empty:
                return
            if not future.done():
                future.set_exception(SessionClosed("the Python kernel session is closed"))

    @staticmethod
    def _close_event_loop() -> None:
        # jupyter_client's sync wrappers create one asyncio loop per thread; close ours.
        try:
            loop = asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:
            return
        if not loop.is_running():
            loop.close()

    # -- kernel life cycle -------------------------------------------------------------
    def do_ensure(self) -> int | None:
        self._ensure()
        return self.pid

    def do_restart(self) -> int | None:
        self.shutdown()
        self.start()
        return self.pid

    def _ensure(self) -> str:
        """Start the kernel if there is none or it died; returns a notice for the user."""
        if self.km is None:
            self.start()
            return ""
        if not self._alive():
            self.shutdown()
            self.start()
            return "[the Python kernel had died since the last run; it was restarted, state lost]\n"
        return ""

    def _replace_quietly(self) -> None:
        """Restart after a death or a hard timeout, so the next request finds a kernel."""
        self.needs_restart = False
        self.shutdown()
        try:
            self.start()
        except Exception:  # the next request retries and reports the failure
            self.shutdown()

    def start(self) -> None:
        """Launch a kernel, wait until it answers, configure it. Raises KernelError."""
        from jupyter_client.manager import KernelManager

        try:
            km = KernelManager(kernel_name=self.kernel_name)
            km.start_kernel(
                cwd=self.cwd,
                stdout=subprocess.DEVNULL,  # a quiet start: nothing on the user's terminal
                stderr=subprocess.DEVNULL,
                # History in memory: no sqlite file shared (and locked) by concurrent kernels.
                extra_arguments=["--HistoryManager.hist_file=:memory:"],
            )
            self.km = km
            self.pid = getattr(km.provisioner, "pid", None)
            self.pgid = getattr(km.provisioner, "pgid", None)
            self.kc = km.client()
            self.kc.start_channels()
            self.kc.wait_for_ready(timeout=self.startup_timeout)
            setup = self._run(
                self._setup_code(), timeout=self.startup_timeout, limit=2000, silent=True
            )
        except Exception as exc:
            self.shutdown()
            message = f"the Python kernel did not start: {type(exc).__name__}: {exc}"
            raise KernelError(message) from exc
        if setup.status != "ok":
            self.shutdown()
            raise KernelError(f"the Python kernel's setup failed: {setup.error}")

    def _setup_code(self) -> str:
        lines = [
            # Plain, Python-style tracebacks: short and familiar to a model.
            "get_ipython().run_line_magic('xmode', 'Plain')",
        ]
        if self.memory_limit_mb is not None:
            limit = int(self.memory_limit_mb) * 1024 * 1024
            lines += [
                "def _conveyor_limit(n):",
                "    import resource",
                "    hard = resource.getrlimit(resource.RLIMIT_DATA)[1]",
                "    if hard != resource.RLIM_INFINITY:",
                "        n = min(n, hard)",
                "    resource.setrlimit(resource.RLIMIT_DATA, (n, n))",
                f"_conveyor_limit({limit})",
                "del _conveyor_limit",
            ]
        return "\n".join(lines) + "\n"

    def shutdown(self) -> None:
        """Stop the channels and kill the kernel's process group. Never raises."""
        kc, km, pgid = self.kc, self.km, self.pgid
        self.kc = self.km = None
        self.needs_restart = False
        self.pid = self.pgid = None
        if kc is not None:
            try:
                kc.stop_channels()
            except Exception:
                pass
        if km is not None:
            try:
                km.shutdown_kernel(now=True)
            except Exception:
                pass
        # Whatever the kernel spawned lives in its process group: leave nothing behind.
        kill_group(pgid)

    def _alive(self) -> bool:
        try:
            return bool(self.km is not None and self.km.is_alive())
        except Exception:
            return False

    def _exit_description(self) -> str:
        code = None
        process = getattr(getattr(self.km, "provisioner", None), "process", None)
        if process is not None:
            code = process.poll()
        if code is None:
            return ""
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = ", e.g. out of memory" if -code == signal.SIGKILL else ""
            return f" (killed by {name}{hint})"
        return f" (exit code {code})"

    # -- execution ---------------------------------------------------------------------
    def do_execute(self, code: str, timeout: float | None, limit: int | None) -> Execution:
        notice = self._ensure()
        result = self._run(code, timeout=timeout, limit=limit, silent=False)
        if notice:
            result.output = notice + result.output
        return result

    def _drain_shell(self) -> None:
        while True:
            try:
                self.kc.get_shell_msg(timeout=0)
            except queue.Empty:
                return

    def _run(
        self, code: str, *, timeout: float | None, limit: int | None, silent: bool
    ) -> Execution:
        kc = self.kc
        self._drain_shell()
        msg_id = kc.execute(
            code, silent=silent, store_history=not silent, allow_stdin=False, stop_on_error=False
        )
        sink = CappedText(limit)
        error: str | None = None
        started = time.monotonic()
        deadline = started + timeout if timeout is not None else None
        interrupted_at: float | None = None
        next_alive_check = started + _ALIVE_EVERY

        def done(status: str, message: str | None) -> Execution:
            return Execution(sink.getvalue(), message, status, time.monotonic() - started)

        while True:
            if self.closing.is_set():
                return done("closed", "the Python tool was closed while this code ran")
            try:
                msg = kc.get_iopub_msg(timeout=_POLL)
            except queue.Empty:
                msg = None
            if msg is not None and msg.get("parent_header", {}).get("msg_id") == msg_id:
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    sink.write(strip_ansi(content.get("text", "")))
                elif kind in ("execute_result", "display_data"):
                    text = content.get("data", {}).get("text/plain")
                    if text:
                        sink.write(strip_ansi(text).rstrip("\n") + "\n")
                elif kind == "error":
                    lines = [strip_ansi(line).rstrip("\n") for line in content.get("traceback", [])]
                    sink.write("\n".join(lines).strip("\n") + "\n")
                    ename, evalue = content.get("ename", "Error"), content.get("evalue", "")
                    evalue = _CELL_LOCATION.sub("", evalue)  # IPython's internal cell file name
                    error = f"{ename}: {evalue}" if evalue else ename
                elif kind == "status" and content.get("execution_state") == "idle":
                    self._drain_shell()
                    if interrupted_at is not None:
                        return done(
                            "timeout",
                            f"TimeoutError: timed out after {timeout:g}s; the code was interrupted"
                            " (kernel state kept)",
                        )
                    return done("error" if error else "ok", error)
            now = time.monotonic()
            if now >= next_alive_check:
                next_alive_check = now + _ALIVE_EVERY
                if not self._alive():
                    how = self._exit_description()
                    self.needs_restart = True  # the loop restarts it right after replying
                    return done(
                        "died",
                        f"the Python kernel died{how} while running this code; restarted, state"
                        " lost (re-run imports and definitions)",
                    )
            if deadline is not None and interrupted_at is None and now >= deadline:
                interrupted_at = now
                try:
                    self.km.interrupt_kernel()
                except Exception:
                    interrupted_at = now - self.interrupt_grace  # cannot interrupt: restart
            if interrupted_at is not None and now - interrupted_at >= self.interrupt_grace:
                self.needs_restart = True  # the loop kills and restarts it right after replying
                return done(
                    "restarted",
                    f"TimeoutError: timed out after {timeout:g}s and did not stop when interrupted;"
                    " the Python kernel was restarted, state lost (re-run imports and definitions)",
                )


def kill_group(pgid: int | None) -> None:
    """SIGKILL a kernel's process group (the kernel and what it spawned). Never raises."""
    if pgid is None or pgid <= 1 or not hasattr(os, "killpg") or pgid == os.getpgrp():
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _close_worker(worker: _Worker, cleanup_dir: str | None, timeout: float) -> None:
    """Stop ``worker`` and its kernel; used by ``close()`` and by the finalizer."""
    worker.closing.set()
    if threading.current_thread() is worker.thread:
        worker.shutdown()  # called from the worker itself (e.g. a finalizer run by GC there)
        worker.submit("close")  # and let its loop end after the current request
    else:
        future = worker.submit("close")
        try:
            future.result(timeout=timeout)
        except Exception:
            pass
        worker.thread.join(timeout=1.0)
        if worker.thread.is_alive():  # stuck in a call into the kernel: kill it from here
            kill_group(worker.pgid)
    if cleanup_dir is not None:
        shutil.rmtree(cleanup_dir, ignore_errors=True)


# -- the public facade -------------------------------------------------------------------


class KernelSession:
    """One IPython kernel in a child process; methods may be called from any thread.

    Args:
      cwd: the kernel's working directory; default a fresh temporary directory that is
        removed on ``close()``. The directory survives kernel restarts.
      memory_limit_mb: limit of the kernel's data segment (``RLIMIT_DATA``: heap and
        private mappings, the memory code really allocates), set inside the kernel when it
        starts; an allocation past it raises ``MemoryError``. None: no limit.
      startup_timeout: seconds a kernel may take to start.
      interrupt_grace: seconds a timed-out unit has to stop after the interrupt before the
        kernel is killed and restarted.
      kernel_name: the Jupyter kernel spec to launch (``python3`` is this interpreter).
      start: start the kernel now, in the background.

    The kernel is killed (with its whole process group) by ``close()``, when the session
    is garbage-collected, or at interpreter exit, whichever comes first.
    """

    def __init__(
        self,
        *,
        cwd: str | os.PathLike[str] | None = None,
        memory_limit_mb: int | None = 2048,
        startup_timeout: float = 60.0,
        interrupt_grace: float = 2.0,
        kernel_name: str = "python3",
        start: bool = True,
        label: str = "python",
    ) -> None:
        if memory_limit_mb is not None and int(memory_limit_mb) <= 0:
            raise ValueError(
                f"memory_limit_mb must be a positive number of MiB or None, got {memory_limit_mb!r}"
            )
        if interrupt_grace < 0:
            raise ValueError(f"interrupt_grace must be >= 0 seconds, got {interrupt_grace!r}")
        owned_dir = None
        if cwd is None:
            owned_dir = tempfile.mkdtemp(prefix="conveyor-python-")
            cwd = owned_dir
        elif not os.path.isdir(cwd):
            raise ValueError(f"cwd={str(cwd)!r} is not an existing directory; create it first")
        self.cwd = os.fspath(cwd)
        self._worker = _Worker(
            kernel_name=kernel_name,
            cwd=self.cwd,
            memory_limit_mb=memory_limit_mb,
            startup_timeout=float(startup_timeout),
            interrupt_grace=float(interrupt_grace),
            label=label,
        )
        # The worker thread references only the worker, never this facade, so dropping the
        # last reference to the session (or to the tool holding it) runs this finalizer.
        self._finalizer = weakref.finalize(self, _close_worker, self._worker, owned_dir, 10.0)
        if start:
            self.start()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    @property
    def pid(self) -> int | None:
        """The kernel process id, or None while no kernel runs."""
        return self._worker.pid

    def start(self) -> concurrent.futures.Future:
        """Start the kernel in the background (no-op if it runs); returns a future."""
        return self._worker.submit("ensure")

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until a live kernel is ready, starting (or replacing) it if needed.

        Raises :class:`KernelError` if it cannot start or the session is closed.
        """
        self._worker.submit("ensure").result(timeout=timeout)

    def execute(
        self, code: str, *, timeout: float | None = 30.0, max_output_chars: int | None = 4000
    ) -> Execution:
        """Run ``code`` in the kernel and block until it is done, timed out or dead.

        Never raises for what the code does; a closed session gives ``status="closed"``.
        """
        future = self._worker.submit("execute", code, timeout, max_output_chars)
        try:
            return future.result()
        except SessionClosed as exc:
            return Execution("", str(exc), "closed")
        except KernelError as exc:  # could not start a kernel
            return Execution("", str(exc), "error")
        except Exception as exc:
            return Execution("", f"{type(exc).__name__}: {exc}", "error")

    def restart(self) -> None:
        """Kill the kernel and start a fresh one (all state is lost); blocks until ready."""
        self._worker.submit("restart").result()

    def close(self) -> None:
        """Kill the kernel and its process group; idempotent."""
        self._finalizer()

    def __enter__(self) -> "KernelSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"pid={self.pid}"
        return f"KernelSession({state}, cwd={self.cwd!r})"
