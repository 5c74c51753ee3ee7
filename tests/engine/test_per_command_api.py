"""The per-command API (docs/engine-api.md): Engine.new_order and Engine.cancel do what the
new_order and cancel commands do, event for event, and report fills without an object per fill."""
import msgspec
import pytest

from perpdex.engine import Engine, messages as M
from tests import flows as F

enc = msgspec.msgpack.encode


def test_the_per_command_api_gives_the_events_and_state_of_the_commands():
    flow = F.random_flow(11, 1500)
    by_api, by_cmd = Engine(), Engine()
    amends = 0
    for cmd in flow:
        want = by_cmd.execute(cmd)
        if type(cmd) is M.NewOrder:
            n = by_api.new_order(cmd.account, cmd.market, cmd.cid, cmd.side, cmd.qty, cmd.price,
                                 cmd.kind, cmd.tif, cmd.ts, cmd.reduce_only, cmd.stp,
                                 cmd.trigger_price)
            got = by_api.last_events()
            assert n == sum(1 for e in got if type(e) is M.Fill)
        elif type(cmd) is M.Cancel:
            done = by_api.cancel(cmd.account, cmd.market, cmd.cid, cmd.ts)
            got = by_api.last_events()
            assert done == any(type(e) is M.OrderCancelled for e in got)
        elif type(cmd) is M.Amend:
            n = by_api.amend(cmd.account, cmd.market, cmd.cid, cmd.price, cmd.qty, cmd.ts)
            got = by_api.last_events()
            assert n == sum(1 for e in got if type(e) is M.Fill)
            amends += 1
        else:
            got = by_api.execute(cmd)
        assert got == want, cmd
    assert by_api.state() == by_cmd.state() and amends > 50


def test_fills_are_rows_of_price_qty_and_both_order_ids():
    eng = Engine(margin=False)
    for c in F.create_markets(["BTC-PERP"]):
        eng.execute(c)
    eng.execute(M.Oracle(market="BTC-PERP", price=10_000))
    eng.new_order("m", "BTC-PERP", 1, "sell", 5, 10_000)
    eng.new_order("m", "BTC-PERP", 2, "sell", 5, 10_001)
    assert eng.new_order("t", "BTC-PERP", 7, "buy", 8, 10_001) == 2
    assert eng.fills.tolist() == [[10_000, 5, 3, 1], [10_001, 3, 3, 2]]
    assert eng.new_order("t", "BTC-PERP", 8, "buy", 2, 9_000) == 0
    assert eng.fills.tolist() == []


@pytest.mark.parametrize("args", [("a", "BTC-PERP", 1, "up", 5, 10_000),
                                  ("a", "BTC-PERP", [1], "buy", 5, 10_000),
                                  (1.5, "BTC-PERP", 1, "buy", 5, 10_000),
                                  ("a", "BTC-PERP", 1, "buy", 5, 10_000, "limit", "forever"),
                                  ("a", "BTC-PERP", 1, "buy", 5, 10_000, "limit", "gtc", -1)])
def test_a_bad_field_is_rejected_as_the_command_would_be(args):
    eng = Engine()
    for c in F.create_markets(["BTC-PERP"]):
        eng.execute(c)
    eng.execute(M.Oracle(market="BTC-PERP", price=10_000))
    before = eng.state()
    assert eng.new_order(*args) == 0
    (ev,) = eng.last_events()
    assert ev.reason == "invalid_command" and eng.state() == before


def test_a_cancel_of_an_unknown_order_is_false_with_its_rejection():
    eng = Engine()
    for c in F.create_markets(["BTC-PERP"]):
        eng.execute(c)
    assert eng.cancel("a", "BTC-PERP", 1) is False
    assert eng.last_events()[0].reason == "unknown_order"
    assert eng.cancel("a", "BTC-PERP", {"x": 1}) is False


def test_with_record_events_off_the_calls_leave_the_state_and_seq_of_the_commands():
    flow = F.random_flow(12, 1500)
    quiet, by_cmd = Engine(), Engine()
    quiet.record_events = False
    for cmd in flow:
        want = by_cmd.execute(cmd)
        rejected = [e.reason for e in want if type(e) is M.Rejected]
        if type(cmd) is M.NewOrder:
            n = quiet.new_order(cmd.account, cmd.market, cmd.cid, cmd.side, cmd.qty, cmd.price,
                                cmd.kind, cmd.tif, cmd.ts, cmd.reduce_only, cmd.stp,
                                cmd.trigger_price)
            assert n == sum(1 for e in want if type(e) is M.Fill)
            assert quiet.last_reason == (rejected[0] if rejected else None)
        elif type(cmd) is M.Cancel:
            done = quiet.cancel(cmd.account, cmd.market, cmd.cid, cmd.ts)
            assert done == (not rejected)
            assert quiet.last_reason == (rejected[0] if rejected else None)
        elif type(cmd) is M.Amend:
            n = quiet.amend(cmd.account, cmd.market, cmd.cid, cmd.price, cmd.qty, cmd.ts)
            assert n == sum(1 for e in want if type(e) is M.Fill)
            assert quiet.last_reason == (rejected[0] if rejected else None)
        else:
            quiet.execute(cmd)
        assert quiet.seq == by_cmd.seq, cmd
    assert quiet.state() == by_cmd.state()


def test_last_events_of_a_quiet_call_is_an_error_that_says_why():
    eng = Engine()
    for c in F.create_markets(["BTC-PERP"]):
        eng.execute(c)
    eng.record_events = False
    eng.new_order("a", "BTC-PERP", 1, "buy", 5, 10_000)
    with pytest.raises(ValueError, match="record_events"):
        eng.last_events()
    assert eng.last_reason == "no_mark_price"


def test_names_built_at_run_time_are_read_as_the_literals():
    eng = Engine(margin=False)
    for c in F.create_markets(["BTC-PERP"]):
        eng.execute(c)
    eng.execute(M.Oracle(market="BTC-PERP", price=10_000))
    sell, market = "".join(["se", "ll"]), "".join(["BTC", "-PERP"])
    eng.new_order("m", market, 1, sell, 5, 10_000, "".join(["lim", "it"]), "".join(["g", "tc"]))
    assert eng.last_reason is None
    assert eng.new_order("t", "BTC-PERP", 2, "buy", 5, 10_000, "limit", "ioc") == 1
