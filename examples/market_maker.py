"""A small but real market maker for `perpdex serve`.

It keeps a mirror of the book from the public feed (gateway/mirror.py: a snapshot, then the
numbered deltas, checksum-verified, repaired by itself on a gap), follows the oracle index (each
public `mark` message carries it), and quotes `--levels` post-only orders a side around it, never
through the best price that others show on the other side of the mirror. It re-quotes when the
index moves, when the others' best price moves into its quotes, or when one of its orders fills
(its private stream says so). Each re-quote is one batch: cancel_all first, then the new quotes.

    .venv/bin/python examples/market_maker.py --data perpdex-data --account mm-1 \\
        --market BTC-PERP --size 0.05 --spread-bps 5 --seconds 60

It uses the SDK of the installed perpdex (`make install`: perpdex.gateway.client).
"""
from __future__ import annotations

import argparse
import sys
import time
from decimal import Decimal
from pathlib import Path

from perpdex.gateway.client import Client, units


def others(book, side: str, mine: set):
    """The best price of `side` in the mirror that is not one of our own quote prices."""
    for price, _qty in book.levels(side, len(mine) + 1):
        if price not in mine:
            return price
    return None


def quotes(index: int, step: int, levels: int, best_bid, best_ask) -> list[tuple[str, int]]:
    """(side, price) of each quote: around the index, a tick inside the others' best price at
    the most, so that no post-only quote would cross."""
    out = []
    for level in range(1, levels + 1):
        bid, ask = index - step * level, index + step * level
        if best_ask is not None:
            bid = min(bid, best_ask - level)
        if best_bid is not None:
            ask = max(ask, best_bid + level)
        out += [("buy", bid), ("sell", ask)]
    return out


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
    md = c.market_data(a.pub, [a.market], kinds=("book", "mark"))
    book = md.books[a.market]

    quoted: tuple | None = None         # (index, others' best bid, others' best ask) quoted at
    mine: set[int] = set()              # the prices of our quotes
    fills = 0
    end = time.monotonic() + a.seconds
    last_beat = 0.0
    while time.monotonic() < end:
        md.poll(100)
        stream_fills = [i for i in c.drain() if i.get("event", {}).get("type") == "fill"]
        fills += len(stream_fills)
        mark = md.marks.get(a.market)
        if mark is not None:
            index = mark["index"]       # quote around the oracle's fair price
            state = (index, others(book, "bids", mine), others(book, "asks", mine))
            if state != quoted or stream_fills:
                step = max(1, index * a.spread_bps // 10_000)
                items = [{"type": "cancel_all", "market": a.market}]
                prices = quotes(index, step, a.levels, state[1], state[2])
                for k, (side, price) in enumerate(prices):
                    items.append({"type": "new_order", "market": a.market,
                                  "cid": f"{side[0]}{k}-{time.monotonic_ns()}", "side": side,
                                  "kind": "limit", "tif": "alo", "qty": size, "price": price})
                c.request("batch", items=items)
                mine = {p for _, p in prices}
                quoted = state
        if time.monotonic() - last_beat > 0.5:
            c.request("heartbeat")
            last_beat = time.monotonic()
    c.request("cancel_all")
    md.close()
    print(f"{a.account}: quoted {a.market} for {a.seconds:.0f} s, {fills} fills, "
          f"{book.resyncs} book resyncs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
