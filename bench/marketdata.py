"""The market-data benchmark: order-to-public-delta latency through `perpdex serve`, and what the
public feed costs the engine loop per batch (loop turn).

    python -m bench.marketdata [--seconds 3] [--rate 10000] [--json FILE]

Method.
- Latency: three processes, the server (CURVE on tcp loopback, budgets raised), a sender and a
  subscriber. The sender sends at a fixed rate (open loop, default 10,000 commands a second) a
  `new_order` (a resting buy of 1 lot at its own price level, 5,000 levels in turn) and then its
  `cancel` of the order placed 250 orders before, alternately (so that an order and its cancel
  never share a loop turn, and the book holds about 250 levels), and notes when it sent each
  (time.monotonic_ns, one clock for every process of the machine). The subscriber reads
  `book.BTC-PERP` and notes when each level change arrived. A command's latency is from its
  send to the arrival of the first delta that shows its level at the size it made (1 for the
  order, 0 for the cancel); a command with no such delta within 0.9 s is counted as `unmatched` (the subscriber
  lost it: `gaps` counts the deltas it saw were missing).
  The first 10 % of the run is warm-up. The order-to-ack latency of the same commands is measured too
  (same clock), as the baseline: the delta leaves in the same loop turn as the ack.
- Publishing cost: in one process, an Engine and a gateway.feed.Feed; a book of `levels` levels
  a side; a batch of `k` new orders at random levels near the top. The cost is the time of
  Feed.event for every event of the batch plus Feed.flush (the deltas, their checksums, their
  encoding), the median of many batches, next to the simplest honest baseline: encoding each
  event once and queueing it for the PUB (what the server did before the feed).
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import zmq

from .gateway import FAST, SERVER, _dealer, _spawn, _stop, free_port

enc = msgspec.msgpack.encode
dec = msgspec.msgpack.decode
MATCH_NS = 900_000_000          # a delta 0.9 s after its command would be another cycle's


LIVE = 250                      # an order is cancelled 250 orders after it was placed
CYCLE = 5000                    # price levels used in turn: one is reused every 5,000 orders


def _order(k: int):
    """Command k: an order (even k) or the cancel of the order placed LIVE orders before; the
    level it changes and the size it leaves there."""
    j = k >> 1
    if k & 1 == 0:
        price = 600_000 + j % CYCLE
        return price, 1, {"req_id": k, "type": "new_order", "market": "BTC-PERP",
                          "cid": f"md-{j}", "side": "buy", "kind": "limit", "qty": 1,
                          "price": price}
    if j < LIVE:
        return None, None, {"req_id": k, "type": "heartbeat"}
    return 600_000 + (j - LIVE) % CYCLE, 0, {"req_id": k, "type": "cancel",
                                               "market": "BTC-PERP", "cid": f"md-{j - LIVE}"}


def sender_main(router: str, keys: str, rate: float, seconds: float, out: str):
    ctx = zmq.Context()
    s = _dealer(ctx, router, Path(keys), "mm-1")
    n = int(rate * seconds)
    orders = [_order(k) for k in range(n)]
    msgs = [enc(o[2]) for o in orders]
    sent = [0] * n
    acked = [0] * n
    mono = time.monotonic_ns
    period = int(1e9 / rate)
    start = mono()
    next_send = start
    k = got = 0
    while got < n:
        now = mono()
        if k < n and now >= next_send:
            sent[k] = mono()                # before the send: the delta may come first
            s.send(msgs[k], copy=True)
            k += 1
            next_send += period
            continue
        if not s.poll(max(0, (next_send - now) // 1_000_000) if k < n else 5000):
            if k >= n:
                break
            continue
        while True:
            try:
                data = s.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            rid = dec(data).get("req_id")
            if isinstance(rid, int) and 0 <= rid < n:
                acked[rid] = mono()
                got += 1
    Path(out).write_text(json.dumps({"sent": sent, "acked": acked,
                                     "levels": [[o[0], o[1]] for o in orders]}))


def subscriber_main(pub: str, keys: str, seconds: float, out: str):
    from perpdex.gateway.client import curve_socket
    ctx = zmq.Context()
    sub = curve_socket(ctx, zmq.SUB, str(Path(keys) / "server.key"),
                       str(Path(keys) / "taker-1.key_secret"))
    sub.rcvhwm = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"book.BTC-PERP")
    sub.connect(pub)
    print("ready", flush=True)
    seen = []                               # [price, qty, arrival ns, seq]
    mono = time.monotonic_ns
    end = mono() + int((seconds + 30) * 1e9)
    quiet = 0
    while mono() < end and quiet < 3:
        if not sub.poll(1000):
            quiet += 1 if seen else 0
            continue
        quiet = 0
        _topic, body = sub.recv_multipart()
        t = mono()
        msg = dec(body)
        for p, q in msg["bids"]:
            seen.append([p, q, t, msg["seq"]])
        if msg["bids"] == []:
            seen.append([None, None, t, msg["seq"]])
    Path(out).write_text(json.dumps(seen))


def _child(kind: str, *args):
    return subprocess.Popen([sys.executable, "-m", "perpdex.bench.marketdata", f"--{kind}",
                             json.dumps([str(a) for a in args])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def latency(rate: float, seconds: float) -> dict:
    from hdrh.histogram import HdrHistogram
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        router, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        server = _spawn([sys.executable, "-c", SERVER, str(tmp / "data"), router, pub,
                         json.dumps(FAST), "curve"], b"perpdex serving")
        try:
            keys = tmp / "data" / "keys"
            from perpdex.gateway.client import Client
            oracle = Client(router, str(keys / "server.key"), str(keys / "oracle.key_secret"))
            oracle.request("oracle", market="BTC-PERP", price=620_000)
            oracle.close()
            sub = _child("subscriber", pub, keys, seconds, tmp / "sub.json")
            assert b"ready" in sub.stdout.readline()
            time.sleep(0.5)                 # the subscription reaches the PUB
            snd = _child("sender", router, keys, rate, seconds, tmp / "send.json")
            snd.wait(timeout=seconds + 120)
            sub.wait(timeout=60)
            s = json.loads((tmp / "send.json").read_text())
            seen = json.loads((tmp / "sub.json").read_text())
        finally:
            _stop(server)
    by_level: dict = {}
    seqs = sorted({seq for *_, seq in seen})
    gaps = (seqs[-1] - seqs[0] + 1 - len(seqs)) if seqs else 0
    for p, q, t, _seq in seen:
        by_level.setdefault((p, q), []).append(t)
    delta_h = HdrHistogram(1, 10_000_000_000, 3)
    ack_h = HdrHistogram(1, 10_000_000_000, 3)
    n = len(s["sent"])
    warm = n // 10
    unmatched = 0
    import bisect
    for k in range(warm, n):
        t0 = s["sent"][k]
        if s["levels"][k][0] is None:
            continue
        if s["acked"][k]:
            ack_h.record_value(max(1, s["acked"][k] - t0))
        times = by_level.get(tuple(s["levels"][k]), [])
        i = bisect.bisect_left(times, t0)
        if i < len(times) and times[i] - t0 < MATCH_NS:
            delta_h.record_value(max(1, times[i] - t0))
        else:
            unmatched += 1

    def pct(h):
        return {"count": h.get_total_count(), "p50_us": h.get_value_at_percentile(50) / 1000,
                "p99_us": h.get_value_at_percentile(99) / 1000,
                "p999_us": h.get_value_at_percentile(99.9) / 1000,
                "max_us": h.get_max_value() / 1000}
    return {"rate": rate, "seconds": seconds, "commands": n, "deltas_seen": len(seqs), "gaps": gaps,
            "unmatched": unmatched, "order_to_delta": pct(delta_h), "order_to_ack": pct(ack_h)}


def publishing_cost(levels: int, k: int, turns: int = 300) -> dict:
    """Median µs a batch of `k` new orders costs the feed, on a book of `levels` a side."""
    from perpdex.engine import Engine, messages as M
    from perpdex.gateway.config import default_config
    from perpdex.gateway.feed import Feed
    e = Engine(margin=False)
    for mk in default_config().markets:
        e.execute(msgspec.structs.replace(mk, ts=1))
    e.execute(M.Oracle(market="BTC-PERP", price=650_000, ts=1))
    encode = msgspec.msgpack.Encoder().encode
    cid = 0
    for i in range(levels):
        for side, p in (("buy", 640_000 - 2 * i), ("sell", 660_000 + 2 * i)):
            cid += 1
            e.execute(M.NewOrder(account=f"mm{cid // 500}", market="BTC-PERP", cid=cid,
                                 side=side, kind="limit", qty=5, price=p, ts=1))
    feed = Feed(e, encode)                  # starts from the book as it is
    rng = random.Random(1)
    pc = time.perf_counter_ns
    cost, base = [], []
    for _ in range(turns):
        evs = []
        placed = []
        for _ in range(k):                  # new orders near the top of either side
            cid += 1
            side = rng.choice(("buy", "sell"))
            p = 640_000 - 2 * rng.randrange(20) if side == "buy" else 660_000 + 2 * \
                rng.randrange(20)
            evs += e.execute(M.NewOrder(account="t", market="BTC-PERP", cid=cid, side=side,
                                        kind="limit", qty=1, price=p, ts=1))
            placed.append(cid)
        t0 = pc()
        out = []
        for ev in evs:                      # the baseline: encode once, queue for the PUB
            out.append((ev.market.encode(), encode(ev)))
        t1 = pc()
        for ev in evs:
            feed.event(ev)
        msgs = feed.flush()
        t2 = pc()
        assert msgs, "the batch changed the book"
        base.append(t1 - t0)
        cost.append(t2 - t1)
        for c in placed:                    # the next batch starts from the same book
            for ev in e.execute(M.Cancel(account="t", market="BTC-PERP", cid=c, ts=1)):
                feed.event(ev)
        feed.flush()
    cost.sort()
    base.sort()
    return {"levels_a_side": levels, "orders_a_batch": k,
            "feed_us_median": cost[len(cost) // 2] / 1000,
            "feed_us_p99": cost[int(len(cost) * 0.99)] / 1000,
            "baseline_us_median": base[len(base) // 2] / 1000}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rate", type=float, default=10_000)
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--sender")
    ap.add_argument("--subscriber")
    a = ap.parse_args(argv)
    if a.sender:
        r, k, rate, s, out = json.loads(a.sender)
        sender_main(r, k, float(rate), float(s), out)
        return 0
    if a.subscriber:
        p, k, s, out = json.loads(a.subscriber)
        subscriber_main(p, k, float(s), out)
        return 0
    import zmq as _zmq
    res = {"machine": {"python": platform.python_version(), "pyzmq": _zmq.__version__,
                       "libzmq": _zmq.zmq_version(), "cpus": __import__("os").cpu_count(),
                       "platform": platform.platform()},
           "latency": latency(a.rate, a.seconds),
           "publishing": [publishing_cost(levels, k) for levels in (25, 100, 1000)
                          for k in (1, 10, 100)]}
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
