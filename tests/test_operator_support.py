"""What the operator tests (tests/test_operator_*.py, tests/test_private_fills.py) share: a real
`perpdex serve` process on free loopback ports, a raw client of one of its accounts, and the
`perpdex` command run as a process. No tests here."""
from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from perpdex.gateway.client import Client
from perpdex.gateway.natslocal import free_port

PERPDEX = shutil.which("perpdex", path=str(Path(sys.executable).parent)) or "perpdex"


def perpdex(*args, cwd=None, timeout=60, **kw) -> subprocess.CompletedProcess:
    """`perpdex ARGS` to its end (a loose hang guard), its output as text."""
    return subprocess.run([PERPDEX, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kw)


class Venue:
    """`perpdex serve --data DATA` on two free loopback ports (`args` added), started and
    waited for (its `perpdex serving` line); `stop()` ends it with SIGTERM."""

    def __init__(self, data: Path, *args, cwd=None):
        self.data = Path(data)
        self.router = f"tcp://127.0.0.1:{free_port()}"
        self.pub = f"tcp://127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [PERPDEX, "serve", "--data", str(self.data), "--router", self.router,
             "--pub", self.pub, *map(str, args)], cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        deadline = time.monotonic() + 30
        while True:
            line = self.proc.stdout.readline().decode()
            self.lines.append(line)
            if "perpdex serving" in line:
                break
            if not line and self.proc.poll() is not None:
                raise AssertionError(f"the server did not start: {self.proc.stderr.read()!r}")
            assert time.monotonic() < deadline, "the server did not start"
        self.errors: list[bytes] = []          # stderr, read all along (it never fills)
        self.reader = threading.Thread(target=lambda: self.errors.extend(self.proc.stderr),
                                       daemon=True)
        self.reader.start()

    def client(self, name: str, timeout_ms: int = 3000) -> Client:
        keys = self.data / "keys"
        return Client(self.router, str(keys / "server.key"), str(keys / f"{name}.key_secret"),
                      timeout_ms=timeout_ms)

    def stop(self) -> tuple[int, str, str]:
        """SIGTERM, then its exit code, all its output (from the start) and its errors."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        out = "".join(self.lines) + self.proc.stdout.read().decode()
        self.reader.join(5)
        return self.proc.returncode, out, b"".join(self.errors).decode()
