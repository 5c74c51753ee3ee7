"""Orders and matching, one rule of the contract per test."""
from perpdex.engine import messages as M
from tests.conftest import MKT, Exchange, only, reason, types
from tests.flows import MARKET_FIELDS


# ---- price-time priority -----------------------------------------------------------------

def test_taker_trades_at_the_maker_price(ex):
    ex.order("m", 1, "sell", 5, 10_005)
    fill = only(ex.order("t", 1, "buy", 5, 10_010), "fill")
    assert fill["price"] == 10_005


def test_fills_against_one_level_go_oldest_first(ex):
    ex.order("m1", 1, "sell", 5, 10_005)
    ex.order("m2", 1, "sell", 5, 10_005)
    fills = [e for e in ex.order("t", 1, "buy", 7, 10_005) if e["type"] == "fill"]
    assert [(f["maker_account"], f["qty"]) for f in fills] == [("m1", 5), ("m2", 2)]


def test_a_better_price_fills_before_an_older_order(ex):
    ex.order("m1", 1, "sell", 5, 10_006)
    ex.order("m2", 1, "sell", 5, 10_004)
    fills = [e for e in ex.order("t", 1, "buy", 6, 10_010) if e["type"] == "fill"]
    assert [(f["price"], f["qty"]) for f in fills] == [(10_004, 5), (10_006, 1)]


def test_a_fill_reports_both_sides_and_what_remains(ex):
    ex.order("m", "ask-1", "sell", 5, 10_005)
    fill = only(ex.order("t", 9, "buy", 8, 10_005), "fill")
    assert fill["taker_side"] == "buy" and fill["qty"] == 5
    assert (fill["taker_account"], fill["taker_cid"], fill["taker_remaining"]) == ("t", 9, 3)
    assert (fill["maker_account"], fill["maker_cid"], fill["maker_remaining"]) == ("m", "ask-1", 0)
    assert fill["liquidation"] is False


def test_an_order_that_does_not_cross_rests_in_the_book(ex):
    assert types(ex.order("m", 1, "buy", 5, 9_990)) == ["order_accepted"]
    assert ex.book("buy") == [(9_990, [(1, 5)])]


def test_oids_count_up_from_one_over_accepted_orders_only(ex):
    a = only(ex.order("m", 1, "buy", 5, 9_990), "order_accepted")
    ex.order("m", 2, "buy", 0, 9_990)                       # rejected: no oid
    b = only(ex.order("m", 3, "buy", 5, 9_990), "order_accepted")
    assert (a["oid"], b["oid"]) == (1, 2)


# ---- time in force -------------------------------------------------------------------------

def test_gtc_remainder_rests_after_partial_fill(ex):
    ex.order("m", 1, "sell", 3, 10_000)
    assert types(ex.order("t", 1, "buy", 5, 10_000)) == ["order_accepted", "fill"]
    assert ex.book("buy") == [(10_000, [(1, 2)])]


def test_ioc_remainder_is_cancelled_with_ioc_remainder(ex):
    ex.order("m", 1, "sell", 3, 10_000)
    events = ex.order("t", 1, "buy", 5, 10_000, tif="ioc")
    assert types(events) == ["order_accepted", "fill", "order_cancelled"]
    assert events[-1]["reason"] == "ioc_remainder" and events[-1]["remaining"] == 2
    assert ex.book("buy") == []


def test_fok_that_cannot_fill_completely_gives_no_fill_and_one_cancel(ex):
    ex.order("m", 1, "sell", 3, 10_000)
    events = ex.order("t", 1, "buy", 5, 10_000, tif="fok")
    assert types(events) == ["order_accepted", "order_cancelled"]
    assert events[-1]["reason"] == "fok_unfilled" and events[-1]["remaining"] == 5
    assert ex.book("sell") == [(10_000, [(1, 3)])]


def test_fok_that_can_fill_completely_fills_across_levels(ex):
    ex.order("m", 1, "sell", 3, 10_000)
    ex.order("m", 2, "sell", 3, 10_001)
    events = ex.order("t", 1, "buy", 5, 10_001, tif="fok")
    assert types(events) == ["order_accepted", "fill", "fill"]
    assert events[-1]["taker_remaining"] == 0


def test_fok_does_not_count_liquidity_beyond_its_price(ex):
    ex.order("m", 1, "sell", 3, 10_000)
    ex.order("m", 2, "sell", 3, 10_002)
    assert ex.order("t", 1, "buy", 5, 10_001, tif="fok")[-1]["reason"] == "fok_unfilled"


def test_alo_that_would_cross_is_rejected_post_only_would_cross(ex):
    ex.order("m", 1, "sell", 3, 10_000)
    assert reason(ex.order("t", 1, "buy", 2, 10_000, tif="alo")) == "post_only_would_cross"
    assert ex.book("buy") == []


def test_alo_that_does_not_cross_rests(ex):
    ex.order("m", 1, "sell", 3, 10_000)
    assert types(ex.order("t", 1, "buy", 2, 9_999, tif="alo")) == ["order_accepted"]


# ---- market orders and the price band ------------------------------------------------------

def test_market_order_is_ioc_and_reports_no_price(ex):
    ex.order("m", 1, "sell", 3, 10_000)
    events = ex.order("t", 1, "buy", 5, kind="market")
    acc = events[0]
    assert (acc["price"], acc["tif"]) == (None, "ioc")
    assert types(events) == ["order_accepted", "fill", "order_cancelled"]
    assert events[-1]["reason"] == "ioc_remainder"


def test_market_order_sweeps_no_further_than_the_band(ex):
    # mark 10000, band 2 %: a market buy reaches 10200, not 10201.
    ex.order("m", 1, "sell", 3, 10_200)
    ex.oracle(10_010)                     # mark 10010 -> limit 10210; still ok
    ex.oracle(9_900)                      # mark = median(9900, none, 10200) = 9900 -> limit 10098
    ex.order("m", 2, "sell", 3, 10_098)
    events = ex.order("t", 1, "buy", 10, kind="market")
    assert [e["price"] for e in events if e["type"] == "fill"] == [10_098]


def test_buy_above_the_band_is_rejected_and_at_the_band_accepted(ex):
    # floor(10000 * 1.02) = 10200
    assert reason(ex.order("t", 1, "buy", 2, 10_201)) == "price_out_of_band"
    assert types(ex.order("t", 1, "buy", 2, 10_200)) == ["order_accepted"]


def test_sell_below_the_band_is_rejected_and_at_the_band_accepted(ex):
    # ceil(10000 * 0.98) = 9800
    assert reason(ex.order("t", 1, "sell", 2, 9_799)) == "price_out_of_band"
    assert types(ex.order("t", 1, "sell", 2, 9_800)) == ["order_accepted"]


def test_band_limits_round_inward():
    x = Exchange(price_band_ppm=33_333)
    x.oracle(10_001)     # high = floor(10001 * 1.033333) = 10334, low = ceil(10001 * 0.966667) = 9668
    assert reason(x.order("t", 1, "buy", 2, 10_335)) == "price_out_of_band"
    assert types(x.order("t", 2, "buy", 2, 10_334)) == ["order_accepted"]
    assert reason(x.order("u", 3, "sell", 2, 9_667)) == "price_out_of_band"
    assert types(x.order("u", 4, "sell", 2, 9_668)) == ["order_accepted", "fill"]


def test_orders_before_the_first_oracle_are_rejected_no_mark_price():
    x = Exchange()
    assert reason(x.order("t", 1, "buy", 2, 10_000)) == "no_mark_price"


# ---- the mark price ----------------------------------------------------------------------

def test_mark_is_the_median_of_index_best_bid_and_best_ask(ex):
    ex.order("m", 1, "buy", 2, 9_990)
    ex.order("m", 2, "sell", 2, 10_020)
    assert only(ex.oracle(10_050), "mark")["mark"] == 10_020
    assert only(ex.oracle(9_900), "mark")["mark"] == 9_990
    mark = only(ex.oracle(10_000), "mark")
    assert (mark["market"], mark["index"], mark["mark"]) == (MKT, 10_000, 10_000)


def test_a_missing_side_of_the_book_counts_as_the_index(ex):
    ex.order("m", 1, "buy", 2, 9_990)
    assert only(ex.oracle(9_950), "mark")["mark"] == 9_950      # median(9950, 9990, 9950)
    assert only(ex.oracle(10_100), "mark")["mark"] == 10_100    # median(10100, 9990, 10100)


def test_the_mark_stays_put_between_oracle_updates(ex):
    ex.order("m", 1, "sell", 2, 10_150)
    ex.order("m", 2, "buy", 2, 10_100)        # the book moves, the mark does not
    assert reason(ex.order("t", 1, "buy", 2, 10_201)) == "price_out_of_band"


# ---- self-trade prevention -----------------------------------------------------------------

def test_stp_cancel_maker_cancels_the_resting_order_and_goes_on(ex):
    ex.order("a", 1, "sell", 3, 10_000)
    ex.order("m", 1, "sell", 3, 10_001)
    events = ex.order("a", 2, "buy", 3, 10_001)
    assert types(events) == ["order_accepted", "order_cancelled", "fill"]
    assert events[1]["cid"] == 1 and events[1]["reason"] == "self_trade"
    assert events[2]["maker_account"] == "m"


def test_stp_is_cancel_maker_by_default(ex):
    ex.order("a", 1, "sell", 3, 10_000)
    events = ex.order("a", 2, "buy", 3, 10_000)
    assert events[1]["reason"] == "self_trade" and events[1]["oid"] == 1


def test_stp_cancel_taker_cancels_the_incoming_remainder(ex):
    ex.order("m", 1, "sell", 2, 10_000)
    ex.order("a", 1, "sell", 3, 10_000)
    events = ex.order("a", 2, "buy", 4, 10_001, stp="cancel_taker")
    assert types(events) == ["order_accepted", "fill", "order_cancelled"]
    assert events[-1]["cid"] == 2 and events[-1]["reason"] == "self_trade"
    assert events[-1]["remaining"] == 2
    assert ex.book("sell") == [(10_000, [(1, 3)])]


def test_stp_cancel_both_cancels_maker_and_taker(ex):
    ex.order("a", 1, "sell", 3, 10_000)
    events = ex.order("a", 2, "buy", 3, 10_001, stp="cancel_both")
    assert [(e["cid"], e["reason"]) for e in events[1:]] == [(1, "self_trade"), (2, "self_trade")]
    assert ex.book("sell") == [] and ex.book("buy") == []


# ---- reduce-only ---------------------------------------------------------------------------

def _long(ex, account="a", qty=5):
    ex.order("m", 100, "sell", qty, 10_000)
    ex.order(account, 100, "buy", qty, 10_000)


def test_reduce_only_without_a_position_is_rejected(ex):
    assert reason(ex.order("a", 1, "sell", 2, 10_000, reduce_only=True)) == \
        "reduce_only_would_increase"


def test_reduce_only_pointing_the_way_of_the_position_is_rejected(ex):
    _long(ex)
    assert reason(ex.order("a", 1, "buy", 2, 9_000 + 990, reduce_only=True)) == \
        "reduce_only_would_increase"


def test_reduce_only_fill_is_capped_at_the_position_and_the_rest_cancelled(ex):
    _long(ex, qty=5)
    ex.order("b", 1, "buy", 20, 10_000)
    events = ex.order("a", 1, "sell", 8, 10_000, reduce_only=True)
    assert types(events) == ["order_accepted", "fill", "order_cancelled"]
    assert events[1]["qty"] == 5
    assert (events[2]["remaining"], events[2]["reason"]) == (3, "reduce_only")
    assert ex.engine.position("a", MKT)[0] == 0


def test_resting_reduce_only_is_cancelled_when_the_position_closes(ex):
    _long(ex, qty=5)
    ex.order("a", 1, "sell", 5, 10_010, reduce_only=True)
    ex.order("b", 1, "buy", 5, 10_000)
    events = ex.order("a", 2, "sell", 5, 10_000)            # closes the position elsewhere
    assert events[-1] == {**events[-1], "cid": 1, "reason": "reduce_only", "remaining": 5}


def test_resting_reduce_only_is_capped_when_it_fills_as_maker(ex):
    _long(ex, qty=3)
    ex.order("a", 1, "sell", 5, 10_010, reduce_only=True)
    events = ex.order("b", 1, "buy", 5, 10_010, tif="ioc")
    fill = only(events, "fill")
    assert fill["qty"] == 3 and fill["maker_remaining"] == 2
    cancels = [e for e in events if e["type"] == "order_cancelled"]
    assert [(c["account"], c["reason"]) for c in cancels] == [("a", "reduce_only"),
                                                               ("b", "ioc_remainder")]


# ---- validation, in the contract's order -----------------------------------------------------

def test_unknown_market_comes_first(ex):
    assert reason(ex.order("a", 1, "buy", 0, 0, market="NOPE")) == "unknown_market"


def test_invalid_qty_for_zero_negative_fractional_or_missing(ex):
    for qty in (0, -5, 2.5, "3", None):
        assert reason(ex.order("a", 1, "buy", qty, 10_000)) == "invalid_qty", qty


def test_invalid_qty_comes_before_invalid_price(ex):
    assert reason(ex.order("a", 1, "buy", 0, -1)) == "invalid_qty"


def test_below_min_qty(ex):
    assert reason(ex.order("a", 1, "buy", 1, 10_000)) == "below_min_qty"


def test_below_min_qty_comes_before_invalid_price(ex):
    assert reason(ex.order("a", 1, "buy", 1, None)) == "below_min_qty"


def test_invalid_price_for_a_limit_without_a_positive_integer_price(ex):
    for price in (None, 0, -1, 10_000.5):
        assert reason(ex.order("a", 1, "buy", 2, price)) == "invalid_price", price


def test_invalid_price_comes_before_duplicate_cid(ex):
    ex.order("a", 1, "buy", 2, 9_990)
    assert reason(ex.order("a", 1, "buy", 2, None)) == "invalid_price"


def test_duplicate_cid_among_open_orders(ex):
    ex.order("a", 1, "buy", 2, 9_990)
    assert reason(ex.order("a", 1, "buy", 2, 9_991)) == "duplicate_cid"
    assert types(ex.order("b", 1, "buy", 2, 9_991)) == ["order_accepted"]   # other account
    assert types(ex.order("a", "1", "buy", 2, 9_991)) == ["order_accepted"]  # "1" is not 1


def test_a_cid_is_free_again_once_its_order_is_done(ex):
    ex.order("a", 1, "buy", 2, 9_990)
    ex.cancel("a", 1)
    assert types(ex.order("a", 1, "buy", 2, 9_990)) == ["order_accepted"]


def test_duplicate_cid_comes_before_no_mark_price():
    x = Exchange()
    x.run(M.CreateMarket(market="ETH-PERP", **MARKET_FIELDS))
    x.oracle(10_000)
    x.order("a", 1, "buy", 2, 9_990)
    # cids are unique over all the account's open orders; ETH-PERP has no mark yet
    assert reason(x.order("a", 1, "buy", 2, 9_990, market="ETH-PERP")) == "duplicate_cid"


def test_no_mark_price_comes_before_price_out_of_band():
    x = Exchange()
    assert reason(x.order("a", 1, "buy", 2, 10**8)) == "no_mark_price"


def test_price_out_of_band_comes_before_reduce_only_would_increase(ex):
    assert reason(ex.order("a", 1, "buy", 2, 10_201, reduce_only=True)) == "price_out_of_band"


def test_oracle_stale_rejects_orders_that_grow_a_position():
    x = Exchange(oracle_max_age_s=10)
    x.run(M.Oracle(market=MKT, price=10_000, ts=1_000_000_000))
    x.run(M.Clock(ts=12_000_000_000))           # 11 s later
    assert reason(x.order("a", 1, "buy", 2, 10_000)) == "oracle_stale"


def test_oracle_stale_still_takes_reduce_only_orders():
    x = Exchange(oracle_max_age_s=10)
    x.run(M.Oracle(market=MKT, price=10_000, ts=1))
    x.order("m", 1, "sell", 5, 10_000)
    x.order("a", 1, "buy", 5, 10_000)
    x.order("b", 1, "buy", 5, 9_990)
    x.run(M.Clock(ts=20_000_000_000))
    assert types(x.order("a", 2, "sell", 5, 9_990, reduce_only=True)) == ["order_accepted", "fill"]


def test_oracle_at_the_age_limit_is_not_stale():
    x = Exchange(oracle_max_age_s=10)
    x.run(M.Oracle(market=MKT, price=10_000, ts=1))
    x.run(M.Clock(ts=1 + 10_000_000_000))
    assert types(x.order("a", 1, "buy", 2, 10_000)) == ["order_accepted"]


def test_reduce_only_would_increase_comes_before_oracle_stale():
    x = Exchange(oracle_max_age_s=1)
    x.run(M.Oracle(market=MKT, price=10_000, ts=1))
    x.run(M.Clock(ts=5_000_000_000))
    assert reason(x.order("a", 1, "buy", 2, 10_000, reduce_only=True)) == \
        "reduce_only_would_increase"


def test_too_many_orders_caps_open_orders_per_account_and_market():
    x = Exchange(max_orders_per_account=2)
    x.oracle(10_000)
    x.order("a", 1, "buy", 2, 9_990)
    x.order("a", 2, "buy", 2, 9_991)
    assert reason(x.order("a", 3, "buy", 2, 9_992)) == "too_many_orders"
    assert types(x.order("b", 3, "buy", 2, 9_992)) == ["order_accepted"]


def test_too_many_orders_comes_before_post_only_would_cross():
    x = Exchange(max_orders_per_account=1)
    x.oracle(10_000)
    x.order("m", 1, "sell", 2, 10_000)
    x.order("a", 1, "buy", 2, 9_990)
    assert reason(x.order("a", 2, "buy", 2, 10_000, tif="alo")) == "too_many_orders"


def test_trigger_kinds_need_a_trigger_price(ex):
    assert reason(ex.order("a", 1, "sell", 2, kind="stop_market")) == "invalid_price"
    assert reason(ex.order("a", 1, "sell", 2, kind="stop_limit", trigger_price=9_900)) == \
        "invalid_price"


def test_a_rejection_names_the_command_account_market_and_cid(ex):
    rej = only(ex.order("a", "c-1", "buy", 0, 10_000), "rejected")
    assert {k: rej[k] for k in ("command", "account", "market", "cid")} == \
        {"command": "new_order", "account": "a", "market": MKT, "cid": "c-1"}
    assert "qty" in rej["detail"]


# ---- cancel ----------------------------------------------------------------------------------

def test_cancel_removes_a_resting_order_with_reason_user(ex):
    ex.order("a", 1, "buy", 4, 9_990)
    ev = only(ex.cancel("a", 1), "order_cancelled")
    assert (ev["reason"], ev["remaining"], ev["oid"]) == ("user", 4, 1)
    assert ex.book("buy") == []


def test_cancel_of_an_order_that_is_not_open_is_unknown_order(ex):
    assert reason(ex.cancel("a", 1)) == "unknown_order"
    ex.order("m", 1, "sell", 2, 10_000)
    ex.order("t", 1, "buy", 2, 10_000)
    assert reason(ex.cancel("m", 1)) == "unknown_order"          # filled
    assert reason(ex.cancel("t", 1)) == "unknown_order"          # filled as taker


def test_an_account_cannot_cancel_another_accounts_order(ex):
    ex.order("a", 1, "buy", 2, 9_990)
    assert reason(ex.cancel("b", 1)) == "unknown_order"
    assert ex.book("buy") == [(9_990, [(1, 2)])]


def test_cancel_all_cancels_every_open_order_of_the_account_in_acceptance_order():
    x = Exchange()
    x.run(M.CreateMarket(market="ETH-PERP", **MARKET_FIELDS))
    x.oracle(10_000)
    x.oracle(10_000, market="ETH-PERP")
    x.order("a", 1, "buy", 2, 9_990)
    x.order("a", 2, "buy", 2, 9_990, market="ETH-PERP")
    x.order("b", 3, "buy", 2, 9_990)
    x.order("a", 4, "sell", 2, 10_010)
    assert [e["cid"] for e in x.run(M.CancelAll(account="a", market=MKT))] == [1, 4]
    assert [e["cid"] for e in x.run(M.CancelAll(account="a"))] == [2]
    x.engine.check_integrity()


# ---- amend -----------------------------------------------------------------------------------

def test_amend_down_at_the_same_price_keeps_the_place_in_the_queue(ex):
    ex.order("a", 1, "sell", 5, 10_000)
    ex.order("b", 1, "sell", 5, 10_000)
    ev = only(ex.amend("a", 1, qty=3), "order_amended")
    assert (ev["qty"], ev["price"], ev["priority_kept"]) == (3, 10_000, True)
    assert ex.book("sell") == [(10_000, [(1, 3), (1, 5)])]
    assert only(ex.order("t", 1, "buy", 3, 10_000), "fill")["maker_account"] == "a"


def test_amend_to_an_equal_qty_changes_nothing(ex):
    ex.order("a", 1, "sell", 5, 10_000)
    ex.order("b", 1, "sell", 5, 10_000)
    before = ex.engine.state()
    ev = only(ex.amend("a", 1, qty=5, price=10_000), "order_amended")
    assert ev["priority_kept"] is True
    assert ex.engine.state() == before


def test_amend_up_goes_to_the_back_of_the_queue(ex):
    ex.order("a", 1, "sell", 5, 10_000)
    ex.order("b", 1, "sell", 5, 10_000)
    assert only(ex.amend("a", 1, qty=6), "order_amended")["priority_kept"] is False
    assert ex.book("sell") == [(10_000, [(1, 5), (1, 6)])]


def test_amend_of_price_reenters_keeps_cid_and_oid_and_may_trade(ex):
    ex.order("m", 1, "buy", 3, 9_990)
    ex.order("a", 7, "sell", 5, 10_010)
    events = ex.amend("a", 7, price=9_990)
    assert types(events) == ["order_amended", "fill"]          # no new order_accepted
    assert events[0] == {**events[0], "price": 9_990, "qty": 5, "priority_kept": False, "oid": 2}
    assert (events[1]["taker_cid"], events[1]["taker_oid"], events[1]["taker_remaining"]) == (7, 2, 2)
    assert ex.book("sell") == [(9_990, [(7, 2)])]


def test_a_failed_amend_leaves_the_order_untouched(ex):
    ex.order("a", 1, "sell", 5, 10_000)
    before = ex.engine.state()
    assert reason(ex.amend("a", 1, qty=0)) == "invalid_qty"
    assert reason(ex.amend("a", 1, qty=1)) == "below_min_qty"
    assert reason(ex.amend("a", 1, price=-4)) == "invalid_price"
    assert reason(ex.amend("a", 1, price=9_000)) == "price_out_of_band"
    assert ex.engine.state() == before


def test_amend_of_a_post_only_order_that_would_cross_is_rejected(ex):
    ex.order("m", 1, "buy", 3, 9_990)
    ex.order("a", 1, "sell", 5, 10_010, tif="alo")
    assert reason(ex.amend("a", 1, price=9_990)) == "post_only_would_cross"
    assert ex.book("sell") == [(10_010, [(1, 5)])]


def test_amend_of_an_order_that_is_not_open_is_unknown_order(ex):
    assert reason(ex.amend("a", 1, qty=3)) == "unknown_order"


# ---- fees --------------------------------------------------------------------------------------

def test_taker_fee_rounds_up_and_maker_rebate_rounds_toward_zero():
    x = Exchange(taker_fee_ppm=450, maker_fee_ppm=-150)
    x.oracle(10_001)
    x.order("m", 1, "sell", 3, 10_001)
    fill = only(x.order("t", 1, "buy", 3, 10_001), "fill")
    notional = 10_001 * 3 * 100                              # 3000300 quote units
    assert fill["taker_fee"] == 1351                         # 1350.135 up
    assert fill["maker_fee"] == -450                         # -450.045 toward zero
    assert notional * 450 / 1e6 < fill["taker_fee"]


# ---- sequencing and time ---------------------------------------------------------------------

def test_seq_numbers_every_event_of_the_stream_including_rejections(ex):
    events = ex.order("a", 1, "buy", 0, 1) + ex.order("a", 1, "buy", 2, 9_990) + ex.oracle(10_000)
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + 3))


def test_the_clock_never_runs_backwards(ex):
    ex.run(M.Clock(ts=500))
    ev = only(ex.run(M.Oracle(market=MKT, price=10_000, ts=100)), "mark")
    assert ev["ts"] == 500


def test_state_hash_is_equal_for_equal_states_however_reached():
    x, y = Exchange(), Exchange()
    for e in (x, y):
        e.oracle(10_000)
    x.order("a", 1, "buy", 5, 9_990)
    y.order("a", 1, "buy", 0, 9_990)          # rejected: changes nothing
    y.run(M.StateHash())
    y.order("a", 1, "buy", 5, 9_990)
    y.amend("a", 1, qty=5)                    # equal amend: changes nothing
    hx = only(x.run(M.StateHash()), "state_hash")["hash"]
    hy = only(y.run(M.StateHash()), "state_hash")["hash"]
    assert hx == hy and len(hx) == 32


def test_state_hash_differs_when_the_state_differs():
    x, y = Exchange(), Exchange()
    for e in (x, y):
        e.oracle(10_000)
    x.order("a", 1, "buy", 5, 9_990)
    y.order("a", 1, "buy", 4, 9_990)
    assert only(x.run(M.StateHash()), "state_hash") != only(y.run(M.StateHash()), "state_hash")
