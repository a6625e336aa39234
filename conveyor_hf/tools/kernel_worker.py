"""The thread that owns one Jupyter kernel, and what running code in it produced.

``jupyter_client`` sockets are not thread-safe, so every operation on a kernel (start,
execute, interrupt, restart, shutdown) happens on the one daemon thread of its
:class:`KernelWorker`, fed through a queue (:class:`~conveyor_hf.tools.kernel.KernelSession`
is the facade any thread may call). While code runs, that thread blocks on the kernel's
sockets, its process (a pidfd) and a wake-up pipe: it wakes for messages, for the kernel's
death, for ``close()`` or for a deadline, never on a timer.

It launches the kernel itself, so a sandboxed kernel's ``bwrap --die-with-parent`` ties the
kernel's life to this long-lived thread: the kernel dies with the session, and with this
process however it ends. A plain kernel (Linux) is launched under a small subreaper
(:func:`~conveyor_hf.tools.kernel_setup.subreaper_command`) with ``PR_SET_PDEATHSIG``
tied to this thread in the same way; every process orphaned below the kernel becomes the
subreaper's child, and it kills them all once the kernel has ended. Stopping a kernel
SIGKILLs its descendants (:func:`kill_descendants`), the kernel and its process group, so
nothing it started survives: not a child in a session of its own, nor, with the
subreaper, a double-forked daemon. What escapes: processes another service starts on the
code's behalf (systemd, cron, a container runtime), and, elsewhere than Linux, orphans.
The kernel runs at a lower CPU priority (:mod:`conveyor_hf.tools.priority`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

from conveyor_hf.text import shorten
from conveyor_hf.tools.capped_text import CappedText
from conveyor_hf.tools.kernel_setup import CUT_MIMETYPE, REAPED_MIMETYPE, setup_code, subreaper_command
from conveyor_hf.tools.priority import lower_priority
from conveyor_hf.tools.sandbox import Sandbox, contained_pid
from conveyor_hf.tools.workdir import Workdir, create_workdir

__all__ = [
    "Execution",
    "KernelError",
    "KernelWorker",
    "SessionClosed",
    "close_worker",
    "kill_descendants",
    "kill_group",
    "strip_ansi",
]

#: Seconds between two liveness checks of the kernel process while waiting for output,
#: used only where a process cannot be waited on directly (no pidfd).
_ALIVE_EVERY = 0.1
#: Seconds the subreaper of a plain kernel has, once the kernel is killed, to kill what is
#: left below it and exit, before it is killed itself.
_SUBREAPER_GRACE = 2.0
#: A plain kernel is launched under a subreaper (``PR_SET_CHILD_SUBREAPER`` is Linux's).
_USE_SUBREAPER = sys.platform.startswith("linux")
#: Most statements (and characters) remembered for replay after a kernel restart.
_REPLAY_MAX_STATEMENTS = 2000
_REPLAY_MAX_CHARS = 1_000_000

#: The "(1234567.py, line 1)" IPython appends to a SyntaxError raised in a cell.
_CELL_LOCATION = re.compile(r" \(\d+\.py, line \d+\)$")
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences (colours, cursor moves)."""
    return _ANSI.sub("", text)


@dataclass
class Execution:
    """What running one piece of code produced.

    ``output`` is stdout, stderr, displayed values (``text/plain``) and the formatted
    traceback, in the order they arrived, ANSI-free and capped. ``error`` is a one-line
    message (``ZeroDivisionError: division by zero``, a timeout, a dead kernel) or None.
    ``status`` is ``ok``, ``error``, ``timeout``, ``restarted`` (timed out and the kernel
    had to be restarted), ``died`` or ``closed``. After a restart ``restored`` says what
    the replay of the earlier statements brought back (None when nothing was replayed).
    """

    output: str = ""
    error: str | None = None
    status: str = "ok"
    duration: float = 0.0
    restored: str | None = None


class KernelError(RuntimeError):
    """The kernel could not be started."""


class SessionClosed(KernelError):
    """The session was closed; create a new one."""


#: Lists the user's variables after a replay (IPython's ``%who_ls``), one per line.
_NAMES_CODE = "print('\\n'.join(get_ipython().run_line_magic('who_ls', '')))\n"


@functools.lru_cache(maxsize=1)
def _wrapping_manager_class() -> type:
    """A ``KernelManager`` whose launch command goes through ``self.wrap_command``."""
    from jupyter_client.manager import KernelManager

    class WrappingKernelManager(KernelManager):
        wrap_command: Any = None

        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            command = super().format_kernel_cmd(extra_arguments)
            return self.wrap_command(command) if self.wrap_command is not None else command

    return WrappingKernelManager


# -- the worker: owns the KernelManager and client; lives on its own thread ----------


class KernelWorker:
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
        sandbox: Sandbox | None,
        replay_on_restart: bool,
        output_guard_chars: int | None,
        niceness: int | None,
    ) -> None:
        self.kernel_name = kernel_name
        self.cwd = cwd
        self.memory_limit_mb = memory_limit_mb
        self.startup_timeout = startup_timeout
        self.interrupt_grace = interrupt_grace
        self.sandbox = sandbox
        self.replay_on_restart = replay_on_restart
        self.output_guard_chars = output_guard_chars
        self.niceness = niceness
        self.requests: queue.Queue[tuple[str, tuple[Any, ...], concurrent.futures.Future]] = (
            queue.Queue()
        )
        self.closing = threading.Event()
        # A byte written here wakes the thread out of its wait on the kernel (close()).
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        self.wake_lock = threading.Lock()  # no write to the pipe once it is closed (fds get reused)
        self.wake_open = True
        self.km: Any = None
        self.kc: Any = None
        self.pid: int | None = None
        self.pgid: int | None = None
        self.launched_pid: int | None = None
        self.pidfd: int | None = None
        self.stderr: Any = None
        self.starts = 0
        self.runtime: Workdir | None = None
        self.needs_restart = False
        #: ``(code, timeout)`` of each statement that ran successfully, for replay.
        self.history: list[tuple[str, float | None]] = []
        self.history_chars = 0
        self.history_overflow = False
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

    def wake(self) -> None:
        with self.wake_lock:
            if not self.wake_open:
                return
            try:
                os.write(self.wake_write, b"x")
            except OSError:
                pass

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
            with self.wake_lock:
                self.wake_open = False
                for fd in (self.wake_read, self.wake_write):
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            if self.runtime is not None:
                self.runtime.close()
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
        self._forget_history()
        self.start()
        return self.pid

    def _ensure(self) -> str:
        """Start the kernel if there is none or it died; returns a notice for the user."""
        if self.km is None:
            self.start()
            return ""
        if not self._alive():
            how = self._exit_description()
            restored = self._restart_and_replay()
            return f"[the Python kernel had died{how} since the last run; it was restarted, {restored}]\n"
        return ""

    def _replace_quietly(self) -> None:
        """Restart after a failed replay, so the next request finds a kernel."""
        self.needs_restart = False
        self.shutdown()
        try:
            self.start()
        except Exception:  # the next request retries and reports the failure
            self.shutdown()

    def _forget_history(self) -> None:
        self.history.clear()
        self.history_chars = 0
        self.history_overflow = False

    def _remember(self, code: str, timeout: float | None) -> None:
        if self.history_overflow:
            return
        if len(self.history) >= _REPLAY_MAX_STATEMENTS or self.history_chars + len(code) > _REPLAY_MAX_CHARS:
            self.history_overflow = True
            return
        self.history.append((code, timeout))
        self.history_chars += len(code)

    def _restart_and_replay(self) -> str:
        """Replace a dead (or stuck) kernel and replay the history; says what was restored.

        Raises :class:`KernelError` if no new kernel starts.
        """
        self.shutdown()
        self.start()
        if not self.replay_on_restart:
            self._forget_history()
            return "state lost (re-run imports and definitions)"
        if self.history_overflow:
            self._forget_history()
            return (
                f"state lost (more than {_REPLAY_MAX_STATEMENTS} statements or "
                f"{_REPLAY_MAX_CHARS} characters ran before, too many to replay)"
            )
        if not self.history:
            return "nothing to restore (no statement had run successfully before)"
        failures: list[str] = []
        replayed = 0
        for code, timeout in self.history:
            result = self._run(code, timeout=timeout, limit=200, silent=False)
            if result.status in ("died", "restarted", "closed"):
                self._forget_history()
                self.needs_restart = result.status != "closed"
                return (
                    f"but replaying the earlier statements failed at {_first_line(code)!r} ({result.error}); "
                    "state lost (re-run imports and definitions)"
                )
            replayed += 1
            if result.status != "ok":
                failures.append(f"{_first_line(code)!r}: {result.error}")
        names = self._user_names()
        count = f"the {replayed} statement{'s' if replayed != 1 else ''} that had run successfully"
        what = f"{count} were replayed"
        if names:
            shown = ", ".join(names[:12]) + (", …" if len(names) > 12 else "")
            what += f" (state restored: {shown})"
        else:
            what += " (state restored)"
        if failures:
            what += f"; {len(failures)} of them failed this time: " + "; ".join(failures[:3])
        return what

    def _user_names(self) -> list[str]:
        result = self._run(_NAMES_CODE, timeout=self.startup_timeout, limit=4000, silent=True)
        if result.status != "ok":
            return []
        return [line for line in result.output.splitlines() if line.isidentifier()]

    def start(self) -> None:
        """Launch a kernel, wait until it answers, configure it. Raises KernelError."""
        self.starts += 1
        try:
            if self.runtime is None:
                # Connection file and Unix sockets; private, and visible inside the sandbox.
                self.runtime = (
                    self.sandbox.workdir(kind="kernel", quota=False)
                    if self.sandbox is not None
                    else create_workdir("kernel")
                )
            base = os.path.join(self.runtime.path, f"kernel{self.starts}")
            km = _wrapping_manager_class()(
                kernel_name=self.kernel_name, transport="ipc", ip=base, connection_file=base + ".json"
            )
            subreaper = self.sandbox is None and _USE_SUBREAPER
            self.stderr = tempfile.TemporaryFile()
            if self.sandbox is not None:
                sandbox, runtime = self.sandbox, self.runtime.path
                km.wrap_command = lambda command: sandbox.command(
                    command, cwd=self.cwd, writable=[runtime], die_with_parent=True, cpu_limit=False
                )
                # The kernel runs in a session of its own inside bwrap: Jupyter's SIGINT to
                # the launched process group would hit bwrap, so interrupts go as messages.
                km.kernel_spec.interrupt_mode = "message"
                km.write_connection_file()
                sandbox.give(km.connection_file)
            elif subreaper:
                niceness = self.niceness
                km.wrap_command = lambda command: subreaper_command(command, niceness=niceness)
            km.start_kernel(
                cwd=self.cwd,
                stdout=subprocess.DEVNULL,  # a quiet start: nothing on the user's terminal
                stderr=self.stderr,
                # History in memory: no sqlite file shared (and locked) by concurrent kernels.
                extra_arguments=["--HistoryManager.hist_file=:memory:"],
            )
            self.km = km
            self.launched_pid = getattr(km.provisioner, "pid", None)
            self.pid = self.launched_pid
            self.pgid = getattr(km.provisioner, "pgid", None)
            self.pidfd = _pidfd(self.launched_pid)
            lower_priority(self.launched_pid, self.niceness)  # a plain kernel: it starts at the lower priority
            self.kc = km.client()
            self.kc.start_channels()
            self.kc.wait_for_ready(timeout=self.startup_timeout)
            if self.sandbox is not None:
                self.pid = contained_pid(self.launched_pid, "ipykernel_launcher") or self.launched_pid
                lower_priority(self.pid, self.niceness)  # the kernel inside, in its own session
            elif subreaper:
                self.pid = _first_child(self.launched_pid) or self.launched_pid  # the kernel itself
            setup = self._run(
                self._setup_code(), timeout=self.startup_timeout, limit=2000, silent=True
            )
        except Exception as exc:
            detail = self._stderr_tail()
            self.shutdown()
            message = f"the Python kernel did not start: {type(exc).__name__}: {exc}{detail}"
            raise KernelError(message) from exc
        if setup.status != "ok":
            self.shutdown()
            raise KernelError(f"the Python kernel's setup failed: {setup.error}")

    def _setup_code(self) -> str:
        policy = self.sandbox.policy if self.sandbox is not None else None
        return setup_code(
            memory_bytes=None if self.memory_limit_mb is None else int(self.memory_limit_mb) << 20,
            guard_chars=self.output_guard_chars,
            reap_limit=policy.max_processes if policy is not None else None,
            cpu_seconds=policy.cpu_seconds if policy is not None else None,
        )

    def _stderr_tail(self) -> str:
        try:
            self.stderr.seek(0)
            text = self.stderr.read()[-4000:].decode(errors="replace")
        except (AttributeError, OSError, ValueError):
            return ""
        lines = [line for line in text.strip().splitlines() if line.strip()]
        return f" ({lines[-1][:300]})" if lines else ""

    def shutdown(self) -> None:
        """Stop the channels and kill the kernel with everything it started. Never raises.

        The kernel's descendants first (those in a session of their own are not in its
        process group), while the launched process still holds them together; then the
        launched process and its group. Sandboxed, the PID namespace ends with bwrap.
        """
        kc, km, pgid = self.kc, self.km, self.pgid
        self.kc = self.km = None
        self.needs_restart = False
        self.pid = self.pgid = self.launched_pid = None
        if kc is not None:
            try:
                kc.stop_channels()
            except Exception:
                pass
        process = _launched_process(km)
        if kill_descendants(process) and self.sandbox is None and _USE_SUBREAPER:
            # The subreaper kills what was orphaned meanwhile, then exits: let it finish.
            try:
                process.wait(timeout=_SUBREAPER_GRACE)
            except Exception:
                pass
        if km is not None:
            try:
                km.shutdown_kernel(now=True)
            except Exception:
                pass
        kill_group(pgid)
        if self.pidfd is not None:
            try:
                os.close(self.pidfd)
            except OSError:
                pass
            self.pidfd = None
        if self.stderr is not None:
            try:
                self.stderr.close()
            except OSError:
                pass
            self.stderr = None

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
        if self.sandbox is not None and code > 128:
            code = -(code - 128)  # bwrap exits with 128 + N when its program died of signal N
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
        if result.status == "ok":
            self._remember(code, timeout)
        elif result.status in ("died", "restarted"):
            result = self._recover(result)
        if notice:
            result.output = notice + result.output
        return result

    def _recover(self, result: Execution) -> Execution:
        """Restart after a death or a stuck timeout; the error says what was restored."""
        if result.status == "died":
            prefix = f"the Python kernel died{self._exit_description()} while running this code"
        else:
            prefix = result.error or "the Python kernel was restarted"
        try:
            restored = self._restart_and_replay()
        except KernelError as exc:
            self.shutdown()
            result.error = f"{prefix}; it could not be restarted: {exc}"
            return result
        joiner = "; it was restarted, " if result.status == "died" else ", "
        result.error = f"{prefix}{joiner}{restored}"
        result.restored = restored
        return result

    def _drain_shell(self) -> None:
        while True:
            try:
                self.kc.get_shell_msg(timeout=0)
            except queue.Empty:
                return

    def _wait(self, poller: Any, seconds: float | None) -> tuple[bool, bool]:
        """Block until iopub has a message, the kernel exits, close() wakes us, or ``seconds``.

        Returns ``(message_ready, process_event)``.
        """
        import zmq

        if self.pidfd is None:
            seconds = _ALIVE_EVERY if seconds is None else min(seconds, _ALIVE_EVERY)
        wait_ms = None if seconds is None else max(0, int(seconds * 1000) + 1)
        events = dict(poller.poll(wait_ms))
        message = bool(events.get(self.kc.iopub_channel.socket, 0) & zmq.POLLIN)
        if self.wake_read in events:
            try:
                while os.read(self.wake_read, 4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        died = self.pidfd in events if self.pidfd is not None else True
        return message, died

    def _run(
        self, code: str, *, timeout: float | None, limit: int | None, silent: bool
    ) -> Execution:
        import zmq

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
        poller = zmq.Poller()
        poller.register(kc.iopub_channel.socket, zmq.POLLIN)
        poller.register(self.wake_read, zmq.POLLIN)
        if self.pidfd is not None:
            poller.register(self.pidfd, zmq.POLLIN)

        def done(status: str, message: str | None) -> Execution:
            return Execution(sink.getvalue(), message, status, time.monotonic() - started)

        message_ready, process_event = True, False
        while True:
            if self.closing.is_set():
                return done("closed", "the Python tool was closed while this code ran")
            msg = None
            if message_ready:
                try:
                    msg = kc.get_iopub_msg(timeout=0)
                except queue.Empty:
                    msg = None
            if msg is not None:
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    sink.write(strip_ansi(content.get("text", "")))
                elif kind in ("execute_result", "display_data"):
                    data = content.get("data", {})
                    cut = data.get(CUT_MIMETYPE)
                    if isinstance(cut, dict):
                        sink.skip(int(cut.get("cut", 0)))
                    reaped = data.get(REAPED_MIMETYPE)
                    if isinstance(reaped, dict):
                        reap_error = (
                            f"ProcessLimitError: the code reached the sandbox's limit of {reaped.get('limit')} "
                            f"processes and threads; the {reaped.get('killed')} processes it left running were killed"
                        )
                        sink.write(reap_error + "\n")
                        error = error or reap_error
                    text = data.get("text/plain")
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
                continue  # read everything that is there before waiting again
            if process_event and not self._alive():
                return done("died", "the Python kernel died while running this code")
            now = time.monotonic()
            if deadline is not None and interrupted_at is None and now >= deadline:
                interrupted_at = now
                try:
                    self.km.interrupt_kernel()
                except Exception:
                    interrupted_at = now - self.interrupt_grace  # cannot interrupt: restart
            if interrupted_at is not None and now - interrupted_at >= self.interrupt_grace:
                return done(
                    "restarted",
                    f"TimeoutError: timed out after {timeout:g}s and did not stop when interrupted;"
                    " the Python kernel was restarted",
                )
            if interrupted_at is not None:
                wait = interrupted_at + self.interrupt_grace - now
            elif deadline is not None:
                wait = deadline - now
            else:
                wait = None
            message_ready, process_event = self._wait(poller, wait)


def _first_line(code: str) -> str:
    return shorten(code.strip().splitlines()[0], 60) if code.strip() else ""


def _pidfd(pid: int | None) -> int | None:
    """A file descriptor that becomes readable when process ``pid`` exits (Linux ≥ 5.3)."""
    if pid is None or not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _launched_process(km: Any) -> subprocess.Popen | None:
    """The process ``km`` launched (the kernel, its subreaper or its bwrap), or None."""
    process = getattr(getattr(km, "provisioner", None), "process", None)
    return process if isinstance(process, subprocess.Popen) else None


def _first_child(pid: int | None) -> int | None:
    """The oldest child of process ``pid`` (a subreaper's kernel), or None."""
    import psutil

    try:
        children = psutil.Process(pid).children()
        return min(children, key=lambda child: child.create_time()).pid if children else None
    except (psutil.Error, TypeError, ValueError):
        return None


def kill_descendants(process: subprocess.Popen | None) -> bool:
    """SIGKILL every descendant of ``process``, a child of this process. Never raises.

    Returns whether ``process`` was still running (only then are its descendants looked
    for: the pid of one that has been reaped may be another process's now). Processes a
    descendant forks while this runs are missed, unless ``process`` is a subreaper.
    """
    if process is None:
        return False
    try:
        if process.poll() is not None:
            return False
    except Exception:
        return False
    import psutil

    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        return True
    for descendant in descendants:
        try:
            descendant.kill()  # psutil makes sure the pid is still that process
        except psutil.Error:
            pass
    return True


def kill_group(pgid: int | None) -> None:
    """SIGKILL a kernel's process group (the kernel and what it spawned). Never raises."""
    if pgid is None or pgid <= 1 or not hasattr(os, "killpg") or pgid == os.getpgrp():
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def close_worker(worker: KernelWorker, cleanup: Workdir | None, timeout: float) -> None:
    """Stop ``worker`` and its kernel; used by ``close()`` and by the finalizer."""
    worker.closing.set()
    if threading.current_thread() is worker.thread:
        worker.shutdown()  # called from the worker itself (e.g. a finalizer run by GC there)
        worker.submit("close")  # and let its loop end after the current request
    else:
        future = worker.submit("close")
        worker.wake()
        try:
            future.result(timeout=timeout)
        except Exception:
            pass
        worker.thread.join(timeout=1.0)
        if worker.thread.is_alive():  # stuck in a call into the kernel: kill it from here
            kill_descendants(_launched_process(worker.km))
            kill_group(worker.pgid)
    if cleanup is not None:
        cleanup.close()
