"""Crash tests: a server under load from real clients is killed with SIGKILL at random moments and
started again on its data folder, again and again. After each restart every client retries the
one request it had in flight (same req_id), and then: every acknowledged order is there or its
fate is, nothing unacknowledged happened twice (a retried market order fills once), positions
are what the acknowledged replies say, the audit balances, and the state hash equals a
from-scratch replay of the journal. A short run in `make test`; `pytest -m slow` runs the long
loop, and `perpdex verify` checks the data folder at the end (engine state and private streams
against every snapshot). The seed is in every failure message."""
from __future__ import annotations

import itertools
import random
import subprocess
import threading
import time

import msgspec
import pytest

from perpdex.engine import Engine
from perpdex.gateway import journal as J
from perpdex.gateway.client import Timeout
from tests.conftest import HANG_S
from tests.test_durability_restart import Venue
from tests.test_gateway import PERPDEX

enc = msgspec.msgpack.encode
ids = itertools.count(1)


class Trader(threading.Thread):
    """A client that sends requests one at a time until the server stops answering, keeping
    every acknowledged (request, reply) and the one request in flight."""

    def __init__(self, venue: Venue, account: str, make, seed: int):
        super().__init__(daemon=True)
        self.venue, self.account, self.make = venue, account, make
        self.r = random.Random(seed)
        self.acked: list = []
        self.inflight = None

    def run(self):
        # no reply for 5 s: the server was killed (a loaded machine answers well within it)
        c = self.venue.client(self.account, timeout_ms=5000)
        try:
            while True:
                msg = self.inflight or self.make(self)
                self.inflight = msg
                try:
                    reply = c.send_raw(enc(msg))
                except Timeout:
                    return                          # killed: `inflight` is unacknowledged
                if reply.get("reason") == "rate_limited":
                    time.sleep(reply["retry_after_ms"] / 1000)
                    continue
                self.acked.append((msg, reply))
                self.inflight = None
        finally:
            c.close()

    def retry(self):
        """After the restart: send the request in flight again, the same bytes, same req_id."""
        if self.inflight is None:
            return
        c = self.venue.client(self.account)
        while True:
            reply = c.send_raw(enc(self.inflight))
            if reply.get("reason") != "rate_limited":
                break
            time.sleep(reply["retry_after_ms"] / 1000)
        self.acked.append((self.inflight, reply))
        self.inflight = None
        c.close()


def taking(t: Trader) -> dict:
    """A market buy (IOC) against the maker's wall: retried twice, it would fill twice."""
    return {"req_id": next(ids), "type": "new_order", "market": "BTC-PERP",
            "cid": f"t{next(ids)}", "side": "buy", "kind": "market", "qty": t.r.randint(1, 3)}


def resting(t: Trader) -> dict:
    """A resting buy far from the market, or a cancel of one placed before."""
    mine = [m["cid"] for m, rep in t.acked if m["type"] == "new_order"]
    if mine and t.r.random() < 0.4:
        return {"req_id": next(ids), "type": "cancel", "market": "BTC-PERP",
                "cid": t.r.choice(mine)}
    return {"req_id": next(ids), "type": "new_order", "market": "BTC-PERP",
            "cid": f"r{next(ids)}", "side": "buy", "kind": "limit", "qty": 1,
            "price": 600_000 + t.r.randint(0, 1000)}


def events(reply, kind):
    return [e for e in reply.get("events", []) if e["type"] == kind]


def check_accounts(venue, traders: list[Trader], where: str):
    """Every acknowledged order is there or its fate is: positions are the acknowledged fills
    (a market order applied twice would fill twice), the maker holds the other side, the open
    orders are those accepted and not cancelled (by account, over every trader of it), and the
    audit balances."""
    bought = {}
    for t in traders:
        if t.make is taking:
            bought[t.account] = bought.get(t.account, 0) + sum(
                f["qty"] for _, rep in t.acked for f in events(rep, "fill"))
    for account, qty in bought.items():
        pos = venue.client(account).request("query_account")["events"][0]["positions"]
        size = sum(p["size"] for p in pos if p["market"] == "BTC-PERP")
        assert size == qty, f"{account}: position {size}, acknowledged fills {qty} ({where})"
    maker = venue.client("mm-1").request("query_account")["events"][0]["positions"]
    assert sum(p["size"] for p in maker) == -sum(bought.values()), where
    for account in {t.account for t in traders if t.make is resting}:
        acked = [rep for t in traders if t.account == account for _, rep in t.acked]
        accepted = {e["cid"] for rep in acked for e in events(rep, "order_accepted")}
        gone = {e["cid"] for rep in acked for e in events(rep, "order_cancelled")}
        orders = venue.client(account).request("query_account")["events"][0]["open_orders"]
        assert {o["cid"] for o in orders} == accepted - gone, f"{account} ({where})"
    audit = venue.client("admin").request("audit")["events"][0]
    assert audit["deposits"] - audit["withdrawals"] == (
        audit["collateral"] + audit["unrealised_pnl"] + audit["insurance_fund"]
        + audit["fees"]), where


def check(v: Venue, traders: list[Trader], seed: int, cycle: int):
    where = f"seed {seed}, cycle {cycle}"
    check_accounts(v, traders, where)
    said = v.client("admin").request("state_hash")["events"][0]["hash"]
    eng = Engine()                                  # the server is idle: its journal is whole
    recs, _ = J.read_all(v.data / "journal")
    for _, kind, payload in recs:
        if kind == J.COMMAND:
            eng.execute(J.decode(kind, payload))
    assert J.state_hash(eng) == said, where


def crash_loop(tmp_path, seed: int, cycles: int):
    r = random.Random(seed)
    v = Venue(tmp_path, snapshot_every=r.choice([0, 200, 500]), segment_bytes=1 << 16)
    try:
        v.start()
        v.client("oracle").request("oracle", market="BTC-PERP", price=650_000)
        wall = v.client("mm-1").request("new_order", market="BTC-PERP", cid="wall",
                                        side="sell", kind="limit", qty=500_000, price=651_000)
        assert events(wall, "order_accepted"), wall
        plan = [("taker-1", taking), ("taker-2", taking), ("mm-2", resting),
                ("lev-1", resting)]
        traders = [Trader(v, a, make, r.randrange(1 << 30)) for a, make in plan]
        for cycle in range(cycles):
            work_then_kill(traders, v.kill, r, f"seed {seed}, cycle {cycle}")
            assert "recovered" in v.start(), f"seed {seed}"
            for t in traders:
                t.retry()
            check(v, traders, seed, cycle)
            did_work(traders, f"seed {seed}, cycle {cycle}")
            traders = [_again(t) for t in traders]
        v.kill()
        r = subprocess.run([PERPDEX, "verify", str(v.data)], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, f"seed {seed}: {r.stdout}{r.stderr}"
    finally:
        v.stop()


def work_then_kill(traders: list[Trader], kill, r: random.Random, where: str):
    """Start the traders, let each have 1 to 40 requests answered (a random moment counted in
    work, not in time; HANG_S only catches a hang), then `kill()` while they are at it. Every
    trader did something this cycle before the kill: asserted, not hoped."""
    before = [len(t.acked) for t in traders]
    want = r.randint(1, 40)
    for t in traders:
        t.start()
    deadline = time.monotonic() + HANG_S
    while not all(len(t.acked) - b >= want for t, b in zip(traders, before)):
        assert all(t.is_alive() for t in traders), f"a trader stopped before the kill ({where})"
        assert time.monotonic() < deadline, (
            f"no {want} replies each in {HANG_S} s (a hang): "
            f"{[len(t.acked) - b for t, b in zip(traders, before)]} ({where})")
        time.sleep(0.005)
    kill()
    for t in traders:
        t.join(timeout=HANG_S)
        assert not t.is_alive(), where
    assert all(len(t.acked) - b >= want for t, b in zip(traders, before)), where


def did_work(traders: list[Trader], where: str):
    """What the loop did, in counts: fills for the takers, orders accepted for the others."""
    fills = sum(len(events(rep, "fill")) for t in traders if t.make is taking
                for _, rep in t.acked)
    accepted = sum(len(events(rep, "order_accepted")) for t in traders if t.make is resting
                   for _, rep in t.acked)
    assert fills > 0 and accepted > 0, (fills, accepted, where)


def _again(t: Trader) -> Trader:
    """A fresh thread for the next cycle, keeping what was acknowledged."""
    n = Trader(t.venue, t.account, t.make, t.r.randrange(1 << 30))
    n.acked = t.acked
    return n


def test_sigkill_under_load_loses_nothing_acknowledged_and_does_nothing_twice(tmp_path):
    crash_loop(tmp_path, seed=11, cycles=3)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_sigkill_under_load_many_times(tmp_path, seed):
    crash_loop(tmp_path, seed=seed, cycles=12)
