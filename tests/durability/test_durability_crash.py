"""Crash tests: a server under load from real clients is killed with SIGKILL at random moments and
started again on its data folder, again and again. After each restart every client retries the
one request it had in flight (same req_id), and then: every acknowledged order is there or its
fate is, nothing unacknowledged happened twice (a retried market order fills once), positions
are what the acknowledged replies say, the audit balances, and the state hash equals a
from-scratch replay of the journal. A short run in `make test`; `pytest -m slow` runs the long
loop, and `perpdex verify` checks the data folder at the end (engine state and private streams
against every snapshot). The seed is in every failure message."""
from __future__ import annotations

import random
import subprocess

import pytest

from perpdex.engine import Engine
from perpdex.gateway import journal as J
from tests.harness import (PERPDEX, Trader, Venue, check_accounts, did_work, events, resting,
                            taking, work_then_kill)


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
