"""Work that falls due with time (a gtd expiry, the end of a velocity pause, a scheduled market
update, a funding boundary, a liquidation pass that waits to go on, and the refusal of a clock
jump over too many boundaries) is done by the first call whose ts reaches it, whichever entry
point moves the clock. The engine keeps the earliest such time and moves the clock below it
without looking: each case here is set up so that the work becomes due earlier than anything the
engine knew of before, and is then reached by the cheap calls (the handle calls, and msgpack
orders and cancels on the fast path), so a writer that forgets to say so is caught."""
import msgspec

from bench.liquidation_worst import venue as liquidation_venue
from perpdex.engine import Engine, messages as M
from perpdex.engine.codec import decode_event_json
from tests.markets import PLAIN, venue

S = 10**9
HOUR = 3600 * S
BUY, SELL = 0, 1
GTD = M.TIFS.index("gtd")


def handles(eng, account="a"):
    return eng.account_handle(account), eng.market_handle("X")


def tick(eng, ts, account="a"):
    """A cheap call at `ts` that changes nothing itself (a cancel of no order); its events."""
    a, m = handles(eng, account)
    eng.cancel_order(a, m, 999_999, ts)
    return [e for e in eng.last_events() if not (type(e) is M.Rejected
                                                 and e.reason == "unknown_order")]


def batch_tick(eng, ts, account="a"):
    """The same through execute_batch's fast path (a msgpack cancel); its events."""
    cmd = msgspec.msgpack.encode({"type": "cancel", "account": account, "market": "X",
                                  "cid": 999_999, "ts": ts})
    events = [decode_event_json(line)
              for line in eng.execute_batch(cmd, "msgpack", "jsonl").splitlines()]
    return [e for e in events if not (type(e) is M.Rejected and e.reason == "unknown_order")]


def kinds(events):
    return [type(e).__name__ for e in events]


def test_a_gtd_order_placed_by_handle_expires_at_its_time_before_the_funding_boundary():
    for via in (tick, batch_tick):
        eng = venue()                      # the first oracle: the next thing due is at 1 h
        a, m = handles(eng)
        oid, _ = eng.place(a, m, 1, BUY, 5, 99_000, 0, GTD, 0, 0, 0, 10 * S)
        assert oid
        assert via(eng, 10 * S - 1) == []
        [ev] = via(eng, 10 * S)
        assert (type(ev), ev.cid, ev.reason) == (M.OrderCancelled, 1, "expired"), via


def test_a_velocity_pause_ends_at_its_time_for_a_handle_call():
    for via in (tick, batch_tick):
        eng = venue(velocity_max_ppm=50_000, velocity_pause_s=30)
        eng.execute(M.Oracle(market="X", price=94_000, ts=S))
        assert eng.market_status("X") == "post_only"
        assert via(eng, 31 * S - 1) == []
        events = via(eng, 31 * S)
        assert [(e.status, e.until) for e in events] == [("active", None)], via
        assert eng.market_status("X") == "active"


def test_a_scheduled_update_takes_effect_at_its_time_for_a_handle_call():
    for via in (tick, batch_tick):
        eng = venue()
        eng.execute(M.UpdateMarket(market="X", taker_fee_ppm=900, effective_ts=HOUR // 2))
        assert via(eng, HOUR // 2 - 1) == []
        events = via(eng, HOUR // 2)
        assert [(type(e), e.effective_ts) for e in events] == [(M.MarketUpdated, HOUR // 2)]


def test_the_first_oracle_starts_funding_and_the_boundary_is_paid_for_a_handle_call():
    for via in (tick, batch_tick):
        eng = Engine()
        eng.execute(M.CreateMarket(market="X", **PLAIN))
        for acct, usd in (("a", 1_000), ("mm", 1_000_000)):
            eng.execute(M.Deposit(account=acct, amount=usd * 10**6))
        assert via(eng, S) == []           # nothing is due at all: the clock moves alone
        eng.execute(M.Oracle(market="X", price=100_000, ts=2 * S))
        assert via(eng, HOUR - 1) == []
        assert kinds(via(eng, HOUR)) == ["FundingEvent"], via
        assert kinds(via(eng, 3 * HOUR)) == ["FundingEvent"]       # two at once: intervals 2


def test_a_jump_over_too_many_boundaries_is_refused_by_the_handle_calls_too():
    from perpdex.engine.markets import MAX_MONEY
    eng = venue(funding_interval_s=1)
    spec = eng.specs[0]
    eng.execute(M.Oracle(market="X", price=spec.max_price))
    for acct in ("short", "long"):
        eng.execute(M.Deposit(account=acct, amount=MAX_MONEY // 4))
    qty = spec.max_qty // 2
    for acct, side in (("short", "sell"), ("long", "buy")):
        eng.execute(M.NewOrder(account=acct, market="X", cid=1, side=side, kind="limit",
                               qty=qty, price=spec.max_price))
    before = eng.execute(M.StateHash())[0].hash
    a, m = handles(eng, "long")
    assert eng.place(a, m, 2, BUY, 1, 100_000, 0, 0, 2**62) == (0, ())
    assert eng.last_reason == "invalid_command"
    assert eng.execute(M.StateHash())[0].hash == before
    assert eng.cancel_order(a, m, 2, 2**62) is False
    assert eng.last_reason == "invalid_command"
    assert eng.execute(M.StateHash())[0].hash == before


def test_a_liquidation_pass_that_waits_goes_on_at_the_next_handle_call():
    eng = liquidation_venue(longs=100, shorts=1, long_lots=100, short_lots=10_000,
                            long_usd=20, bid=82_000, bound=10)
    eng.execute(M.Oracle(market="X", price=83_000))
    a, m = eng.account_handle("mm"), eng.market_handle("X")
    for ts in range(1, 4):
        before = eng.work()["scopes_looked_at"]
        eng.cancel_order(a, m, 999_999, ts)
        assert eng.work()["scopes_looked_at"] - before == 10, ts


def test_a_snapshot_knows_what_is_due_next():
    eng = venue()
    a, m = handles(eng)
    eng.place(a, m, 1, BUY, 5, 99_000, 0, GTD, 0, 0, 0, 10 * S)
    copy = Engine.from_snapshot(eng.snapshot())
    [ev] = tick(copy, 10 * S)
    assert (type(ev), ev.reason) == (M.OrderCancelled, "expired")
