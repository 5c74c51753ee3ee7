"""Small engines the engine tests share: the contract's margin worked example, and the plain
market "X" (multiplier 10) of the lifecycle, velocity and money tests. No tests here."""
from __future__ import annotations

import msgspec

from perpdex.engine import Engine, messages as M
from tests.conftest import Exchange, only, types

USD = 1_000_000
PLAIN = dict(tick_size="0.01", lot_size="0.001", min_qty=1, imf_ppm=100_000, mmf_ppm=50_000,
             maker_fee_ppm=0, taker_fee_ppm=0, liquidation_fee_ppm=10_000,
             price_band_ppm=100_000, funding_interval_s=3600, funding_cap_ppm=7500,
             interest_ppm=100)                  # multiplier 10: 1 USD a lot at 100,000 ticks
# The money tests' market: PLAIN with a band wide enough for any index move.
WIDE_BAND = dict(PLAIN, price_band_ppm=1_000_000)

ETH = dict(tick_size="0.01", lot_size="0.01", min_qty=1, imf_ppm=500_000, mmf_ppm=200_000,
           maker_fee_ppm=0, taker_fee_ppm=0, liquidation_fee_ppm=0, price_band_ppm=500_000,
           funding_interval_s=3600, funding_cap_ppm=7500, interest_ppm=0)


def worked_example():
    """The contract's example: 20000 USD deposited, long 20 ETH from 2000 USD, IMF 50 %, MMF 20 %."""
    x = Exchange(margin=True, **ETH)
    x.run(M.Deposit(account="alice", amount=20_000 * USD))
    x.run(M.Deposit(account="bob", amount=1_000_000 * USD))
    x.oracle(200_000)                                       # 2000.00 USD
    x.order("bob", 1, "sell", 2_000, 200_000)               # 20 ETH
    assert types(x.order("alice", 1, "buy", 2_000, 200_000)) == ["order_accepted", "fill"]
    return x


def account(x, name):
    return only(x.run(M.QueryAccount(account=name)), "account")


def venue(**over):
    eng = Engine()
    assert eng.execute(M.CreateMarket(market="X", **dict(PLAIN, **over))) == []
    eng.execute(M.Oracle(market="X", price=100_000))
    for acct, usd in (("a", 1_000), ("b", 1_000), ("mm", 1_000_000), ("insurance", 1_000)):
        eng.execute(M.Deposit(account=acct, amount=usd * USD))
    return eng


def order(eng, account, cid, side, qty, price=None, kind="limit", **kw):
    return eng.execute(M.NewOrder(account=account, market="X", cid=cid, side=side, kind=kind,
                                  qty=qty, price=price, **kw))


def status(eng, value):
    return eng.execute(M.SetMarketStatus(market="X", status=value))


def reasons(events):
    return [e.reason for e in events if type(e) in (M.Rejected, M.OrderCancelled)]


def report(eng, account):
    return msgspec.to_builtins(eng.execute(M.QueryAccount(account=account))[0])


def market(**over):
    eng = Engine(**({"margin": over.pop("margin")} if "margin" in over else {}))
    assert eng.execute(M.CreateMarket(market="X", **dict(WIDE_BAND, **over))) == []
    return eng


def withdraw_what_is_free(eng, accounts) -> dict:
    """Each account withdraws all it may (its collateral, up to its equity above initial
    margin); the audit after."""
    for acct in accounts:
        r = report(eng, acct)
        free = min(r["collateral"], r["equity"] - r["initial_margin"])
        if free > 0:
            eng.execute(M.Withdraw(account=acct, amount=free))
    return msgspec.to_builtins(eng.execute(M.Audit())[0])
