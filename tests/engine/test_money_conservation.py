"""Money is never created: withdrawals can never exceed deposits, and no amount the engine
reports has wrapped (docs/limits.md). An engine bug found in review is marked
`xfail(strict=True)` with the reason until it is fixed, and docs/limits.md names it."""
import pytest

from perpdex.engine import Engine, messages as M
from perpdex.engine.markets import MAX_MONEY
from tests.markets import USD, WIDE_BAND as PLAIN, market, report, withdraw_what_is_free


def test_a_long_clock_jump_never_lets_withdrawals_exceed_deposits():
    eng = market()
    eng.execute(M.Oracle(market="X", price=100_000))                    # 1,000 USD
    for acct, amount in (("short", 1_000), ("long", 1_000), ("other", 1_000_000)):
        eng.execute(M.Deposit(account=acct, amount=amount * USD))
    eng.execute(M.NewOrder(account="short", market="X", cid=1, side="sell", kind="limit",
                           qty=1000, price=100_000))
    eng.execute(M.NewOrder(account="long", market="X", cid=1, side="buy", kind="limit",
                           qty=1000, price=100_000))
    eng.execute(M.Clock(ts=30 * 365 * 86400 * 10**9))                   # the oracle never moves
    # `other` takes over the short's side at the mark: the short is flat, its funding settled
    eng.execute(M.NewOrder(account="other", market="X", cid=1, side="sell", kind="limit",
                           qty=1000, price=100_000))
    eng.execute(M.NewOrder(account="short", market="X", cid=2, side="buy", kind="limit",
                           qty=1000, price=100_000))
    audit = withdraw_what_is_free(eng, ("short", "long", "other"))
    assert audit["withdrawals"] <= audit["deposits"], audit


def test_funding_owed_after_a_long_clock_jump_is_exact_or_the_jump_is_refused():
    eng = market(funding_interval_s=1)
    spec = eng.specs[0]
    price, qty = spec.max_price, spec.max_qty // 2
    eng.execute(M.Oracle(market="X", price=price))
    for acct in ("short", "long"):
        eng.execute(M.Deposit(account=acct, amount=MAX_MONEY // 4))
    eng.execute(M.NewOrder(account="short", market="X", cid=1, side="sell", kind="limit",
                           qty=qty, price=price))
    eng.execute(M.NewOrder(account="long", market="X", cid=1, side="buy", kind="limit",
                           qty=qty, price=price))
    before = eng.execute(M.StateHash())[0].hash
    evs = eng.execute(M.Clock(ts=2**62))
    # perpdex refuses such a jump whole, saying why (docs/limits.md): nothing moved
    assert [(e.reason, "smaller steps" in e.detail) for e in evs] == [("invalid_command", True)]
    assert eng.execute(M.StateHash())[0].hash == before
    # in smaller steps, one interval to thirty at once, what is owed is exact to the unit
    funding = []
    for ts in (1, 2, 5, 10, 30, 60):
        evs = eng.execute(M.Clock(ts=ts * 10**9))
        assert [type(e) for e in evs] == [M.FundingEvent], evs
        funding += evs
    assert sum(e.intervals or 1 for e in funding) == 60
    moved = sum((e.intervals or 1) * e.rate_ppm * e.index_price * spec.multiplier
                for e in funding)                   # per lot, in 1e-6 quote units
    owed = -(qty * moved // 10**6)                  # the short is owed (< 0), rounded down
    assert owed < 0
    assert report(eng, "short")["positions"][0]["unsettled_funding"] == owed
    # and the long pays it rounded up (payments round up, receipts down: docs/contract.md)
    assert report(eng, "long")["positions"][0]["unsettled_funding"] == -(-qty * moved // 10**6)


def test_collateral_without_margin_checks_never_wraps():
    eng = market(margin=False, tick_size="0.001", lot_size="0.001")       # multiplier 1
    spec = eng.specs[0]
    top, qty = spec.max_price, spec.max_qty
    cash = {"a": 0, "b": 0}                          # recomputed with Python integers
    for k in range(6):
        for price, seller, buyer in ((top, "b", "a"), (1, "a", "b")):
            eng.execute(M.Oracle(market="X", price=price, ts=k * 2 + (price == 1)))
            eng.execute(M.NewOrder(account=seller, market="X", cid=f"s{k}{price}", side="sell",
                                   kind="limit", qty=qty, price=price))
            evs = eng.execute(M.NewOrder(account=buyer, market="X", cid=f"b{k}{price}",
                                         side="buy", kind="limit", qty=qty, price=price))
            for f in (e for e in evs if type(e) is M.Fill):
                cash[buyer] -= f.price * f.qty * spec.multiplier
                cash[seller] += f.price * f.qty * spec.multiplier
        for acct in ("a", "b"):                      # flat after each round trip
            assert eng.position(acct, "X")[0] == 0
            assert report(eng, acct)["collateral"] == cash[acct], (k, acct)


def test_funding_owed_past_every_price_never_lets_withdrawals_exceed_deposits():
    plain = {k: v for k, v in PLAIN.items() if k != "interest_ppm"}
    eng = Engine()
    eng.execute(M.CreateMarket(market="X", interest_ppm=-2000, **plain))   # shorts pay longs
    eng.execute(M.CreateMarket(market="Y", interest_ppm=100, **plain))     # longs pay shorts
    hour = 3600 * 10**9

    def oracles(ts):
        eng.execute(M.Oracle(market="X", price=100_000, ts=ts))
        eng.execute(M.Oracle(market="Y", price=50_000, ts=ts))

    def trade(seller, buyer, market, qty, price, ts):
        for acct, side in ((seller, "sell"), (buyer, "buy")):
            eng.execute(M.NewOrder(account=acct, market=market, cid=ts, side=side,
                                   kind="limit", qty=qty, price=price, ts=ts))
    oracles(0)
    for acct, usd in (("B", 500), ("L", 10_000), ("S", 100)):
        eng.execute(M.Deposit(account=acct, amount=usd * USD))
    trade("S", "B", "Y", 400, 50_000, 1)
    eng.execute(M.Clock(ts=100 * hour))
    oracles(100 * hour)
    trade("B", "L", "X", 1_000, 100_000, 100 * hour + 1)
    eng.execute(M.Clock(ts=(100 + 8_760) * hour))
    audit = withdraw_what_is_free(eng, ("B", "L", "S"))
    assert audit["withdrawals"] <= audit["deposits"], audit
