"""``KernelSession``: one Jupyter kernel in a child process, callable from any thread.

:class:`KernelSession` starts an IPython kernel (``jupyter_client`` + ``ipykernel``) and
runs code in it. ``jupyter_client`` sockets are not thread-safe, so every kernel
operation happens on the one thread of the session's
:class:`~conveyor_hf.tools.kernel_worker.KernelWorker`; the public methods only enqueue a
request and wait for its result, so any thread may call them.

Guarantees: a unit of code never hangs its caller (a timeout interrupts the kernel and,
if it does not go idle within ``interrupt_grace`` seconds, kills and restarts it); a
kernel that dies is reported and replaced by a fresh one right away, into which the
statements that had run successfully are replayed (``replay_on_restart``) so the
conversation's state survives; output is capped (head and tail kept) in the kernel
itself and again while it is collected, so a flood of output costs this process
nothing; the kernel's data segment is limited with ``RLIMIT_DATA``; the kernel runs at
a lower CPU priority than decoding (``niceness``); closing the session, dropping it, or
this process's death kills the kernel and everything it started, and closing removes its
directories (:mod:`conveyor_hf.tools.workdir` sweeps those a killed process left).
"Everything it started" includes processes in a session of their own and, sandboxed or
on Linux, daemons that double-forked (a PID namespace, or a subreaper the kernel is
launched under: :mod:`conveyor_hf.tools.kernel_worker`); not what the code has another
service (systemd, cron, a container runtime) start for it.

With a :class:`~conveyor_hf.tools.sandbox.Sandbox` the kernel runs contained (no
network, read-only filesystem except its working directory, own PID namespace,
non-root, process limits): it talks to this process over Unix sockets in a private
runtime directory (``transport="ipc"``; TCP would not cross the network namespace), is
interrupted by message, and has a process-limit reaper and an optional CPU limit per
statement.

Example::

    from conveyor_hf.tools.kernel import KernelSession

    with KernelSession() as kernel:
        kernel.execute("x = 6 * 7")
        print(kernel.execute("x").output)        # 42
        print(kernel.execute("1/0").error)       # ZeroDivisionError: division by zero
"""

from __future__ import annotations

import concurrent.futures
import os
import weakref

from conveyor_hf.tools.capped_text import CappedText
from conveyor_hf.tools.kernel_setup import OUTPUT_GUARD_CHARS
from conveyor_hf.tools.kernel_worker import (
    Execution,
    KernelError,
    KernelWorker,
    SessionClosed,
    close_worker,
    strip_ansi,
)
from conveyor_hf.tools.priority import DEFAULT_NICENESS, check_niceness
from conveyor_hf.tools.sandbox import Sandbox
from conveyor_hf.tools.workdir import Workdir, create_workdir

#: ``CappedText`` and ``strip_ansi`` stay importable from here, where they used to live.
__all__ = [
    "OUTPUT_GUARD_CHARS",
    "CappedText",
    "Execution",
    "KernelError",
    "KernelSession",
    "SessionClosed",
    "strip_ansi",
]


class KernelSession:
    """One IPython kernel in a child process; methods may be called from any thread.

    Args:
      cwd: the kernel's working directory; default a fresh temporary directory that is
        removed on ``close()`` (sandboxed as root: a tmpfs of the policy's ``disk_mb``).
        The directory survives kernel restarts.
      memory_limit_mb: limit of the kernel's data segment (``RLIMIT_DATA``: heap and
        private mappings, the memory code really allocates), set inside the kernel when it
        starts; an allocation past it raises ``MemoryError``. None: no limit.
      startup_timeout: seconds a kernel may take to start.
      interrupt_grace: seconds a timed-out unit has to stop after the interrupt before the
        kernel is killed and restarted.
      kernel_name: the Jupyter kernel spec to launch (``python3`` is this interpreter).
      start: start the kernel now, in the background.
      sandbox: a :class:`~conveyor_hf.tools.sandbox.Sandbox` to contain the kernel in, or None.
      replay_on_restart: after a kernel died or had to be restarted, run the statements that
        had succeeded before again, so variables, imports and definitions come back.
      output_guard_chars: characters of output the kernel sends per statement at most, head
        and tail each (the rest is counted, not sent). None: no guard.
      niceness: the kernel's nice value, 0 to 19, set on its threads and its session's
        autogroup when it starts (:mod:`conveyor_hf.tools.priority`), so that CPU-bound
        code slows decoding less. None: the priority of this process.

    The kernel is killed (with its process group and every process below it) by
    ``close()``, when the session is garbage-collected, or at interpreter exit, whichever
    comes first.
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
        sandbox: Sandbox | None = None,
        replay_on_restart: bool = True,
        output_guard_chars: int | None = OUTPUT_GUARD_CHARS,
        niceness: int | None = DEFAULT_NICENESS,
    ) -> None:
        if memory_limit_mb is not None and int(memory_limit_mb) <= 0:
            raise ValueError(
                f"memory_limit_mb must be a positive number of MiB or None, got {memory_limit_mb!r}"
            )
        if interrupt_grace < 0:
            raise ValueError(f"interrupt_grace must be >= 0 seconds, got {interrupt_grace!r}")
        if output_guard_chars is not None and int(output_guard_chars) < 1:
            raise ValueError(f"output_guard_chars must be a positive number or None, got {output_guard_chars!r}")
        niceness = check_niceness(niceness, owner=type(self).__name__)
        if cwd is not None and not os.path.isdir(cwd):
            raise ValueError(f"cwd={str(cwd)!r} is not an existing directory; create it first")
        if sandbox is not None:
            workdir = sandbox.workdir(cwd, kind="python")
        elif cwd is None:
            workdir = create_workdir("python")
        else:
            workdir = Workdir(os.fspath(cwd), owned=False, mounted=False)
        self.cwd = workdir.path
        self.sandbox = sandbox
        self._worker = KernelWorker(
            kernel_name=kernel_name,
            cwd=self.cwd,
            memory_limit_mb=memory_limit_mb,
            startup_timeout=float(startup_timeout),
            interrupt_grace=float(interrupt_grace),
            label=label,
            sandbox=sandbox,
            replay_on_restart=replay_on_restart,
            output_guard_chars=None if output_guard_chars is None else int(output_guard_chars),
            niceness=niceness,
        )
        # The worker thread references only the worker, never this facade, so dropping the
        # last reference to the session (or to the tool holding it) runs this finalizer.
        self._finalizer = weakref.finalize(self, close_worker, self._worker, workdir, 10.0)
        if start:
            self.start()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    @property
    def pid(self) -> int | None:
        """The kernel process id, or None while no kernel runs."""
        return self._worker.pid

    @property
    def starts(self) -> int:
        """How many kernels this session has started (1 + restarts)."""
        return self._worker.starts

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
        """Kill the kernel and everything it started; idempotent."""
        self._finalizer()

    def __enter__(self) -> "KernelSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"pid={self.pid}"
        return f"KernelSession({state}, cwd={self.cwd!r})"
