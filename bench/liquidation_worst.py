"""The worst cases of a liquidation pass (issue 20, docs/limits.md "Bounded work"):

    python -m bench.liquidation_worst [--positions 30000] [--bankrupt 100] [--waiting 60000]

  adl       one `oracle` that makes `--bankrupt` long scopes bankrupt at once, with no bid and an
            empty fund, against `--positions` profitable shorts: every bankrupt scope is
            auto-deleveraged (the queue is ranked once a pass);
  waiting   one `oracle` that puts `--waiting` scopes below maintenance with
            `max_liquidations_per_update` 100, then `--ticks` clock commands that each
            liquidate the next 100 (p50 / p99 / max of those commands).

Each command goes through Engine.execute_batch, as the gateway sends it; times are wall
clock on this machine (noisy); the counts of work (Engine.work) are not.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

import msgspec

from perpdex.engine import Engine, messages as M

USD = 1_000_000
PLAIN = dict(tick_size="0.01", lot_size="0.001", min_qty=1, imf_ppm=100_000, mmf_ppm=50_000,
             maker_fee_ppm=0, taker_fee_ppm=0, liquidation_fee_ppm=10_000,
             price_band_ppm=1_000_000, funding_interval_s=3600, funding_cap_ppm=7500,
             interest_ppm=0)                    # multiplier 10: 1 USD a lot at 100,000 ticks
enc = msgspec.msgpack.encode


def venue(longs, shorts, long_lots, short_lots, long_usd, bid=None, bound=100,
           short_usd=10_000) -> Engine:
    """`longs` accounts buy `long_lots` each from `shorts` accounts selling `short_lots` each,
    at 1,000 USD; optionally a bid wall of the maker at `bid`."""
    eng = Engine()
    cmds = [M.CreateMarket(market="X", max_liquidations_per_update=bound, **PLAIN),
            M.Oracle(market="X", price=100_000), M.Deposit(account="mm", amount=10**9 * USD)]
    for j in range(shorts):
        cmds += [M.Deposit(account=f"s{j}", amount=short_usd * USD),
                 M.NewOrder(account=f"s{j}", market="X", cid=1, side="sell", kind="limit",
                            qty=short_lots, price=100_000)]
    for i in range(longs):
        cmds += [M.Deposit(account=i, amount=long_usd * USD),
                 M.NewOrder(account=i, market="X", cid=1, side="buy", kind="limit",
                            qty=long_lots, price=100_000)]
    if bid:
        cmds.append(M.NewOrder(account="mm", market="X", cid="wall", side="buy", kind="limit",
                               qty=longs * long_lots, price=bid))
    for k in range(0, len(cmds), 20_000):
        eng.execute_batch(b"".join(enc(c) for c in cmds[k:k + 20_000]))
    assert eng.execute(M.Audit())[0].open_interest["X"].long == longs * long_lots
    return eng


def _timed(eng: Engine, cmd) -> tuple[float, bytes]:
    data = enc(cmd)
    t0 = time.perf_counter_ns()
    out = eng.execute_batch(data)
    return (time.perf_counter_ns() - t0) / 1e6, out


def adl(positions: int, bankrupt: int) -> dict:
    """`bankrupt` longs of 10 x `positions` / `bankrupt` lots each, 100 USD each; a 60 % gap."""
    lots = 10 * positions // bankrupt
    eng = venue(bankrupt, positions, lots, 10, lots // 10)
    before = eng.work()
    gc.collect()
    gc.disable()
    try:
        ms, out = _timed(eng, M.Oracle(market="X", price=40_000, ts=1))
    finally:
        gc.enable()
    after = eng.work()
    return {"positions": positions, "bankrupt": bankrupt, "oracle_ms": ms,
            "adl_ranked": after["adl_ranked"] - before["adl_ranked"],
            "adl_events": out.count(b"\xa3adl")}


def waiting(scopes: int, ticks: int) -> dict:
    """`scopes` longs just under maintenance after the mark update, 100 liquidated a pass."""
    eng = venue(scopes, 1, 100, 100 * scopes, 20, bid=82_000, bound=100, short_usd=10**8)
    gc.collect()
    gc.disable()
    try:
        oracle_ms, _ = _timed(eng, M.Oracle(market="X", price=83_000, ts=1))
        times = []
        looked = []
        for k in range(ticks):
            before = eng.work()["scopes_looked_at"]
            ms, _ = _timed(eng, M.Clock(ts=2 + k))
            times.append(ms)
            looked.append(eng.work()["scopes_looked_at"] - before)
    finally:
        gc.enable()
    times.sort()
    return {"waiting": scopes, "oracle_ms": oracle_ms, "ticks": ticks,
            "tick_p50_ms": statistics.median(times), "tick_p99_ms": times[int(0.99 * ticks)],
            "tick_max_ms": times[-1], "looked_at_max": max(looked)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--positions", type=int, default=30_000)
    ap.add_argument("--bankrupt", type=int, default=100)
    ap.add_argument("--waiting", type=int, default=60_000)
    ap.add_argument("--ticks", type=int, default=600)
    a = ap.parse_args(argv)
    r = adl(a.positions, a.bankrupt)
    print(f"adl: one oracle, {r['bankrupt']} bankrupt scopes against {r['positions']:,} "
          f"positions: {r['oracle_ms']:.1f} ms, {r['adl_ranked']:,} positions ranked, "
          f"{r['adl_events']:,} adl events", flush=True)
    r = waiting(a.waiting, a.ticks)
    print(f"waiting: {r['waiting']:,} scopes below maintenance: the oracle {r['oracle_ms']:.1f} "
          f"ms; then {r['ticks']} clock commands p50 {r['tick_p50_ms']:.2f} / p99 "
          f"{r['tick_p99_ms']:.2f} / max {r['tick_max_ms']:.2f} ms, at most "
          f"{r['looked_at_max']} scopes looked at a command", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
