"""Client processes for the exchange demo: takers and leveraged traders, over ZeroMQ.

    python -m gateway.bots taker --data DIR --account taker-1 --seconds 30
    python -m gateway.bots leveraged --data DIR --account lev-1 --leverage 10 --seconds 30

(Market makers are examples/market_maker.py.) Each is seeded, so a run can be repeated.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from gateway.client import Client, Timeout, units


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
    """Goes long BTC at the given leverage with most of its equity, then holds."""
    c = connect(a)
    u = units(c.request("markets"))["BTC-PERP"]
    c.request("set_leverage", market="BTC-PERP", leverage=a.leverage)
    equity = c.request("query_account")["events"][0]["equity"]
    mark = None
    while mark is None:
        reply = c.request("new_order", market="BTC-PERP", cid="probe", side="buy", kind="limit",
                          qty=1, price=1, tif="ioc")
        rej = [e for e in reply["events"] if e["type"] == "rejected"]
        if not rej or rej[0]["reason"] != "no_mark_price":
            break
        time.sleep(0.1)
    # Buy until the position is worth 90 % of what the leverage allows, a clip at a time as the
    # market makers re-quote (about 65,000 USD a coin).
    target = int(equity * a.leverage * 9 // 10 // (650_000 * 100))
    filled, k = 0, 0
    stop = time.monotonic() + a.seconds / 4
    while filled < target and time.monotonic() < stop:
        reply = c.request("new_order", market="BTC-PERP", cid=f"long-{k}", side="buy",
                          kind="market", qty=min(target - filled, u.lots("0.5")))
        filled += sum(e["qty"] for e in reply["events"] if e["type"] == "fill")
        k += 1
        time.sleep(0.2)
    print(f"{a.account}: long {u.size(filled)} BTC at up to {a.leverage}x")
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
    a = ap.parse_args(argv)
    return taker(a) if a.role == "taker" else leveraged(a)


if __name__ == "__main__":
    sys.exit(main())
