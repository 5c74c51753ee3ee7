"""Liquidation after a mark update: orders cancelled, the book first, then the insurance fund."""
import msgspec
from hypothesis import given, settings

from perpdex.engine import Engine, messages as M
from tests.conftest import Exchange, Reached, only, types
from tests.crashes import LEVERED, MAKER, crash_after
from tests.flows import leveraged_flows
from tests.markets import ETH, USD, account, worked_example


def liquidations(events):
    return [e for e in events if e["type"] == "liquidation"]


def audit_balances(x):
    audit = only(x.run(M.Audit()), "audit")
    assert audit["deposits"] - audit["withdrawals"] == (
        audit["collateral"] + audit["unrealised_pnl"] + audit["insurance_fund"] + audit["fees"])
    for oi in audit["open_interest"].values():
        assert oi["long"] == oi["short"]
    return audit


def test_the_worked_example_is_not_liquidated_at_1251():
    x = worked_example()
    assert liquidations(x.oracle(125_100)) == []


def test_the_worked_example_is_liquidated_at_1249():
    x = worked_example()
    assert liquidations(x.oracle(124_900))


def test_a_liquidatable_account_has_its_open_orders_cancelled_first():
    x = worked_example()
    x.order("alice", 9, "sell", 10, 300_000)
    events = x.oracle(124_900)
    first = events.index(next(e for e in events if e["type"] == "order_cancelled"))
    assert events[first] == {**events[first], "account": "alice", "reason": "liquidation"}
    assert first < events.index(liquidations(events)[0])


def test_a_partial_liquidation_into_the_book_restores_maintenance_margin():
    x = worked_example()
    x.order("bob", 5, "buy", 2_000, 124_000)
    events = x.oracle(124_900)
    (liq,) = liquidations(events)
    assert (liq["kind"], liq["side"], liq["price"], liq["mark"]) == ("book", "sell", 124_000, 124_900)
    assert 0 < liq["qty"] < 2_000                          # only what restores the margin
    fills = [e for e in events if e["type"] == "fill"]
    assert fills and all(f["liquidation"] for f in fills)
    acct = account(x, "alice")
    assert acct["equity"] >= acct["maintenance_margin"]
    audit_balances(x)


def test_a_liquidation_the_book_cannot_absorb_falls_to_the_insurance_fund():
    x = worked_example()
    events = x.oracle(124_900)                              # nobody bids
    (liq,) = liquidations(events)
    # equity 4980 = 20 * (1249 - bankruptcy price): the fund takes the 20 ETH at 1000.00
    assert (liq["kind"], liq["qty"], liq["price"]) == ("backstop", 2_000, 100_000)
    acct = account(x, "alice")
    assert acct["positions"] == [] and acct["equity"] == 0
    fund = account(x, "insurance")
    assert fund["positions"][0]["size"] == 2_000
    audit = audit_balances(x)
    # the fund's long from 1000 and bob's short from 2000, both at the 1249 mark
    assert audit["unrealised_pnl"] == (4_980 + 15_020) * USD


def test_the_liquidation_fee_goes_to_the_insurance_fund():
    x = Exchange(margin=True, **dict(ETH, liquidation_fee_ppm=10_000))
    for a, usd in (("alice", 20_000), ("bob", 1_000_000), ("insurance", 5_000)):
        x.run(M.Deposit(account=a, amount=usd * USD))
    x.oracle(200_000)
    x.order("bob", 1, "sell", 2_000, 200_000)
    x.order("alice", 1, "buy", 2_000, 200_000)
    x.order("bob", 2, "buy", 2_000, 124_000)
    (liq,) = liquidations(x.oracle(124_900))
    assert liq["fee"] == -(-liq["qty"] * 124_000 * 100 * 10_000 // 10**6)     # 1 %, rounded up
    assert only(x.run(M.Audit()), "audit")["insurance_fund"] == 5_000 * USD + liq["fee"]


def test_the_most_under_margined_account_is_liquidated_first():
    x = Exchange(margin=True, **ETH)
    for a, usd in (("a1", 20_000), ("a2", 18_000), ("bob", 10_000_000)):
        x.run(M.Deposit(account=a, amount=usd * USD))
    x.oracle(200_000)
    x.order("bob", 1, "sell", 4_000, 200_000)
    x.order("a1", 1, "buy", 2_000, 200_000)
    x.order("a2", 1, "buy", 1_800, 200_000)
    # at 1000, a1 has 20000 - 20000 = 0 of equity and a2 18000 - 18000 = 0: a tie, by account
    assert [e["account"] for e in liquidations(x.oracle(100_000))] == ["a1", "a2"]


def test_a_deeper_deficit_is_liquidated_before_a_shallower_one():
    x = Exchange(margin=True, **ETH)
    for a, usd in (("a-shallow", 10_500), ("z-deep", 20_000), ("bob", 10_000_000)):
        x.run(M.Deposit(account=a, amount=usd * USD))
    x.oracle(200_000)
    x.order("bob", 1, "sell", 3_000, 200_000)
    x.order("z-deep", 1, "buy", 2_000, 200_000)       # at 1100: equity 2000, maintenance 4400
    x.order("a-shallow", 1, "buy", 1_000, 200_000)    # at 1100: equity 1500, maintenance 2200
    assert [e["account"] for e in liquidations(x.oracle(110_000))] == ["z-deep", "a-shallow"]


def test_work_per_mark_update_is_bounded_and_the_rest_carries_over():
    x = Exchange(margin=True, **dict(ETH, max_liquidations_per_update=1))
    for a, usd in (("a1", 20_000), ("a2", 20_000), ("bob", 10_000_000)):
        x.run(M.Deposit(account=a, amount=usd * USD))
    x.oracle(200_000)
    x.order("bob", 1, "sell", 4_000, 200_000)
    x.order("a1", 1, "buy", 2_000, 200_000)
    x.order("a2", 1, "buy", 2_000, 200_000)
    assert [e["account"] for e in liquidations(x.oracle(120_000))] == ["a1"]
    assert [e["account"] for e in liquidations(x.run(M.Clock(ts=5)))] == ["a2"]


def test_a_cascade_over_several_mark_updates():
    x = Exchange(margin=True, **ETH)
    for a, usd in (("a1", 10_000), ("a2", 12_000), ("bob", 10_000_000)):
        x.run(M.Deposit(account=a, amount=usd * USD))
    x.oracle(200_000)
    x.order("bob", 1, "sell", 2_000, 200_000)
    x.order("a1", 1, "buy", 1_000, 200_000)        # 10 ETH on 10000: liquidatable below 1250
    x.order("a2", 1, "buy", 1_000, 200_000)        # 10 ETH on 12000: below 1000
    assert [e["account"] for e in liquidations(x.oracle(120_000))] == ["a1"]
    assert liquidations(x.oracle(110_000)) == []
    assert [e["account"] for e in liquidations(x.oracle(95_000))] == ["a2"]
    audit_balances(x)


def test_a_stop_loss_fires_before_the_liquidation():
    x = worked_example()
    x.order("alice", 2, "sell", 2_000, kind="stop_market", trigger_price=130_000,
            reduce_only=True)
    x.order("bob", 5, "buy", 2_000, 124_500)
    events = x.oracle(124_900)
    assert types(events).index("order_triggered") < types(events).index("fill")
    assert liquidations(events) == []                # the stop closed it first
    assert account(x, "alice")["positions"] == []


def test_no_account_is_left_below_zero_equity_after_a_crash():
    x = Exchange(margin=True, **ETH)
    for a, usd in (("a1", 20_000), ("bob", 10_000_000)):
        x.run(M.Deposit(account=a, amount=usd * USD))
    x.oracle(200_000)
    x.order("bob", 1, "sell", 2_000, 200_000)
    x.order("a1", 1, "buy", 2_000, 200_000)
    x.oracle(50_000)                                  # a gap far through the bankruptcy price
    assert account(x, "a1")["equity"] >= 0
    audit_balances(x)                                 # the fund's loss is on its books


# After the crash sized to the flow's positions (tests.crashes), three wide swings of the index.
SWINGS = [M.Oracle(market=m, price=p, ts=10**15 + 2) for m in ("BTC-PERP", "ETH-PERP")
          for p in (9_000, 7_000, 14_000)]


def kinds_of_liquidation(events) -> set:
    return {e.kind for e in events if type(e) is M.LiquidationEvent}


def test_after_flows_with_crashes_the_audit_balances_and_no_one_owes_unpaid():
    """Every case liquidates (the crash is sized to its positions), and between them the cases
    reach the book, the fund's backstop and ADL."""
    seen = Reached()

    @settings(max_examples=150, deadline=None)
    @given(leveraged_flows())
    def case(cmds):
        eng = Engine()
        events = []
        for c in cmds + crash_after(cmds, len(cmds)) + SWINGS + [M.Clock(ts=10**15 + 3)]:
            events += eng.execute(c)
        eng.check_integrity()
        audit = msgspec.to_builtins(eng.execute(M.Audit())[0])
        assert audit["deposits"] - audit["withdrawals"] == (
            audit["collateral"] + audit["unrealised_pnl"] + audit["insurance_fund"]
            + audit["fees"])
        for oi in audit["open_interest"].values():
            assert oi["long"] == oi["short"]
        for key in ("a", "b", 3, *LEVERED, MAKER):
            assert eng.execute(M.QueryAccount(account=key))[0].equity >= 0, key
        kinds = kinds_of_liquidation(events)
        seen.case(liquidated=bool(kinds), book="book" in kinds, backstop="backstop" in kinds,
                  adl="adl" in kinds)

    case()
    assert seen.share("liquidated") >= 0.9, seen
    assert seen.share("book") >= 0.3 and seen.share("backstop") >= 0.3, seen
    assert seen.share("adl") >= 0.1, seen


def bankrupt_long(fund_usd=0):
    """alice long 20 ETH from 2000 on 20000, bob short the other side; then a gap to 900 with
    no bids: alice's equity is -2000, her bankruptcy price 1000.00."""
    x = Exchange(margin=True, **ETH)
    for a, usd in (("alice", 20_000), ("bob", 100_000), ("carol", 100_000)):
        x.run(M.Deposit(account=a, amount=usd * USD))
    if fund_usd:
        x.run(M.Deposit(account="insurance", amount=fund_usd * USD))
    x.oracle(200_000)
    x.order("bob", 1, "sell", 1_500, 200_000)
    x.order("carol", 1, "sell", 500, 200_000)
    x.order("alice", 1, "buy", 2_000, 200_000)
    return x


def test_a_fund_that_can_cover_the_loss_takes_the_position_over():
    x = bankrupt_long(fund_usd=5_000)
    (liq,) = liquidations(x.oracle(90_000))
    assert (liq["kind"], liq["qty"], liq["price"]) == ("backstop", 2_000, 100_000)
    audit_balances(x)


def test_when_the_fund_cannot_cover_the_loss_profitable_opposite_positions_are_deleveraged():
    x = bankrupt_long(fund_usd=0)
    events = liquidations(x.oracle(90_000))
    assert {e["kind"] for e in events} == {"adl"}
    # bob (15 ETH short) and carol (5 ETH) both gained 1100 a coin; the same PnL ratio, but
    # carol's leverage is lower: bob is deleveraged first
    assert [(e["account"], e["side"], e["qty"], e["price"]) for e in events] == [
        ("alice", "sell", 1_500, 100_000), ("bob", "buy", 1_500, 100_000),
        ("alice", "sell", 500, 100_000), ("carol", "buy", 500, 100_000)]
    assert account(x, "alice")["equity"] == 0
    audit = audit_balances(x)
    assert audit["open_interest"]["BTC-PERP"] == {"long": 0, "short": 0}
    assert audit["insurance_fund"] == 0


def test_after_every_mark_update_no_scope_is_left_liquidatable_or_wrongly_warned():
    """Checked after every mark update of flows that end in a crash sized to their positions
    and wide swings: every case liquidates."""
    seen = Reached()

    @settings(max_examples=100, deadline=None)
    @given(leveraged_flows())
    def case(cmds):
        eng = Engine()
        events = []
        for c in cmds + crash_after(cmds, len(cmds)) + SWINGS:
            events += eng.execute(c)
            if type(c) is M.Oracle and c.market in ("BTC-PERP", "ETH-PERP"):
                assert eng.risk_violations(c.market) == []
        seen.case(liquidated=bool(kinds_of_liquidation(events)),
                  margin_call=any(type(e) is M.MarginCall for e in events))

    case()
    assert seen.share("liquidated") >= 0.9 and seen["margin_call"], seen


def test_positions_paid_by_funding_are_deleveraged_after_the_price_profitable_ones():
    """A long made bankrupt by funding alone, an empty fund: `gain` (short from 1020, a price
    profit) is deleveraged first, then `paid` (short at the mark, its profit only the funding
    it is owed), and the fund is never left paying out what nobody deposited."""
    from tests.markets import market, report, withdraw_what_is_free
    eng = market()
    x = lambda cmd: [msgspec.to_builtins(e) for e in eng.execute(cmd)]  # noqa: E731
    x(M.Oracle(market="X", price=100_000))                               # 1,000 USD
    for acct, usd in (("long", 200), ("gain", 1_000), ("paid", 1_000), ("mm", 1_000_000)):
        x(M.Deposit(account=acct, amount=usd * USD))
    x(M.NewOrder(account="gain", market="X", cid=1, side="sell", kind="limit", qty=500,
                 price=102_000))
    x(M.NewOrder(account="mm", market="X", cid=1, side="buy", kind="limit", qty=500,
                 price=102_000))
    x(M.NewOrder(account="paid", market="X", cid=1, side="sell", kind="limit", qty=1_000,
                 price=100_000))
    x(M.NewOrder(account="long", market="X", cid=1, side="buy", kind="limit", qty=1_000,
                 price=100_000))
    assert report(eng, "gain")["positions"][0]["unrealised_pnl"] > 0
    assert report(eng, "paid")["positions"][0]["unrealised_pnl"] == 0
    events = liquidations(x(M.Clock(ts=3 * 365 * 86400 * 10**9)))     # 3 years of funding
    assert [(e["kind"], e["account"], e["qty"]) for e in events] == [
        ("adl", "long", 500), ("adl", "gain", 500), ("adl", "long", 500), ("adl", "paid", 500)]
    assert events[0]["price"] > 3 * 100_000                             # far above the mark
    # mm (long) and paid (short) close out at the mark: every position flat, all funding settled
    x(M.NewOrder(account="mm", market="X", cid=2, side="sell", kind="limit", qty=500,
                 price=100_000))
    x(M.NewOrder(account="paid", market="X", cid=2, side="buy", kind="limit", qty=500,
                 price=100_000))
    audit = msgspec.to_builtins(eng.execute(M.Audit())[0])
    assert audit["open_interest"]["X"] == {"long": 0, "short": 0}
    assert audit["insurance_fund"] >= 0
    assert all(report(eng, acct)["equity"] > 0 for acct in ("gain", "paid", "mm"))
    audit = withdraw_what_is_free(eng, ("gain", "paid", "mm"))
    assert audit["withdrawals"] <= audit["deposits"]


def test_a_position_paid_by_funding_is_never_deleveraged_below_zero():
    """B (cross: short X, long Y) is made bankrupt by X funding over a one-year jump; its Y
    bankruptcy price carries that deficit, far above Y's mark. S, short Y at the mark and owed
    a little Y funding, is deleveraged only as far as its own equity pays for (the reviewer's
    case: S was left at -2,780 USD with no position)."""
    from tests.markets import WIDE_BAND as PLAIN, report
    eng = Engine()
    x = lambda cmd: [msgspec.to_builtins(e) for e in eng.execute(cmd)]  # noqa: E731
    plain = {k: v for k, v in PLAIN.items() if k != "interest_ppm"}
    x(M.CreateMarket(market="X", interest_ppm=-2000, **plain))         # shorts pay longs
    x(M.CreateMarket(market="Y", interest_ppm=100, **plain))           # longs pay shorts
    hour = 3600 * 10**9

    def oracles(ts):
        x(M.Oracle(market="X", price=100_000, ts=ts))
        x(M.Oracle(market="Y", price=50_000, ts=ts))

    def trade(seller, buyer, market, qty, price, ts):
        for acct, side in ((seller, "sell"), (buyer, "buy")):
            x(M.NewOrder(account=acct, market=market, cid=ts, side=side, kind="limit", qty=qty,
                         price=price, ts=ts))
    oracles(0)
    for acct, usd in (("B", 500), ("L", 10_000), ("S", 100)):
        x(M.Deposit(account=acct, amount=usd * USD))
    trade("S", "B", "Y", 400, 50_000, 1)
    x(M.Clock(ts=100 * hour))
    oracles(100 * hour)
    trade("B", "L", "X", 1_000, 100_000, 100 * hour + 1)
    events = liquidations(x(M.Clock(ts=(100 + 8_760) * hour)))
    assert ("adl", "S") in {(e["kind"], e["account"]) for e in events}
    for acct in ("B", "L", "S"):
        assert report(eng, acct)["equity"] >= 0, acct
