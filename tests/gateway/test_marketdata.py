"""The public market-data feed (issue 10) as subscribers meet it: real server processes, real
CURVE sockets on loopback, random ports, linger 0 and timeouts, so nothing here can hang.

The checksum is recomputed here by an implementation of the test's own, written from
docs/protocol.md (binascii, bytes, no shared code with gateway/feed.py or gateway/mirror.py)."""
import binascii
import re
import time
from pathlib import Path

import msgspec
import pytest

from tests.harness import (FAST, HANG_S, INDEX, MARKETS, TRADERS, Flow, caught_up, engine_book,
                            raw_sub, serve)

ROOT = Path(__file__).resolve().parents[2]
dec = msgspec.msgpack.decode
# What each public message may carry, and nothing else.
FIELDS = {
    "book": {"type", "market", "seq", "ts", "bids", "asks", "checksum", "hash"},
    "trade": {"type", "market", "seq", "ts", "trade_id", "price", "qty", "taker_side",
              "liquidation", "hash"},
    "mark": {"type", "market", "seq", "ts", "index", "mark", "hash"},
    "funding": {"type", "market", "seq", "ts", "rate_ppm", "index_price", "hash"},
    "liquidation": {"type", "market", "seq", "ts", "side", "qty", "price", "kind", "hash"},
    "heartbeat": {"type", "ts", "seqs", "heads"},
}


def independent_checksum(bids, asks) -> int:
    """docs/protocol.md, "The checksum", done again: bytes, binascii."""
    def side(levels):
        return b",".join(b"%d:%d" % (p, q) for p, q in levels[:25])
    return binascii.crc32(side(bids) + b"|" + side(asks)) & 0xFFFFFFFF


@pytest.fixture
def srv(tmp_path):
    """A fresh server for each test, with an index on both markets: every topic starts at seq
    1 and every book empty, whatever ran before."""
    s = serve(tmp_path, limits=FAST, session_timeout_ms=60_000)
    oracle = s.client("oracle")
    for m, p in INDEX.items():
        assert oracle.request("oracle", market=m, price=p)["ok"]
    yield s
    s.stop()


def read_all(sock, quiet_ms=300, at_most_s=20.0) -> list[tuple[bytes, bytes]]:
    """What arrives until `quiet_ms` pass with nothing (the feed's heartbeat comes every
    second), or `at_most_s`."""
    out = []
    deadline = time.monotonic() + at_most_s
    while sock.poll(quiet_ms) and time.monotonic() < deadline:
        out.append(tuple(sock.recv_multipart()))
    return out


# ---- the mirror follows the engine ----------------------------------------------------------

def test_after_a_long_random_flow_every_subscribers_mirror_equals_the_engines_book(srv):
    updates = {n: [] for n in ("mm-1", "taker-1", "admin")}
    mds = {n: srv.client(n).market_data(srv.pub, MARKETS, on_update=updates[n].append)
           for n in updates}
    flow = Flow(srv, seed=1, tag="long")
    try:
        for checkpoint in range(6):
            flow.run(500, between=lambda: [md.poll(0) for md in mds.values()])
            for name, md in mds.items():
                caught_up(md, srv)
            for m in MARKETS:
                book = engine_book(srv, m)
                assert book["seq"] > 0
                for name, md in mds.items():
                    mirror = md.books[m]
                    assert (mirror.levels("bids"), mirror.levels("asks")) == \
                        (book["bids"], book["asks"]), (name, m, checkpoint)
        assert len(book["bids"]) > 25 and len(book["asks"]) > 25    # deeper than the checksum
        trades = [u for u in updates["admin"] if u["type"] == "trade"]
        assert len(trades) > 300
        for name, md in mds.items():           # and never by a resync: every delta was right
            assert [u for u in updates[name] if u["type"] in ("resync", "gap")] == []
            assert all(b.resyncs == 0 for b in md.books.values())
    finally:
        for md in mds.values():
            md.close()


def test_a_deliberately_dropped_delta_is_detected_and_repaired(srv):
    seen = []
    md = srv.client("mm-2").market_data(srv.pub, ["BTC-PERP"], on_update=seen.append)
    try:
        handle = md.state.handle
        dropped = []

        def lossy(topic, msg, body=None):
            if msg.get("type") == "book" and not dropped:
                dropped.append(msg["seq"])
                return [], set()            # this delta never arrived
            return handle(topic, msg, body)

        md.state.handle = lossy
        Flow(srv, seed=2, tag="drop").run(200)
        caught_up(md, srv, ["BTC-PERP"])
        assert dropped
        assert [u for u in seen if u["type"] == "resync"], "the gap went unnoticed"
        assert md.books["BTC-PERP"].resyncs >= 1
        book = engine_book(srv, "BTC-PERP")
        mirror = md.books["BTC-PERP"]
        assert (mirror.levels("bids"), mirror.levels("asks")) == (book["bids"], book["asks"])
    finally:
        md.close()


def test_a_lost_last_delta_is_found_by_the_heartbeat_and_repaired(srv):
    seen = []
    md = srv.client("mm-2").market_data(srv.pub, ["ETH-PERP"], on_update=seen.append)
    try:
        handle = md.state.handle
        md.state.handle = lambda topic, msg, body=None: ([], set()) \
            if msg.get("type") == "book" else handle(topic, msg, body)  # every delta is lost ...
        assert srv.client("mm-1").request("new_order", market="ETH-PERP", cid="hb-1",
                                          side="buy", kind="limit", qty=2,
                                          price=INDEX["ETH-PERP"] - 900)["ok"]
        md.poll(300)
        md.state.handle = handle            # ... and then none: only a heartbeat can tell
        deadline = time.monotonic() + HANG_S         # a heartbeat a second; this, a hang
        while not any(u["type"] == "book" and u["delta"] is None for u in seen[1:]):
            assert time.monotonic() < deadline, "no heartbeat revealed the lost delta"
            md.poll(100)
        assert [INDEX["ETH-PERP"] - 900, 2] in md.books["ETH-PERP"].levels("bids")
    finally:
        md.close()
        srv.client("mm-1").request("cancel", market="ETH-PERP", cid="hb-1")


def test_a_lost_trade_is_reported_as_a_gap_in_the_trade_stream(srv):
    seen = []
    md = srv.client("mm-2").market_data(srv.pub, ["BTC-PERP"], on_update=seen.append)
    try:
        handle = md.state.handle
        lost = []

        def lossy(topic, msg, body=None):
            if msg.get("type") == "trade" and len([u for u in seen if u["type"] == "trade"]) \
                    == 1 and not lost:
                lost.append(msg["seq"])
                return [], set()
            return handle(topic, msg, body)

        md.state.handle = lossy
        Flow(srv, seed=11, tag="gap").run(300)
        caught_up(md, srv, ["BTC-PERP"])
        md.poll(200)
        gaps = [u for u in seen if u["type"] == "gap"]
        assert lost and gaps and gaps[0] == {"type": "gap", "topic": "trade.BTC-PERP",
                                             "after": lost[0] - 1, "lost": 1}
    finally:
        md.close()


def test_a_mirror_that_disagrees_with_a_checksum_resyncs(srv):
    seen = []
    Flow(srv, seed=30, tag="crc0").run(100)                 # a book with both sides
    md = srv.client("mm-2").market_data(srv.pub, ["ETH-PERP"], on_update=seen.append)
    try:
        mirror = md.books["ETH-PERP"]
        for side in (mirror.bids, mirror.asks):             # the best levels, drifted
            key, qty = side.peekitem(0)
            side[key] = qty + 1
        Flow(srv, seed=3, tag="crc").run(100)
        caught_up(md, srv, ["ETH-PERP"])
        assert any(u["type"] == "resync" and "checksum" in u["detail"] for u in seen)
        book = engine_book(srv, "ETH-PERP")
        assert (mirror.levels("bids"), mirror.levels("asks")) == (book["bids"], book["asks"])
    finally:
        md.close()


def test_the_async_mirror_yields_updates_and_follows_the_book(srv):
    import asyncio

    from perpdex.gateway.client import AsyncClient

    async def session():
        c = AsyncClient(srv.router, str(srv.data / "keys" / "server.key"),
                        str(srv.data / "keys" / "taker-1.key_secret"))
        md = c.market_data(srv.pub, ["BTC-PERP"])
        try:
            await md.start()
            await asyncio.to_thread(Flow(srv, seed=4, tag="async").run, 200)
            want = (await c.request("snapshot", market="BTC-PERP"))["seq"]
            kinds = set()
            async for u in md.updates():    # in order, up to the book's update at `want`
                kinds.add(u["type"])          # (the mirror's book may be there already:
                if u["type"] == "book" and u["seq"] == want:   # it applies what it drained)
                    break
            return md.books["BTC-PERP"], kinds
        finally:
            md.close()
            c.close()

    mirror, kinds = asyncio.run(asyncio.wait_for(session(), 30))
    book = engine_book(srv, "BTC-PERP")
    assert (mirror.levels("bids"), mirror.levels("asks")) == (book["bids"], book["asks"])
    assert {"book", "trade"} <= kinds and "resync" not in kinds


# ---- what the feed says -----------------------------------------------------------------------

def test_checksums_match_an_independent_implementation(srv):
    sub = raw_sub(srv, [b"book."])
    books = {m: ({}, {}) for m in MARKETS}
    snaps = {m: srv.client("admin").request("snapshot", market=m) for m in MARKETS}
    for m, snap in snaps.items():
        books[m][0].update(dict(snap["bids"]))
        books[m][1].update(dict(snap["asks"]))
    Flow(srv, seed=5, tag="ind").run(600, batch=5)
    n = 0
    for topic, body in read_all(sub):
        msg = dec(body)
        m = msg["market"]
        if msg["seq"] <= snaps[m]["seq"]:
            continue
        bids, asks = books[m]
        for side, levels in ((bids, msg["bids"]), (asks, msg["asks"])):
            for p, q in levels:
                if q == 0:
                    del side[p]             # a level removed was there
                else:
                    side[p] = q
        best_bids = sorted(bids.items(), reverse=True)
        best_asks = sorted(asks.items())
        assert independent_checksum(best_bids, best_asks) == msg["checksum"], (m, msg["seq"])
        n += 1
    assert n > 100
    for m in MARKETS:
        book = engine_book(srv, m)
        assert sorted(books[m][0].items(), reverse=True) == [tuple(x) for x in book["bids"]]


def test_the_worked_checksum_example_of_the_protocol_doc_is_right():
    doc = (ROOT / "docs" / "protocol.md").read_text()
    example = re.search(r"bids `(\[\[.*?\]\])`, asks `(\[\[.*?\]\])`.*?`\"(.*?)\"`.*?"
                        r"CRC32 (\d+)", doc, re.S)
    assert example, "docs/protocol.md has a worked checksum example"
    bids, asks = msgspec.json.decode(example.group(1)), msgspec.json.decode(example.group(2))
    text, crc = example.group(3), int(example.group(4))
    assert text == ",".join(f"{p}:{q}" for p, q in bids) + "|" + \
        ",".join(f"{p}:{q}" for p, q in asks)
    assert independent_checksum(bids, asks) == crc
    from perpdex.gateway.chain import checksum
    assert checksum(bids, asks) == crc


def test_no_public_message_of_a_long_flow_names_an_account_a_cid_or_an_oid(srv):
    sub = raw_sub(srv)
    flow = Flow(srv, seed=6, tag="secretcid")
    flow.run(1500, batch=5)
    srv.client("oracle").request("oracle", market="BTC-PERP", price=INDEX["BTC-PERP"] + 5)
    oids = set()
    for c in flow.clients.values():
        for o in c.request("query_account")["events"][0]["open_orders"]:
            oids.add(o["oid"])
    msgs = read_all(sub)
    kinds = set()
    assert len(msgs) > 500
    for topic, body in msgs:
        assert b"secretcid" not in body
        for name in TRADERS + ("admin", "oracle"):
            assert name.encode() not in body
        msg = dec(body)
        kinds.add(msg["type"])
        assert set(msg) <= FIELDS[msg["type"]], msg
    assert {"book", "trade", "mark"} <= kinds
    assert not {"fill", "order_triggered", "order_accepted"} & kinds


def test_a_fill_goes_to_the_private_stream_and_only_an_anonymous_trade_to_the_feed(srv):
    for name in TRADERS:                    # an empty book: the one trade is ours
        assert srv.client(name).request("cancel_all")["ok"]
    sub = raw_sub(srv, [b"trade.ETH-PERP", b"fill", b"ETH-PERP"])
    mm, taker = srv.client("mm-1"), srv.client("taker-1")
    mm.subscribe()
    assert mm.request("new_order", market="ETH-PERP", cid="p-1", side="sell", kind="limit",
                      qty=3, price=INDEX["ETH-PERP"] + 1)["ok"]
    hit = taker.request("new_order", market="ETH-PERP", cid="p-2", side="buy", kind="limit",
                        qty=3, price=INDEX["ETH-PERP"] + 1)
    fill = [e for e in hit["events"] if e["type"] == "fill"][0]
    private = [i["event"] for i in mm.stream(2) if i["event"]["type"] == "fill"]
    assert private and private[0]["cid"] == "p-1" and "maker_cid" not in private[0]
    (topic, body), = read_all(sub)
    trade = dec(body)
    assert topic == b"trade.ETH-PERP"
    assert trade == {"type": "trade", "market": "ETH-PERP", "seq": trade["seq"],
                     "ts": fill["ts"], "trade_id": fill["seq"], "price": fill["price"],
                     "qty": 3, "taker_side": "buy", "liquidation": False,
                     "hash": trade["hash"]}


def test_each_topic_numbers_its_messages_one_by_one_from_one(tmp_path):
    s = serve(tmp_path, limits=FAST, session_timeout_ms=60_000)
    try:
        sub = raw_sub(s)
        oracle = s.client("oracle")
        for m, p in INDEX.items():
            oracle.request("oracle", market=m, price=p)
        Flow(s, seed=7, tag="num").run(800)
        oracle.request("oracle", market="ETH-PERP", price=INDEX["ETH-PERP"] + 3)
        seqs: dict[bytes, list] = {}
        for topic, body in read_all(sub):
            msg = dec(body)
            if topic == b"heartbeat":
                continue
            seqs.setdefault(topic, []).append(msg["seq"])
        assert {b"book.BTC-PERP", b"trade.ETH-PERP", b"mark.ETH-PERP"} <= set(seqs)
        for topic, got in seqs.items():
            assert got == list(range(1, len(got) + 1)), topic
    finally:
        s.stop()


def test_one_book_message_per_market_per_loop_turn_with_every_changed_level(srv):
    sub = raw_sub(srv, [b"book.BTC-PERP"])
    items = [{"type": "new_order", "market": "BTC-PERP", "cid": f"turn-{k}", "side": "buy",
              "kind": "limit", "qty": 2, "price": INDEX["BTC-PERP"] - 500 - k} for k in range(10)]
    assert srv.client("mm-1").request("batch", items=items)["ok"]
    (topic, body), = read_all(sub)
    delta = dec(body)
    assert delta["asks"] == []
    assert delta["bids"] == [[INDEX["BTC-PERP"] - 500 - k, 2] for k in range(10)]
    srv.client("mm-1").request("batch", items=[{"type": "cancel", "market": "BTC-PERP",
                                                "cid": f"turn-{k}"} for k in range(10)])
    (topic, body), = read_all(sub)
    assert dec(body)["bids"] == [[INDEX["BTC-PERP"] - 500 - k, 0] for k in range(10)]


def test_a_heartbeat_names_the_last_seq_of_every_topic(srv):
    sub = raw_sub(srv, [b"heartbeat"])
    assert sub.poll(3000)
    topic, body = sub.recv_multipart()
    hb = dec(body)
    snap = srv.client("admin").request("snapshot", market="BTC-PERP")
    assert topic == b"heartbeat" and hb["type"] == "heartbeat"
    assert {f"{k}.{m}" for k in FIELDS if k != "heartbeat" for m in MARKETS} <= set(hb["seqs"])
    assert hb["seqs"]["book.BTC-PERP"] <= snap["seq"]


# ---- snapshots ---------------------------------------------------------------------------

def test_a_snapshot_gives_the_top_n_levels_with_the_seq_it_corresponds_to(srv):
    c = srv.client("taker-1")
    full = c.request("snapshot", market="BTC-PERP")
    top = c.request("snapshot", market="BTC-PERP", depth=3)
    assert top["seq"] == full["seq"] and top["checksum"] == full["checksum"]
    assert top["bids"] == full["bids"][:3] and top["asks"] == full["asks"][:3]
    assert full["checksum"] == independent_checksum(full["bids"], full["asks"])


@pytest.mark.parametrize("fields, words", [({"market": "NOPE-PERP"}, "known `market`"),
                                           ({"market": "BTC-PERP", "depth": 0}, "$.depth"),
                                           ({}, "market")])
def test_a_bad_snapshot_request_is_invalid_command_with_a_reason(srv, fields, words):
    reply = srv.client("taker-1").request("snapshot", **fields)
    assert (reply["ok"], reply["reason"]) == (False, "invalid_command")
    assert words in reply["detail"]


def test_markets_answers_every_parameter_a_client_needs_to_trade_and_to_margin(srv):
    m = {x["market"]: x for x in srv.client("taker-1").request("markets")["markets"]}
    btc = m["BTC-PERP"]
    assert (btc["tick_size"], btc["lot_size"], btc["min_qty"]) == ("0.1", "0.001", 1)
    assert btc["max_price"] > 0 and btc["max_qty"] > 0 and btc["multiplier"] > 0
    assert (btc["maker_fee_ppm"], btc["taker_fee_ppm"], btc["liquidation_fee_ppm"]) == \
        (-100, 500, 10_000)
    assert (btc["imf_ppm"], btc["mmf_ppm"], btc["max_leverage"]) == (100_000, 50_000, 10)
    assert btc["tiers"] == []           # none configured: imf_ppm and mmf_ppm at every size
    assert (btc["price_band_ppm"], btc["funding_interval_s"], btc["funding_cap_ppm"]) == \
        (50_000, 3600, 7500)
    assert btc["oracle_max_age_s"] == 0 and btc["interest_ppm"] == 100


# ---- never wait for a subscriber ----------------------------------------------------------

def test_a_subscriber_that_sleeps_through_thousands_of_deltas_recovers_and_slows_nobody(
        tmp_path):
    # (a PUB never blocks and never says that it dropped: the gap is the sleeper's to see)
    s = serve(tmp_path, limits=dict(FAST, pub_hwm=50, sndbuf=4096), session_timeout_ms=60_000)
    try:
        oracle = s.client("oracle")
        for m, p in INDEX.items():
            oracle.request("oracle", market=m, price=p)
        seen = []
        sleeper = s.client("taker-2").market_data(s.pub, MARKETS, on_update=seen.append,
                                                  hwm=50)
        sleeper.sock.rcvbuf = 4096
        watcher = raw_sub(s, [b"book."], name="mm-2")       # a subscriber that keeps up
        flow = Flow(s, seed=8, tag="sleep")
        got = []
        flow.run(4000, batch=1, between=lambda: got.extend(read_all(watcher, quiet_ms=0)))
        got.extend(read_all(watcher))
        # slowed nobody, in counts: every one of the 4000 requests was answered (`run` asserts
        # each reply), and the subscriber that kept up got every delta (below)
        assert flow.sent == 4000
        assert len(got) > 2000, "thousands of deltas passed"
        sleeper.poll(100)                   # wakes up: the gap is seen, the mirror repaired
        caught_up(sleeper, s)
        # The gap is seen either in the deltas ("... lost") or, when a heartbeat is read first,
        # from the heartbeat's later seq: either way the mirror takes a new snapshot.
        assert (any(u["type"] == "resync" and "lost" in u["detail"] for u in seen)
                or any(b.resyncs for b in sleeper.books.values()))
        for m in MARKETS:                   # the one that kept up lost nothing
            seqs = [dec(b)["seq"] for t, b in got if t == f"book.{m}".encode()]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        for m in MARKETS:
            book = engine_book(s, m)
            mirror = sleeper.books[m]
            assert (mirror.levels("bids"), mirror.levels("asks")) == (book["bids"],
                                                                      book["asks"])
        sleeper.close()
    finally:
        s.stop()
