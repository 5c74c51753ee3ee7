"""The placement check keeps what it learns of a cross scope's headroom (equity less initial
requirement) and spends it order by order, so that an order is checked in O(1) while what it
knows covers it. It decides exactly as the whole sum would: the headroom is spent to the last
unit, and a mark, a fill or any other command makes it learn again (engine/state.pxd,
HeadroomC). Market X: 1 USD a lot at the mark 100,000, IMF 10 %."""
import random

import msgspec
from hypothesis import HealthCheck, given, settings

from perpdex.engine import Engine, messages as M

from tests.flows import leveraged_flows, margin_flow
from tests.markets import USD, order, reasons, venue


def bid(eng, account, cid, qty, price=100_000, **kw):
    return reasons(order(eng, account, cid, "buy", qty, price, **kw))


def test_the_known_headroom_is_spent_to_the_last_unit():
    eng = venue()                                   # a: 1,000 USD
    assert bid(eng, "a", 1, 5_000) == []            # 500 USD: summed, 500 left known
    assert bid(eng, "a", 2, 4_000) == []            # 400 USD of the 500 known
    assert bid(eng, "a", 3, 1_001) == ["insufficient_margin"]    # 100.1 USD: 100 left
    assert bid(eng, "a", 4, 1_000) == []            # exactly what is left


def test_a_mark_move_forgets_the_known_headroom():
    eng = venue()
    assert bid(eng, "a", 1, 9_000) == []            # 100 USD left at the mark 100,000
    eng.execute(M.Oracle(market="X", price=110_000))    # 990 USD needed now: 10 left
    assert bid(eng, "a", 2, 500, 105_000) == ["insufficient_margin"]     # 55 USD


def test_a_fill_forgets_the_known_headroom():
    eng = venue()
    assert bid(eng, "b", 1, 5_000, 90_000) == []    # 500 USD left known
    assert reasons(order(eng, "mm", 1, "sell", 1_000, 110_000)) == []
    # b buys 1,000 at 110,000 with the mark at 100,000: 100 USD lost, 600 USD needed
    assert bid(eng, "b", 2, 1_000, 110_000, tif="ioc") == []
    assert bid(eng, "b", 3, 4_000, 90_000) == ["insufficient_margin"]   # 400 > 300 left


def test_a_withdrawal_forgets_the_known_headroom():
    eng = venue()
    assert bid(eng, "a", 1, 5_000) == []            # 500 USD left known
    assert eng.execute(M.Withdraw(account="a", amount=450 * USD))[0].reason == "withdraw"
    assert bid(eng, "a", 2, 1_000) == ["insufficient_margin"]    # 100 > 50 left


def test_a_cancelled_order_gives_its_requirement_back():
    eng = venue()
    assert bid(eng, "a", 1, 9_000) == []            # 100 USD left known
    assert reasons(eng.execute(M.Cancel(account="a", market="X", cid=1))) == ["user"]
    assert bid(eng, "a", 2, 9_500) == []            # the 900 USD came back


def _events(cmds, forget: bool) -> list:
    eng = Engine()
    out = []
    for c in cmds:
        if forget:
            eng.execute(M.Clock(ts=0))      # any command but an order forgets every headroom
        out.append(msgspec.msgpack.encode(eng.execute(c)))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(leveraged_flows())
def test_what_is_known_decides_as_the_whole_sum_on_leveraged_flows(cmds):
    """An engine that forgets every headroom before each command sums every placement's
    scope: the same events, byte for byte."""
    assert _events(cmds, False) == _events(cmds, True)


def test_what_is_known_decides_as_the_whole_sum_on_margin_flows():
    for seed in range(8):
        cmds = margin_flow(random.Random(seed), 300)
        assert _events(cmds, False) == _events(cmds, True), seed
