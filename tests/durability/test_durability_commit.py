"""The group commit with `fsync = "batch"`: a turn's replies wait for the fsync that covers its
records, the loop goes on taking requests meanwhile, and one fsync covers every turn written
while the one before ran. A server in a thread of this process (so that the test can hold the
journal's fdatasync), real CURVE sockets on ipc endpoints."""
import functools
import os
import threading
import time

import msgspec
import pytest

from perpdex.gateway import journal as J
from perpdex.gateway.client import Client, Timeout
from perpdex.gateway.config import default_config
from perpdex.gateway.server import Server


@pytest.fixture
def held(tmp_path, monkeypatch):
    """A journaled server whose fdatasync waits while `gate` is clear."""
    gate = threading.Event()
    gate.set()
    calls = []
    real = os.fdatasync

    def fdatasync(fd):
        calls.append(fd)
        assert gate.wait(10)
        real(fd)

    monkeypatch.setattr(J.os, "fdatasync", fdatasync)
    cfg = default_config(tmp_path / "data")
    cfg.router, cfg.pub = f"ipc://{tmp_path}/req", f"ipc://{tmp_path}/pub"
    srv = Server(cfg)                               # the journal of cfg: fsync = "batch"
    loop = threading.Thread(target=srv.serve_forever, daemon=True)
    loop.start()
    keys = tmp_path / "data" / "keys"
    client = functools.partial(_client, cfg.router, keys)
    yield srv, gate, client, calls
    gate.set()
    srv.running = False
    loop.join(timeout=5)
    srv.close()


def _client(router, keys, name, timeout_ms=3000) -> Client:
    return Client(router, str(keys / "server.key"), str(keys / f"{name}.key_secret"),
                  timeout_ms=timeout_ms)


def test_no_reply_leaves_before_the_fsync_that_covers_its_command(held):
    srv, gate, client, calls = held
    c = client("admin", timeout_ms=400)
    assert c.request("deposit", account="x", amount=1)["ok"]
    gate.clear()
    with pytest.raises(Timeout):
        c.request("deposit", account="x", amount=2)
    assert srv.held                                  # written, held, not sent
    gate.set()
    c.timeout_ms = 3000
    assert c._receive()["events"][0]["collateral"] == 3


def test_the_loop_takes_requests_while_an_fsync_runs_and_one_fsync_covers_them(held):
    srv, gate, client, calls = held
    c = client("admin", timeout_ms=3000)
    c.request("deposit", account="x", amount=1)
    gate.clear()
    for k in range(5):                               # five turns, while the first fsync waits
        c.sock.send(msgspec.msgpack.encode({"req_id": k, "type": "deposit", "account": "x",
                                            "amount": 1}))
        time.sleep(0.05)
    before = len(calls)
    assert srv.seq.durability.seq > srv.seq.durability.synced      # written already
    gate.set()
    replies = [c._receive() for _ in range(5)]
    assert [r["req_id"] for r in replies] == list(range(5))
    assert len(calls) - before <= 2                  # the waiting one and one for the rest
