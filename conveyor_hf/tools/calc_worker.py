"""The calculator's child program: JSON requests in on stdin, JSON replies out on stdout.

:class:`~conveyor_hf.tools.calculator.CalcWorker` starts it as ``python -c BOOT
PACKAGE_DIR`` (see :data:`~conveyor_hf.tools.calculator.BOOT`): stand-ins for the
``conveyor_hf`` and ``conveyor_hf.tools`` packages let it import this module,
:mod:`~conveyor_hf.tools.calc_sympy`, :mod:`~conveyor_hf.tools.calc_policy` and
:mod:`conveyor_hf.text` without running either package's ``__init__``, so the child holds
nothing but these, the standard library and sympy. Keep the modules it imports free of
other imports.

The child never outlives the process that started it: :func:`exit_with_parent` forks a
small watcher that kills the child the moment its stdin has no writer left (the parent
closed it, or died), even while the child computes inside one long C call of sympy that
holds the GIL for seconds, where a watchdog thread would never get to run.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
from typing import Any

from conveyor_hf.text import shorten
from conveyor_hf.tools.calc_policy import CalcError, Limits
from conveyor_hf.tools.calc_sympy import evaluate

__all__ = ["exit_with_parent", "main"]


def exit_with_parent(fd: int = 0) -> None:
    """Fork a watcher that SIGKILLs this process once pipe ``fd`` has no writer left.

    The watcher keeps only ``fd`` open (so the parent still sees EOF on this process's
    stdout when it dies), reads nothing from it (it only waits for ``POLLHUP``), and ends
    with this process: killing the process group or the sandbox kills it too, and a
    watcher whose process is gone finds another parent and leaves it alone.
    """
    if not hasattr(os, "fork"):
        return  # elsewhere the child ends when its stdin reaches EOF, between requests
    watched = os.getpid()
    if os.fork() != 0:
        return
    try:
        for low, high in ((0, fd), (fd + 1, os.sysconf("SC_OPEN_MAX"))):
            if low < high:  # os.closerange(0, 0) closes every descriptor (CPython 3.11 on Linux)
                os.closerange(low, high)
        poller = select.poll()
        poller.register(fd, select.POLLHUP)
        while not poller.poll():
            pass
        if os.getppid() == watched:
            os.kill(watched, signal.SIGKILL)
    finally:
        os._exit(0)


def main() -> None:
    """Child loop: ``{"id", "expr"}`` lines in, ``{"id", "output", "error"}`` lines out.

    The first line read is the configuration ``{"limits": {...}, "memory": bytes}``; the
    child imports sympy, applies ``RLIMIT_AS`` and then says ``{"ready": true}``. It ends
    when its stdin closes, at once (the watcher's kill), even between requests.
    """
    stdin, stdout = sys.stdin, sys.stdout
    exit_with_parent(stdin.fileno())
    config = json.loads(stdin.readline() or "{}")
    limits = Limits(**config.get("limits", {}))
    import sympy  # noqa: F401  (import before the memory limit, and before "ready")

    memory = int(config.get("memory") or 0)
    if memory > 0:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        except (ImportError, ValueError, OSError):
            pass
    stdout.write(json.dumps({"ready": True}) + "\n")
    stdout.flush()
    for line in stdin:
        try:
            request = json.loads(line)
        except json.JSONDecodeError:
            continue
        reply: dict[str, Any] = {"id": request.get("id")}
        try:
            reply["output"] = evaluate(str(request.get("expr", "")), limits)
        except CalcError as exc:
            reply["error"] = str(exc)
        except MemoryError:
            reply["error"] = (
                f"evaluating {shorten(str(request.get('expr', '')), 60)!r} needed more than the "
                f"calculator's memory limit ({memory >> 20} MiB); use smaller numbers"
            )
        except RecursionError:
            reply["error"] = "expression too deeply nested to evaluate"
        except Exception as exc:  # a sympy failure is reported, the child lives on
            reply["error"] = f"{type(exc).__name__}: {shorten(str(exc), 200)}"
        stdout.write(json.dumps(reply) + "\n")
        stdout.flush()
