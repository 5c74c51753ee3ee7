"""A market's lifecycle (docs/contract.md, "Market lifecycle", an extension): its status, its
parameters changed while it trades, and its settlement (delisting) at a final price."""
import msgspec
import pytest

from perpdex.engine import Engine, messages as M
from tests.markets import PLAIN, USD, order, reasons, report, status, venue

HOUR = 3600 * 10**9


def balanced(eng):
    a = eng.execute(M.Audit())[0]
    return (a.deposits - a.withdrawals == a.collateral + a.unrealised_pnl + a.insurance_fund
            + a.fees and all(oi.long == oi.short for oi in a.open_interest.values()))


# ---- status ------------------------------------------------------------------------------------

def test_a_status_change_is_an_event_and_setting_the_same_status_is_silent():
    eng = venue()
    [ev] = status(eng, "halted")
    assert (type(ev), ev.market, ev.status) == (M.MarketStatusEvent, "X", "halted")
    assert status(eng, "halted") == []


def test_a_halted_market_refuses_orders_and_amends_and_takes_cancels():
    eng = venue()
    order(eng, "a", 1, "buy", 10, 99_000)
    status(eng, "halted")
    assert reasons(order(eng, "b", 1, "sell", 10, 99_000)) == ["market_halted"]
    assert reasons(eng.execute(M.Amend(account="a", market="X", cid=1, price=98_000))) == [
        "market_halted"]
    [ev] = eng.execute(M.Cancel(account="a", market="X", cid=1))
    assert ev.reason == "user"


def test_a_halted_market_resumes_and_matches_again():
    eng = venue()
    status(eng, "halted")
    status(eng, "active")
    order(eng, "a", 1, "buy", 10, 100_000)
    assert any(type(e) is M.Fill for e in order(eng, "b", 1, "sell", 10, 100_000))


def test_while_halted_triggers_and_liquidations_wait_and_run_when_the_halt_lifts():
    eng = venue()
    order(eng, "mm", 1, "sell", 9_000, 100_000)
    order(eng, "a", 1, "buy", 9_000, 100_000)                   # 9x
    order(eng, "b", 1, "sell", 10, kind="stop_market", trigger_price=95_000)
    order(eng, "mm", 2, "buy", 20_000, 92_000)
    status(eng, "halted")
    events = eng.execute(M.Oracle(market="X", price=93_000))
    assert [type(e) for e in events] == [M.Mark]                # the mark moves, nothing else
    events = status(eng, "active")
    kinds = [type(e) for e in events]
    assert M.OrderTriggered in kinds and M.LiquidationEvent in kinds
    assert balanced(eng)


def test_a_post_only_market_refuses_orders_that_would_take_and_rests_the_others():
    eng = venue()
    order(eng, "mm", 1, "sell", 10, 100_100)
    status(eng, "post_only")
    assert reasons(order(eng, "a", 1, "buy", 10, kind="market")) == ["market_post_only"]
    assert reasons(order(eng, "a", 2, "buy", 10, 100_100, tif="ioc")) == ["market_post_only"]
    assert reasons(order(eng, "a", 3, "buy", 10, 100_100)) == ["market_post_only"]
    assert reasons(order(eng, "a", 4, "buy", 10, 100_100, tif="alo")) == [
        "post_only_would_cross"]
    assert [type(e) for e in order(eng, "a", 5, "buy", 10, 100_000)] == [M.OrderAccepted]


def test_a_stop_that_fires_in_a_post_only_market_is_cancelled_with_the_status_reason():
    eng = venue()
    order(eng, "mm", 1, "buy", 10, 94_000)
    order(eng, "mm", 2, "sell", 10, 100_000)
    order(eng, "a", 1, "buy", 10, 100_000)
    order(eng, "a", 2, "sell", 10, kind="stop_market", trigger_price=95_000, reduce_only=True)
    status(eng, "post_only")
    events = eng.execute(M.Oracle(market="X", price=94_500))
    assert M.OrderTriggered in [type(e) for e in events]
    assert reasons(events) == ["market_status"]


def test_going_reduce_only_cancels_the_orders_that_are_not_reduce_only():
    eng = venue()
    order(eng, "mm", 1, "sell", 10, 100_000)
    order(eng, "a", 1, "buy", 10, 100_000)
    order(eng, "a", 2, "buy", 5, 99_000)                           # would grow
    order(eng, "a", 3, "sell", 5, 101_000, reduce_only=True)        # stays
    order(eng, "b", 1, "sell", 5, kind="stop_market", trigger_price=90_000)   # would open
    events = status(eng, "reduce_only")
    assert sorted((e.account, e.cid, e.reason) for e in events
                  if type(e) is M.OrderCancelled) == [("a", 2, "market_status"),
                                                      ("b", 1, "market_status")]
    assert [o["cid"] for o in report(eng, "a")["open_orders"]] == [3]


def test_a_reduce_only_market_takes_reduce_only_orders_only():
    eng = venue()
    order(eng, "mm", 1, "sell", 10, 100_000)
    order(eng, "a", 1, "buy", 10, 100_000)
    status(eng, "reduce_only")
    assert reasons(order(eng, "b", 1, "buy", 5, 99_000)) == ["market_reduce_only"]
    order(eng, "mm", 2, "buy", 10, 100_000, reduce_only=True)
    assert any(type(e) is M.Fill
               for e in order(eng, "a", 2, "sell", 10, 100_000, reduce_only=True))


def test_an_unknown_status_is_an_invalid_command():
    eng = venue()
    out = eng.execute_batch(b'{"type":"set_market_status","market":"X","status":"paused"}\n',
                            "jsonl", "jsonl")
    ev = msgspec.json.decode(out)
    assert ev["reason"] == "invalid_command" and "status" in ev["detail"]


# ---- settlement --------------------------------------------------------------------------------

def test_settlement_closes_every_position_at_its_price_cancels_every_order_and_balances():
    eng = venue()
    eng.execute(M.SetMarginMode(account="b", market="X", mode="isolated"))
    eng.execute(M.TransferMargin(account="b", market="X", amount=300 * USD))
    order(eng, "mm", 1, "sell", 500, 100_000)
    order(eng, "a", 1, "buy", 500, 100_000)                          # cross long
    order(eng, "mm", 2, "buy", 300, 100_000)
    order(eng, "b", 1, "sell", 300, 100_000)                         # isolated short
    order(eng, "a", 2, "sell", 100, kind="stop_market", trigger_price=90_000, reduce_only=True)
    order(eng, "mm", 3, "buy", 50, 99_000)                           # resting
    eng.execute(M.Clock(ts=5 * HOUR))                                # funding unsettled
    eng.execute(M.Oracle(market="X", price=101_000, ts=5 * HOUR))
    events = eng.execute(M.SettleMarket(market="X", price=102_000, ts=5 * HOUR + 1))
    settled = {e.account: e for e in events if type(e) is M.Settlement}
    assert (settled["a"].side, settled["a"].qty, settled["a"].price) == ("sell", 500, 102_000)
    assert (settled["b"].side, settled["b"].qty) == ("buy", 300)
    assert {e.reason for e in events if type(e) is M.OrderCancelled} == {"market_status"}
    assert [e.status for e in events if type(e) is M.MarketStatusEvent] == ["settled"]
    funding = [e for e in events if type(e) is M.Balance and e.reason == "funding"]
    assert funding and events.index(funding[0]) < events.index(settled["a"])
    for acct in ("a", "b", "mm"):
        r = report(eng, acct)
        assert r["open_orders"] == [] and all(p["size"] == 0 for p in r["positions"])
    assert eng.execute(M.Audit())[0].open_interest["X"].long == 0
    assert balanced(eng)


def test_a_settled_market_is_closed_for_ever_and_its_name_is_not_reused():
    eng = venue()
    eng.execute(M.SettleMarket(market="X", price=100_000))
    assert reasons(order(eng, "a", 1, "buy", 1, 100_000)) == ["market_settled"]
    assert reasons(eng.execute(M.Oracle(market="X", price=100_000))) == ["market_settled"]
    assert reasons(eng.execute(M.SettleMarket(market="X", price=1))) == ["market_settled"]
    assert reasons(status(eng, "active")) == ["market_settled"]
    assert reasons(eng.execute(M.CreateMarket(market="X", **PLAIN))) == ["market_exists"]
    before = eng.execute(M.Audit())[0]
    eng.execute(M.Clock(ts=100 * HOUR))
    assert not [e for e in eng.execute(M.Clock(ts=101 * HOUR)) if type(e) is M.FundingEvent]
    assert eng.execute(M.Audit())[0].collateral == before.collateral


def test_a_settlement_price_past_a_bankruptcy_is_made_good_and_nobody_ends_below_zero():
    eng = venue()
    order(eng, "mm", 1, "sell", 9_000, 100_000)
    order(eng, "a", 1, "buy", 9_000, 100_000)                       # 9x: bankrupt below 88,900
    events = eng.execute(M.SettleMarket(market="X", price=80_000))
    assert report(eng, "a")["equity"] >= 0
    assert report(eng, "insurance")["equity"] >= 0
    assert balanced(eng)
    assert any(type(e) is M.Balance and e.account == "a" and e.reason == "insurance"
               for e in events)


def test_a_settlement_price_must_be_a_valid_price():
    eng = venue()
    assert reasons(eng.execute(M.SettleMarket(market="X", price=0))) == ["invalid_price"]
    assert reasons(eng.execute(M.SettleMarket(market="Y", price=1))) == ["unknown_market"]


# ---- parameters --------------------------------------------------------------------------------

def test_an_update_is_an_event_with_every_parameter_and_changes_what_it_names():
    eng = venue()
    [ev] = eng.execute(M.UpdateMarket(market="X", taker_fee_ppm=700, price_band_ppm=50_000))
    assert (type(ev), ev.taker_fee_ppm, ev.price_band_ppm, ev.imf_ppm) == (
        M.MarketUpdated, 700, 50_000, 100_000)
    assert reasons(order(eng, "a", 1, "buy", 1, 106_000)) == ["price_out_of_band"]


def test_an_update_is_checked_as_create_market_is():
    eng = venue()
    [ev] = eng.execute(M.UpdateMarket(market="X", mmf_ppm=200_000))
    assert ev.reason == "invalid_market" and "mmf_ppm" in ev.detail


def test_raising_margin_warns_at_once_and_liquidates_only_at_the_next_mark():
    eng = venue()
    order(eng, "mm", 1, "sell", 5_000, 100_000)
    order(eng, "a", 1, "buy", 5_000, 100_000)                       # 5x: fine at mmf 5 %
    events = eng.execute(M.UpdateMarket(market="X", imf_ppm=300_000, mmf_ppm=250_000))
    assert [e.account for e in events if type(e) is M.MarginCall] == ["a"]
    assert not [e for e in events if type(e) is M.LiquidationEvent]
    order(eng, "mm", 2, "buy", 5_000, 99_000)
    events = eng.execute(M.Oracle(market="X", price=100_000))
    assert [e.account for e in events if type(e) is M.LiquidationEvent][:1] == ["a"]
    assert balanced(eng)


def test_an_update_scheduled_for_later_takes_effect_when_the_clock_reaches_it():
    eng = venue()
    [ev] = eng.execute(M.UpdateMarket(market="X", taker_fee_ppm=900, effective_ts=HOUR // 2))
    assert ev.effective_ts == HOUR // 2
    order(eng, "mm", 1, "sell", 10, 100_000)
    fills = [e for e in order(eng, "a", 1, "buy", 5, 100_000) if type(e) is M.Fill]
    assert fills[0].taker_fee == 0                                  # not yet
    events = eng.execute(M.Clock(ts=HOUR // 2))
    assert [(type(e), e.effective_ts) for e in events] == [(M.MarketUpdated, HOUR // 2)]
    fills = [e for e in order(eng, "a", 2, "buy", 5, 100_000) if type(e) is M.Fill]
    assert fills[0].taker_fee == 5 * 100_000 * 10 * 900 // 1_000_000


def test_funding_parameters_apply_after_the_interval_in_progress():
    eng = venue(interest_ppm=100)
    eng.execute(M.UpdateMarket(market="X", interest_ppm=-400))
    [f1] = [e for e in eng.execute(M.Clock(ts=HOUR)) if type(e) is M.FundingEvent]
    [f2] = [e for e in eng.execute(M.Clock(ts=2 * HOUR)) if type(e) is M.FundingEvent]
    assert (f1.rate_ppm, f2.rate_ppm) == (100, -400)


def test_a_snapshot_keeps_the_status_and_a_scheduled_update():
    eng = venue()
    status(eng, "post_only")
    eng.execute(M.UpdateMarket(market="X", taker_fee_ppm=900, effective_ts=HOUR))
    copy = Engine.from_snapshot(eng.snapshot())
    for e in (eng, copy):
        assert reasons(order(e, "a", 1, "buy", 1, kind="market")) == ["market_post_only"]
    assert copy.execute(M.Clock(ts=HOUR)) == eng.execute(M.Clock(ts=HOUR))
    assert copy.state() == eng.state()


def test_a_halted_market_is_frozen_no_mark_move_and_no_funding():
    eng = venue()
    order(eng, "mm", 1, "sell", 500, 100_000)
    order(eng, "a", 1, "buy", 500, 100_000)
    status(eng, "halted")
    [mark] = eng.execute(M.Oracle(market="X", price=80_000))
    assert (mark.index, mark.mark) == (80_000, 100_000)
    assert not [e for e in eng.execute(M.Clock(ts=5 * HOUR)) if type(e) is M.FundingEvent]
    assert all(p["unsettled_funding"] == 0 for p in report(eng, "a")["positions"])
    events = status(eng, "active")
    assert [(e.index, e.mark) for e in events if type(e) is M.Mark] == [(80_000, 80_000)]
    assert [e for e in eng.execute(M.Clock(ts=6 * HOUR)) if type(e) is M.FundingEvent]
