"""The price velocity guard (docs/contract.md, "A price velocity guard", an extension): an
`oracle` that moves the index more than `velocity_max_ppm` from the last one puts an active
market in post_only for `velocity_pause_s`; the first command whose clock reaches the end makes
it active again. Deterministic and in the events."""
import pytest

from perpdex.engine import Engine, messages as M
from tests.markets import PLAIN, order, reasons, status, venue

SECOND = 10**9


def guarded():
    return venue(velocity_max_ppm=50_000, velocity_pause_s=30)     # 5 %, 30 s


def kinds(events):
    return [type(e).__name__ for e in events]


def test_a_move_within_the_limit_changes_nothing():
    eng = guarded()
    events = eng.execute(M.Oracle(market="X", price=104_999, ts=SECOND))
    assert not any(type(e) is M.MarketStatusEvent for e in events)
    assert eng.market_status("X") == "active"


def test_a_move_past_the_limit_pauses_the_market_in_post_only_until_a_time_it_names():
    eng = guarded()
    events = eng.execute(M.Oracle(market="X", price=106_000, ts=SECOND))
    assert kinds(events)[:2] == ["MarketStatusEvent", "Mark"]
    assert (events[0].status, events[0].until) == ("post_only", 31 * SECOND)
    assert events[1].index == 106_000                # the index is applied all the same
    assert eng.market_status("X") == "post_only"
    order(eng, "mm", 1, "sell", 5, 106_500)          # resting orders are taken
    assert reasons(order(eng, "a", 2, "buy", 1, 106_500, ts=2 * SECOND)) == ["market_post_only"]


def test_the_first_command_whose_clock_reaches_the_end_lifts_the_pause():
    eng = guarded()
    eng.execute(M.Oracle(market="X", price=94_000, ts=SECOND))          # a fall counts too
    assert eng.execute(M.Clock(ts=31 * SECOND - 1)) == []
    events = eng.execute(M.Clock(ts=31 * SECOND))
    assert [(e.status, e.until) for e in events] == [("active", None)]
    assert eng.market_status("X") == "active"


def test_an_operator_status_during_the_pause_ends_the_guards_timer():
    eng = guarded()
    eng.execute(M.Oracle(market="X", price=110_000, ts=SECOND))
    assert [(e.status, e.until) for e in status(eng, "post_only")] == [("post_only", None)]
    assert eng.execute(M.Clock(ts=100 * SECOND)) == []                   # stays post_only
    assert eng.market_status("X") == "post_only"


def test_a_market_that_is_not_active_is_not_paused():
    eng = guarded()
    status(eng, "reduce_only")
    events = eng.execute(M.Oracle(market="X", price=120_000, ts=SECOND))
    assert not any(type(e) is M.MarketStatusEvent for e in events)


def test_the_guard_is_off_by_default():
    eng = venue()
    events = eng.execute(M.Oracle(market="X", price=150_000, ts=SECOND))
    assert not any(type(e) is M.MarketStatusEvent for e in events)


@pytest.mark.parametrize("over", [dict(velocity_max_ppm=50_000),
                                  dict(velocity_pause_s=30),
                                  dict(velocity_max_ppm=-1, velocity_pause_s=30),
                                  dict(velocity_max_ppm=50_000, velocity_pause_s=86_401)])
def test_a_guard_half_set_or_out_of_range_is_refused(over):
    eng = Engine()
    events = eng.execute(M.CreateMarket(market="X", **dict(PLAIN, **over)))
    assert [e.reason for e in events] == ["invalid_market"] and "velocity" in events[0].detail


def test_update_market_turns_the_guard_on_and_says_so():
    eng = venue()
    events = eng.execute(M.UpdateMarket(market="X", velocity_max_ppm=10_000, velocity_pause_s=5))
    updated = [e for e in events if type(e) is M.MarketUpdated]
    assert (updated[0].velocity_max_ppm, updated[0].velocity_pause_s) == (10_000, 5)
    events = eng.execute(M.Oracle(market="X", price=102_000, ts=SECOND))
    assert [e.until for e in events if type(e) is M.MarketStatusEvent] == [6 * SECOND]


def test_the_pause_is_part_of_the_state_and_survives_a_snapshot():
    eng = guarded()
    eng.execute(M.Oracle(market="X", price=110_000, ts=SECOND))
    copy = Engine.from_snapshot(eng.snapshot())
    assert copy.state() == eng.state()
    assert [e.status for e in copy.execute(M.Clock(ts=31 * SECOND))] == ["active"]
    assert ["paused_until", 31 * SECOND] in eng.state()["markets"][0]


def test_a_market_settled_during_a_pause_says_no_pause_and_keeps_none():
    eng = guarded()
    eng.execute(M.Oracle(market="X", price=110_000, ts=SECOND))
    events = eng.execute(M.SettleMarket(market="X", price=110_000, ts=2 * SECOND))
    assert [(e.status, e.until) for e in events if type(e) is M.MarketStatusEvent][-1] == (
        "settled", None)
    assert "paused_until" not in str(eng.state()["markets"][0])
