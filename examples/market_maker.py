"""A small but real market maker for `perpdex serve`.

It follows the oracle index on the public stream (each `mark` event carries it), quotes
`--levels` post-only orders a side around it, and re-quotes when it moves or one of its orders
fills (its private stream says so). Each
re-quote is one batch: cancel_all first, then the new quotes.

    python examples/market_maker.py --data perpdex-data --account mm-1 --market BTC-PERP \\
        --size 0.05 --spread-bps 5 --seconds 60
"""
from __future__ import annotations

import argparse
import sys
import time
from decimal import Decimal
from pathlib import Path

import msgspec
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.client import Client, curve_socket, units  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="perpdex-data", help="the server's data folder (keys)")
    ap.add_argument("--router", default="tcp://127.0.0.1:7701")
    ap.add_argument("--pub", default="tcp://127.0.0.1:7702")
    ap.add_argument("--account", default="mm-1")
    ap.add_argument("--market", default="BTC-PERP")
    ap.add_argument("--size", default="0.05", help="size of each quote, in the base currency")
    ap.add_argument("--spread-bps", type=int, default=5, help="half-spread of the first level")
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60.0, help="run this long, then cancel all")
    a = ap.parse_args(argv)

    keys = Path(a.data) / "keys"
    c = Client(a.router, str(keys / "server.key"), str(keys / f"{a.account}.key_secret"))
    u = units(c.request("markets"))[a.market]
    size = u.lots(Decimal(a.size))
    c.request("session", cancel_on_disconnect=True)       # if we die, our quotes go with us
    c.subscribe()

    sub = curve_socket(c.ctx, zmq.SUB, str(keys / "server.key"),
                       str(keys / f"{a.account}.key_secret"))
    sub.setsockopt(zmq.SUBSCRIBE, a.market.encode())
    sub.connect(a.pub)

    mark = None
    quoted_at = None
    fills = 0
    end = time.monotonic() + a.seconds
    last_beat = 0.0
    while time.monotonic() < end:
        if sub.poll(100):
            topic, body = sub.recv_multipart()[:2]
            ev = msgspec.msgpack.decode(body)
            if ev["type"] == "mark":
                mark = ev["index"]          # quote around the oracle's fair price
        stream_fills = [i for i in c.drain() if i["event"]["type"] == "fill"]
        fills += len(stream_fills)
        if mark is not None and (mark != quoted_at or stream_fills):
            step = max(1, mark * a.spread_bps // 10_000)
            items = [{"type": "cancel_all", "market": a.market}]
            for level in range(1, a.levels + 1):
                for side, sign in (("buy", -1), ("sell", 1)):
                    items.append({"type": "new_order", "market": a.market,
                                  "cid": f"{side[0]}{level}-{time.monotonic_ns()}", "side": side,
                                  "kind": "limit", "tif": "alo", "qty": size,
                                  "price": mark + sign * step * level})
            c.request("batch", items=items)
            quoted_at = mark
        if time.monotonic() - last_beat > 0.5:
            c.request("heartbeat")
            last_beat = time.monotonic()
    c.request("cancel_all")
    print(f"{a.account}: quoted {a.market} for {a.seconds:.0f} s, {fills} fills")
    return 0


if __name__ == "__main__":
    sys.exit(main())
