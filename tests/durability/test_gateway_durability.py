"""The durability seam (gateway/durability.py): what a journal will see; and what the server keeps
in memory. A server in a thread of this process (so the test can hold its `sync` and count its
objects), real CURVE sockets on ipc endpoints."""
import threading
import time

import msgspec
import pytest

from perpdex.engine import Engine, messages as M
from perpdex.gateway import oracle_sim
from perpdex.gateway.client import Client, Timeout
from perpdex.gateway.config import default_config
from perpdex.gateway.server import Server
from tests.harness import HANG_S

PRICED_S = 10        # a venue started with the simulated oracle (a client process) has prices


class Gate:
    """A Durability that records what it is given and makes `sync` wait while it is closed."""

    def __init__(self):
        self.commands: list = []
        self.open = threading.Event()
        self.open.set()

    def append(self, commands):
        self.commands.extend(commands)

    def sync(self):
        assert self.open.wait(10)


@pytest.fixture
def venue(tmp_path):
    cfg = default_config(tmp_path / "data")
    cfg.router, cfg.pub = f"ipc://{tmp_path}/req", f"ipc://{tmp_path}/pub"
    cfg.session_timeout_ms = 300
    gate = Gate()
    srv = Server(cfg, durability=gate)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    sim, _ = oracle_sim.spawn(cfg, srv.key_paths, plaintext=False)
    keys = tmp_path / "data" / "keys"

    def client(name, timeout_ms=3000):
        return Client(cfg.router, str(keys / "server.key"), str(keys / f"{name}.key_secret"),
                      timeout_ms=timeout_ms)
    try:
        yield srv, gate, client
    finally:
        oracle_sim.stop(sim)
        gate.open.set()
        srv.running = False
        t.join(timeout=5)
        srv.close()


def priced(gate: Gate):
    """Wait until the simulated oracle has priced both markets (PRICED_S at most)."""
    deadline = time.monotonic() + PRICED_S
    while {cmd.market for cmd in list(gate.commands) if type(cmd) is M.Oracle} != {
            "BTC-PERP", "ETH-PERP"}:
        assert time.monotonic() < deadline, f"no prices within {PRICED_S} s"
        time.sleep(0.02)


def test_no_reply_leaves_before_its_command_is_durable(venue):
    srv, gate, client = venue
    c = client("mm-1", timeout_ms=400)
    priced(gate)
    gate.open.clear()
    with pytest.raises(Timeout):
        c.request("new_order", market="BTC-PERP", cid="held", side="buy", kind="limit",
                  qty=1, price=600_000)
    held = [cmd for cmd in gate.commands if type(cmd) is M.NewOrder]
    assert [cmd.cid for cmd in held] == ["held"] and held[0].account == "mm-1"
    gate.open.set()
    c.timeout_ms = 3000
    reply = c._receive()
    assert reply["events"][0]["cid"] == "held" and reply["events"][0]["ts"] == held[0].ts


def test_the_seam_gets_every_command_the_servers_own_included_and_they_replay_exactly(venue):
    srv, gate, client = venue
    priced(gate)
    quitter = client("lev-1")
    quitter.request("session", cancel_on_disconnect=True)
    quitter.request("new_order", market="BTC-PERP", cid="cod", side="buy", kind="limit", qty=1,
                    price=600_000)
    quitter.close()                                  # its session times out: a cancel
    dms = client("mm-2")
    dms.request("new_order", market="BTC-PERP", cid="dms", side="buy", kind="limit", qty=1,
                price=600_000)
    dms.request("schedule_cancel", after_ms=100)     # the switch runs out: a cancel_all
    deadline = time.monotonic() + HANG_S            # 100 ms, and a session timeout; a hang
    kinds: set = set()
    while time.monotonic() < deadline and not {M.Cancel, M.CancelAll} <= kinds:
        time.sleep(0.1)
        dms.request("heartbeat")
        kinds = {type(cmd) for cmd in list(gate.commands)}
    assert {M.CreateMarket, M.Deposit, M.Oracle, M.NewOrder, M.Cancel, M.CancelAll} <= kinds
    srv.running = False
    time.sleep(0.5)
    stamps = [cmd.ts for cmd in gate.commands]
    assert all(stamps) and stamps == sorted(stamps)  # one clock, never backwards
    replay = Engine()
    for cmd in gate.commands:
        replay.execute(msgspec.msgpack.decode(msgspec.msgpack.encode(cmd), type=M.AnyCommand))
    assert replay.execute(M.StateHash())[0].hash == srv.engine.execute(M.StateHash())[0].hash


def test_what_the_server_keeps_per_request_is_nothing_the_garbage_collector_walks(venue):
    import gc
    srv, gate, client = venue
    c = client("mm-2")
    c.subscribe()
    priced(gate)
    for k in range(50):                              # sessions, streams, buckets made once
        c.request("new_order", market="BTC-PERP", cid=f"warm-{k}", side="buy", kind="limit",
                  qty=1, price=600_000)
    c.request("cancel_all")
    c.drain()
    gc.collect()
    before = len(gc.get_objects())
    for k in range(400):                             # 800 replies and 800 stream items kept
        c.request("new_order", market="BTC-PERP", cid=f"gc-{k}", side="buy", kind="limit",
                  qty=1, price=600_000)
        c.request("cancel", market="BTC-PERP", cid=f"gc-{k}")
    c.drain()
    gc.collect()
    grown = len(gc.get_objects()) - before
    assert len(srv.records.retries["mm-2"].replies) >= 800 and len(srv.records.streams["mm-2"].buffer) >= 800
    assert grown < 100, f"{grown} more objects for the garbage collector to walk"


class Faulty:
    """The engine, but a deposit to "boom" raises: a fault no input can cause any more, injected
    so that the one guard can be seen to work."""

    def __init__(self, engine):
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def route(self, cmd):
        if type(cmd) is M.Deposit and cmd.account == "boom":
            raise OverflowError("injected")
        return self.engine.route(cmd)


def test_an_unforeseen_failure_is_answered_internal_error_and_the_server_goes_on(venue):
    srv, gate, client = venue
    srv.seq.engine = Faulty(srv.engine)
    admin = client("admin")
    reply = admin.request("deposit", account="boom", amount=1)
    assert (reply["ok"], reply["reason"]) == (False, "internal_error")
    assert srv.stats["internal_errors"] == 1
    assert admin.request("deposit", account="fine", amount=1)["ok"]
