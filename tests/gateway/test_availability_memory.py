"""Issue 20, finding 2: no account can make the server hold memory without bound. Real
`perpdex serve` processes and sockets; bounds on bytes and counts, never on timings (a loose
bound that only catches a hang is named so)."""
from __future__ import annotations

import signal
import time

import msgspec
import pytest

from perpdex.gateway.client import Chain
from tests.harness import HANG_S as HANG, LimitedVenue as Venue, fill_the_book, slow_socket

enc = msgspec.msgpack.encode
dec = msgspec.msgpack.decode
FAST = {"order_rate": [100_000.0, 100_000.0], "cancel_rate": [100_000.0, 100_000.0],
        "request_rate": [100_000.0, 100_000.0]}


@pytest.fixture
def venue_of(tmp_path):
    made = []

    def make(limits):
        v = Venue(tmp_path / f"v{len(made)}", dict(FAST, **limits))
        made.append(v)
        return v

    yield make
    for v in made:
        v.stop()


def rss(v: Venue) -> int:
    """The server's resident memory, bytes."""
    for line in open(f"/proc/{v.proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def fill_the_stream(v: Venue, name: str, rounds: int) -> int:
    """512 items a round on `name`'s private stream (256 orders accepted, then cancelled);
    returns the stream's pseq."""
    v.client("oracle").request("oracle", market="BTC-PERP", price=650_000)
    c = v.client(name, timeout_ms=20_000)
    for r in range(rounds):
        items = [{"type": "new_order", "market": "BTC-PERP", "cid": f"f{r}-{k}", "side": "buy",
                  "kind": "limit", "qty": 1, "price": 649_000 - k} for k in range(256)]
        assert c.request("batch", items=items)["ok"]
        assert c.request("cancel_all")["ok"]
    pseq = c.request("subscribe")["pseq"]
    c.close()
    return pseq


def test_resume_floods_on_connections_that_never_read_keep_the_server_small(venue_of):
    v = venue_of({"send_bytes": 4 << 20, "account_send_bytes": 8 << 20})
    head = fill_the_stream(v, "mm-1", 20)
    assert head >= 10_000
    oldest = head - 10_000
    before = rss(v)
    slow = [slow_socket(v, "mm-1") for _ in range(2)]
    other = v.client("mm-2", timeout_ms=10_000)
    answered = 0
    for k in range(1000):              # 2 x 1,000 resumes of the whole buffer, none read
        for s in slow:
            s.send(enc({"req_id": k, "type": "subscribe", "resume_from": oldest}))
        if k % 100 == 0:
            answered += other.request("query_account")["ok"]
    h = v.health("mm-2")
    grown = rss(v) - before
    for s in slow:
        s.close(linger=0)
    assert answered == 10                           # another account is answered throughout
    assert h["over_send_bytes"] > 0                 # the budget is what held it
    assert grown < 120 << 20, f"the server grew {grown >> 20} MiB"


def test_a_long_resume_comes_in_pages_that_chain_up_to_the_streams_head(venue_of):
    v = venue_of({"resume_bytes": 16 << 10})
    head = fill_the_stream(v, "mm-1", 4)
    c = v.client("mm-1")
    chain = Chain()
    at, pages = 0, 0
    while True:
        reply = c.request("subscribe", resume_from=at)
        assert reply["ok"], reply
        pages += 1
        size = 0
        for item in reply["missed"]:
            chain.check_item(item)
            size += len(enc(item))
        assert chain.pseq == reply["pseq"] and chain.head == reply["hash"]
        at = reply["pseq"]
        if not reply["more"]:
            break
        assert size <= (16 << 10) + 1024            # one page: the bytes, and one item more
    assert at == head and pages >= head * 100 // (16 << 10)
    v.client("mm-1").request("new_order", market="BTC-PERP", cid="live", side="buy",
                             kind="limit", qty=1, price=649_000)
    item = c.stream(1)[0]                            # and after the last page, the live stream
    assert item["pseq"] == head + 1
    chain.check_item(item)


def test_a_page_with_more_leaves_the_connection_out_of_the_stream(venue_of):
    v = venue_of({"resume_bytes": 4 << 10})
    fill_the_stream(v, "mm-1", 1)
    c = v.client("mm-1")
    reply = c.request("subscribe", resume_from=0)
    assert reply["more"] is True
    v.client("mm-1").request("new_order", market="BTC-PERP", cid="live", side="buy",
                             kind="limit", qty=1, price=649_000)
    assert not c.sock.poll(500)                      # nothing pushed to a connection mid-resume


def test_the_retry_cache_drops_the_oldest_replies_by_bytes_and_a_retry_says_so(venue_of):
    v = venue_of({"retry_bytes": 256 << 10})
    v.client("oracle").request("oracle", market="BTC-PERP", price=650_000)
    c = v.client("mm-1")
    first = c.send_raw(enc({"req_id": "o1", "type": "new_order", "market": "BTC-PERP",
                            "cid": "o1", "side": "buy", "kind": "limit", "qty": 1,
                            "price": 649_000}))
    assert first["ok"] and first["events"][0]["type"] == "order_accepted"
    unknown = [{"type": "cancel", "market": "BTC-PERP", "cid": f"nope-{k}"} for k in range(256)]
    sizes = []
    for k in range(8):                              # 8 replies of tens of KB: 256 KiB in all
        reply = c.send_raw(enc({"req_id": f"b{k}", "type": "batch", "items": unknown}))
        sizes.append(len(enc(reply)))
    assert sum(sizes) > 256 << 10 and max(sizes) > 20_000
    again = c.send_raw(enc({"req_id": "o1", "type": "new_order", "market": "BTC-PERP",
                            "cid": "o1", "side": "buy", "kind": "limit", "qty": 1,
                            "price": 649_000}))
    assert (again["ok"], again["reason"], again["req_id"]) == (False, "reply_dropped", "o1")
    assert "not run again" in again["detail"] and "262,144 bytes" in again["detail"]
    orders = c.request("query_account")["events"][0]["open_orders"]
    assert [o["cid"] for o in orders] == ["o1"]             # run once, not twice
    newest = c.send_raw(enc({"req_id": "b7", "type": "batch", "items": unknown}))
    assert len(enc(newest)) == sizes[-1] and newest["ok"]   # the newest is still kept


def test_a_reply_larger_than_the_whole_retry_cache_is_not_kept_and_its_retry_says_so(venue_of):
    v = venue_of({"retry_bytes": 8 << 10})
    c = v.client("mm-1")
    unknown = [{"type": "cancel", "market": "BTC-PERP", "cid": f"nope-{k}"} for k in range(256)]
    assert c.send_raw(enc({"req_id": "big", "type": "batch", "items": unknown}))["ok"]
    again = c.send_raw(enc({"req_id": "big", "type": "batch", "items": unknown}))
    assert (again["ok"], again["reason"]) == (False, "reply_dropped")


def test_a_subscriber_over_its_send_bytes_is_suspended_and_told(venue_of):
    v = venue_of({"send_bytes": 256 << 10, "send_hwm": 1_000_000})
    fill_the_book(v)                                # 200 levels: a book reply is ~2 KB
    slow = slow_socket(v, "mm-1")
    slow.send(enc({"req_id": "sub", "type": "subscribe"}))
    time.sleep(0.5)
    for k in range(2000):                           # 4 MB of replies it does not read
        slow.send(enc({"req_id": k, "type": "book", "market": "BTC-PERP", "depth": 100}))
    deadline = time.monotonic() + HANG
    while (h := v.health())["suspended_streams"] < 1:
        assert time.monotonic() < deadline, h       # a hang
        time.sleep(0.1)
    assert h["over_send_bytes"] > 0
    notices = []
    while slow.poll(1000):
        msg = dec(slow.recv())
        if isinstance(msg, dict) and msg.get("suspended"):
            notices.append(msg)
    slow.close(linger=0)
    assert len(notices) == 1 and "resume_from" in notices[0]["detail"]


def test_the_sdk_follows_every_page_of_a_resume(venue_of):
    v = venue_of({"resume_bytes": 8 << 10})
    c = v.client("mm-1")
    start = c.subscribe()["pseq"]
    head = fill_the_stream(v, "mm-1", 2)
    missed = c.resume({"pseq": start})              # as after a `suspended` notice
    assert [i["pseq"] for i in missed] == list(range(start + 1, head + 1))
    assert c.chain.pseq == head
    v.client("mm-1").request("cancel_all")
    c.drain()                                       # the live stream again, chained


@pytest.mark.parametrize("snapshot", [False, True], ids=["from_the_journal", "from_a_snapshot"])
def test_a_dropped_reply_is_still_dropped_after_a_restart_and_nothing_is_run_twice(tmp_path,
                                                                                  snapshot):
    limits = dict(FAST, retry_bytes=64 << 10)
    v = Venue(tmp_path, limits)
    try:
        v.client("oracle").request("oracle", market="BTC-PERP", price=650_000)
        c = v.client("mm-1")
        order = enc({"req_id": "o1", "type": "new_order", "market": "BTC-PERP", "cid": "o1",
                     "side": "buy", "kind": "limit", "qty": 1, "price": 649_000})
        assert c.send_raw(order)["ok"]
        unknown = [{"type": "cancel", "market": "BTC-PERP", "cid": f"n-{k}"} for k in range(256)]
        for k in range(4):
            assert c.send_raw(enc({"req_id": f"b{k}", "type": "batch", "items": unknown}))["ok"]
        if snapshot:                                # SIGUSR1: a snapshot between two turns
            v.proc.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + HANG
            while not list((v.data / "snapshots").glob("*.snapshot")):
                assert time.monotonic() < deadline, "no snapshot (a hang)"
                c.request("heartbeat")
                time.sleep(0.05)
        c.close()
    finally:
        v.stop()
    v = Venue(tmp_path, limits)                     # the same data folder: recovered
    try:
        c = v.client("mm-1")
        again = c.send_raw(order)
        assert (again["ok"], again["reason"]) == (False, "reply_dropped")
        assert [o["cid"] for o in c.request("query_account")["events"][0]["open_orders"]] \
            == ["o1"]
    finally:
        v.stop()
