"""The public feed's hash chains (docs/protocol.md, "Hash chains", "The public feed") as a
subscriber meets them: real server processes, real sockets on loopback, timeouts everywhere.

The chain is recomputed here by an implementation of the test's own, written from the doc
(hashlib over the body bytes as received; no code shared with gateway/feed.py or
gateway/mirror.py). Tampering is done by a relay between the server's PUB and a mirror: a SUB
on the server, a plain PUB of its own, changing one message on the way."""
from __future__ import annotations

import hashlib
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import msgspec
import pytest
import zmq

from perpdex.gateway.client import curve_socket
from perpdex.gateway.mirror import MarketData
from tests.harness import (FAST, HANG_S, INDEX, MARKETS, Flow, Venue, caught_up, engine_book, free_port,
                            raw_sub, serve, trade)

ROOT = Path(__file__).resolve().parents[2]
dec = msgspec.msgpack.decode
enc = msgspec.msgpack.encode
ZERO = bytes(16)


def chained(head: bytes, body: bytes) -> bytes:
    """docs/protocol.md: blake2b-128 of the previous hash and every byte before the last 16."""
    return hashlib.blake2b(head + body[:-16], digest_size=16).digest()


def settle(sock, at_most_s=HANG_S) -> list[tuple[bytes, bytes]]:
    """What arrives until a heartbeat has come and then 300 ms pass with nothing (the requests
    that made the messages were answered before: their messages left with the replies)."""
    out, beat = [], False
    deadline = time.monotonic() + at_most_s
    while time.monotonic() < deadline:
        if not sock.poll(300 if beat else 1500):
            if beat:
                break
            continue
        out.append(tuple(sock.recv_multipart()))
        beat = beat or out[-1][0] == b"heartbeat"
    assert beat, "no heartbeat in time"
    return out


def check_chains(msgs, heads=None) -> dict:
    """Walk every topic's chain over `msgs` ((topic, body) as received, heartbeats skipped) from
    `heads` ({topic: (seq, hash)}; absent: (0, 16 zero bytes)); assert each body ends with
    `c4 10` and the hash that chains, with gapless seqs. Returns the heads reached."""
    heads = dict(heads or {})
    for topic, body in msgs:
        if topic == b"heartbeat":
            continue
        seq, head = heads.get(topic, (0, ZERO))
        msg = dec(body)
        assert list(msg)[-1] == "hash" and body[-18:-16] == b"\xc4\x10", msg
        assert msg["seq"] == seq + 1, (topic, msg["seq"], seq)
        want = chained(head, body)
        assert body[-16:] == want and msg["hash"] == want, (topic, msg["seq"])
        heads[topic] = (msg["seq"], want)
    return heads


def fresh(tmp_path):
    s = serve(tmp_path, limits=FAST, session_timeout_ms=60_000)
    oracle = s.client("oracle")
    for m, p in INDEX.items():
        assert oracle.request("oracle", market=m, price=p)["ok"]
    return s


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """A random flow over both markets on a fresh server, what a subscriber from before the
    first message received, and a snapshot of each book once it settled: shared by the tests
    that only read them (the server itself is stopped before they run)."""
    s = serve(tmp_path_factory.mktemp("chain"), limits=FAST, session_timeout_ms=60_000)
    try:
        sub = raw_sub(s)
        oracle = s.client("oracle")
        for m, p in INDEX.items():
            assert oracle.request("oracle", market=m, price=p)["ok"]
        Flow(s, seed=21, tag="chain").run(1500, batch=10)
        oracle.request("oracle", market="BTC-PERP", price=INDEX["BTC-PERP"] + 7)
        msgs = settle(sub)
        sub.close(linger=0)
        snaps = {m: s.client("taker-1").request("snapshot", market=m) for m in MARKETS}
    finally:
        s.stop()
    yield msgs, snaps


@pytest.fixture
def srv(tmp_path):
    """A fresh server of its own, for a test that trades."""
    s = fresh(tmp_path)
    yield s
    s.stop()


def test_every_public_message_carries_the_hash_an_independent_implementation_computes(flow):
    msgs, _ = flow
    heads = check_chains(msgs)
    assert {b"book.BTC-PERP", b"book.ETH-PERP", b"trade.BTC-PERP", b"mark.ETH-PERP"} <= \
        set(heads)
    assert sum(seq for seq, _ in heads.values()) > 500


def test_a_heartbeat_gives_each_topics_hash_at_the_seq_it_names(flow):
    msgs, _ = flow
    heads: dict = {}
    beats = 0
    for topic, body in msgs:
        msg = dec(body)
        if topic != b"heartbeat":
            heads[topic.decode()] = (msg["seq"], msg["hash"])
            continue
        beats += 1
        assert set(msg["heads"]) == set(msg["seqs"])
        for t, seq in msg["seqs"].items():
            assert (seq, msg["heads"][t]) == heads.get(t, (0, ZERO)), t
    assert beats >= 1


def test_a_snapshot_carries_the_book_topics_hash_at_its_seq(flow):
    msgs, snaps = flow
    heads = check_chains(msgs)
    for m in MARKETS:
        assert (snaps[m]["seq"], snaps[m]["hash"]) == heads[f"book.{m}".encode()]


def test_the_worked_chain_example_of_the_protocol_doc_is_right():
    doc = (ROOT / "docs" / "protocol.md").read_text()
    part = doc[doc.index("### The public feed"):]
    part = part[:part.index("\n## ")]
    bodies = [bytes.fromhex("".join(block.split()))
              for block in re.findall(r"\n((?:    [0-9a-f]{20,}\n)+)", part)]
    hashes = re.findall(r"=\s+`([0-9a-f]{32})`", part)
    assert len(bodies) == 2 and len(hashes) == 2
    head = ZERO
    for body, want in zip(bodies, hashes):
        head = chained(head, body)
        assert head.hex() == want and body[-16:] == head
    first = dec(bodies[0])
    assert (first["type"], first["market"], first["seq"], first["price"]) == \
        ("trade", "BTC-PERP", 1, 650_010)
    # and the server's own feed encodes those messages to exactly these bytes
    from perpdex.engine import Engine
    from perpdex.gateway.feed import Feed
    feed = Feed(Engine(), msgspec.msgpack.Encoder().encode)
    for body in bodies:
        msg = {k: v for k, v in dec(body).items() if k != "hash"}
        feed._publish(feed._market("BTC-PERP"), "trade", dict(msg, seq=0))
    assert [b for _, b in feed.flush()] == bodies


# ---- the mirror checks the chain ------------------------------------------------------------

class Relay:
    """A SUB on the server's feed and a plain PUB of its own: every message passes, `change`
    (topic, body) -> list of bodies to send instead (none: dropped) decides on the way."""

    def __init__(self, s, change):
        self.change = change
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.sub = raw_sub(s, name="mm-2")
        self.pub = zmq.Context.instance().socket(zmq.PUB)
        self.pub.linger = 0
        self.pub.bind(self.endpoint)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            if not self.sub.poll(50):
                continue
            topic, body = self.sub.recv_multipart()
            for b in self.change(topic, body):
                self.pub.send_multipart([topic, b])

    def close(self):
        self.stopping.set()
        self.thread.join(5)
        self.sub.close(linger=0)
        self.pub.close(linger=0)


@contextmanager
def relayed(s, change, market: str, seed: int):
    """A mirror of `market` fed through a Relay that applies `change`, after a random flow of
    300 orders that it has caught up with: yields (the MarketData, its updates)."""
    relay = Relay(s, change)
    seen: list = []
    md = MarketData(s.client("taker-2"), relay.endpoint, [market], on_update=seen.append)
    try:
        time.sleep(0.3)                 # the mirror's subscription reaches the relay
        Flow(s, seed=seed, tag=f"relay{seed}").run(300)
        caught_up(md, s, [market])
        md.poll(300)
        yield md, seen
    finally:
        md.close()
        relay.close()


def rewrite(body: bytes, **fields) -> bytes:
    """The message with `fields` changed and its hash kept (msgspec keeps the key order)."""
    return enc(dict(dec(body), **fields))


def test_a_changed_trade_is_a_chain_break_that_the_mirror_counts(srv):
    s = srv
    trades, changed = [], []

    def change(topic, body):            # the third trade (the mirror holds the chain by then)
        if topic == b"trade.BTC-PERP" and len(trades) < 3:
            trades.append(dec(body)["seq"])
            if len(trades) == 3:
                changed.append(trades[-1])
                return [rewrite(body, price=dec(body)["price"] + 1)]
        return [body]

    with relayed(s, change, "BTC-PERP", seed=22) as (md, seen):
        assert changed
        assert [u for u in seen if u["type"] == "chain_break"] == \
            [{"type": "chain_break", "topic": "trade.BTC-PERP", "seq": changed[0]}]
        assert md.breaks == {"trade.BTC-PERP": 1}
        assert not [u for u in seen if u["type"] == "gap"]     # the seq alone saw nothing


def test_a_changed_book_delta_that_keeps_its_checksum_makes_the_mirror_resync(srv):
    s = srv
    changed = []

    def change(topic, body):
        if topic == b"book.ETH-PERP" and not changed:
            changed.append(dec(body)["seq"])
            return [rewrite(body, ts=dec(body)["ts"] + 1)]     # the checksum still holds
        return [body]

    with relayed(s, change, "ETH-PERP", seed=23) as (md, seen):
        assert changed
        assert {"type": "chain_break", "topic": "book.ETH-PERP", "seq": changed[0]} in seen
        assert any(u["type"] == "resync" and "hash" in u["detail"] for u in seen)
        assert md.breaks["book.ETH-PERP"] >= 1 and md.books["ETH-PERP"].resyncs >= 1
        book = engine_book(s, "ETH-PERP")
        mirror = md.books["ETH-PERP"]
        assert (mirror.levels("bids"), mirror.levels("asks")) == (book["bids"], book["asks"])


def test_a_dropped_trade_hidden_by_renumbering_the_rest_is_a_chain_break(srv):
    s = srv
    trades, dropped = [], []

    def change(topic, body):
        if topic != b"trade.BTC-PERP":
            return [body]
        seq = dec(body)["seq"]
        trades.append(seq)
        if len(trades) < 3:
            return [body]
        if not dropped:                 # the third trade goes ...
            dropped.append(seq)
            return []
        return [rewrite(body, seq=seq - 1)]     # ... and no gap in seq shows it

    with relayed(s, change, "BTC-PERP", seed=24) as (md, seen):
        assert dropped
        breaks = [u for u in seen if u["type"] == "chain_break"]
        assert breaks and breaks[0] == {"type": "chain_break", "topic": "trade.BTC-PERP",
                                        "seq": dropped[0]}


def test_a_mirror_that_joins_late_checks_the_book_chain_from_the_snapshots_hash(srv):
    s = srv
    Flow(s, seed=25, tag="late0").run(200)     # the chains are long already
    seen = []
    md = s.client("mm-1").market_data(s.pub, MARKETS, on_update=seen.append)
    try:
        joined = {m: md.books[m].seq for m in MARKETS}
        assert all(joined.values())
        Flow(s, seed=26, tag="late").run(300)
        caught_up(md, s)
        for m in MARKETS:
            snap = s.client("admin").request("snapshot", market=m)
            assert md.books[m].seq > joined[m]
            assert md.books[m].head == snap["hash"]
        assert md.breaks == {} and all(b.resyncs == 0 for b in md.books.values())
        assert not [u for u in seen if u["type"] in ("resync", "gap", "chain_break")]
    finally:
        md.close()


# ---- across a restart --------------------------------------------------------------------

def venue_sub(v: Venue):
    sock = curve_socket(zmq.Context.instance(), zmq.SUB, str(v.data / "keys" / "server.key"),
                        str(v.data / "keys" / "taker-2.key_secret"))
    sock.rcvhwm = 1_000_000
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(v.pub)
    time.sleep(0.3)
    return sock


def some_trades(v: Venue, tag: str):
    mm, taker = v.client("mm-1"), v.client("taker-1")
    for k in range(5):
        assert mm.request("new_order", market="BTC-PERP", cid=f"{tag}-a{k}", side="sell",
                          kind="limit", qty=2, price=651_000 + k)["ok"]
        assert taker.request("new_order", market="BTC-PERP", cid=f"{tag}-b{k}", side="buy",
                             kind="limit", qty=1, price=651_000 + k)["ok"]


@pytest.mark.parametrize("snapshot", [False, True], ids=["journal", "snapshot"])
def test_after_a_restart_every_public_topic_goes_on_with_its_next_seq_and_hash(tmp_path,
                                                                             snapshot):
    v = Venue(tmp_path)
    try:
        v.start()
        sub = venue_sub(v)
        trade(v)
        some_trades(v, "before")
        if snapshot:
            v.snapshot()
            some_trades(v, "after-snap")
        before = check_chains(settle(sub))
        sub.close(linger=0)
        assert {b"book.BTC-PERP", b"trade.BTC-PERP", b"mark.BTC-PERP"} <= set(before)
        v.kill()
        line = v.start()
        assert ("no snapshot" not in line) == snapshot, line
        sub = venue_sub(v)
        v.client("oracle").request("oracle", market="BTC-PERP", price=650_100)
        some_trades(v, "restarted")
        after = settle(sub)
        sub.close(linger=0)
        heads = check_chains(after, before)     # from the hashes seen before the restart
        for t in (b"book.BTC-PERP", b"trade.BTC-PERP", b"mark.BTC-PERP"):
            assert heads[t][0] > before[t][0], t
        snap = v.client("admin").request("snapshot", market="BTC-PERP")
        assert (snap["seq"], snap["hash"]) == heads[b"book.BTC-PERP"]
    finally:
        v.stop()
