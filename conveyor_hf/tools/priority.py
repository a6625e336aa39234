"""Tool child processes yield the CPU to decoding: a lower priority for each one started.

A CPU-bound Python kernel beside the model slowed decoding 1.27x in our measurements
(issue 12); at nice 10 the cost fell to 1.09x. Two settings make that happen on Linux:

- the nice value of every thread of the child (``setpriority``; children and threads it
  starts later inherit it);
- the nice value of the child's *autogroup* (``/proc/<pid>/autogroup``). With autogroup
  scheduling on (``/proc/sys/kernel/sched_autogroup_enabled``, the default of most
  desktop and server kernels) the CPU is first shared between sessions, and only within a
  session by nice value; a tool child runs in a session of its own (``setsid``, or
  bubblewrap's ``--new-session``), so without this its own nice value would not matter.

Both are best effort: a missing ``/proc`` file, a process already gone or a refusal
(lowering a priority never needs privileges; the kernel limits autogroup changes by
unprivileged users to ten a second) are logged at debug level and otherwise ignored.
"""

from __future__ import annotations

import errno
import logging
import os
import time

__all__ = ["DEFAULT_NICENESS", "check_niceness", "lower_priority"]

logger = logging.getLogger(__name__)

#: The nice value tool children run at unless a tool is told otherwise (None: unchanged).
DEFAULT_NICENESS = 10

#: Seconds the kernel makes an unprivileged process wait between two autogroup changes.
_AUTOGROUP_RATE = 0.1


def check_niceness(niceness: int | None, *, owner: str) -> int | None:
    """``niceness`` as an int from 0 to 19, or None; a ValueError naming ``owner`` otherwise."""
    if niceness is None:
        return None
    if isinstance(niceness, bool) or not isinstance(niceness, int) or not 0 <= niceness <= 19:
        raise ValueError(
            f"{owner}(niceness={niceness!r}) must be a whole number from 0 (the parent's priority) "
            "to 19 (the lowest), or None to leave the priority alone"
        )
    return niceness


def lower_priority(pid: int | None, niceness: int | None) -> None:
    """Give process ``pid`` (each of its threads) and its autogroup the nice value ``niceness``.

    Never raises, and never raises a priority: a thread already nicer is left alone.
    ``pid`` or ``niceness`` None: nothing to do.
    """
    if pid is None or niceness is None:
        return
    for thread in _threads(pid):
        try:
            if os.getpriority(os.PRIO_PROCESS, thread) < niceness:
                os.setpriority(os.PRIO_PROCESS, thread, niceness)
        except OSError as exc:  # gone, or not ours
            logger.debug("cannot lower the priority of thread %d of process %d: %s", thread, pid, exc)
    _set_autogroup_nice(pid, niceness)


def _threads(pid: int) -> list[int]:
    """The thread ids of ``pid`` (Linux ``/proc``), or just ``pid`` where they cannot be listed."""
    try:
        return [int(name) for name in os.listdir(f"/proc/{pid}/task")]
    except (OSError, ValueError):
        return [pid]


def _set_autogroup_nice(pid: int, niceness: int) -> None:
    """Renice ``pid``'s autogroup, unless it is this process's own (the same session)."""
    path = f"/proc/{pid}/autogroup"
    try:
        with open(path) as theirs, open("/proc/self/autogroup") as ours:
            if theirs.read().split()[:1] == ours.read().split()[:1]:  # "/autogroup-42 nice 0"
                logger.debug("process %d shares this process's autogroup: left alone", pid)
                return
    except OSError as exc:
        logger.debug("no autogroup for process %d: %s", pid, exc)
        return
    for attempt in range(2):
        try:
            with open(path, "w") as autogroup:
                autogroup.write(str(niceness))
            return
        except OSError as exc:
            if exc.errno == errno.EAGAIN and attempt == 0:  # another change in the last 0.1 s
                time.sleep(_AUTOGROUP_RATE)
                continue
            logger.debug("cannot set the autogroup nice value of process %d: %s", pid, exc)
            return
