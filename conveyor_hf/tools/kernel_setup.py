"""The code a Python kernel runs once it starts, the messages by which that code reports,
and the small parent a kernel without a sandbox is launched under.

:func:`setup_code` gives the source the kernel's owner runs (silently) in every new
kernel: plain tracebacks, the memory limit (``RLIMIT_DATA``), the output guard (at most
``guard`` characters of a statement's output leave the kernel, head and tail; the cut is
reported as :data:`CUT_MIMETYPE` display data) and, in a sandbox, the process-limit reaper
(:data:`REAPED_MIMETYPE`) and the CPU-seconds limit per statement.

:func:`subreaper_command` wraps a kernel's launch command (Linux, no sandbox) in a
subreaper, so that what the kernel starts cannot escape by leaving its session or by
double-forking: a sandboxed kernel has its PID namespace for that.
"""

from __future__ import annotations

import json
import sys

__all__ = ["CUT_MIMETYPE", "OUTPUT_GUARD_CHARS", "REAPED_MIMETYPE", "setup_code", "subreaper_command"]

#: Characters of output the kernel itself sends per statement at most (head and tail each),
#: unless a larger per-statement cap is asked for; the rest never leaves the kernel.
OUTPUT_GUARD_CHARS = 1 << 20
#: The display-data type by which the kernel says how many characters of output it cut.
CUT_MIMETYPE = "application/vnd.conveyor.cut+json"
#: The display-data type by which the kernel says it killed what hit the process limit.
REAPED_MIMETYPE = "application/vnd.conveyor.reaped+json"

#: Set up the kernel: plain tracebacks, the memory limit, the output guard, and (sandboxed)
#: the process-limit reaper and the CPU limit per statement. Everything lives in closures,
#: so the user's namespace stays clean. ``config`` is filled in as JSON.
_KERNEL_SETUP = r'''
def _conveyor_setup(config):
    import collections, os, resource, signal, threading
    ip = get_ipython()
    ip.run_line_magic("xmode", "Plain")
    me = os.getpid()

    memory = config.get("memory")
    if memory:
        hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
        if hard != resource.RLIM_INFINITY:
            memory = min(memory, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))

    guard = config.get("guard")
    if guard:
        from ipykernel.iostream import OutStream
        from IPython.display import publish_display_data

        lock = threading.Lock()
        state = {"on": False, "room": guard, "tail": collections.deque(), "tail_len": 0, "cut": 0}
        original = OutStream.write

        def write(self, text):
            if not state["on"] or not isinstance(text, str):
                return original(self, text)
            with lock:
                passed, rest = text[:state["room"]], text[state["room"]:]
                state["room"] -= len(passed)
                tail = state["tail"]
                if rest:
                    tail.append([self, rest])
                    state["tail_len"] += len(rest)
                while state["tail_len"] > guard:
                    excess = state["tail_len"] - guard
                    if len(tail[0][1]) <= excess:
                        dropped = len(tail.popleft()[1])
                    else:
                        dropped = excess
                        tail[0][1] = tail[0][1][excess:]
                    state["tail_len"] -= dropped
                    state["cut"] += dropped
            if passed:
                original(self, passed)
            return len(text)

        def start(*_):
            with lock:
                state.update(on=True, room=guard, tail_len=0, cut=0)
                state["tail"].clear()

        def finish(*_):
            with lock:
                state["on"] = False
                cut, pieces = state["cut"], list(state["tail"])
                state.update(tail_len=0, cut=0)
                state["tail"].clear()
            if cut:
                publish_display_data({config["cut_mimetype"]: {"cut": cut}})
            for stream, piece in pieces:
                original(stream, piece)

        OutStream.write = write
        ip.events.register("pre_run_cell", start)
        ip.events.register("post_run_cell", finish)

    limit = config.get("reap")
    try:
        in_sandbox = open("/proc/1/comm").read().strip() == "bwrap" and me < 64
    except OSError:
        in_sandbox = False
    if limit and in_sandbox:
        def census():
            threads, others = 0, []
            for name in os.listdir("/proc"):
                if not name.isdigit():
                    continue
                try:
                    threads += len(os.listdir("/proc/" + name + "/task"))
                except OSError:
                    continue
                if int(name) not in (1, me):
                    others.append(int(name))
            return threads, others

        def reap(*_):
            if os.getpid() != me:
                return
            threads, others = census()
            if threads < limit * 3 // 4:  # a fork bomb's leftovers, or a kernel that could not go on
                return
            import time

            killed = set()
            give_up = time.monotonic() + 5.0  # until the killed are reaped too (by us or bwrap)
            while True:
                for pid in others:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed.add(pid)
                    except OSError:
                        pass
                while True:
                    try:
                        pid, _status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                _, others = census()
                if not others or time.monotonic() > give_up:
                    break
                time.sleep(0.005)
            from IPython.display import publish_display_data

            publish_display_data({config["reaped_mimetype"]: {"killed": len(killed), "limit": limit}})

        ip.events.register("post_run_cell", reap)

    cpu = config.get("cpu")
    if cpu:
        unlimited = resource.getrlimit(resource.RLIMIT_CPU)[1]

        def arm(*_):
            usage = resource.getrusage(resource.RUSAGE_SELF)
            soft = -int(-(usage.ru_utime + usage.ru_stime + cpu) // 1)  # whole seconds, rounded up
            if unlimited != resource.RLIM_INFINITY:
                soft = min(soft, unlimited)
            resource.setrlimit(resource.RLIMIT_CPU, (soft, unlimited))

        def disarm(*_):
            resource.setrlimit(resource.RLIMIT_CPU, (unlimited, unlimited))

        def exceeded(signum, frame):
            disarm()
            raise TimeoutError(f"the statement used more than {cpu:g} CPU seconds (the limit per statement)")

        signal.signal(signal.SIGXCPU, exceeded)
        ip.events.register("pre_run_cell", arm)
        ip.events.register("post_run_cell", disarm)


_conveyor_setup(CONFIG)
del _conveyor_setup
'''


def setup_code(
    *, memory_bytes: int | None, guard_chars: int | None, reap_limit: int | None, cpu_seconds: float | None
) -> str:
    """The set-up source for one kernel. Each limit None (or 0) is left out."""
    config: dict[str, object] = {"cut_mimetype": CUT_MIMETYPE, "reaped_mimetype": REAPED_MIMETYPE}
    if memory_bytes:
        config["memory"] = int(memory_bytes)
    if guard_chars:
        config["guard"] = int(guard_chars)
    if reap_limit:
        config["reap"] = int(reap_limit)
    if cpu_seconds:
        config["cpu"] = float(cpu_seconds)
    return _KERNEL_SETUP.replace("CONFIG", json.dumps(config), 1)


#: The kernel's parent without a sandbox (run by ``python -I -S -c``, stdlib only): marks
#: itself ``PR_SET_CHILD_SUBREAPER``, so that every process orphaned below it (a daemon
#: that double-forked, a child whose parent died) becomes its child instead of init's, and
#: reaps them, so none lingers as a zombie. It runs the kernel as its child, and once the
#: kernel has ended SIGKILLs everything left below it and exits as the kernel did (the
#: same exit code, or killed by the same signal). SIGTERM (and the death of the thread that
#: launched it, ``PR_SET_PDEATHSIG``) kills the kernel, and so everything; SIGINT, which an
#: interrupt sends to the whole process group, is the kernel's alone.
_SUBREAPER = r"""
import os, signal, sys


def descendants(root):
    parents = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/" + name + "/stat", "rb") as stat:
                fields = stat.read()
            parents[int(name)] = int(fields[fields.rindex(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    children = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, frontier = [], [root]
    while frontier:
        below = children.get(frontier.pop(), [])
        found += below
        frontier += below
    return found


def main(niceness, command):
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (ImportError, OSError, AttributeError):
        pass  # no subreaper: the kernel's owner still kills the kernel's descendants
    owner = os.environ.get("JPY_PARENT_PID", "")
    if owner.isdigit() and os.getppid() != int(owner):
        os._exit(1)  # the owner died before PR_SET_PDEATHSIG was set
    state = {"kernel": 0, "stop": False}

    def stop(signum, frame):
        state["stop"] = True
        if state["kernel"]:
            try:
                os.kill(state["kernel"], signal.SIGKILL)
            except OSError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    signal.signal(signal.SIGINT, lambda signum, frame: None)  # back to the default in the kernel
    if niceness and os.getpriority(os.PRIO_PROCESS, 0) < niceness:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)  # the kernel starts at the lower priority
    os.environ["JPY_PARENT_PID"] = str(os.getpid())  # ipykernel's parent poller watches us
    kernel = os.fork()
    if kernel == 0:
        try:
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    state["kernel"] = kernel
    if state["stop"]:
        stop(signal.SIGTERM, None)
    status = None
    while True:
        if status is not None:
            for pid in descendants(os.getpid()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        try:
            pid, code = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == kernel:
            status = code
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file of ours in the kernel's cwd
        if number != signal.SIGKILL:
            signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
        os._exit(128 + number)
    os._exit(os.waitstatus_to_exitcode(status))


main(int(sys.argv[1]), sys.argv[2:])
"""


def subreaper_command(command: list[str], *, niceness: int | None) -> list[str]:
    """``command`` run as the child of a subreaper that kills what it leaves (Linux only).

    The subreaper is the launched process: the kernel is its only child when it starts.
    ``niceness`` (or None) is set before the kernel is started, so that it starts at it.
    """
    return [sys.executable, "-I", "-S", "-c", _SUBREAPER, str(niceness or 0), *command]
