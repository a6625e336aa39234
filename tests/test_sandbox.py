"""The sandbox against hostile code, really attempted: each attempt fails with a clear error
inside a bounded time, the tool keeps working, and nothing outside the working directory
changes. Attempts go through a real sandboxed Python kernel (``box``) or a real sandboxed
process; where it proves the attempt is real, the same attempt is first shown to work
without the sandbox.

These tests need a sandbox. CI runs ``scripts/install.sh`` as root, which installs
bubblewrap, so they run there; they skip only where the OS itself cannot sandbox (not
Linux, or no user namespaces for a normal user), and say why. A missing bubblewrap on a
machine that could have one is a failure, not a skip.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
import uuid

import psutil
import pytest

from conveyor_hf.tools.calculator import CalculatorTool
from conveyor_hf.tools.python import PythonTool
from conveyor_hf.tools.sandbox import (
    Sandbox,
    SandboxPolicy,
    SandboxUnavailable,
    SandboxWarning,
    describe,
    probe,
    resolve_sandbox,
)
from parsers.unit import Unit

POLICY = SandboxPolicy(max_processes=64, disk_mb=64, file_size_mb=16, tmp_mb=32, cpu_seconds=1)
HOME = os.path.realpath(os.path.expanduser("~"))
SECRET_ENV = "CONVEYOR_TEST_SECRET_TOKEN"


def _why_this_os_cannot_sandbox() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"namespaces are Linux-only and this is {sys.platform}"
    if os.geteuid() != 0:
        for path in ("/proc/sys/user/max_user_namespaces", "/proc/sys/kernel/unprivileged_userns_clone"):
            try:
                if open(path).read().strip() == "0":
                    return f"{path} is 0: user namespaces are disabled for normal users, and this is not root"
            except OSError:
                continue
    return None


def require_sandbox() -> None:
    status = probe()
    if status.available:
        return
    why = _why_this_os_cannot_sandbox()
    if why:
        pytest.skip(f"this OS cannot sandbox: {why}")
    pytest.fail(f"no sandbox although this OS supports one: {status.reason}")


@pytest.fixture(scope="module")
def box():
    require_sandbox()
    os.environ[SECRET_ENV] = "s3cr3t"  # what a parent process may hold: it must not leak in
    try:
        tool = PythonTool(timeout=20, interrupt_grace=1, sandbox=POLICY)
        tool.warm_up()
    finally:
        del os.environ[SECRET_ENV]
    yield tool
    tool.close()


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    require_sandbox()
    return Sandbox(POLICY)


def run(tool: PythonTool, code: str):
    return tool.execute(Unit(text=code))


def contained(sandbox: Sandbox, code: str, *, cwd: str | None = None, readable=()) -> subprocess.CompletedProcess:
    """Run Python ``code`` as one sandboxed process."""
    argv = sandbox.command([sys.executable, "-c", code], cwd=cwd, readable=readable)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def uncontained(code: str) -> subprocess.CompletedProcess:
    """The same without a sandbox: proves that an attempt would really succeed."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


# -- what the kernel is, seen from outside -----------------------------------------------------
def test_the_kernel_runs_in_its_own_namespaces_as_another_user(box):
    pid = box.kernel_pid
    assert pid != os.getpid() and psutil.Process(pid).name().startswith("python")
    for kind in ("net", "pid", "mnt", "ipc", "uts"):
        assert os.readlink(f"/proc/{pid}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}"), kind
    if os.geteuid() == 0:
        assert psutil.Process(pid).uids().real == POLICY.uid != 0
    inside = run(box, "import os, resource; os.getuid(), resource.getrlimit(resource.RLIMIT_NPROC)[0]\n")
    assert inside.output == f"({box.sandbox.user[0]}, {POLICY.max_processes})\n"
    assert "bubblewrap" in box.sandbox_description and "no network" in box.sandbox_description


def test_the_environment_is_clean(box):
    out = run(box, f"import os; print({SECRET_ENV!r} in os.environ, os.environ['HOME'])\n")
    assert out.output == "False /tmp\n"


# -- files ----------------------------------------------------------------------------------------
def test_writing_a_file_in_home_fails(box):
    target = os.path.join(HOME, f"conveyor-probe-{uuid.uuid4().hex}")
    for code in (f"open({target!r}, 'w').write('x')\n", f"import os; os.makedirs({target!r})\n"):
        out = run(box, code)
        assert out.error is not None and out.error.split(":")[0] in ("OSError", "PermissionError",
                                                                     "FileNotFoundError")
        assert not os.path.exists(target)
    # "~" inside is the sandbox's private /tmp: writing there works and leaves the host alone.
    note = f"note-{uuid.uuid4().hex}"
    assert run(box, f"import pathlib; (pathlib.Path.home() / {note!r}).write_text('x')\n").error is None
    assert not os.path.exists(os.path.join("/tmp", note)) and not os.path.exists(os.path.join(HOME, note))
    assert run(box, "1 + 1\n").output == "2\n"


def test_deleting_a_file_outside_the_working_directory_fails(box, sandbox, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    code = f"import os; os.remove({str(victim)!r})\n"
    out = run(box, code)  # not visible at all
    assert out.error.startswith("FileNotFoundError")
    tmp_path.chmod(0o777)  # so that only the read-only mount stands in the way
    visible = contained(sandbox, code, readable=[str(tmp_path)])  # visible, but read-only
    assert visible.returncode != 0 and "Read-only file system" in visible.stderr
    assert victim.read_text() == "keep me"
    # Inside its own working directory the kernel may of course delete.
    assert run(box, "open('mine.txt', 'w').close(); import os; os.remove('mine.txt')\n").error is None


def test_reading_outside_the_allowed_set_fails(box, sandbox, tmp_path):
    secret = os.path.join(HOME, f".conveyor-secret-{uuid.uuid4().hex}")
    with open(secret, "w") as handle:
        handle.write("password")
    try:
        code = f"print(open({secret!r}).read())"
        assert uncontained(code).stdout == "password\n"  # the attempt is real
        out = run(box, code + "\n")
        assert out.error.startswith("FileNotFoundError") and "password" not in out.output
        readable = contained(sandbox, code, readable=[secret])  # what a tool lets it read, it reads
        assert readable.stdout == "password\n"
    finally:
        os.remove(secret)
    other = tmp_path / "another-tools-file.txt"
    other.write_text("private")
    assert run(box, f"open({str(other)!r}).read()\n").error.startswith("FileNotFoundError")
    if os.geteuid() == 0:  # readable by root only; the sandbox is not root
        assert run(box, "open('/etc/shadow').read()\n").error.startswith("PermissionError")
    # Its /proc shows the sandbox's own processes (bwrap's init and the kernel), nobody else's.
    assert run(box, "import os; len([p for p in os.listdir('/proc') if p.isdigit()])\n").output == "2\n"


def test_the_working_directory_is_writable_and_shared_with_the_host(box):
    assert run(box, "open('result.csv', 'w').write('a,b\\n1,2\\n')\n").error is None
    assert open(os.path.join(box.cwd, "result.csv")).read() == "a,b\n1,2\n"
    os.remove(os.path.join(box.cwd, "result.csv"))


# -- network --------------------------------------------------------------------------------------
def test_connecting_to_a_server_on_the_hosts_loopback_fails(box):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        port = server.getsockname()[1]
        code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3).close()"
        assert uncontained(code).returncode == 0  # the attempt is real: it connects
        server.accept()[0].close()
        out = run(box, code + "\n")
        assert out.error.startswith("ConnectionRefusedError")
        assert select.select([server], [], [], 0)[0] == []  # nothing reached the server
    outside = run(box, "socket.create_connection(('192.0.2.1', 80), timeout=3)\n")  # TEST-NET-1
    assert outside.error is not None and "unreachable" in outside.error.lower()


def test_loopback_inside_the_sandbox_works(box):
    code = (
        "import socket\n"
        "with socket.socket() as s:\n"
        "    s.bind(('127.0.0.1', 0)); s.listen(1)\n"
        "    c = socket.create_connection(s.getsockname(), timeout=3); a, _ = s.accept()\n"
        "    c.sendall(b'ping'); print(a.recv(4)); a.close(); c.close()\n"
    )
    assert run(box, code).output == "b'ping'\n"


# -- resources ------------------------------------------------------------------------------------
BOUNDED_FORK_BOMB = (
    # At most 2**10 processes even with no limit at all, each gone after 30 s: a broken
    # sandbox costs a moment, not the machine.
    "import os, time\n"
    "root = os.getpid()\n"
    "try:\n"
    "    for _ in range(10):\n"
    "        os.fork()\n"
    "finally:\n"
    "    if os.getpid() != root:\n"
    "        time.sleep(30)\n"
    "        os._exit(0)\n"
    # The root's own forks may all succeed before its children fork: the statement ends
    # only once the bomb has filled the sandbox, so the reaper's census sees it full.
    "until = time.monotonic() + 15\n"
    f"while len([p for p in os.listdir('/proc') if p.isdigit()]) < {POLICY.max_processes * 3 // 4} "
    "and time.monotonic() < until:\n"
    "    time.sleep(0.01)\n"
)


def test_a_fork_bomb_hits_the_process_limit_and_is_cleaned_up(box):
    # The outer limit first: only bomb a kernel whose process limit is really in force.
    limits = run(box, "import os, resource; os.getuid(), resource.getrlimit(resource.RLIMIT_NPROC)\n")
    assert limits.output == f"({box.sandbox.user[0]}, ({POLICY.max_processes}, {POLICY.max_processes}))\n"
    assert psutil.Process(box.kernel_pid).uids().real != 0
    run(box, "bomb_survivor = 'alive'\n")
    out = run(box, BOUNDED_FORK_BOMB)
    # The statement's own fork fails, or (when its children hit the limit first) the
    # leftovers are killed: either way a clear error, and the leftovers are gone.
    assert out.error.startswith(("BlockingIOError", "ProcessLimitError"))
    assert f"limit of {POLICY.max_processes} processes" in out.output and "were killed" in out.output
    assert run(box, "len([p for p in os.listdir('/proc') if p.isdigit()])\n").output == "2\n"
    assert run(box, "bomb_survivor\n").output == "'alive'\n"


def test_a_shell_fork_bomb_left_running_is_killed(box):
    code = (
        "import os, subprocess, time\n"
        "subprocess.Popen(['bash', '-c', ':(){ :|:& };:'], start_new_session=True,\n"
        "                 stderr=subprocess.DEVNULL)\n"
        "until = time.monotonic() + 15  # the statement ends once the bomb has filled the sandbox\n"
        f"while len([p for p in os.listdir('/proc') if p.isdigit()]) < {POLICY.max_processes * 3 // 4} "
        "and time.monotonic() < until:\n"
        "    time.sleep(0.01)\n"
    )
    out = run(box, code)
    assert out.error is not None and out.error.startswith("ProcessLimitError")
    assert run(box, "import os; len([p for p in os.listdir('/proc') if p.isdigit()])\n").output == "2\n"


def test_allocating_8_gib_fails(box):
    out = run(box, "block = bytearray(8 * 1024**3)\n")
    assert out.error == "MemoryError"
    assert run(box, "small = bytearray(10**6); len(small)\n").output == "1000000\n"


def test_filling_the_disk_fails(box):
    one_file = run(box, "with open('fill.bin', 'wb') as f:\n    while True:\n        f.write(b'0' * 2**20)\n")
    assert one_file.error == "OSError: [Errno 27] File too large"
    many = run(box, "for i in range(10**6):\n    with open(f'fill{i}.bin', 'wb') as f:\n"
                    "        f.write(b'0' * 2**23)\n")
    if probe().disk_quota:  # the working directory is a tmpfs of disk_mb
        assert many.error == "OSError: [Errno 28] No space left on device"
        assert shutil.disk_usage(box.cwd).total <= POLICY.disk_mb * 2**20
    tmp = run(box, "for i in range(10**6):\n    with open(f'/tmp/fill{i}.bin', 'wb') as f:\n"
                   "        f.write(b'0' * 2**23)\n")
    assert tmp.error == "OSError: [Errno 28] No space left on device"
    cleanup = "import glob, os\nfor p in glob.glob('fill*.bin') + glob.glob('/tmp/fill*.bin'):\n    os.remove(p)\n"
    assert run(box, cleanup).error is None
    assert run(box, "open('after.txt', 'w').write('ok')\n").output == "2\n"  # space is back
    os.remove(os.path.join(box.cwd, "after.txt"))


def test_the_cpu_limit_per_statement_stops_a_busy_statement(box):
    run(box, "kept = 1\n")
    out = run(box, "while True:\n    pass\n")
    assert out.error == "TimeoutError: the statement used more than 1 CPU seconds (the limit per statement)"
    assert run(box, "import time; time.sleep(0.5); kept\n").output == "1\n"  # the kernel lives on


# -- the calculator's child -------------------------------------------------------------------------
def test_the_calculator_child_is_contained_and_killed_with_its_sandbox():
    require_sandbox()
    with CalculatorTool(time_limit=0.5) as tool:
        assert tool.sandbox is not None
        assert tool.run("2 + 2").output == "2 + 2 = 4"
        pid = tool.worker.pid
        assert psutil.Process(pid).name().startswith("python")
        for kind in ("net", "pid", "mnt"):
            assert os.readlink(f"/proc/{pid}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}")
        if os.geteuid() == 0:
            assert psutil.Process(pid).uids().real == SandboxPolicy().uid
        slow = tool.run("exp(exp(exp(100)))")  # killed after its time limit
        assert "longer than 0.5s" in slow.error
        try:
            psutil.Process(pid).wait(timeout=10)  # the sandbox's end takes the child with it
        except psutil.NoSuchProcess:
            pass
        assert not psutil.pid_exists(pid)
        assert tool.run("3 * 3").output == "3 * 3 = 9"


# -- choosing a sandbox, and what happens without one -----------------------------------------------
def test_describe_is_one_line_naming_the_containment():
    require_sandbox()
    line = describe()
    assert "\n" not in line and line.startswith("sandbox: bubblewrap")
    assert "no network" in line and "processes" in line


def test_without_bubblewrap_auto_warns_true_refuses_false_is_silent(monkeypatch, recwarn):
    monkeypatch.setenv("PATH", "/nonexistent")  # a real probe of a machine with no bwrap
    try:
        status = probe(refresh=True)
        assert not status.available and "bubblewrap" in status.reason and "apt-get install" in status.reason
        with pytest.warns(SandboxWarning, match="WITHOUT a sandbox.*install bubblewrap"):
            assert resolve_sandbox("auto", tool="PythonTool") is None
        with pytest.raises(SandboxUnavailable, match="sandbox=True but no sandbox.*bubblewrap"):
            PythonTool(sandbox=True, prestart=False)
        with pytest.raises(SandboxUnavailable, match="bubblewrap"):
            CalculatorTool(sandbox=True)
        recwarn.clear()
        tool = PythonTool(sandbox=False, prestart=False)
        assert tool.sandbox is None and not [w for w in recwarn if w.category is SandboxWarning]
        tool.close()
        assert describe().startswith("sandbox: none")
    finally:
        monkeypatch.undo()
        probe(refresh=True)


def test_bad_settings_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="sandbox='yes'"):
        resolve_sandbox("yes", tool="PythonTool")
    with pytest.raises(ValueError, match="max_processes=2.*at least 16"):
        SandboxPolicy(max_processes=2)
    with pytest.raises(ValueError, match="disk_mb=0"):
        SandboxPolicy(disk_mb=0)
    with pytest.raises(ValueError, match="absolute"):
        SandboxPolicy(readable=("data",))
    with pytest.raises(ValueError, match="tuple of paths"):
        SandboxPolicy(readable="/data")


def test_two_sandboxes_have_separate_private_tmps(sandbox):
    first = contained(sandbox, "open('/tmp/mark', 'w').write('1'); import os; print(os.listdir('/tmp'))")
    second = contained(sandbox, "import os; print(os.listdir('/tmp'))")
    assert first.stdout == "['mark']\n" and second.stdout == "[]\n"


def test_a_working_directory_left_by_a_killed_process_is_swept():
    require_sandbox()
    if not probe().disk_quota:
        pytest.skip("working directories are tmpfs mounts only when the parent is root: nothing to sweep")
    code = "from conveyor_hf.tools.python import PythonTool; t = PythonTool(prestart=False); print(t.cwd, flush=True)" \
           "; import time; time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        workdir = child.stdout.readline().strip()
        assert os.path.ismount(workdir)
    finally:
        child.kill()  # no chance to close its tool
        child.wait()
    assert os.path.ismount(workdir)
    probe(refresh=True)  # the next process to probe cleans up after the dead one
    assert not os.path.exists(workdir)
