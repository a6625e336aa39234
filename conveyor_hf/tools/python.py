"""``PythonTool``: run the model's Python in a real Jupyter kernel, statement by statement.

One IPython kernel (``jupyter_client`` + ``ipykernel``) per conversation, in a child
process, so variables and imports persist across calls and rounds; ``fork()`` gives a
tool with its own kernel for another conversation. The kernel starts in the background
when the tool is built, so it is warm before the model writes its first statement. In
partial mode each top-level statement runs the moment the parser emits it, like a
notebook cell of one statement: its stdout, stderr, displayed value and traceback are
collected per statement, and the first failing statement skips the rest of the call.

Containment: by default (``sandbox="auto"``) the kernel runs in a namespace sandbox
(:mod:`conveyor_hf.tools.sandbox`: no network, read-only filesystem except its working
directory and a private ``/tmp``, own PID namespace, non-root, process, file-size and disk
limits) when the machine can provide one, and otherwise with a one-time warning naming
what to install. ``sandbox=True`` refuses to start without one, ``sandbox=False`` opts out.

Limits: ``timeout`` per statement (interrupt, then kill and restart if the statement
ignores the interrupt), ``max_output_chars`` per statement (head and tail kept, and most
of a flood never leaves the kernel), ``memory_limit_mb`` for the kernel's data segment.

Crash recovery: a kernel that dies (out of memory, a segfault, ``os._exit``, killed from
outside) or must be restarted after a timeout is replaced at once, and the statements of
this conversation that had run successfully are replayed into the new one
(``replay_on_restart``), so its variables, imports and functions come back; the error of
the statement that killed it tells the model so, and what was restored.

Example::

    from conveyor_hf.tools import PythonTool

    with PythonTool(timeout=10) as py:
        print(py.run("x = 6 * 7\\nprint('hi')\\nx\\n").output)   # hi / 42
        print(py.run("x / 0\\n").error)       # ZeroDivisionError: division by zero
        print(py.sandbox_description)          # sandbox: bubblewrap 0.8.0: no network ...
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from conveyor_hf.tools.base import SideEffect, Tool, UnitOutput
from conveyor_hf.tools.kernel import OUTPUT_GUARD_CHARS, KernelSession
from conveyor_hf.tools.priority import DEFAULT_NICENESS
from conveyor_hf.tools.sandbox import Sandbox, SandboxPolicy, resolve_sandbox
from parsers.unit import IncrementalParser, Unit


class PythonTool(Tool):
    """Runs Python code in a persistent IPython kernel, one top-level statement at a time.

    Args:
      timeout: seconds one statement may run; then it is interrupted (``KeyboardInterrupt``)
        and, if it does not stop within ``interrupt_grace`` seconds, the kernel is killed
        and restarted (state lost). The error says ``timed out after Ns``.
      max_output_chars: cap on one statement's output; the head and the tail are kept with a
        ``... [N characters cut] ...`` marker. None: no cap.
      memory_limit_mb: the kernel's memory limit in MiB (``RLIMIT_DATA``, set in the kernel
        when it starts: heap and private mappings, i.e. memory really allocated; unlike
        ``RLIMIT_AS`` it does not count address space merely reserved by thread stacks,
        malloc arenas or CUDA). Past it allocations raise ``MemoryError``. None: no limit.
      cwd: the kernel's working directory; default a fresh temporary directory per tool,
        removed by ``close()``.
      prestart: start the kernel now, in a background thread (default). Otherwise it starts
        when the first call opens (``warm_up``).
      interrupt_grace: seconds between the interrupt and the restart of a timed-out kernel.
      startup_timeout: seconds a kernel may take to start.
      kernel_name: the Jupyter kernel spec (``python3`` runs this interpreter).
      sandbox: ``"auto"`` (default: contained when this machine can, else a one-time
        warning), ``True`` (contained or :class:`~conveyor_hf.tools.sandbox.SandboxUnavailable`),
        ``False`` (the explicit opt-out: the code runs with your rights), or a
        :class:`~conveyor_hf.tools.sandbox.SandboxPolicy` with other limits (required).
      replay_on_restart: after the kernel died or was restarted, replay the statements that
        had run successfully, so the conversation's state comes back (default). False: a
        restart loses the state, and the error says so.
      niceness: the kernel's nice value (default 10, lower priority than decoding, which a
        CPU-bound kernel then slows less); None leaves it at this process's priority.

    Statements run through IPython, so ``%magics`` and ``!shell`` lines work, and a
    statement that is an expression shows its value, as in a notebook.
    """

    name: ClassVar[str] = "python"
    description: ClassVar[str] = (
        "Run Python code in a persistent Jupyter (IPython) kernel and see what it prints, the "
        "value of each top-level expression, and any traceback. Variables, imports and "
        "functions persist across calls in this conversation. Statements run one by one as "
        "they are written; execution stops at the first error. Each statement may run for at "
        "most the tool's timeout; long output is shortened."
    )
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "code": {
                "type": "string",
                "description": "Python source to execute (IPython syntax is accepted).",
            }
        },
        "required": ["code"],
    }
    side_effect: ClassVar[SideEffect] = SideEffect.STATEFUL
    fence_languages: ClassVar[tuple[str, ...]] = ("python", "py")
    stop_on_error: bool = True
    run_malformed: bool = True  # the kernel's SyntaxError is the clearest report
    max_concurrency: int = 1

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        max_output_chars: int | None = 4000,
        memory_limit_mb: int | None = 2048,
        cwd: str | os.PathLike[str] | None = None,
        prestart: bool = True,
        interrupt_grace: float = 2.0,
        startup_timeout: float = 60.0,
        kernel_name: str = "python3",
        sandbox: bool | str | SandboxPolicy | Sandbox = "auto",
        replay_on_restart: bool = True,
        niceness: int | None = DEFAULT_NICENESS,
    ) -> None:
        # fork() passes on the arguments as given; here the locals are exactly the parameters.
        self._arguments: dict[str, Any] = {name: value for name, value in locals().items() if name != "self"}
        if timeout is None or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if max_output_chars is not None and int(max_output_chars) < 2:
            raise ValueError(
                "max_output_chars must be at least 2 (or None for no cap), "
                f"got {max_output_chars!r}"
            )
        self.timeout = float(timeout)
        self.max_output_chars = None if max_output_chars is None else int(max_output_chars)
        #: The sandbox the kernel runs in, or None (opted out, or none available with "auto").
        self.sandbox: Sandbox | None = resolve_sandbox(sandbox, tool=type(self).__name__)
        self.replay_on_restart = bool(replay_on_restart)
        # Forks share the resolved sandbox: no second probe, no second warning.
        self._arguments["sandbox"] = self.sandbox if self.sandbox is not None else False
        guard = None if self.max_output_chars is None else max(OUTPUT_GUARD_CHARS, self.max_output_chars)
        self._session = KernelSession(
            cwd=cwd,
            memory_limit_mb=memory_limit_mb,
            startup_timeout=startup_timeout,
            interrupt_grace=interrupt_grace,
            kernel_name=kernel_name,
            start=prestart,
            label=self.name,
            sandbox=self.sandbox,
            replay_on_restart=self.replay_on_restart,
            output_guard_chars=guard,
            niceness=niceness,
        )

    # -- Tool interface --------------------------------------------------------------
    def make_parser(self) -> IncrementalParser:
        from parsers.python_statements import PythonStatementParser

        return PythonStatementParser()

    def warm_up(self) -> None:
        """Wait until the kernel is ready, starting (or replacing a dead) one if needed."""
        self._session.wait_ready()

    def code_of(self, unit: Unit) -> tuple[str, str | None]:
        """The code a unit carries, or an error sentence.

        A statement from the parser (or a plan's positional argument) is code; a JSON-call
        member must be the string ``code`` argument: any other member's text is JSON, which
        would otherwise run as Python and fail with an unrelated ``SyntaxError``.
        """
        if unit.key is not None and unit.key != "code":
            return "", (
                f"{self.name} got an unknown argument {unit.key!r}; its only argument is "
                "'code', e.g. {\"code\": \"print(6 * 7)\"}"
            )
        value = unit.argument if unit.key is None else unit.value  # "code": null is no code
        if not isinstance(value, str):
            return "", (
                f"the code argument of {self.name} must be a string, got "
                f"{type(value).__name__}; write it as {{\"code\": \"print(6 * 7)\"}}"
            )
        return value, None

    def execute(self, unit: Unit) -> UnitOutput:
        """Run one statement in the kernel; blocks until it is idle, timed out or dead."""
        code, error = self.code_of(unit)
        if error is not None:
            return UnitOutput("", error)
        if not code.strip():
            return UnitOutput()
        result = self._session.execute(
            code, timeout=self.timeout, max_output_chars=self.max_output_chars
        )
        if result.status == "closed" and self._session.closed:
            message = f"{self.name}: the tool is closed; create a new PythonTool"
            return UnitOutput(result.output, message)
        return UnitOutput(result.output, result.error)

    def fork(self) -> "PythonTool":
        """A new tool with the same settings and its own kernel (another conversation)."""
        return type(self)(**self._arguments)

    def close(self) -> None:
        """Kill the kernel (and anything it spawned); idempotent. Also runs on GC/exit."""
        self._session.close()

    # -- extras ----------------------------------------------------------------------
    def reset(self) -> None:
        """Restart the kernel: all variables and imports are lost. Blocks until ready."""
        self._session.restart()

    @property
    def kernel_pid(self) -> int | None:
        """The kernel's process id (None before it started or after ``close()``)."""
        return self._session.pid

    @property
    def cwd(self) -> str:
        """The kernel's working directory."""
        return self._session.cwd

    @property
    def sandbox_description(self) -> str:
        """One line: how this tool's kernel is contained."""
        if self.sandbox is None:
            return "sandbox: none, the kernel runs with your full rights"
        return self.sandbox.describe()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(timeout={self.timeout:g}, "
            f"max_output_chars={self.max_output_chars}, sandboxed={self.sandbox is not None}, "
            f"pid={self.kernel_pid})"
        )
