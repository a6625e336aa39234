"""Servers that tests start on loopback, on free ports, stopped by their own process id."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServedProcess:
    """A server process started by a test: its base URL, its log, and ``stop()``."""

    def __init__(self, argv: list[str], port: int, *, health: str = "/health", limit: float = 120.0,
                 env: dict[str, str] | None = None) -> None:
        self.port = port
        self.root = f"http://127.0.0.1:{port}"
        self.log = Path(tempfile.mkstemp(prefix="conveyor-test-server-", suffix=".log")[1])
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **(env or {})}, start_new_session=True)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.root + health, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"server not healthy within {limit:g}s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the server's process group by its own process id (bounded)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)


def transformers_serve(model_path: str | Path) -> ServedProcess:
    """``transformers serve MODEL`` on a free loopback port, decoding on one thread."""
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    argv = [str(exe) if exe.exists() else "transformers", "serve", str(model_path),
            "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32"]
    return ServedProcess(argv, port, env={"OMP_NUM_THREADS": "1"})


class CuttingProxy:
    """A loopback TCP proxy that closes both sides after ``limit`` bytes of the
    server's answer: a connection that drops mid-stream."""

    def __init__(self, target_port: int, limit: int) -> None:
        self.target_port, self.limit = target_port, limit
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))

        def pump_up() -> None:
            try:
                while data := client.recv(65536):
                    upstream.sendall(data)
            except OSError:
                pass

        threading.Thread(target=pump_up, daemon=True).start()
        sent = 0
        try:
            while sent < self.limit and (data := upstream.recv(min(4096, self.limit - sent))):
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            self.cut.set()
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the other pump; the peer sees the close
                except OSError:
                    pass
                sock.close()

    def close(self) -> None:
        self.listener.close()


class SilentServer:
    """Accepts connections on loopback and never answers: a stuck server."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()
