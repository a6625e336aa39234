"""Directories of tool child processes: made per tool, removed by ``close()``, swept after a crash.

A tool's child (the Python kernel) gets a working directory, and the kernel a private
runtime directory for its connection file and sockets. Each is created in the temporary
directory as ``conveyor-<kind>-<pid>-XXXXXXXX``, ``<pid>`` naming the process that made
it; :meth:`Workdir.close` removes it. A process killed before it could close its tools
(SIGKILL, a crash, a test run stopped) leaves its directories behind: the next
:func:`create_workdir`, in any process, removes those whose maker is gone
(:func:`sweep_stale_workdirs`).

A directory may be a size-limited tmpfs (the sandbox's disk quota; mounting needs root);
its mount source ``conveyor-hf-<pid>`` names the process that mounted it, so a stale
mount is found and unmounted wherever it is.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import psutil

__all__ = ["Workdir", "create_workdir", "mount_tmpfs", "sweep_stale_workdirs", "unmount"]

#: How every working directory's name starts, followed by ``<kind>-<pid>-``.
PREFIX = "conveyor-"
#: The name of a directory :func:`create_workdir` made (mkdtemp's suffix: 8 of ``[a-z0-9_]``).
_NAME = re.compile(rf"^{PREFIX}[a-z]+-(?P<pid>\d+)-[a-z0-9_]{{8}}$")
#: The source name of a working-directory tmpfs, followed by the pid of the process that mounted it.
_MOUNT_SOURCE = "conveyor-hf-"


@dataclass
class Workdir:
    """A directory a tool's child writes in. ``close()`` removes it if the tool created it."""

    path: str
    owned: bool
    mounted: bool

    def close(self) -> None:
        """Unmount and remove an owned directory (idempotent); an adopted one is left alone."""
        if not self.owned:
            return
        if self.mounted:
            unmount(self.path)
            self.mounted = False
        shutil.rmtree(self.path, ignore_errors=True)


def create_workdir(kind: str, *, user: tuple[int, int] | None = None, size_mb: int | None = None) -> Workdir:
    """A new directory for ``kind`` (``"python"``, ``"kernel"``), removed by its ``close()``.

    ``user`` (uid, gid): the owner to give it (a sandbox's user, when the parent is root).
    ``size_mb``: make it a tmpfs of that size if this process may mount one. Stale
    directories of dead processes are swept first.
    """
    sweep_stale_workdirs()
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-{os.getpid()}-")
    uid, gid = user if user is not None else (os.getuid(), os.getgid())
    mounted = size_mb is not None and mount_tmpfs(path, size_mb, uid, gid)
    if user is not None and not mounted:
        os.chown(path, uid, gid)
    return Workdir(path, owned=True, mounted=mounted)


def mount_tmpfs(path: str, size_mb: int, uid: int, gid: int) -> bool:
    """Mount a tmpfs of ``size_mb`` owned by ``uid:gid`` on ``path``; whether it worked."""
    options = f"size={int(size_mb)}m,mode=0700,uid={uid},gid={gid},nosuid,nodev"
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, f"{_MOUNT_SOURCE}{os.getpid()}", path],
            capture_output=True, timeout=10, stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def unmount(path: str) -> None:
    """Lazily unmount ``path``. Never raises."""
    try:
        subprocess.run(["umount", "-l", path], capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        pass


def sweep_stale_workdirs() -> None:
    """Unmount and remove the working directories of processes that are gone.

    Found by name in the temporary directory, and by mount source wherever they are
    mounted. A directory whose maker's pid now belongs to a younger process is stale too.
    """
    stale: set[str] = set()
    for source, target in _mounts():
        pid = source[len(_MOUNT_SOURCE):]
        if source.startswith(_MOUNT_SOURCE) and pid.isdigit() and _maker_gone(int(pid), target):
            stale.add(target)
    root = tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        names = []
    for name in names:
        match = _NAME.match(name)
        path = os.path.join(root, name)
        if match and _maker_gone(int(match["pid"]), path):
            stale.add(path)
    for path in stale:
        if os.path.ismount(path):
            unmount(path)
        shutil.rmtree(path, ignore_errors=True)


def _mounts() -> list[tuple[str, str]]:
    """``(source, target)`` of each mount this process sees (Linux), else none."""
    try:
        with open("/proc/self/mounts") as mounts:
            return [(fields[0], fields[1]) for fields in (line.split() for line in mounts) if len(fields) > 1]
    except OSError:
        return []


def _maker_gone(pid: int, path: str) -> bool:
    """Whether process ``pid``, which made ``path``, has ended (its pid free or reused since)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # a living process of another user
        return False
    try:
        started = psutil.Process(pid).create_time()
        made = os.stat(path).st_ctime  # changes with the contents, never before the creation
    except (OSError, psutil.Error):
        return False
    return started > made + 1.0  # the pid's process is younger than the directory: not its maker
