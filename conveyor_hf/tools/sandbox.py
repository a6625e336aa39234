"""How a tool's child process is contained: Linux namespaces, a non-root user, resource limits.

Model-written code (the Python kernel, the calculator's child) runs inside a sandbox built
with bubblewrap (``bwrap``, Debian package ``bubblewrap``) and util-linux (``setpriv``,
``unshare``, ``prlimit``):

- its own network namespace with only loopback (no network at all, not even the host's
  127.0.0.1), PID namespace (killing the sandbox kills everything started in it), IPC and
  UTS namespaces;
- a new root filesystem: the system directories (``/usr``, ``/etc``, ``/bin`` …) and the
  Python interpreter's own directories read-only, a fresh ``/proc`` and ``/dev``, a private
  size-limited ``/tmp`` (also ``$HOME`` inside), and writable only the directories the tool
  names (its working directory). Nothing else of the host is visible: not ``$HOME``, not
  ``/root``, not other tools' working directories, not ``/run``'s sockets;
- a clean environment (no API keys or tokens inherited), ``HOME=/tmp``;
- when the parent is root, the process runs as ``uid 65534`` (nobody), in a user namespace
  of its own so that its process limit is counted per sandbox (root ignores
  ``RLIMIT_NPROC``);
- limits (``prlimit``): processes and threads, open files, file size, optionally memory and
  CPU seconds; the working directory a tool creates is a size-limited tmpfs when the parent
  may mount one (root), so filling it fails with ``ENOSPC`` instead of filling the disk.

The public surface is small::

    from conveyor_hf.tools.sandbox import SandboxPolicy, describe, probe, resolve_sandbox

    print(describe())                 # one line: what contains tool processes here
    status = probe()                  # status.available, status.reason (why not)
    sandbox = resolve_sandbox("auto", tool="python")    # None when it cannot sandbox
    argv = sandbox.command(["python3", "-c", "print(1)"], cwd=None)

``resolve_sandbox(setting)`` is what tools call with their ``sandbox=`` argument: ``"auto"``
(sandbox when possible, else a one-time :class:`SandboxWarning` naming what to install),
``True`` (raise :class:`SandboxUnavailable` without one), ``False`` (no sandbox) or a
:class:`SandboxPolicy` (sandbox with these limits, required).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from conveyor_hf.tools.workdir import Workdir, create_workdir, mount_tmpfs, sweep_stale_workdirs, unmount

__all__ = [
    "Sandbox",
    "SandboxPolicy",
    "SandboxStatus",
    "SandboxUnavailable",
    "SandboxWarning",
    "contained_pid",
    "describe",
    "kill_sandbox",
    "probe",
    "resolve_sandbox",
    "sandbox_available",
]

MiB = 1 << 20

#: Top-level system directories bound read-only (or re-created as the same symlink).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")

#: Environment variables passed from the parent into the sandbox (nothing else is).
PASSED_ENV = (
    "LANG", "LANGUAGE", "TZ", "PYTHONPATH", "PYTHONHASHSEED", "PYTHONIOENCODING", "PYTHONUTF8",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS", "VIRTUAL_ENV", "CONDA_PREFIX",
)

INSTALL_HINT = (
    "install bubblewrap (`apt-get install bubblewrap`, `dnf install bubblewrap`, "
    "or `bash scripts/install.sh` as root)"
)


class SandboxUnavailable(RuntimeError):
    """A sandbox was required (``sandbox=True``) but this machine cannot provide one."""


class SandboxWarning(RuntimeWarning):
    """Tool processes run without a sandbox (``sandbox="auto"`` found none)."""


#: The limits applied with ``prlimit``: the :class:`SandboxPolicy` field, the prlimit option,
#: the option's value from the field's, and how :meth:`SandboxPolicy.summary` names it (None: not named).
_PRLIMITS: tuple[tuple[str, str, Callable[[Any], int], str | None], ...] = (
    ("max_processes", "--nproc", int, "{} processes"),
    ("memory_mb", "--data", lambda mb: int(mb) * MiB, "{} MiB per process"),
    ("file_size_mb", "--fsize", lambda mb: int(mb) * MiB, "{} MiB per file"),
    ("open_files", "--nofile", int, None),
    ("cpu_seconds", "--cpu", lambda seconds: max(1, int(round(seconds))), "{:g} CPU s"),
)


@dataclass(frozen=True)
class SandboxPolicy:
    """What a sandboxed tool process may use. All limits apply per sandbox.

    Args:
      network: keep the host's network (default False: loopback only, in a namespace of its own).
      max_processes: processes plus threads the sandbox's user may run (``RLIMIT_NPROC``,
        counted per sandbox where the kernel allows nested user namespaces). A fork bomb
        fails with ``BlockingIOError`` at this count. None: no limit.
      memory_mb: data segment of each process (``RLIMIT_DATA``). None: the tool's own limit.
      file_size_mb: largest file a process may write (``RLIMIT_FSIZE``; ``EFBIG`` past it).
      disk_mb: size of the working directory a tool creates (a tmpfs of that size; needs
        root to mount, otherwise only ``file_size_mb`` applies). ``ENOSPC`` past it.
      tmp_mb: size of the private ``/tmp`` (and ``/dev/shm``).
      cpu_seconds: CPU seconds per statement (Python kernel) or per process (other tools).
        None: only the tools' wall-clock timeouts apply.
      open_files: open file descriptors per process (``RLIMIT_NOFILE``).
      uid, gid: the user the sandbox runs as when the parent is root.
      readable: extra host paths made visible read-only (data a tool should read).
      env: extra environment variables set inside.
    """

    network: bool = False
    max_processes: int | None = 256
    memory_mb: int | None = None
    file_size_mb: int | None = 1024
    disk_mb: int | None = 1024
    tmp_mb: int = 256
    cpu_seconds: float | None = None
    open_files: int | None = 1024
    uid: int = 65534
    gid: int = 65534
    readable: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("max_processes", "memory_mb", "file_size_mb", "disk_mb", "open_files"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) < 1):
                raise ValueError(f"SandboxPolicy({name}={value!r}) must be a positive integer or None")
        if self.max_processes is not None and self.max_processes < 8:
            raise ValueError(
                f"SandboxPolicy(max_processes={self.max_processes!r}) is too small: the Python "
                "kernel alone runs about 8 threads; use at least 16"
            )
        if int(self.tmp_mb) < 1:
            raise ValueError(f"SandboxPolicy(tmp_mb={self.tmp_mb!r}) must be at least 1")
        if self.cpu_seconds is not None and not self.cpu_seconds > 0:
            raise ValueError(f"SandboxPolicy(cpu_seconds={self.cpu_seconds!r}) must be > 0 or None")
        if isinstance(self.readable, str):
            raise ValueError(
                f"SandboxPolicy(readable={self.readable!r}) must be a tuple of paths, e.g. ('/data',)"
            )
        for path in self.readable:
            if not os.path.isabs(path):
                raise ValueError(f"SandboxPolicy(readable=...) paths must be absolute, got {path!r}")

    def prlimit_options(self, *, cpu: bool = True) -> list[str]:
        """The ``prlimit`` options that apply these limits; ``cpu=False`` leaves out CPU seconds."""
        return [
            f"{option}={convert(value)}"
            for name, option, convert, _ in _PRLIMITS
            if (value := getattr(self, name)) and (cpu or name != "cpu_seconds")
        ]

    def summary(self) -> str:
        """The limits in a few words, for :func:`describe`."""
        parts = [words.format(value) for name, _, _, words in _PRLIMITS if words and (value := getattr(self, name))]
        return ", ".join(parts + [f"/tmp {self.tmp_mb} MiB"])


@dataclass(frozen=True)
class SandboxStatus:
    """What :func:`probe` found. ``reason`` says why not when ``available`` is False."""

    available: bool
    reason: str = ""
    backend: str | None = None
    version: str = ""
    as_root: bool = False
    per_sandbox_processes: bool = False
    disk_quota: bool = False
    bwrap: str = ""
    setpriv: str = ""
    unshare: str = ""
    prlimit: str = ""
    python_paths: tuple[str, ...] = ()


# -- probing ------------------------------------------------------------------------------

_PROBE_LOCK = threading.Lock()
_PROBED: list[SandboxStatus] = []  # memo of the one probe per process (the machine does not change)


def probe(refresh: bool = False) -> SandboxStatus:
    """Find out (once per process) whether and how tool processes can be sandboxed here.

    It really starts a sandbox (bubblewrap, the user switch, the limits and this Python
    interpreter inside), so a yes means the whole chain works; ~0.1 s.
    """
    with _PROBE_LOCK:
        if refresh or not _PROBED:
            _PROBED[:] = [_probe()]
        return _PROBED[0]


def sandbox_available() -> bool:
    """Whether :func:`probe` found a working sandbox."""
    return probe().available


def _probe() -> SandboxStatus:
    if not sys.platform.startswith("linux"):
        return SandboxStatus(False, f"sandboxing needs Linux namespaces; this is {sys.platform}")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return SandboxStatus(False, f"bubblewrap (bwrap) was not found on PATH: {INSTALL_HINT}")
    prlimit, setpriv, unshare = (shutil.which(name) for name in ("prlimit", "setpriv", "unshare"))
    as_root = os.geteuid() == 0
    if prlimit is None or (as_root and setpriv is None):
        return SandboxStatus(
            False, "util-linux's prlimit and setpriv were not found: install util-linux"
        )
    version = _run_text([bwrap, "--version"]).replace("bubblewrap", "").strip()
    status = SandboxStatus(
        False,
        backend="bubblewrap",
        version=version,
        as_root=as_root,
        bwrap=bwrap,
        setpriv=setpriv or "",
        unshare=unshare or "",
        prlimit=prlimit,
        python_paths=_python_paths(),
        disk_quota=as_root and _can_mount_tmpfs(),
    )
    sweep_stale_workdirs()  # what processes killed before closing their tools left behind
    # Per-sandbox process accounting: as root, a nested user namespace (see Sandbox.command);
    # as a normal user, bwrap's own user namespace already gives it.
    attempts = [True, False] if as_root and unshare else [not as_root]
    reason = ""
    for nested in attempts:
        candidate = replace(status, available=True, per_sandbox_processes=nested)
        sandbox = Sandbox(SandboxPolicy(max_processes=64), candidate)
        argv = sandbox.command([sys.executable, "-S", "-c", "import os; print(os.getuid())"], cwd=None)
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=30, env=os.environ.copy(), stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            continue
        expected = str(SandboxPolicy().uid) if as_root else str(os.getuid())
        if done.returncode == 0 and done.stdout.strip() == expected:
            return candidate
        tail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        reason = f"bubblewrap could not start a sandbox here: {tail[:300]}"
    if not as_root:
        reason += (
            " (as a normal user bubblewrap needs unprivileged user namespaces: "
            "sysctl kernel.unprivileged_userns_clone=1, or an AppArmor profile for bwrap)"
        )
    return replace(status, available=False, reason=reason)


def _run_text(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _python_paths() -> tuple[str, ...]:
    """The directories a fresh interpreter of this Python reads: prefixes and ``sys.path``."""
    code = (
        "import sys, json; print(json.dumps([sys.prefix, sys.exec_prefix, sys.base_prefix, "
        "sys.base_exec_prefix] + sys.path))"
    )
    paths = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd="/"
        )
        paths += json.loads(done.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        paths += sys.path
    paths.append(os.path.dirname(os.path.realpath(sys.executable)))
    return _existing_roots(paths)


def _existing_roots(paths: Sequence[str]) -> tuple[str, ...]:
    """Existing absolute paths (real paths), without those inside another one of them."""
    real = sorted({os.path.realpath(p) for p in paths if p and os.path.isabs(p) and os.path.exists(p)})
    roots: list[str] = []
    for path in real:
        if not any(_inside(path, root) for root in roots):
            roots.append(path)
    return tuple(roots)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _can_mount_tmpfs() -> bool:
    target = tempfile.mkdtemp(prefix="conveyor-probe-")
    try:
        if mount_tmpfs(target, 1, os.getuid(), os.getgid()):
            unmount(target)
            return True
        return False
    finally:
        shutil.rmtree(target, ignore_errors=True)


# -- choosing -----------------------------------------------------------------------------


def resolve_sandbox(setting: "bool | str | SandboxPolicy | Sandbox | None", *, tool: str) -> "Sandbox | None":
    """The :class:`Sandbox` a tool's ``sandbox=`` argument asks for, or None for none.

    ``"auto"``: one if this machine can, otherwise None and a one-time warning naming what to
    install. ``True`` or a :class:`SandboxPolicy`: one, or :class:`SandboxUnavailable` saying
    why not. ``False``/``None``: none (the explicit opt-out).
    """
    if isinstance(setting, Sandbox):
        return setting
    if setting is False or setting is None:
        return None
    if setting is True or isinstance(setting, SandboxPolicy):
        policy = setting if isinstance(setting, SandboxPolicy) else SandboxPolicy()
        status = probe()
        if not status.available:
            raise SandboxUnavailable(
                f"{tool}: sandbox=True but no sandbox can be started here: {status.reason}. "
                "Pass sandbox=False to run without one (model-written code then has your full rights)."
            )
        return Sandbox(policy, status)
    if setting == "auto":
        status = probe()
        if status.available:
            return Sandbox(SandboxPolicy(), status)
        _warn_unsandboxed(status.reason)
        return None
    raise ValueError(
        f"{tool}: sandbox={setting!r} is not one of 'auto', True, False or a SandboxPolicy"
    )


def _warn_unsandboxed(reason: str) -> None:
    # One place, one message: Python's default warning filter shows it once per process.
    warnings.warn(
        f"conveyor_hf: tools run model-written code WITHOUT a sandbox, with your full rights: {reason}. "
        "Pass sandbox=False to accept this silently, or sandbox=True to refuse to run without one.",
        SandboxWarning,
        stacklevel=1,
    )


def describe(policy: SandboxPolicy | None = None) -> str:
    """One line naming the containment tool processes get here (for ``conveyor-hf run``/``serve``)."""
    status = probe()
    if not status.available:
        return f"sandbox: none, tools run with your full rights ({status.reason})"
    return Sandbox(policy or SandboxPolicy(), status).describe()


# -- the sandbox ----------------------------------------------------------------------------


class Sandbox:
    """Builds the command line that runs a program contained by ``policy``.

    One object per tool; :meth:`command` is called for each process it starts. The working
    directory and any other writable directory are bound at their own paths, so paths mean
    the same inside and outside.
    """

    def __init__(self, policy: SandboxPolicy, status: SandboxStatus | None = None) -> None:
        self.policy = policy
        self.status = status or probe()
        if not self.status.available:
            raise SandboxUnavailable(f"no sandbox can be started here: {self.status.reason}")

    @property
    def user(self) -> tuple[int, int]:
        """``(uid, gid)`` of the contained processes, as the host sees them."""
        if self.status.as_root:
            return self.policy.uid, self.policy.gid
        return os.getuid(), os.getgid()

    def describe(self) -> str:
        uid, _ = self.user
        network = "host network" if self.policy.network else "no network (loopback only)"
        who = f"uid {uid}" + ("" if self.status.as_root else " (your user)")
        counted = "" if self.status.per_sandbox_processes else " (process limit shared by all sandboxes of this uid)"
        disk = (
            f", working dir {self.policy.disk_mb} MiB" if self.policy.disk_mb and self.status.disk_quota else ""
        )
        return (
            f"sandbox: bubblewrap {self.status.version}: {network}, own PID namespace, read-only "
            f"filesystem except the working directory and a private /tmp, runs as {who}; "
            f"limits: {self.policy.summary()}{disk}{counted}"
        )

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The whole environment inside: a few safe variables of the parent's, HOME=/tmp."""
        env = {
            "PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
        }
        for name, value in os.environ.items():
            if name in PASSED_ENV or name.startswith("LC_"):
                env[name] = value
        env.update(self.policy.env)
        env.update(extra or {})
        return env

    def command(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None,
        writable: Sequence[str] = (),
        readable: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        die_with_parent: bool = False,
        cpu_limit: bool = True,
    ) -> list[str]:
        """``argv`` wrapped so that it runs in the sandbox.

        ``cwd`` (writable, the process's working directory; None: the private ``/tmp``) and
        ``writable`` are bound read-write, ``readable`` read-only, all at their host paths.
        ``env`` is added to :meth:`environment`. ``die_with_parent`` kills the sandbox when the
        *thread* that starts it exits (use it only from a long-lived thread). ``cpu_limit``
        applies ``cpu_seconds`` to every process (False when the tool limits per statement).
        """
        policy, status = self.policy, self.status
        args = [
            status.bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", "sandbox", "--new-session",
        ]
        if not policy.network:
            args.append("--unshare-net")
        if not status.as_root:
            args.append("--unshare-user")
        if die_with_parent:
            args.append("--die-with-parent")
        args += _MountPlan.build(
            python_paths=status.python_paths + _pythonpath_dirs(),
            readable=tuple(policy.readable) + tuple(readable),
            writable=((cwd,) if cwd else ()) + tuple(writable),
            tmp_bytes=int(policy.tmp_mb) * MiB,
        )
        args += ["--chdir", os.path.realpath(cwd) if cwd else "/tmp", "--clearenv"]
        for name, value in self.environment(env).items():
            args += ["--setenv", name, value]
        args.append("--")
        if status.as_root:
            uid, gid = self.user
            args += [
                status.setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
            ]
            if status.per_sandbox_processes:
                args += [status.unshare, "--user", "--map-current-user", "--"]
        args += [status.prlimit, "--core=0", *policy.prlimit_options(cpu=cpu_limit), "--"]
        args += list(argv)
        return args

    def workdir(self, path: str | os.PathLike[str] | None = None, *, kind: str = "work", quota: bool = True) -> Workdir:
        """A directory the sandbox's user can write: ``path`` (adopted) or a new one for ``kind``.

        A new one (:func:`~conveyor_hf.tools.workdir.create_workdir`) is a tmpfs of ``disk_mb``
        when ``quota`` and the parent may mount one (root), otherwise a plain temporary
        directory; it is removed by :meth:`Workdir.close`. An adopted directory the sandbox
        user cannot write (the parent is root) is given to that user (``chown``, the
        directory itself only) and kept.
        """
        uid, gid = self.user
        if path is None:
            size_mb = self.policy.disk_mb if quota and self.status.disk_quota else None
            return create_workdir(kind, user=self.user if self.status.as_root else None, size_mb=size_mb)
        real = os.path.realpath(path)
        if self.status.as_root:
            info = os.stat(real)
            writable_by_user = info.st_uid == uid and info.st_mode & stat.S_IWUSR
            if not writable_by_user and not info.st_mode & stat.S_IWOTH:
                os.chown(real, uid, gid)
                os.chmod(real, stat.S_IMODE(info.st_mode) | stat.S_IRWXU)
        return Workdir(real, owned=False, mounted=False)

    def give(self, path: str) -> None:
        """Make a file the parent wrote readable by the sandbox's user (root parent only)."""
        if self.status.as_root:
            uid, gid = self.user
            os.chown(path, uid, gid)

    def __repr__(self) -> str:
        return f"Sandbox({self.policy!r})"


def contained_pid(pid: int | None, marker: str) -> int | None:
    """The process below ``pid`` (a bwrap) whose command line contains ``marker``: the program.

    Tools report this one as their child's pid, so that CPU and memory figures are the
    program's, not bwrap's. None when there is none (yet).
    """
    if pid is None:
        return None
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return None
    for child in children:
        try:
            if child.name() != "bwrap" and any(marker in part for part in child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    return None


def kill_sandbox(pid: int) -> None:
    """SIGKILL the bwrap process ``pid`` and its sandbox's init, which ends the whole PID
    namespace (everything the program started). Never raises."""
    try:
        import psutil

        inits = [child.pid for child in psutil.Process(pid).children()]
    except Exception:  # gone already, or psutil missing: the bwrap alone
        inits = []
    for target in inits + [pid]:
        try:
            os.kill(target, signal.SIGKILL)
        except OSError:
            pass


def _pythonpath_dirs() -> tuple[str, ...]:
    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    return tuple(p for p in entries if p and os.path.isabs(p))


class _MountPlan:
    """bubblewrap's mount arguments: a new root of read-only binds, tmpfs and writable binds."""

    def __init__(self) -> None:
        self.args: list[str] = []
        self.binds: list[str] = []  # host directories bound at their own path
        self.made: set[str] = {"/"}

    @classmethod
    def build(
        cls, *, python_paths: Sequence[str], readable: Sequence[str], writable: Sequence[str], tmp_bytes: int
    ) -> list[str]:
        plan = cls()
        for path in SYSTEM_PATHS:
            if os.path.islink(path):
                plan.args += ["--symlink", os.readlink(path), path]
                plan.made.add(path)
            elif os.path.isdir(path):
                plan.bind(path, writable=False)
        plan.args += ["--dev", "/dev", "--proc", "/proc"]
        plan.made.update({"/dev", "/proc"})
        plan.args += ["--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/tmp"]
        plan.args += ["--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/dev/shm"]
        plan.made.update({"/tmp", "/dev/shm"})
        for path in _existing_roots(list(python_paths) + list(readable)):
            if not any(_inside(path, bound) for bound in plan.binds):
                plan.bind(path, writable=False)
        for path in sorted({os.path.realpath(p) for p in writable}, key=len):
            plan.bind(path, writable=True)
        plan.args += ["--remount-ro", "/"]
        return plan.args

    def bind(self, path: str, *, writable: bool) -> None:
        self._make_parents(path)
        self.args += ["--bind" if writable else "--ro-bind", path, path]
        self.binds.append(path)
        self.made.add(path)

    def _make_parents(self, path: str) -> None:
        parents = []
        parent = os.path.dirname(path)
        while parent not in self.made and not any(_inside(parent, bound) for bound in self.binds):
            parents.append(parent)
            parent = os.path.dirname(parent)
        for directory in reversed(parents):
            self.args += ["--perms", "0755", "--dir", directory]
            self.made.add(directory)
