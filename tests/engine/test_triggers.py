"""Trigger orders: stop and take-profit, market and limit, resting off-book until the mark."""
from perpdex.engine import messages as M
from tests.conftest import MKT, Exchange, only, reason, types


def stop(x, account, cid, side, qty, trigger, kind="stop_market", price=None, **kw):
    return x.order(account, cid, side, qty, price, kind=kind, trigger_price=trigger, **kw)


def test_a_trigger_order_is_accepted_and_rests_off_the_book(ex):
    events = stop(ex, "a", 1, "buy", 5, 10_050)
    acc = only(events, "order_accepted")
    assert (acc["kind"], acc["price"], acc["tif"]) == ("stop_market", None, "ioc")
    assert ex.book("buy") == [] and ex.book("sell") == []


def test_a_buy_stop_fires_when_the_mark_rises_to_its_trigger(ex):
    ex.order("m", 1, "sell", 5, 10_060)
    stop(ex, "a", 1, "buy", 5, 10_050)
    assert "order_triggered" not in types(ex.oracle(10_049))
    events = ex.oracle(10_050)
    assert types(events) == ["mark", "order_triggered", "fill"]
    trig = events[1]
    assert (trig["cid"], trig["trigger_price"], trig["mark"]) == (1, 10_050, 10_050)
    assert events[2]["price"] == 10_060 and events[2]["taker_oid"] == trig["oid"]


def test_a_sell_stop_fires_when_the_mark_falls_to_its_trigger(ex):
    ex.order("m", 1, "buy", 5, 9_940)
    stop(ex, "a", 1, "sell", 5, 9_950)
    assert "order_triggered" not in types(ex.oracle(9_951))
    assert types(ex.oracle(9_950)) == ["mark", "order_triggered", "fill"]


def test_take_profits_fire_the_other_way_round(ex):
    stop(ex, "a", 1, "sell", 2, 10_050, kind="take_profit_market")
    stop(ex, "b", 1, "buy", 2, 9_950, kind="take_profit_market")
    assert [e["account"] for e in ex.oracle(10_060) if e["type"] == "order_triggered"] == ["a"]
    assert [e["account"] for e in ex.oracle(9_900) if e["type"] == "order_triggered"] == ["b"]


def test_triggered_orders_enter_in_placement_order(ex):
    stop(ex, "a", 1, "buy", 2, 10_040)
    stop(ex, "b", 1, "buy", 2, 10_010)
    stop(ex, "c", 1, "sell", 2, 10_080, kind="take_profit_market")
    fired = [e["account"] for e in ex.oracle(10_100) if e["type"] == "order_triggered"]
    assert fired == ["a", "b", "c"]


def test_a_stop_limit_enters_as_a_limit_order_and_rests(ex):
    stop(ex, "a", 1, "buy", 3, 10_050, kind="stop_limit", price=10_055)
    events = ex.oracle(10_050)
    assert types(events) == ["mark", "order_triggered"]
    assert ex.book("buy") == [(10_055, [(1, 3)])]


def test_a_stop_limit_priced_outside_the_band_around_its_trigger_is_rejected(ex):
    # band 2 % around the trigger 10000: a buy may not be priced above 10200
    assert reason(stop(ex, "a", 1, "buy", 3, 10_000, kind="stop_limit", price=10_201)) == \
        "price_out_of_band"


def test_a_gap_through_the_trigger_cancels_a_limit_that_left_the_band():
    x = Exchange()
    x.oracle(10_000)
    # a take-profit buy at 9900, priced 10090 (inside 2 % of its trigger)
    stop(x, "a", 1, "buy", 3, 9_900, kind="take_profit_limit", price=10_090)
    events = x.oracle(9_500)             # the mark gaps: 10090 is above 9500 * 1.02 = 9690
    assert types(events) == ["mark", "order_triggered", "order_cancelled"]
    assert (events[2]["reason"], events[2]["remaining"]) == ("price_out_of_band", 3)


def test_an_untriggered_order_can_be_cancelled_and_its_cid_is_taken(ex):
    stop(ex, "a", 1, "buy", 5, 10_050)
    assert reason(ex.order("a", 1, "buy", 5, 9_990)) == "duplicate_cid"
    assert only(ex.cancel("a", 1), "order_cancelled")["reason"] == "user"
    assert "order_triggered" not in types(ex.oracle(10_100))


def test_an_untriggered_order_can_be_amended(ex):
    stop(ex, "a", 1, "buy", 5, 10_050, kind="stop_limit", price=10_060)
    ev = only(ex.amend("a", 1, qty=3, price=10_070), "order_amended")
    assert (ev["qty"], ev["price"], ev["priority_kept"]) == (3, 10_070, True)
    ex.oracle(10_060)
    assert ex.book("buy") == [(10_070, [(1, 3)])]


def test_a_reduce_only_stop_loss_closes_the_position_when_it_fires(ex):
    ex.order("m", 1, "sell", 5, 10_000)
    ex.order("a", 1, "buy", 5, 10_000)                     # long 5
    stop(ex, "a", 2, "sell", 5, 9_900, reduce_only=True)  # stop-loss
    ex.order("m", 2, "buy", 10, 9_890)
    events = ex.oracle(9_900)
    assert types(events) == ["mark", "order_triggered", "fill"]
    assert ex.engine.position("a", MKT)[0] == 0


def test_a_reduce_only_trigger_with_nothing_left_to_reduce_is_cancelled(ex):
    ex.order("m", 1, "sell", 5, 10_000)
    ex.order("a", 1, "buy", 5, 10_000)
    stop(ex, "a", 2, "sell", 5, 9_900, reduce_only=True)
    ex.order("b", 1, "buy", 5, 10_000)
    ex.order("a", 3, "sell", 5, 10_000)                   # closed by hand first
    events = ex.oracle(9_900)
    assert only(events, "order_cancelled")["reason"] == "reduce_only"


def test_a_trigger_order_counts_as_an_open_order():
    x = Exchange(max_orders_per_account=1)
    x.oracle(10_000)
    stop(x, "a", 1, "buy", 5, 10_050)
    assert reason(x.order("a", 2, "buy", 5, 9_990)) == "too_many_orders"
    assert [o["kind"] for o in only(x.run(M.QueryAccount(account="a")), "account")["open_orders"]] \
        == ["stop_market"]
