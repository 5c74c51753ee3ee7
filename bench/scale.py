"""A deep book at scale: what a resting order costs in memory, and how the mixed loop's speed
holds up on a book of a million resting orders (issue 14's last goal).

Memory: a child process builds an Engine (margin on, 200 accounts) holding `n` resting limit
orders, fed in chunks of 10,000 through execute_batch, none crossing (buys under the mark, sells
over it, 1-5,000 ticks away), and reports the growth of its resident set per order over the same
engine with none: the engine's C arrays and indexes, and whatever the allocator keeps. Integer
cids, and string cids ("o-123456"), separately. The plain book's cost per order is measured the
same way.

Speed: the deep workload over a book of `depth` resting orders, next to the same mix over the
standard 20,000; the ratio of the two speeds, path by path.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _orders(n, string_cids):
    """(buy, price, qty, account, cid) of `n` non-crossing orders, deterministic."""
    from .workloads import BUYERS, MID
    for i in range(n):
        buy = i % 2 == 0
        off = 1 + (i * 7919) % 5000
        yield (buy, MID - off if buy else MID + off, 1 + i % 100,
               (i // 2) % BUYERS + (0 if buy else BUYERS), f"o-{i}" if string_cids else i + 1)


def _child(n: int, what: str) -> dict:
    import gc

    import msgspec

    from .workloads import MARKET, deep
    from perpdex.engine import messages as M
    enc = msgspec.msgpack.encode
    empty = deep(seed=1, n=1, depth=0)
    if what == "plain":
        from .plain_book import PlainBook
        book = PlainBook()
        gc.collect()
        before = _rss()
        for buy, price, qty, _acct, cid in _orders(n, False):
            book.limit(cid, buy, price, qty)
        gc.collect()
        assert len(book.orders) == n
        return {"n": n, "bytes_per_order": (_rss() - before) / n}
    eng = empty.fresh_engine()
    gc.collect()
    before = _rss()
    chunk = []
    for buy, price, qty, acct, cid in _orders(n, what == "string"):
        chunk.append(enc(M.NewOrder(account=acct, market=MARKET, cid=cid,
                                    side="buy" if buy else "sell", kind="limit", qty=qty,
                                    price=price, ts=2_000_000_000)))
        if len(chunk) == 10_000:
            eng.execute_batch(b"".join(chunk))
            chunk.clear()
    if chunk:
        eng.execute_batch(b"".join(chunk))
    chunk.clear()
    gc.collect()
    assert eng.n_fills == 0 and eng.next_oid > n, (eng.n_fills, eng.next_oid)   # all rest
    return {"n": n, "bytes_per_order": (_rss() - before) / n}


def memory(n: int) -> dict:
    """Bytes per resting order: perpdex with integer and string cids, and the plain book."""
    out = {}
    for what in ("int", "string", "plain"):
        r = subprocess.run([sys.executable, "-m", "perpdex.bench.scale", what, str(n)],
                           capture_output=True, text=True, timeout=900, check=True)
        out[what] = json.loads(r.stdout)["bytes_per_order"]
    return {"orders": n, "perpdex_int_cids": out["int"], "perpdex_string_cids": out["string"],
            "plain_book": out["plain"]}


if __name__ == "__main__":
    print(json.dumps(_child(int(sys.argv[2]), sys.argv[1])))
