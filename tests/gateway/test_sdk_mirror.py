"""The SDK mirror follows docs/protocol.md's snapshot procedure to the letter: a delta at or
below the mirror's last seq is dropped at every step, never taken for a gap; L + 1 is applied;
beyond it is a gap. Against a real server under a continuous flow of orders, and on the
procedure's own terms without one."""
import threading
import time

import msgspec
import zmq
from sortedcontainers import SortedDict

from perpdex.gateway.client import connect, curve_socket
from perpdex.gateway.mirror import BookMirror, FeedState
from tests.harness import near

MARKET = "ETH-PERP"


def snap(seq, bids, asks):
    """A snapshot reply of these levels, with their checksum."""
    m = BookMirror(MARKET)
    m.bids = SortedDict({-p: q for p, q in bids})
    m.asks = SortedDict(dict(asks))
    return {"market": MARKET, "seq": seq, "bids": bids, "asks": asks, "checksum": m.checksum()}


def delta(seq, bids, asks, book):
    """A `book` delta numbered `seq` and the checksum of `book` (a dict of levels) after it."""
    for p, q in bids:
        book["b"][p] = q
    for p, q in asks:
        book["a"][p] = q
    levels = {k: {p: q for p, q in v.items() if q} for k, v in book.items()}
    s = snap(0, sorted(levels["b"].items(), reverse=True), sorted(levels["a"].items()))
    return {"type": "book", "market": MARKET, "seq": seq, "bids": bids, "asks": asks,
            "checksum": s["checksum"]}


def test_a_delta_at_or_below_the_snapshot_is_dropped_at_every_step_and_a_gap_is_a_gap():
    state = FeedState([MARKET], kinds=("book",))
    book = {"b": {100: 5}, "a": {110: 4}}
    state.pending[MARKET] = []                                  # step 1: hold
    held = delta(7, [[101, 1]], [], book)                       # published before S
    state.handle(f"book.{MARKET}", held)
    updates, stale = state.loaded(MARKET, snap(7, [[101, 1], [100, 5]], [[110, 4]]))
    assert not stale and [u["type"] for u in updates] == ["book"]
    for late in (held, dict(held, seq=6)):                      # after the reply: still <= L
        updates, stale = state.handle(f"book.{MARKET}", late)
        assert (updates, stale) == ([], set())
    updates, stale = state.handle(f"book.{MARKET}", delta(8, [], [[111, 2]], book))
    assert not stale and state.books[MARKET].seq == 8           # L + 1: applied
    updates, stale = state.handle(f"book.{MARKET}", delta(10, [], [[112, 2]], book))
    assert stale == {MARKET} and updates[0]["type"] == "resync"  # beyond L + 1: a gap
    def beat(seq):
        return {"type": "heartbeat", "seqs": {f"book.{MARKET}": seq}, "heads": {}}
    assert state.handle("heartbeat", beat(7)) == ([], set())   # left before deltas we hold
    assert state.handle("heartbeat", beat(9))[1] == {MARKET}   # names one we never saw


class Flow(threading.Thread):
    """Orders and cancels from another account, without a pause, until stopped."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.sent = 0

    def run(self):
        c = connect("taker-2")
        try:
            low = near(c, MARKET, "0.97")
            k = 0
            while not self.stop.is_set():
                k += 1
                c.request("new_order", market=MARKET, cid=f"flow-{k}", side="buy",
                          kind="limit", qty=1 + k % 5, price=c.markets()[MARKET].ticks(low)
                          - k % 7)
                if k > 5:
                    c.request("cancel", market=MARKET, cid=f"flow-{k - 5}")
                self.sent += 1
        finally:
            c.cancel_all()
            c.close()


def sub_socket(venue, name="mm-1"):
    keys = f"{venue['PERPDEX_DATA']}/keys"
    sock = curve_socket(zmq.Context.instance(), zmq.SUB, f"{keys}/server.key",
                        f"{keys}/{name}.key_secret")
    sock.setsockopt(zmq.SUBSCRIBE, f"book.{MARKET}".encode())
    sock.setsockopt(zmq.SUBSCRIBE, b"heartbeat")
    sock.connect(venue["PERPDEX_PUB"])
    return sock


def test_order_reply_then_snapshot_then_the_sub_never_resyncs_under_continuous_flow(venue):
    """The issue's case: send an order, wait for its reply, ask for a snapshot, and only then
    read the SUB, round after round while another account trades without a pause."""
    flow = Flow()
    c = connect("mm-1")
    sock = sub_socket(venue)
    try:
        time.sleep(0.5)                                     # the subscription reaches the PUB
        flow.start()
        state = FeedState([MARKET], kinds=("book",))
        at_s = resyncs = 0
        price = c.markets()[MARKET].ticks(near(c, MARKET, "0.96"))
        for k in range(30):
            state.pending[MARKET] = []                      # step 1: hold what arrives
            c.request("new_order", market=MARKET, cid=f"m-{k}", side="buy", kind="limit",
                      qty=1, price=price - k)               # its reply, then:
            s = c.request("snapshot", market=MARKET)        # step 2
            updates, stale = state.loaded(MARKET, s)        # step 3, before reading the SUB
            assert not stale
            deadline = time.monotonic() + 5
            while state.books[MARKET].seq < s["seq"] + 3 and time.monotonic() < deadline:
                if not sock.poll(200):
                    continue
                topic, body = sock.recv_multipart()
                msg = msgspec.msgpack.decode(body)
                at_s += msg.get("seq") == s["seq"]
                updates, stale = state.handle(topic.decode(), msg, body)
                resyncs += sum(u["type"] == "resync" for u in updates) + len(stale)
        assert resyncs == 0
        assert at_s >= 1          # the order's delta, numbered S, came after the snapshot
        assert flow.sent > 30
        flow.stop.set()
        flow.join(timeout=10)
        c.cancel_all()
        final = c.request("snapshot", market=MARKET)
        mirror = state.books[MARKET]
        deadline = time.monotonic() + 5
        while mirror.seq < final["seq"] and time.monotonic() < deadline:
            if sock.poll(200):
                topic, body = sock.recv_multipart()
                state.handle(topic.decode(), msgspec.msgpack.decode(body), body)
        assert mirror.seq == final["seq"]
        assert (mirror.levels("bids"), mirror.levels("asks")) == (final["bids"], final["asks"])
    finally:
        flow.stop.set()
        sock.close(linger=0)
        c.close()


def test_the_sdk_market_data_keeps_its_mirror_through_continuous_flow_without_a_resync(venue):
    flow = Flow()
    c = connect("mm-1")
    seen = []
    md = c.market_data(markets=[MARKET], kinds=("book",), on_update=seen.append)
    try:
        flow.start()
        for _ in range(40):                       # the mirror's own loop, a resync asked for
            md.poll(50)                           # now and then as a user might
        md._resync(MARKET)
        for _ in range(20):
            md.poll(50)
        flow.stop.set()
        flow.join(timeout=10)
        final = c.request("snapshot", market=MARKET)
        deadline = time.monotonic() + 5
        while md.books[MARKET].seq < final["seq"] and time.monotonic() < deadline:
            md.poll(100)
        book = md.books[MARKET]
        assert [u for u in seen if u["type"] in ("resync", "gap", "chain_break")] == []
        assert book.resyncs == 1 and flow.sent > 0
        assert (book.seq, book.levels("bids"), book.levels("asks")) == (
            final["seq"], final["bids"], final["asks"])
    finally:
        flow.stop.set()
        md.close()
        c.close()
