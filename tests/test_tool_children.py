"""Tool child processes (the Python kernel, the calculator's child): they die with the process
that started them however it ends, run at a lower CPU priority than decoding, and leave no
directories behind, not even when that process is killed. What the kernel starts dies with
it, even what left the kernel's session or double-forked."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile

import psutil
import pytest
from helpers import wait_until

from conveyor_hf.tools.calculator import CalculatorTool
from conveyor_hf.tools.python import PythonTool
from conveyor_hf.tools.sandbox import probe
from conveyor_hf.tools.workdir import sweep_stale_workdirs

#: A parent that starts both children from short-lived threads (as tool calls do), then keeps
#: both busy: the calculator on an expression that computes for minutes (in long C calls of
#: sympy that hold the GIL), the kernel in a loop. It prints its children and waits to be killed.
PARENT = """
import json, sys, threading
from conveyor_hf.tools.calculator import CalculatorTool
from conveyor_hf.tools.python import PythonTool

sandbox = sys.argv[1] == "sandboxed"
calc = CalculatorTool(time_limit=600, sandbox=sandbox)
py = PythonTool(timeout=600, sandbox=sandbox)
for job in (lambda: calc.run("1+1"), py.warm_up):
    thread = threading.Thread(target=job)
    thread.start()
    thread.join()
threading.Thread(target=calc.run, args=("exp(exp(exp(100)))",), daemon=True).start()
threading.Thread(target=py.run, args=("open('busy', 'w').close()\\nwhile True: pass\\n",), daemon=True).start()
print(json.dumps({"calculator": calc.worker.pid, "kernel": py.kernel_pid, "kernel_cwd": py.cwd}), flush=True)
sys.stdin.read()
"""

MODES = [
    "plain",
    pytest.param("sandboxed", marks=pytest.mark.skipif(not probe().available, reason="no sandbox here")),
]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def busy(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_RUNNING
    except psutil.NoSuchProcess:
        return False


def workdirs_of(pid: int) -> list[str]:
    """The working and runtime directories process ``pid`` created."""
    return glob.glob(os.path.join(tempfile.gettempdir(), f"conveyor-*-{pid}-*"))


@pytest.mark.parametrize("mode", MODES)
def test_children_die_with_a_killed_parent_even_while_busy(mode):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    children: list[psutil.Process] = []
    try:
        line = parent.stdout.readline()
        assert line, f"the parent process failed (exit code {parent.wait(timeout=30)})"
        started = json.loads(line)
        assert wait_until(lambda: os.path.exists(os.path.join(started["kernel_cwd"], "busy")), limit=30)
        assert wait_until(lambda: busy(started["calculator"]), limit=30)  # mid-evaluation
        children = psutil.Process(parent.pid).children(recursive=True)
        assert {started["calculator"], started["kernel"]} <= {child.pid for child in children}
        assert workdirs_of(parent.pid)  # the kernel's working and runtime directories
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    try:
        assert wait_until(lambda: all(gone(child.pid) for child in children), limit=10), [
            (child.pid, child.name()) for child in children if not gone(child.pid)
        ]
    finally:  # a failure leaves no orphan behind
        for child in children:
            if not gone(child.pid):
                child.kill()
    sweep_stale_workdirs()  # what every tool's start does: the dead parent's directories go
    assert workdirs_of(parent.pid) == []


@pytest.mark.parametrize("mode", MODES)
def test_children_run_at_a_lower_priority(mode):
    sandbox = mode == "sandboxed"
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    with CalculatorTool(sandbox=sandbox) as calc, PythonTool(sandbox=sandbox) as py:
        assert calc.run("2+2").output == "2+2 = 4"
        py.warm_up()
        for pid in (calc.worker.pid, py.kernel_pid):
            process = psutil.Process(pid)
            assert process.nice() == max(10, ours)
            assert all(os.getpriority(os.PRIO_PROCESS, thread.id) >= 10 for thread in process.threads())
            if os.geteuid() == 0 and os.path.exists(f"/proc/{pid}/autogroup"):
                assert open(f"/proc/{pid}/autogroup").read().split()[-2:] == ["nice", "10"]
    with CalculatorTool(sandbox=sandbox, niceness=None) as calc, PythonTool(sandbox=sandbox, niceness=None) as py:
        assert calc.run("2+2").output == "2+2 = 4"
        py.warm_up()
        assert psutil.Process(calc.worker.pid).nice() == ours
        assert psutil.Process(py.kernel_pid).nice() == ours


def test_a_bad_niceness_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"niceness=-5.*0 .* to 19"):
        CalculatorTool(niceness=-5, sandbox=False)
    with pytest.raises(ValueError, match=r"niceness=20"):
        PythonTool(niceness=20, sandbox=False, prestart=False)


@pytest.mark.parametrize("mode", MODES)
def test_closed_tools_leave_no_directories(mode):
    before = workdirs_of(os.getpid())
    tools = [PythonTool(sandbox=mode == "sandboxed") for _ in range(2)]
    for tool in tools:
        assert tool.run("print(1)\n").output == "1"
    assert len(workdirs_of(os.getpid())) == len(before) + 2 * len(tools)  # a working and a runtime dir each
    for tool in tools:
        tool.close()
    assert workdirs_of(os.getpid()) == before


#: Code that starts a ``sleep`` the kernel's process group does not hold, and prints its pid:
#: a child in a session of its own, or a daemon orphaned by the process that started it.
ESCAPES = {
    "new session": (
        "import subprocess\n"
        "print(subprocess.Popen(['sleep', '300'], start_new_session=True).pid)\n"
    ),
    "double fork": (
        "import subprocess, sys\n"
        "daemon = \"import subprocess as s; print(s.Popen(['sleep', '300'], start_new_session=True, \" \\\n"
        "    \"stdin=s.DEVNULL, stdout=s.DEVNULL, stderr=s.DEVNULL).pid)\"\n"
        "print(subprocess.run([sys.executable, '-c', daemon], capture_output=True, text=True).stdout.strip())\n"
    ),
}


def start_escaped_sleep(py: PythonTool, how: str) -> psutil.Process:
    result = py.run(ESCAPES[how])
    assert result.error is None, result.output
    child = psutil.Process(int(result.output.strip()))
    assert child.name() == "sleep"
    assert os.getpgid(child.pid) != os.getpgid(py.kernel_pid)  # killing the group would miss it
    if how == "double fork":
        assert child.ppid() != py.kernel_pid  # orphaned: not the kernel's child any more
    return child


@pytest.mark.parametrize("how", list(ESCAPES))
def test_closing_an_unsandboxed_kernel_kills_what_escaped_its_group(how):
    if how == "double fork" and not sys.platform.startswith("linux"):
        pytest.skip("finding orphans needs Linux's PR_SET_CHILD_SUBREAPER")
    py = PythonTool(timeout=10, sandbox=False)
    child = None
    try:
        child = start_escaped_sleep(py, how)
        py.close()
        assert wait_until(lambda: gone(child.pid), limit=5), (child.pid, child.status())
    finally:  # a failure leaves no sleep behind
        py.close()
        if child is not None and not gone(child.pid):
            child.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux's PR_SET_CHILD_SUBREAPER")
def test_an_unsandboxed_kernel_that_dies_takes_its_daemons_along():
    py = PythonTool(timeout=10, sandbox=False)
    child = None
    try:
        child = start_escaped_sleep(py, "double fork")
        died = py.run("import os; os._exit(1)\n")
        assert "the Python kernel died (exit code 1)" in died.error
        assert wait_until(lambda: gone(child.pid), limit=5), (child.pid, child.status())
        assert py.run("print(2 + 2)\n").output == "4"  # and a fresh kernel took over
    finally:
        py.close()
        if child is not None and not gone(child.pid):
            child.kill()
