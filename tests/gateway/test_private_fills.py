"""Issue 23: a private fill shows the receiving account's own side only (docs/protocol.md,
"Fills"), on the private stream and in a trader's replies; the public trade stays anonymous; an
operator's replies and the journal keep the engine's whole fill. Against a real `perpdex serve`."""
from __future__ import annotations

import msgspec
import pytest

from perpdex.engine import messages as M
from perpdex.gateway.client import FillLog, Units, own_sides, typed_event
from perpdex.gateway.streams import OwnFill, private_views
from tests.harness import OperatorVenue as Venue, perpdex

OWN = {"type", "seq", "ts", "account", "market", "side", "cid", "oid", "price", "qty",
       "remaining", "fee", "liquidity", "liquidation", "trade_id"}
COUNTERPARTY = {"taker_account", "maker_account", "taker_cid", "maker_cid", "taker_oid",
                "maker_oid", "taker_remaining", "maker_remaining", "taker_fee", "maker_fee",
                "taker_side"}
ETH, BTC = 300_000, 650_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    v = Venue(tmp_path_factory.mktemp("fills") / "data", "--oracle-sim", "off")
    yield v
    v.stop()


@pytest.fixture
def venue(server):
    """The module's server with both markets' index where the tests expect it (they run in any
    order)."""
    oracle = server.client("oracle")
    for market, price in (("ETH-PERP", ETH), ("BTC-PERP", BTC)):
        assert oracle.request("oracle", market=market, price=price)["ok"]
    return server


def fills(events):
    return [e for e in events if e["type"] == "fill"]


def stream_events(c, n):
    return [i["event"] for i in c.stream(n)]


def fills_of(c, trade_ids) -> list:
    """The fills of these trades on `c`'s private stream (what else comes first is skipped)."""
    want, got = set(trade_ids), []
    while want:
        (item,) = c.stream(1)
        e = item["event"]
        if e["type"] == "fill" and e["trade_id"] in want:
            got.append(e)
            want.discard(e["trade_id"])
    return got


def names_in(event: dict) -> bytes:
    return msgspec.msgpack.encode(event)


def test_maker_and_taker_each_see_only_their_own_side(venue):
    maker, taker = venue.client("mm-1"), venue.client("taker-1")
    maker.subscribe()
    taker.subscribe()
    placed = maker.request("new_order", market="ETH-PERP", cid="mk-secret", side="sell",
                           kind="limit", qty=4, price=ETH + 10)
    assert placed["ok"]
    hit = taker.request("new_order", market="ETH-PERP", cid="tk-secret", side="buy",
                        kind="limit", qty=3, price=ETH + 10, tif="ioc")
    (t_reply,) = fills(hit["events"])
    t_stream = fills(stream_events(taker, 2))      # accepted, the fill
    m_stream = fills(stream_events(maker, 2))      # accepted, the fill
    assert t_stream == [t_reply]                   # the reply and the stream agree
    (t,), (m,) = t_stream, m_stream
    for mine, other in ((t, "mm-1"), (m, "taker-1")):
        assert set(mine) == OWN and not COUNTERPARTY & set(mine)
        assert other.encode() not in names_in(mine)
    assert b"mk-secret" not in names_in(t) and b"tk-secret" not in names_in(m)
    assert (t["account"], t["side"], t["cid"], t["liquidity"]) == \
        ("taker-1", "buy", "tk-secret", "taker")
    assert (m["account"], m["side"], m["cid"], m["liquidity"]) == \
        ("mm-1", "sell", "mk-secret", "maker")
    accepted = [e for e in placed["events"] if e["type"] == "order_accepted"][0]
    assert m["oid"] == accepted["oid"] and m["remaining"] == 1 and t["remaining"] == 0
    # the default fees: 0.05 % taker, a 0.01 % maker rebate, of 3 lots at ETH + 10 (x100)
    notional = 3 * (ETH + 10) * 100
    assert abs(t["fee"] - notional * 500 / 1e6) <= 1 and abs(m["fee"] + notional / 1e4) <= 1
    assert t["price"] == m["price"] == ETH + 10 and t["qty"] == m["qty"] == 3
    assert t["trade_id"] == m["trade_id"] == t["seq"] == m["seq"]
    assert not t["liquidation"] and not m["liquidation"]
    assert maker.request("cancel_all")["ok"]


def test_a_traders_reply_holds_no_event_of_another_account(venue):
    """The maker's reduce-only order swept by the taker's fill is the maker's to know."""
    mm, seller, taker = venue.client("mm-2"), venue.client("taker-2"), venue.client("taker-1")
    assert seller.request("new_order", market="BTC-PERP", cid="s", side="sell", kind="limit",
                          qty=5, price=BTC + 10)["ok"]
    assert mm.request("new_order", market="BTC-PERP", cid="long", side="buy", kind="limit",
                      qty=5, price=BTC + 10, tif="ioc")["ok"]
    mm.subscribe()
    for cid, price in (("r1", BTC + 20), ("r2", BTC + 30)):
        assert mm.request("new_order", market="BTC-PERP", cid=cid, side="sell", kind="limit",
                          qty=5, price=price, reduce_only=True)["ok"]
    hit = taker.request("new_order", market="BTC-PERP", cid="t", side="buy", kind="limit",
                        qty=5, price=BTC + 20, tif="ioc")
    assert hit["ok"] and len(fills(hit["events"])) == 1
    for e in hit["events"]:
        assert e.get("account", "taker-1") == "taker-1", e
        assert b"mm-2" not in names_in(e)
    mine = stream_events(mm, 4)         # r1, r2 accepted; r1's fill; r2 swept
    swept = [e for e in mine if e["type"] == "order_cancelled"]
    assert [(e["cid"], e["reason"]) for e in swept] == [("r2", "reduce_only")]


def test_a_liquidation_fill_names_neither_the_book_nor_the_fund_and_the_oracle_sees_all(venue):
    lev, maker, bidder = venue.client("lev-1"), venue.client("mm-1"), venue.client("mm-2")
    oracle = venue.client("oracle")
    lev.subscribe()
    bidder.subscribe()
    assert maker.request("new_order", market="ETH-PERP", cid="lev-ask", side="sell",
                         kind="limit", qty=6000, price=ETH)["ok"]
    bought = lev.request("new_order", market="ETH-PERP", cid="lev-long", side="buy",
                         kind="limit", qty=6000, price=ETH, tif="ioc")
    assert [f["qty"] for f in fills(bought["events"])] == [6000]
    assert bidder.request("new_order", market="ETH-PERP", cid="catch", side="buy",
                          kind="limit", qty=10_000, price=ETH * 9 // 10)["ok"]
    gap = oracle.request("oracle", market="ETH-PERP", price=ETH * 9 // 10)
    engine_fills = fills(gap["events"])
    assert engine_fills and all(f["liquidation"] for f in engine_fills)
    assert {"taker_account", "maker_account"} <= set(engine_fills[0])     # an operator's view
    assert engine_fills[0]["taker_account"] == "lev-1"
    got = fills_of(lev, [f["seq"] for f in engine_fills if f["taker_account"] == "lev-1"])
    assert got and all(set(f) == OWN and f["liquidation"] and f["liquidity"] == "taker"
                       for f in got)
    assert all(b"mm-2" not in names_in(f) and b"insurance" not in names_in(f) for f in got)
    caught = fills_of(bidder, [f["seq"] for f in engine_fills if f["maker_account"] == "mm-2"])
    assert caught and all(f["liquidity"] == "maker" and b"lev-1" not in names_in(f)
                          for f in caught)
    assert bidder.request("cancel_all")["ok"]


def test_the_journal_keeps_the_whole_fill_and_verify_agrees_with_the_streams(venue, tmp_path):
    """What a venue operator can still see: `perpdex replay` of the journal gives the engine's
    fills, both sides; `perpdex verify` recomputes the private chains of own-side fills."""
    maker, taker = venue.client("mm-1"), venue.client("taker-1")
    assert maker.request("new_order", market="ETH-PERP", cid="j-m", side="sell", kind="limit",
                         qty=2, price=ETH + 20)["ok"]
    hit = taker.request("new_order", market="ETH-PERP", cid="j-t", side="buy", kind="limit",
                        qty=2, price=ETH + 20, tif="ioc")
    (own,) = fills(hit["events"])
    out = tmp_path / "events.jsonl"
    replay = perpdex("replay", venue.data, "--out", out)
    assert replay.returncode == 0, replay.stderr
    whole = [msgspec.json.decode(line) for line in out.read_text().splitlines()]
    (whole_fill,) = [e for e in whole if e["type"] == "fill" and e["seq"] == own["seq"]]
    assert (whole_fill["maker_account"], whole_fill["maker_cid"], whole_fill["taker_account"],
            whole_fill["taker_cid"]) == ("mm-1", "j-m", "taker-1", "j-t")
    verify = perpdex("verify", venue.data)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_self_match_gives_the_account_both_its_sides_as_two_fills():
    """Self-trade prevention keeps a trader from meeting itself through the gateway; should the
    engine ever match an account with itself, it gets each side as a fill of its own."""
    ev = M.Fill(seq=9, ts=1, market="ETH-PERP", price=5, qty=2, taker_side="sell",
                taker_account="a", taker_cid="t", taker_oid=1, taker_remaining=0,
                maker_account="a", maker_cid="m", maker_oid=2, maker_remaining=3,
                taker_fee=7, maker_fee=-1, liquidation=False)
    views = private_views(ev, msgspec.msgpack.encode)
    assert [a for a, _ in views] == ["a", "a"]
    sides = [msgspec.msgpack.decode(d) for _, d in views]
    assert [(s["side"], s["cid"], s["oid"], s["remaining"], s["fee"], s["liquidity"])
            for s in sides] == [("sell", "t", 1, 0, 7, "taker"), ("buy", "m", 2, 3, -1, "maker")]
    assert all(set(s) == OWN and s["trade_id"] == 9 for s in sides)
    assert set(OwnFill.__struct_fields__) | {"type"} == OWN
    # the SDK reads either shape, and splits an operator's two-sided fill the same way
    assert own_sides(msgspec.to_builtins(ev)) == sides
    log = FillLog()
    for s in sides:
        log.add(s)
    assert [f["cid"] for f in log.of("a", "ETH-PERP", "t") + log.of("a", "ETH-PERP", "m")] == \
        ["t", "m"]
    u = Units({"market": "ETH-PERP", "tick_size": "0.01", "lot_size": "0.01"})
    assert typed_event(sides[1], {"ETH-PERP": u}, "a").liquidity == "maker"
