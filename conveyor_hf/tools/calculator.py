"""The ``calculator`` tool: exact arithmetic with sympy, one expression per line.

Model text is never handed to ``eval``, ``exec``, ``sympify`` or ``parse_expr``. Each
expression is parsed with ``ast`` and checked against an allow-list and static size limits
(:mod:`conveyor_hf.tools.calc_policy` documents what is allowed); refusals are immediate and
name the offending construct. What passes is evaluated in a persistent child process, which
validates it again with the same code, builds sympy objects node by node, and runs under a
memory limit (``RLIMIT_AS``). The parent waits ``time_limit`` seconds for the answer, then
kills the child and starts a fresh one, so nothing that slips past the static limits
(``binomial(10**9, 10**8)``) can hang or exhaust the conversation. The child runs in the same
namespace sandbox as the Python kernel (:mod:`conveyor_hf.tools.sandbox`; ``sandbox="auto"``
by default): no network, nothing writable, nothing of the host's home visible, non-root.

Results are exact, with a numeric value when it says something new::

    >>> CalculatorTool().run("sqrt(8)\\n1/3 + 1/6\\n").output
    'sqrt(8) = 2*sqrt(2) ≈ 2.82842712474619\\n1/3 + 1/6 = 1/2 ≈ 0.5'
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import asdict
from pathlib import Path
from typing import Any

from conveyor_hf.tools.base import SideEffect, Tool, UnitOutput
from conveyor_hf.tools.calc_policy import CalcError, Limits, normalize, validate
from conveyor_hf.tools.priority import DEFAULT_NICENESS, check_niceness, lower_priority
from conveyor_hf.tools.sandbox import Sandbox, SandboxPolicy, contained_pid, kill_sandbox, resolve_sandbox
from parsers.lines import LineParser
from parsers.unit import Unit

#: The ``conveyor_hf`` package directory: the child reads its modules from there.
PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: The child's program (``python -c BOOT PACKAGE_DIR``). It drops the current directory from
#: ``sys.path`` (no shadowing) and puts stand-ins for the two packages in ``sys.modules``, so
#: that importing :mod:`conveyor_hf.tools.calc_worker` runs no package ``__init__``: the child
#: holds the calculator's modules, :mod:`conveyor_hf.text`, the standard library and sympy.
BOOT = (
    "import sys, types\n"
    "sys.path[:] = [p for p in sys.path if p not in ('', '.')]\n"
    "for name, path in (('conveyor_hf', sys.argv[1]), ('conveyor_hf.tools', sys.argv[1] + '/tools')):\n"
    "    sys.modules[name] = types.ModuleType(name)\n"
    "    sys.modules[name].__path__ = [path]\n"
    "from conveyor_hf.tools.calc_worker import main\n"
    "main()\n"
)
#: What the child's command line contains (how its pid is found inside a sandbox).
_MARKER = "conveyor_hf.tools.calc_worker"


class CalcWorker:
    """A persistent child process that evaluates validated expressions.

    One request at a time (a lock); a request that outlives ``time_limit`` gets the child
    killed and a new one started. The child dies when this process goes away, even in the
    middle of an evaluation (:func:`~conveyor_hf.tools.calc_worker.exit_with_parent`). With
    a ``sandbox`` the child runs contained; killing it kills its whole sandbox (the child has
    a process group of its own). It runs at nice ``niceness``
    (:mod:`conveyor_hf.tools.priority`; None: this process's priority).
    """

    def __init__(
        self,
        limits: Limits,
        *,
        time_limit: float = 2.0,
        memory_limit: int = 1 << 30,
        start_timeout: float = 60.0,
        sandbox: Sandbox | None = None,
        niceness: int | None = DEFAULT_NICENESS,
    ) -> None:
        self.limits = limits
        self.sandbox = sandbox
        self.time_limit = float(time_limit)
        self.memory_limit = int(memory_limit)
        self.start_timeout = float(start_timeout)
        self.niceness = check_niceness(niceness, owner=type(self).__name__)
        #: Children started so far (1 + restarts after kills and crashes).
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._ready = False
        self._next_id = 0
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize | None = None
        self._stderr: Any = None
        self._inner_pid: int | None = None

    @property
    def pid(self) -> int | None:
        """The evaluating process's id (inside its sandbox when sandboxed), or None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        if self.sandbox is not None and self._ready:
            if self._inner_pid is None:
                self._inner_pid = contained_pid(self._proc.pid, _MARKER)
            return self._inner_pid or self._proc.pid
        return self._proc.pid

    def start(self) -> None:
        """Start the child (if it is not running) without waiting for it to be ready."""
        with self._lock:
            self._spawn_if_needed()

    def _spawn_if_needed(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._kill()
        self._stderr = tempfile.TemporaryFile()
        argv = [sys.executable, "-c", BOOT, str(PACKAGE_DIR)]
        if self.sandbox is not None:
            argv = self.sandbox.command(argv, cwd=None, readable=[str(PACKAGE_DIR)])
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            close_fds=True,
            start_new_session=True,  # its own process group: one killpg ends it and its sandbox
        )
        config = {"limits": asdict(self.limits), "memory": self.memory_limit}
        assert proc.stdin is not None
        proc.stdin.write((json.dumps(config) + "\n").encode())
        proc.stdin.flush()
        self._proc, self._buffer, self._ready, self._inner_pid = proc, b"", False, None
        self.starts += 1
        lower_priority(proc.pid, self.niceness)  # unsandboxed, the child itself: before sympy loads
        self._finalizer = weakref.finalize(self, _kill_process, proc, self.sandbox is not None)

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None:
            _kill_process(proc, sandboxed=self.sandbox is not None)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def close(self) -> None:
        """Stop the child. Idempotent; the next request starts a new one."""
        with self._lock:
            self._kill()

    def evaluate(self, expression: str) -> tuple[str, str | None]:
        """``(output, error)`` for one already validated expression."""
        with self._lock:
            self._spawn_if_needed()
            if not self._ready:
                reply = self._read_line(time.monotonic() + self.start_timeout)
                if reply is None or not reply.get("ready"):
                    detail = self._stderr_tail()
                    self._kill()
                    return "", (
                        "the calculator's worker process did not start (is sympy installed? "
                        f"`pip install sympy`){detail}"
                    )
                self._ready = True
                if self.sandbox is not None:
                    lower_priority(self.pid, self.niceness)  # the child inside, in its own session
            self._next_id += 1
            request = {"id": self._next_id, "expr": expression}
            try:
                assert self._proc is not None and self._proc.stdin is not None
                self._proc.stdin.write((json.dumps(request) + "\n").encode())
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self._kill()
                return "", "the calculator's worker process died; it has been restarted"
            deadline = time.monotonic() + self.time_limit
            while True:
                reply = self._read_line(deadline)
                if reply is None:
                    crashed = self._proc is not None and self._proc.poll() is not None
                    self._kill()
                    self._spawn_if_needed()  # warm the replacement while the model reads
                    if crashed:
                        return "", (
                            f"evaluating {expression!r} crashed the calculator (probably its "
                            f"memory limit of {self.memory_limit >> 20} MiB); it was restarted"
                        )
                    return "", (
                        f"evaluating {expression!r} took longer than {self.time_limit:g}s and "
                        "was stopped; use smaller numbers"
                    )
                if reply.get("id") == self._next_id:
                    return reply.get("output") or "", reply.get("error")

    def _stderr_tail(self) -> str:
        try:
            self._stderr.seek(0)
            lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        except (AttributeError, OSError, ValueError):
            return ""
        return f": {lines[-1][:300]}" if lines else ""

    def _read_line(self, deadline: float) -> dict[str, Any] | None:
        """The child's next JSON line, or None on timeout, EOF or garbage."""
        proc = self._proc
        if proc is None or proc.stdout is None:
            return None
        fd = proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except ValueError:
            return None
        return reply if isinstance(reply, dict) else None


def _kill_process(proc: subprocess.Popen[bytes], sandboxed: bool = False) -> None:
    if proc.poll() is None:
        if sandboxed:
            kill_sandbox(proc.pid)  # bwrap and its sandbox: the child and all it started
        else:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the child and its process group
            except OSError:
                proc.kill()
    for stream in (proc.stdin, proc.stdout):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


class CalculatorTool(Tool):
    """Exact arithmetic (sympy) on one expression per line, safely.

    Args:
      time_limit: seconds one expression may compute before its child is killed.
      memory_limit: address-space limit of the child process, bytes.
      limits: static limits (:class:`~conveyor_hf.tools.calc_policy.Limits`).
      sandbox: ``"auto"`` (default: contained when this machine can, else a one-time
        warning), ``True`` (required), ``False`` (opt out) or a
        :class:`~conveyor_hf.tools.sandbox.SandboxPolicy`.
      niceness: the child's nice value (default 10: a lower priority than decoding); None
        leaves it at this process's priority.
    """

    name = "calculator"
    description = (
        "Evaluate an arithmetic expression exactly (sympy). Numbers, + - * / ** % //, "
        "pi, E, I, and sqrt, cbrt, root, exp, log (natural, or log(x, base)), ln, log10, "
        "log2, sin, cos, tan, asin, acos, atan, atan2, sinh, cosh, tanh, abs, floor, "
        "ceiling, round, factorial, binomial, gcd, lcm, min, max. One expression per line."
    )
    parameters = {
        "type": "object",
        "properties": {
            "expression": {
                "type": "string",
                "description": "An arithmetic expression, e.g. '2**10 / 3' or 'sqrt(2) * pi'.",
            }
        },
        "required": ["expression"],
    }
    side_effect = SideEffect.PURE
    max_concurrency = 1  # one worker process; expressions are quick

    def __init__(
        self,
        *,
        time_limit: float = 2.0,
        memory_limit: int = 1 << 30,
        limits: Limits | None = None,
        sandbox: bool | str | SandboxPolicy | Sandbox = "auto",
        niceness: int | None = DEFAULT_NICENESS,
    ) -> None:
        if time_limit <= 0:
            raise ValueError(f"CalculatorTool(time_limit={time_limit!r}) must be > 0 seconds")
        self.limits = limits or Limits()
        #: The sandbox the evaluating child runs in, or None.
        self.sandbox: Sandbox | None = resolve_sandbox(sandbox, tool=type(self).__name__)
        self.worker = CalcWorker(
            self.limits, time_limit=time_limit, memory_limit=memory_limit, sandbox=self.sandbox,
            niceness=niceness,
        )
        # A unit may wait for the child to start (sympy import) and then compute.
        self.timeout = self.worker.start_timeout + time_limit

    def make_parser(self) -> LineParser:
        return LineParser()

    def warm_up(self) -> None:
        """Start the worker process (sympy loads while the model writes)."""
        self.worker.start()

    def close(self) -> None:
        self.worker.close()

    def expression_of(self, unit: Unit) -> tuple[str, str | None]:
        """The expression a unit carries, or an error sentence."""
        if unit.key is not None and unit.key != "expression":
            return "", (
                f"calculator got an unknown argument {unit.key!r}; its only argument is "
                "'expression', e.g. {\"expression\": \"2**10 / 3\"}"
            )
        value = unit.argument
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            return "", (
                f"calculator expression must be a string, got {value!r}; write it as "
                "{\"expression\": \"2**10 / 3\"}"
            )
        return normalize(value), None

    def execute(self, unit: Unit) -> UnitOutput:
        expression, error = self.expression_of(unit)
        if error is not None:
            return UnitOutput("", error)
        try:
            validate(expression, self.limits)
        except CalcError as exc:
            return UnitOutput("", str(exc))
        output, error = self.worker.evaluate(expression)
        return UnitOutput(output, error)

    def __repr__(self) -> str:
        return f"CalculatorTool(time_limit={self.worker.time_limit:g})"
