"""PythonTool: a real Jupyter kernel per conversation, one statement per unit.

Most tests share one module-scoped tool (a kernel start costs ~1 s); each test sets the
state it needs, so order does not matter, even after a test that restarts the kernel.
``py`` is the default tool (sandboxed wherever the machine allows, as in CI, and replaying
the conversation after a restart); ``plain`` opts out of both, so the unsandboxed path
(signal interrupts, no process reaper) and restarts that lose the state stay tested too.
Hostile code against the sandbox itself is in ``test_sandbox.py``.
"""

from __future__ import annotations

import gc
import json
import os
import signal

import psutil
import pytest
from helpers import wait_until

from conveyor_hf.tools.base import SideEffect
from conveyor_hf.tools.kernel import CappedText, strip_ansi
from conveyor_hf.tools.python import PythonTool
from parsers.unit import Unit


@pytest.fixture(scope="module")
def py():
    tool = PythonTool(timeout=1, max_output_chars=1000, interrupt_grace=1)
    yield tool
    tool.close()
    assert not os.path.exists(tool.cwd)  # its working directory goes with it


@pytest.fixture(scope="module")
def plain():
    tool = PythonTool(
        timeout=1, max_output_chars=1000, interrupt_grace=1, sandbox=False, replay_on_restart=False
    )
    yield tool
    tool.close()
    assert not os.path.exists(tool.cwd)


@pytest.fixture(params=["sandboxed", "plain"])
def either(request, py, plain):
    """Both tools: behaviour that must not depend on the containment."""
    return py if request.param == "sandboxed" else plain


def run_unit(tool: PythonTool, code: str):
    return tool.execute(Unit(text=code))


def kernel_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_declares_itself_to_the_model():
    assert PythonTool.name == "python"
    assert "Python" in PythonTool.description
    assert PythonTool.side_effect is SideEffect.STATEFUL
    assert PythonTool.stop_on_error is True
    assert PythonTool.max_concurrency == 1
    params = PythonTool.parameters
    assert params["properties"]["code"]["type"] == "string"
    assert params["required"] == ["code"]


def test_state_persists_across_units_and_calls(py):
    assert run_unit(py, "counter = 40\n").error is None
    call = py.open_call()
    call.feed(Unit(text="counter += 1\n"))
    call.feed(Unit(text="def bump(n):\n    return n + 1\n", index=1))
    assert call.finish().error is None
    result = py.open_call()
    result.feed(Unit(text="bump(counter)\n"))
    assert result.finish().output == "42"


def test_collects_stdout_stderr_value_and_traceback_per_unit(py):
    out = run_unit(py, "import sys; print('to out'); print('to err', file=sys.stderr)\n")
    assert out.error is None
    assert "to out\n" in out.output and "to err\n" in out.output

    assert run_unit(py, "6 * 7\n").output == "42\n"
    assert run_unit(py, "print('\\x1b[31mred\\x1b[0m')\n").output == "red\n"

    run_unit(py, "def divide(a, b):\n    return a / b\n")
    failed = run_unit(py, "print('before'); divide(1, 0)\n")
    assert failed.error == "ZeroDivisionError: division by zero"
    assert failed.output.startswith("before\n")
    assert "Traceback" in failed.output and "return a / b" in failed.output
    assert failed.output.rstrip().endswith("ZeroDivisionError: division by zero")
    assert "\x1b" not in failed.output


def test_syntax_error_is_short_and_not_repeated(py):
    out = run_unit(py, "def broken(:\n    pass\n")
    assert out.error == "SyntaxError: invalid syntax"
    assert out.output.rstrip().endswith(out.error)  # so the call's result shows it once
    assert "def broken(:" in out.output


def test_stop_on_error_skips_the_rest_of_the_call(py):
    run_unit(py, "flag = 'untouched'\n")
    call = py.open_call()
    for i, code in enumerate(["print('first')\n", "undefined_name\n", "flag = 'changed'\n"]):
        call.feed(Unit(text=code, index=i))
    result = call.finish()
    first, bad, rest = result.units
    assert first.output == "first\n" and first.error is None
    assert bad.error == "NameError: name 'undefined_name' is not defined"
    assert rest.skipped
    assert result.error == bad.error
    assert run_unit(py, "flag\n").output == "'untouched'\n"


def test_json_call_members_other_than_code_are_rejected_not_run(py):
    # The units a JSON call hands over for members that are not the string "code" (text: the
    # raw JSON member): they used to run as Python and fail with an unrelated SyntaxError.
    run_unit(py, "note = 'untouched'\n")
    note = py.execute(Unit(text='"note": "compute it"', key="note", value="compute it"))
    assert note.output == ""
    assert note.error.startswith("python got an unknown argument 'note'; its only argument is 'code'")
    for value, kind in [(42, "int"), (["print(1)"], "list"), (None, "NoneType")]:
        typed = py.execute(Unit(text=f'"code": {json.dumps(value)}', key="code", value=value))
        assert typed.output == ""
        assert typed.error.startswith(f"the code argument of python must be a string, got {kind}")
    assert run_unit(py, "note\n").output == "'untouched'\n"  # none of that text ran
    # A string "code" member (a plan's keyword argument) runs its value, not its text.
    keyword = py.execute(Unit(text="code='x = 6 * 7'", key="code", value="x = 6 * 7\n"))
    assert keyword.error is None and run_unit(py, "x\n").output == "42\n"
    assert py.execute(Unit(text="40 + 2", value="40 + 2")).output == "42\n"  # positional


def test_timeout_interrupts_and_keeps_the_kernel(either):
    run_unit(either, "kept = 'yes'\n")
    out = run_unit(either, "while True:\n    pass\n")
    assert out.error is not None and "timed out after 1s" in out.error
    assert "interrupted" in out.error
    assert "\x1b" not in out.output
    assert run_unit(either, "kept\n").output == "'yes'\n"


IGNORES_INTERRUPTS = (
    "import time\n"
    "while True:\n"
    "    try:\n"
    "        time.sleep(10)\n"
    "    except KeyboardInterrupt:\n"
    "        pass\n"
)


def test_statement_ignoring_the_interrupt_forces_a_restart(either):
    run_unit(either, "survivor = 1\n")
    run_unit(either, "def twice(n):\n    return 2 * n\n")
    pid = either.kernel_pid
    out = run_unit(either, IGNORES_INTERRUPTS)
    assert "timed out after 1s" in out.error and "did not stop when interrupted" in out.error
    assert "restarted" in out.error
    if either.replay_on_restart:
        assert "replayed" in out.error
        assert "survivor" in out.error and "twice" in out.error  # the model is told what came back
        assert run_unit(either, "twice(survivor)\n").output == "2\n"
    else:
        assert "state lost" in out.error
        assert run_unit(either, "survivor\n").error == "NameError: name 'survivor' is not defined"
    assert run_unit(either, "1 + 1\n").output == "2\n"
    assert either.kernel_pid != pid and kernel_gone(pid)


@pytest.mark.parametrize(
    "code, how",
    [
        ("import os; os._exit(1)\n", "exit code 1"),
        ("import os; os.kill(os.getpid(), 9)\n", "killed by SIGKILL"),
        ("import ctypes; ctypes.string_at(0)\n", "killed by SIGSEGV"),  # a segfault
    ],
)
def test_dead_kernel_is_replaced_and_the_conversation_replayed(either, code, how):
    run_unit(either, "import math\n")
    run_unit(either, "kept = math.factorial(5)\n")
    run_unit(either, "kept / 0\n")  # failed statements are not replayed
    out = run_unit(either, code)
    assert out.error.startswith(f"the Python kernel died ({how}")
    if either.replay_on_restart:
        assert "it was restarted" in out.error and "replayed" in out.error
        assert "kept" in out.error and "math" in out.error
        assert run_unit(either, "kept + 1\n").output == "121\n"
    else:
        assert "it was restarted, state lost" in out.error
        assert run_unit(either, "kept\n").error == "NameError: name 'kept' is not defined"
    assert run_unit(either, "1 + 1\n").output == "2\n"


def test_kernel_killed_from_outside_mid_statement(either):
    run_unit(either, "import time\n")
    run_unit(either, "before = 'restored'\n")
    flag = os.path.join(either.cwd, "started")
    if os.path.exists(flag):
        os.remove(flag)
    pid = either.kernel_pid
    call = either.open_call()
    call.feed(Unit(text="open('started', 'w').close(); time.sleep(60)\n"))
    assert wait_until(lambda: os.path.exists(flag), limit=30)  # the statement is running
    os.kill(pid, signal.SIGKILL)  # as the OOM killer or an operator would
    result = call.finish()
    unit = result.units[0]
    assert unit.error.startswith("the Python kernel died (killed by SIGKILL")
    if either.replay_on_restart:
        assert "replayed" in unit.error and "before" in unit.error
        assert run_unit(either, "before\n").output == "'restored'\n"
    else:
        assert "state lost" in unit.error
    assert run_unit(either, "2 + 2\n").output == "4\n"
    assert either.kernel_pid != pid and kernel_gone(pid)


def test_dead_kernel_in_a_call_skips_the_rest(py):
    call = py.open_call()
    call.feed(Unit(text="import os\n"))
    call.feed(Unit(text="os._exit(3)\n", index=1))
    call.feed(Unit(text="print('never')\n", index=2))
    result = call.finish()
    assert "exit code 3" in result.units[1].error
    assert result.units[2].skipped
    assert "never" not in result.output


def test_huge_output_is_capped_head_and_tail(either):
    out = run_unit(either, "print('START'); print('x' * 2_000_000); print('END')\n")
    assert out.error is None
    assert len(out.output) < 1100
    assert out.output.startswith("START\n")
    assert out.output.endswith("END\n")
    assert "characters cut" in out.output


def _big_print() -> str:
    return "<" + "x" * 100_000_000 + ">\n"


def _many_lines() -> str:
    return "".join(f"{i:09d}" + "y" * 490 + "\n" for i in range(200_000))


@pytest.mark.parametrize(
    "code, text",
    [
        ("print('<' + 'x' * 100_000_000 + '>')\n", _big_print),  # one 100 MB write
        ("for i in range(200_000):\n    print(f'{i:09d}' + 'y' * 490)\n", _many_lines),  # 100 MB of lines
    ],
)
def test_100_mb_of_output_is_cut_in_the_kernel_with_exact_accounting(py, code, text):
    py.timeout = 120  # room for a slow machine: the point is the cap, not the speed
    try:
        out = run_unit(py, code)
    finally:
        py.timeout = 1.0
    assert out.error is None
    # What the model sees is exactly the head and tail of the whole 100 MB with the true
    # count between, although most of it never left the kernel.
    expected = CappedText(1000)
    expected.write(text())
    assert out.output == expected.getvalue()
    assert f"... [{100_000_003 - 1000 if 'print' in code[:6] else 100_000_000 - 1000} characters cut]" in out.output
    assert run_unit(py, "21 * 2\n").output == "42\n"


def test_capped_text_keeps_head_and_tail_in_bounded_memory():
    sink = CappedText(10)
    for _ in range(10_000):
        sink.write("0123456789")
    assert sink.total == 100_000
    assert sink.getvalue() == "01234\n... [99990 characters cut] ...\n56789"
    assert sum(map(len, sink._tail)) == 5  # the collector itself stays small
    small = CappedText(10)
    small.write("abc")
    small.write("defg")
    assert small.getvalue() == "abcdefg"
    unlimited = CappedText(None)
    unlimited.write("x" * 50)
    assert unlimited.getvalue() == "x" * 50


def test_strip_ansi():
    coloured = "\x1b[0;31mZeroDivisionError\x1b[0m: x\x1b]0;title\x07"
    assert strip_ansi(coloured) == "ZeroDivisionError: x"


def test_memory_is_capped(py):
    out = run_unit(py, "block = bytearray(3 * 1024**3)\n")
    assert out.error is not None and out.error.startswith("MemoryError")
    assert run_unit(py, "1 + 1\n").output == "2\n"


def test_feed_returns_at_once_and_finish_returns_everything(py):
    go = os.path.join(py.cwd, "go")
    call = py.open_call()
    # The first statement runs until the test has checked that nothing is done yet.
    sleeping = call.feed(Unit(text=f"import os, time\nwhile not os.path.exists({go!r}): time.sleep(0.005)\n"
                                   "print('slept')\n"))
    later = call.feed(Unit(text="answer = 41 + 1\n", index=1))
    last = call.feed(Unit(text="answer\n", index=2))
    assert not sleeping.done and not later.done and not last.done
    open(go, "w").close()
    result = call.finish()
    assert [r.done for r in result.units] == [True, True, True]
    assert sleeping.output == "slept\n"
    assert last.output == "42\n"
    assert result.output == "slept\n42"
    assert result.error is None


def test_reset_clears_state(py):
    run_unit(py, "before_reset = 1\n")
    py.reset()
    assert run_unit(py, "before_reset\n").error.startswith("NameError")


def test_fork_has_its_own_kernel_and_same_settings(py):
    other = py.fork()
    try:
        assert isinstance(other, PythonTool) and other is not py
        assert other.timeout == py.timeout and other.max_output_chars == py.max_output_chars
        run_unit(py, "mine = 'first'\n")
        other.warm_up()
        assert other.kernel_pid != py.kernel_pid
        assert run_unit(other, "mine\n").error == "NameError: name 'mine' is not defined"
        run_unit(other, "mine = 'second'\n")
        assert run_unit(py, "mine\n").output == "'first'\n"
    finally:
        other.close()


def test_lazy_start_cwd_quiet_and_close_leaves_no_process(tmp_path, capfd):
    tool = PythonTool(prestart=False, cwd=tmp_path, timeout=5)
    assert tool.kernel_pid is None
    call = tool.open_call()  # warm_up starts the kernel on the call's thread
    call.feed(Unit(text="import os, subprocess; print(os.getcwd())\n"))
    call.feed(Unit(text="child = subprocess.Popen(['sleep', '60'])\n", index=1))
    result = call.finish()
    assert result.error is None, result.output
    assert result.units[0].output == f"{os.path.realpath(tmp_path)}\n"
    pid = tool.kernel_pid
    # The child's pid as this process sees it (inside a sandbox pids are the sandbox's own).
    [child_pid] = [child.pid for child in psutil.Process(pid).children() if child.name() == "sleep"]
    assert psutil.Process(pid).is_running()

    tool.close()
    tool.close()  # idempotent
    assert tool.kernel_pid is None
    assert kernel_gone(pid) and kernel_gone(child_pid)
    closed = run_unit(tool, "1\n")
    assert closed.error is not None and "closed" in closed.error
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""  # kernel start/stop is silent


def test_dropped_tool_leaves_no_kernel():
    tool = PythonTool()
    tool.warm_up()
    pid = tool.kernel_pid
    del tool
    gc.collect()
    assert kernel_gone(pid)


def test_run_parses_statements_and_runs_them(py):
    pytest.importorskip("parsers.python_statements")
    result = py.run("total = 0\nfor i in range(4):\n    total += i\nprint(total)\ntotal * 2\n")
    assert result.error is None
    assert result.output == "6\n12"
    assert [r.unit.text for r in result.units][0] == "total = 0\n"


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="timeout"):
        PythonTool(timeout=0, prestart=False)
    with pytest.raises(ValueError, match="cwd"):
        PythonTool(cwd="/no/such/dir/anywhere", prestart=False)


def test_close_while_a_statement_runs_ends_it_at_once():
    tool = PythonTool(timeout=60)
    call = tool.open_call()
    flag = os.path.join(tool.cwd, "started")
    running = call.feed(Unit(text="open('started', 'w').close(); import time; time.sleep(50)\n"))
    assert wait_until(lambda: os.path.exists(flag), limit=30)
    pid = tool.kernel_pid
    tool.close()  # wakes the kernel's owner thread out of its wait on the kernel
    result = call.finish()
    assert running.done and "closed" in result.units[0].error
    assert kernel_gone(pid)
