"""`perpdex demo`: the main job on the embedded default configuration.

For now (the engine-core stage) it builds a seeded order flow of two markets (BTC-PERP and
ETH-PERP): market makers quoting ladders around the oracle price, takers crossing the spread,
cancels and amends, and an oracle crash that the makers chase down; it replays the flow through
the engine and shows what happened. Later stages run it over ZeroMQ with real client processes.
"""
from __future__ import annotations

import random
import sys
import time
from collections import Counter

import msgspec

from engine import Engine, messages as M

MARKETS = {
    # name: (tick, lot, start price in ticks, min_qty)
    "BTC-PERP": ("0.1", "0.001", 650_000, 1),
    "ETH-PERP": ("0.01", "0.01", 200_000, 1),
}
SECOND = 1_000_000_000


def market_commands() -> list[M.Command]:
    out: list[M.Command] = []
    for name, (tick, lot, _, min_qty) in MARKETS.items():
        out.append(M.CreateMarket(
            market=name, tick_size=tick, lot_size=lot, min_qty=min_qty, imf_ppm=100_000,
            mmf_ppm=50_000, maker_fee_ppm=-100, taker_fee_ppm=500, liquidation_fee_ppm=10_000,
            price_band_ppm=50_000, funding_interval_s=3600, funding_cap_ppm=7500,
            interest_ppm=100))
    return out


def scenario(seed: int = 7, steps: int = 400) -> list[M.Command]:
    """A deterministic flow: quoting, taking, then a crash of 12 % over 60 steps."""
    rng = random.Random(seed)
    cmds = market_commands()
    ts = SECOND
    index = {name: spec[2] for name, spec in MARKETS.items()}
    quotes: dict[tuple[str, str], list[int]] = {}
    cid = 0
    for step in range(steps):
        ts += SECOND // 10
        crash = 200 <= step < 260
        for name in MARKETS:
            drift = -0.0021 if crash else rng.gauss(0, 0.0004)
            index[name] = max(1, round(index[name] * (1 + drift)))
            cmds.append(M.Oracle(market=name, price=index[name], ts=ts))
            for mm in ("mm-alpha", "mm-beta"):
                key = (mm, name)
                for old in quotes.pop(key, []):
                    cmds.append(M.Cancel(account=mm, market=name, cid=old, ts=ts))
                fresh = []
                width = 5 if mm == "mm-alpha" else 9
                for level in range(1, 4):
                    for side, sign in (("buy", -1), ("sell", 1)):
                        cid += 1
                        fresh.append(cid)
                        cmds.append(M.NewOrder(
                            account=mm, market=name, cid=cid, side=side, kind="limit",
                            qty=rng.randint(5, 40), price=index[name] + sign * width * level,
                            tif="alo", ts=ts))
                quotes[key] = fresh
            for taker in ("taker-1", "taker-2", "whale"):
                if rng.random() < (0.6 if crash else 0.3):
                    cid += 1
                    side = "sell" if crash and rng.random() < 0.8 else rng.choice(("buy", "sell"))
                    qty = rng.randint(20, 120) if taker == "whale" else rng.randint(1, 25)
                    if rng.random() < 0.5:
                        cmds.append(M.NewOrder(account=taker, market=name, cid=cid, side=side,
                                               kind="market", qty=qty, ts=ts))
                    else:
                        off = 20 if side == "buy" else -20
                        cmds.append(M.NewOrder(account=taker, market=name, cid=cid, side=side,
                                               kind="limit", qty=qty, price=index[name] + off,
                                               tif="ioc", ts=ts))
    cmds.append(M.StateHash(ts=ts))
    return cmds


def run(out=sys.stdout) -> int:
    cmds = scenario()
    eng = Engine()
    t0 = time.perf_counter()
    data = b"".join(msgspec.msgpack.encode(c) for c in cmds)
    events_raw = eng.execute_batch(data, "msgpack", "jsonl")
    seconds = time.perf_counter() - t0
    events = [msgspec.json.decode(line) for line in events_raw.splitlines()]
    kinds = Counter(e["type"] for e in events)
    reasons = Counter(e["reason"] for e in events if e["type"] in ("order_cancelled", "rejected"))
    w = out.write
    w("perpdex demo: two perpetual markets, two market makers, three takers, one crash\n\n")
    w(f"  {len(cmds):,} commands -> {len(events):,} events in {seconds * 1e3:.1f} ms\n")
    w("  events: " + ", ".join(f"{k} {v:,}" for k, v in sorted(kinds.items())) + "\n")
    w("  cancels and rejections by reason: "
      + ", ".join(f"{k} {v:,}" for k, v in sorted(reasons.items())) + "\n\n")
    w(f"  {'market':<10} {'first mark':>12} {'low mark':>12} {'last mark':>12} "
      f"{'fills':>7} {'volume (lots)':>14}\n")
    for name in MARKETS:
        marks = [e["mark"] for e in events if e["type"] == "mark" and e["market"] == name]
        fills = [e for e in events if e["type"] == "fill" and e["market"] == name]
        w(f"  {name:<10} {marks[0]:>12,} {min(marks):>12,} {marks[-1]:>12,} {len(fills):>7,} "
          f"{sum(f['qty'] for f in fills):>14,}\n")
    w("\n  positions (lots): ")
    parts = []
    for acct in ("mm-alpha", "mm-beta", "taker-1", "taker-2", "whale"):
        sizes = [eng.position(acct, name)[0] for name in MARKETS]
        parts.append(f"{acct} " + "/".join(f"{s:+,}" for s in sizes))
    w(", ".join(parts) + "  (BTC/ETH)\n")
    net = [sum(eng.position(a, n)[0] for a in ("mm-alpha", "mm-beta", "taker-1", "taker-2", "whale"))
           for n in MARKETS]
    w(f"  open interest nets to zero in every market: {net == [0] * len(MARKETS)}\n")
    w(f"  state hash: {events[-1]['hash']}\n")
    eng.check_integrity()
    return 0
