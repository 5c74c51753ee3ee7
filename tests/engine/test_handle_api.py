"""The handle calls (docs/engine-api.md): Engine.place, cancel_order and amend_order take an
account and a market by integer handle and side, kind and tif as codes, do what new_order,
cancel and amend do, event for event, and return the oid and the fills the call made."""
import pytest

from perpdex.engine import Engine, messages as M
from tests import flows as F

def _by_handles(eng, cmd):
    """`cmd` through the handle calls; None where they cannot say it (flows.as_handles)."""
    call = F.as_handles(eng, cmd)
    return None if call is None else getattr(eng, call[0])(*call[1])


def test_the_handle_calls_give_the_events_and_state_of_the_commands():
    flow = F.random_flow(12, 1500)
    by_handles, by_cmd = Engine(), Engine()
    taken = 0
    for cmd in flow:
        want = by_cmd.execute(cmd)
        out = _by_handles(by_handles, cmd)
        if out is None:
            got = by_handles.execute(cmd)
        else:
            got = by_handles.last_events()
            taken += 1
            fills = [(e.price, e.qty, e.maker_cid, e.taker_cid) for e in got if type(e) is M.Fill]
            if type(cmd) is M.NewOrder:
                oid, rows = out
                accepted = [e.oid for e in got if type(e) is M.OrderAccepted]
                assert oid == (accepted[0] if accepted else 0)
                assert list(rows) == fills
            elif type(cmd) is M.Amend:
                assert list(out) == fills
            else:
                assert out == any(type(e) is M.OrderCancelled for e in got)
        assert got == want, cmd
    assert by_handles.state() == by_cmd.state() and taken > 500


def test_place_returns_the_oid_and_fills_naming_both_cids():
    eng, _, _, btc = F.funded_market()
    m, t = eng.account_handle("m"), eng.account_handle("t")
    assert eng.place(m, btc, 1, 1, 5, 10_000) == (1, ())
    assert eng.place(m, btc, 2, 1, 5, 10_001) == (2, ())
    assert eng.place(t, btc, 7, 0, 8, 10_001) == (3, ((10_000, 5, 1, 7), (10_001, 3, 2, 7)))


def test_a_maker_with_a_string_cid_is_named_by_it_in_the_rows():
    eng, _, _, btc = F.funded_market()
    eng.new_order("m", "BTC-PERP", "ask-1", "sell", 5, 10_000)
    assert eng.place(eng.account_handle("t"), btc, 9, 0, 2, 10_000)[1] == ((10_000, 2, "ask-1", 9),)


def test_a_rejected_place_returns_oid_0_and_says_why():
    eng, _, _, btc = F.funded_market(margin=True)
    assert eng.place(eng.account_handle("t"), btc, 1, 0, 0, 10_000) == (0, ())
    assert eng.last_reason == "invalid_qty"
    assert eng.place(eng.account_handle("t"), btc, 1, 0, 5, 0) == (0, ())
    assert eng.last_reason == "invalid_price"


@pytest.mark.parametrize("args", [(0, 1, 2, 5, 10_000), (0, 1, 0, 5, 10_000, 9),
                                  (0, 1, 0, 5, 10_000, 0, 7), (0, 1, 0, 5, 10_000, 0, 0, 0, 8),
                                  (0, 1, -1, 5, 10_000)])
def test_a_code_out_of_range_is_invalid_command(args):
    eng, _, _, btc = F.funded_market()
    a, cid, *rest = args
    assert eng.place(eng.account_handle("t"), btc, cid, *rest) == (0, ())
    assert eng.last_reason == "invalid_command"


def test_a_handle_the_engine_did_not_give_is_invalid_command_with_a_sentence():
    eng, _, _, btc = F.funded_market()
    assert eng.place(99, btc, 1, 0, 5, 10_000) == (0, ())
    assert eng.last_reason == "invalid_command"
    assert eng.cancel_order(0, 5, 1) is False and eng.last_reason == "invalid_command"
    eng.record_events = True
    eng.place(0, -1, 1, 0, 5, 10_000)
    assert "handle" in eng.last_events()[0].detail


def test_handles_are_given_only_for_what_exists():
    eng, *_ = F.funded_market()
    with pytest.raises(KeyError, match="no record yet"):
        eng.account_handle("nobody")
    with pytest.raises(KeyError):
        eng.market_handle("ETH-PERP")


def test_cancel_order_and_amend_order_by_handle():
    eng, _, _, btc = F.funded_market()
    m, t = eng.account_handle("m"), eng.account_handle("t")
    eng.place(m, btc, 1, 1, 5, 10_001)
    assert eng.amend_order(m, btc, 1, 10_000) == ()
    assert eng.place(t, btc, 2, 0, 5, 9_999) == (2, ())
    assert eng.amend_order(t, btc, 2, 10_000, 3) == ((10_000, 3, 1, 2),)
    assert eng.cancel_order(m, btc, 1) is True
    assert eng.cancel_order(m, btc, 1) is False and eng.last_reason == "unknown_order"
