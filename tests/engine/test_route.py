"""Engine.route: one command in, its events' bytes and an index row per event out
(docs/engine-api.md, "Routing a command's events"). The bytes are execute's events, the rows
say the same as those events, and a fill's two own views are each side's part of it."""
import random

import msgspec
import pytest

from perpdex.engine import ROUTE, ROW_FIELDS, Engine, messages as M

from tests.flows import margin_flow, random_flow

_pack = msgspec.msgpack.encode
_unpack = msgspec.msgpack.decode


def _flows():
    yield "orders", (random_flow(7, 600), False)    # margin off: every rule of matching
    for seed in (3, 11, 29):
        yield f"margin {seed}", (margin_flow(random.Random(seed), 120), True)


FLOWS = list(_flows())


def _both(flow):
    """(execute's events, route's (data, rows)) of each command, on two engines."""
    cmds, margin = flow
    a, b = Engine(margin=margin), Engine(margin=margin)
    for cmd in cmds:
        yield a.execute(cmd), b.route(cmd)


def _own(ev, maker: bool) -> bytes:
    """The side's own view of a fill, as docs/protocol.md's "Fills" says."""
    side = ev.taker_side if not maker else ("sell" if ev.taker_side == "buy" else "buy")
    who = "maker" if maker else "taker"
    return _pack({"type": "fill", "seq": ev.seq, "ts": ev.ts,
                  "account": getattr(ev, who + "_account"), "market": ev.market,
                  "side": side, "cid": getattr(ev, who + "_cid"),
                  "oid": getattr(ev, who + "_oid"), "price": ev.price, "qty": ev.qty,
                  "remaining": getattr(ev, who + "_remaining"),
                  "fee": getattr(ev, who + "_fee"), "liquidity": who,
                  "liquidation": ev.liquidation, "trade_id": ev.seq})


@pytest.mark.parametrize("name,cmds", FLOWS, ids=[n for n, _ in FLOWS])
def test_each_row_locates_its_event_bytes_in_seq_order(name, cmds):
    for events, (data, rows) in _both(cmds):
        assert len(rows) == len(events)
        for ev, row in zip(events, rows):
            assert data[row[1]:row[2]] == _pack(ev)


@pytest.mark.parametrize("name,cmds", FLOWS, ids=[n for n, _ in FLOWS])
def test_each_row_names_the_account_of_its_event(name, cmds):
    for events, (data, rows) in _both(cmds):
        for ev, row in zip(events, rows):
            account = ev.taker_account if type(ev) is M.Fill else getattr(ev, "account", None)
            assert row[3] == account


@pytest.mark.parametrize("name,cmds", FLOWS, ids=[n for n, _ in FLOWS])
def test_a_rows_kind_is_its_events_type_or_rare(name, cmds):
    kinds = {v: k for k, v in ROUTE.items()}
    for events, (_, rows) in _both(cmds):
        for ev, row in zip(events, rows):
            tag = ev.__struct_config__.tag
            assert kinds[row[0]] == (tag if tag in ROUTE else "rare")
            if row[0] == ROUTE["rare"]:
                assert row[4] == ev


@pytest.mark.parametrize("name,cmds", FLOWS, ids=[n for n, _ in FLOWS])
def test_each_row_holds_the_fields_row_fields_names_for_its_kind(name, cmds):
    kinds = {v: k for k, v in ROUTE.items()}
    for _, (_, rows) in _both(cmds):
        for row in rows:
            assert len(row) == len(ROW_FIELDS[kinds[row[0]]])


@pytest.mark.parametrize("name,cmds", FLOWS, ids=[n for n, _ in FLOWS])
def test_a_fill_row_carries_both_sides_own_views_and_its_fields(name, cmds):
    fills = 0
    for events, (data, rows) in _both(cmds):
        for ev, row in zip(events, rows):
            if type(ev) is not M.Fill:
                continue
            fills += 1
            (_, _, end, taker, maker, mid, vend, market, side, price, qty, taker_oid,
             taker_rem, maker_oid, maker_rem, liquidation, seq, ts) = row
            assert data[end:mid] == _own(ev, maker=False)
            assert data[mid:vend] == _own(ev, maker=True)
            assert (taker, maker, market, M.SIDES[side], price, qty) == (
                ev.taker_account, ev.maker_account, ev.market, ev.taker_side, ev.price, ev.qty)
            assert (taker_oid, taker_rem, maker_oid, maker_rem, liquidation, seq, ts) == (
                ev.taker_oid, ev.taker_remaining, ev.maker_oid, ev.maker_remaining,
                ev.liquidation, ev.seq, ev.ts)
    assert fills


@pytest.mark.parametrize("name,cmds", FLOWS, ids=[n for n, _ in FLOWS])
def test_order_rows_carry_the_oid_market_and_level(name, cmds):
    for events, (_, rows) in _both(cmds):
        for ev, row in zip(events, rows):
            t = type(ev)
            if t is M.OrderAccepted:
                assert row[4:] == (ev.oid, ev.market, M.SIDES.index(ev.side), ev.price, ev.cid)
            elif t is M.OrderCancelled:
                assert row[4:] == (ev.oid, ev.market)
            elif t is M.OrderAmended:
                assert row[4:] == (ev.oid, ev.market, ev.price)
            elif t is M.Mark:
                assert row[4:] == (ev.market, ev.index, ev.mark, ev.seq, ev.ts)
            elif t is M.Rejected:
                assert row[4] == ev.reason


def test_route_leaves_the_same_state_as_execute():
    cmds = FLOWS[1][1][0]
    a, b = Engine(), Engine()
    for cmd in cmds:
        a.execute(cmd)
        b.route(cmd)
    end = [M.StateHash(ts=10**15), M.Audit(ts=10**15)]
    assert [a.execute(c) for c in end] == [b.execute(c) for c in end]


def test_a_command_the_engine_refuses_is_routed_as_its_rejection():
    eng = Engine()
    data, rows = eng.route(M.Cancel(account="a", market="NOPE", cid=1, ts=0))
    (kind, start, end, account, reason), = rows
    assert (kind, account, reason) == (ROUTE["rejected"], "a", "unknown_market")
    assert _unpack(data[start:end])["type"] == "rejected"
