"""Client processes for the exchange demo: takers and leveraged traders, over ZeroMQ.

    python -m perpdex.gateway.bots taker --data DIR --account taker-1 --seconds 30
    python -m perpdex.gateway.bots leveraged --data DIR --account lev-1 --market BTC-PERP --clip 0.5

(Market makers are examples/market_maker.py.) Each is seeded, so a run can be repeated.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from .client import Client, Timeout, units


def connect(a) -> Client:
    keys = Path(a.data) / "keys"
    return Client(a.router, str(keys / "server.key"), str(keys / f"{a.account}.key_secret"))


def taker(a) -> int:
    """Market orders of random side and size every 50-300 ms; sells more when told to."""
    c = connect(a)
    rng = random.Random(a.seed)
    u = units(c.request("markets"))
    end = time.monotonic() + a.seconds
    sent = 0
    while time.monotonic() < end:
        market = rng.choice(sorted(u))
        side = "sell" if rng.random() < a.sell_bias else "buy"
        qty = u[market].lots(str(rng.choice(["0.01", "0.02", "0.05"]) if market == "BTC-PERP"
                                 else rng.choice(["0.1", "0.2", "0.5"])))
        try:
            c.request("new_order", market=market, cid=f"t{sent}", side=side, kind="market",
                      qty=qty)
            sent += 1
        except Timeout:
            break
        time.sleep(rng.uniform(0.05, 0.3))
    print(f"{a.account}: {sent} market orders")
    return 0


def leveraged(a) -> int:
    """Goes long `--market` at the given leverage with most of its equity, `--clip` at a time as
    the market makers re-quote, then holds."""
    c = connect(a)
    reply = c.request("markets")
    u = units(reply)[a.market]
    mult = next(m["multiplier"] for m in reply["markets"] if m["market"] == a.market)
    c.request("set_leverage", market=a.market, leverage=a.leverage)
    equity = c.request("query_account")["events"][0]["equity"]
    ask = None
    while ask is None:                      # wait for the market makers' first quotes
        book = c.request("book", market=a.market, depth=1)
        ask = book["asks"][0][0] if book["asks"] else None
        if ask is None:
            time.sleep(0.1)
    # Buy until the position is worth 90 % of what the leverage allows.
    target = equity * a.leverage * 9 // 10 // (ask * mult)
    filled, k = 0, 0
    stop = time.monotonic() + a.seconds / 2
    while filled < target and time.monotonic() < stop:
        reply = c.request("new_order", market=a.market, cid=f"long-{k}", side="buy",
                          kind="market", qty=min(target - filled, u.lots(a.clip)))
        filled += sum(e["qty"] for e in reply.get("events", []) if e["type"] == "fill")
        k += 1
        time.sleep(0.2)
    print(f"{a.account}: long {u.size(filled)} {a.market} at up to {a.leverage}x")
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        time.sleep(0.5)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("role", choices=("taker", "leveraged"))
    ap.add_argument("--data", default="perpdex-data")
    ap.add_argument("--router", default="tcp://127.0.0.1:7701")
    ap.add_argument("--account", required=True)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sell-bias", type=float, default=0.5)
    ap.add_argument("--leverage", type=int, default=10)
    ap.add_argument("--market", default="BTC-PERP", help="leveraged: the market to go long in")
    ap.add_argument("--clip", default="0.5", help="leveraged: the size of each market order, "
                    "in the base currency")
    a = ap.parse_args(argv)
    return taker(a) if a.role == "taker" else leveraged(a)


if __name__ == "__main__":
    sys.exit(main())
