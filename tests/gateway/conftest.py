"""Fixtures that several gateway test files share: a fresh `perpdex serve` for each test
(`server`), and one on the embedded default for a module of SDK tests (`venue`)."""
import os
import subprocess
import time

import pytest

from tests.harness import HANG_S, PERPDEX, PUB, free_port


@pytest.fixture
def server(tmp_path):
    """A fresh server for each test (about half a second): no test sees another's orders,
    marks or streams, whatever order they run in."""
    data = tmp_path / "perpdex-data"
    router = f"tcp://127.0.0.1:{free_port()}"
    PUB[router] = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([PERPDEX, "serve", "--data", str(data), "--router", router,
                             "--pub", PUB[router],
                             "--session-timeout-ms", "800", "--oracle-sim", "off"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + HANG_S
        while not (data / "keys" / "admin.key_secret").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        time.sleep(0.3)
        yield data, router
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def venue(tmp_path_factory):
    """`perpdex serve` on the embedded default (simulated oracle on), a 800 ms session
    timeout; yields the environment that points the SDK at it."""
    home = tmp_path_factory.mktemp("venue")
    env = {"PERPDEX_DATA": str(home / "perpdex-data"),
           "PERPDEX_ROUTER": f"tcp://127.0.0.1:{free_port()}",
           "PERPDEX_PUB": f"tcp://127.0.0.1:{free_port()}"}
    proc = subprocess.Popen([PERPDEX, "serve", "--data", env["PERPDEX_DATA"],
                             "--router", env["PERPDEX_ROUTER"], "--pub", env["PERPDEX_PUB"],
                             "--session-timeout-ms", "800"], cwd=home,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while b"perpdex serving" not in proc.stdout.readline():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the server did not start"
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        yield dict(env, home=home)
    finally:
        for k, v in locals().get("saved", {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
