"""Solvency by construction (docs/contract.md, "Solvency"): no fill, trigger, ADL or fund position
leaves money that nobody deposited. After each flow every account withdraws what it may, and
the withdrawals never exceed the deposits; no scope is left below zero equity.

Each test is one finding of issue 19, as a hostile trader (or an unlucky one) would play it."""
import msgspec
import pytest

from perpdex.engine import Engine, messages as M

USD = 1_000_000
BTC = dict(tick_size="0.1", lot_size="0.001", min_qty=1, imf_ppm=100_000, mmf_ppm=50_000,
           maker_fee_ppm=-100, taker_fee_ppm=500, liquidation_fee_ppm=10_000,
           price_band_ppm=50_000, funding_interval_s=3600, funding_cap_ppm=7500,
           interest_ppm=100)                                # the embedded default BTC-PERP
BTC_20X = dict(BTC, imf_ppm=50_000, mmf_ppm=25_000)
PLAIN = dict(tick_size="0.01", lot_size="0.001", min_qty=1, imf_ppm=100_000, mmf_ppm=50_000,
             maker_fee_ppm=0, taker_fee_ppm=0, liquidation_fee_ppm=10_000,
             price_band_ppm=1_000_000, funding_interval_s=3600, funding_cap_ppm=7500,
             interest_ppm=100)                              # multiplier 10, no band to speak of


def report(eng, account) -> dict:
    return msgspec.to_builtins(eng.execute(M.QueryAccount(account=account))[0])


def drain(eng, accounts) -> dict:
    """Every account withdraws all it may; the audit after."""
    for acct in accounts:
        r = report(eng, acct)
        free = min(r["collateral"], r["equity"] - r["initial_margin"])
        if free > 0:
            assert eng.execute(M.Withdraw(account=acct, amount=free))[0].reason == "withdraw"
    return msgspec.to_builtins(eng.execute(M.Audit())[0])


def assert_solvent(eng, accounts):
    """No account below zero equity, the fund not below zero, nothing withdrawn that was not
    deposited, and the audit balanced."""
    for acct in accounts:
        assert report(eng, acct)["equity"] >= 0, (acct, report(eng, acct))
    assert report(eng, "insurance")["equity"] >= 0, report(eng, "insurance")
    audit = drain(eng, accounts)
    assert audit["withdrawals"] <= audit["deposits"], audit
    assert audit["deposits"] - audit["withdrawals"] == (
        audit["collateral"] + audit["unrealised_pnl"] + audit["insurance_fund"] + audit["fees"])


def engine(**spec):
    eng = Engine()
    assert eng.execute(M.CreateMarket(market="X", **spec)) == []
    return eng


def order(eng, account, cid, side, qty, price=None, kind="limit", **kw):
    return eng.execute(M.NewOrder(account=account, market="X", cid=cid, side=side, kind=kind,
                                  qty=qty, price=price, **kw))


def cancels(events):
    return [(e.account, e.reason) for e in events if type(e) is M.OrderCancelled]


def fills(events):
    return [e for e in events if type(e) is M.Fill]


# ---- finding 1: a fill that shrinks a position is bounded by the bankruptcy price ------------

def _long_just_above_maintenance(spec, mark):
    """`v` long 1 BTC from 65,000 USD with 6,600 USD, the mark moved to `mark` (ticks);
    `friend` has money and nothing else."""
    eng = engine(**spec)
    eng.execute(M.Oracle(market="X", price=650_000))
    for acct, usd in (("v", 6_600), ("mm", 1_000_000), ("friend", 100_000)):
        eng.execute(M.Deposit(account=acct, amount=usd * USD))
    order(eng, "mm", 1, "sell", 1000, 650_000)
    assert len(fills(order(eng, "v", 1, "buy", 1000, 650_000))) == 1
    eng.execute(M.Oracle(market="X", price=mark))
    r = report(eng, "v")
    assert r["maintenance_margin"] <= r["equity"], r            # not liquidatable
    return eng


@pytest.mark.parametrize("spec,mark", [(BTC, 615_100), (BTC_20X, 599_400)],
                         ids=["default-10x", "20x"])
def test_a_closing_sale_to_a_colluder_past_the_bankruptcy_price_is_cut_as_taker(spec, mark):
    eng = _long_just_above_maintenance(spec, mark)
    floor = -(-mark * 950_000 // 1_000_000)                     # the band's lowest sell
    order(eng, "friend", 1, "buy", 1000, floor)
    events = order(eng, "v", 2, "sell", 1000, floor, tif="ioc")
    assert fills(events) == []
    assert cancels(events) == [("v", "margin")]
    assert_solvent(eng, ("v", "mm", "friend"))


def test_a_resting_sale_past_the_bankruptcy_price_is_cancelled_as_maker():
    """(On the 10x default the maker's rebate keeps such a sale above zero: it passes.)"""
    mark = 599_400
    eng = _long_just_above_maintenance(BTC_20X, mark)
    floor = -(-mark * 950_000 // 1_000_000)
    order(eng, "v", 2, "sell", 1000, floor, reduce_only=True)
    events = order(eng, "friend", 1, "buy", 1000, floor, tif="ioc")
    assert fills(events) == []
    assert ("v", "margin") in cancels(events)
    assert_solvent(eng, ("v", "mm", "friend"))


def test_a_closing_sale_above_the_bankruptcy_price_is_still_allowed():
    """The contract: fills that only shrink a position are allowed, so long as they leave the
    scope at or above zero equity: an account below maintenance may still sell out."""
    eng = _long_just_above_maintenance(BTC, 615_100)
    order(eng, "friend", 1, "buy", 1000, 600_000)
    events = order(eng, "v", 2, "sell", 1000, 600_000, tif="ioc")
    assert [f.qty for f in fills(events)] == [1000]
    assert report(eng, "v")["equity"] >= 0
    assert_solvent(eng, ("v", "mm", "friend"))


def test_a_stop_after_a_gap_never_sells_past_the_bankruptcy_price():
    """A long of 1 BTC at 65,000 USD with 6,600 USD has a reduce-only stop at 63,000; the only
    bid is at 57,900; the oracle gaps to 58,000. The stop fires and is cut at the bankruptcy
    price; the liquidation pass then takes the position (the fund here), never the bid."""
    eng = engine(**BTC)
    eng.execute(M.Oracle(market="X", price=650_000))
    for acct, usd in (("v", 6_600), ("mm", 1_000_000), ("insurance", 10_000)):
        eng.execute(M.Deposit(account=acct, amount=usd * USD))
    order(eng, "mm", 1, "sell", 1000, 650_000)
    order(eng, "v", 1, "buy", 1000, 650_000)
    order(eng, "v", 2, "sell", 1000, kind="stop_market", trigger_price=630_000,
          reduce_only=True)
    order(eng, "mm", 2, "buy", 1000, 579_000)                    # the only bid
    events = eng.execute(M.Oracle(market="X", price=580_000))     # ... the gap
    assert not [f for f in fills(events) if f.maker_account == "mm"]
    assert report(eng, "v")["equity"] >= 0
    assert_solvent(eng, ("v", "mm"))


# ---- finding 2: ADL of a price-profitable position is bounded by its equity -------------------

def test_adl_at_a_cross_accounts_far_bankruptcy_price_takes_no_more_than_equity_pays():
    """B is cross: long X (the larger requirement) and short Y. Y spikes, so B's bankruptcy
    price in X carries Y's deficit and lies far above X's mark; the fund is empty; S, short X
    and in profit, is deleveraged at it. S must not end below zero."""
    eng = Engine()
    for m in ("X", "Y"):
        eng.execute(M.CreateMarket(market=m, **PLAIN))
    eng.execute(M.Oracle(market="X", price=100_000))
    eng.execute(M.Oracle(market="Y", price=50_000))
    for acct, usd in (("B", 600), ("S", 420), ("L", 100_000)):
        eng.execute(M.Deposit(account=acct, amount=usd * USD))

    def trade(seller, buyer, market, qty, price):
        for acct, side in ((seller, "sell"), (buyer, "buy")):
            eng.execute(M.NewOrder(account=acct, market=market, cid=f"{market}{side}",
                                   side=side, kind="limit", qty=qty, price=price))
    trade("S", "B", "X", 4000, 100_000)
    trade("B", "L", "Y", 1000, 50_000)
    eng.execute(M.Oracle(market="X", price=99_000))
    events = eng.execute(M.Oracle(market="Y", price=200_000))
    assert any(type(e) is M.LiquidationEvent and e.kind == "adl" for e in events)
    assert_solvent(eng, ("B", "S", "L"))


# ---- finding 3: the fund's own position is risk-managed ---------------------------------------

def test_the_funds_position_is_deleveraged_before_its_equity_goes_below_zero():
    """The fund takes a long over at the backstop; the price then falls 15 %: the fund's long
    is deleveraged against the shorts, and the fund never reports negative equity."""
    eng = engine(**PLAIN)
    eng.execute(M.Oracle(market="X", price=100_000))
    for acct, usd in (("v", 105), ("s", 10_000), ("insurance", 50)):
        eng.execute(M.Deposit(account=acct, amount=usd * USD))
    order(eng, "s", 1, "sell", 1000, 100_000)
    order(eng, "v", 1, "buy", 1000, 100_000)                     # ~9.5x
    events = eng.execute(M.Oracle(market="X", price=90_000))
    assert [e.kind for e in events if type(e) is M.LiquidationEvent] == ["backstop"]
    assert eng.position("insurance", "X")[0] == 1000
    events = eng.execute(M.Oracle(market="X", price=76_500))      # -15 %
    assert report(eng, "insurance")["equity"] >= 0
    assert any(type(e) is M.LiquidationEvent and e.kind == "adl"
               and e.account == "insurance" for e in events)
    assert_solvent(eng, ("v", "s"))


# ---- finding 4: a liquidation's fill pays no rebate without a fee behind it -----------------

def test_a_liquidation_fill_pays_the_maker_no_rebate():
    eng = engine(**BTC)
    eng.execute(M.Oracle(market="X", price=650_000))
    for acct, usd in (("v", 7_000), ("mm", 1_000_000)):
        eng.execute(M.Deposit(account=acct, amount=usd * USD))
    order(eng, "mm", 1, "sell", 1000, 650_000)
    order(eng, "v", 1, "buy", 1000, 650_000)
    order(eng, "mm", 2, "buy", 1000, 610_000)
    fees_before = eng.execute(M.Audit())[0].fees
    events = eng.execute(M.Oracle(market="X", price=600_000))
    liquidation_fills = [f for f in fills(events) if f.liquidation]
    assert liquidation_fills
    assert all(f.taker_fee + f.maker_fee >= 0 for f in liquidation_fills)
    assert eng.execute(M.Audit())[0].fees >= fees_before


def test_the_funds_equity_counts_what_others_owe_it_and_not_its_own_funding_twice():
    """The fund clears lazy settlement: payers that have not settled owe it, and its own
    position's funding is settled with itself (cash to cash). Its equity is its cash, its
    positions at the mark, and what the others owe it, net."""
    eng = engine(**dict(PLAIN, interest_ppm=-2_000))                    # shorts pay longs
    eng.execute(M.Oracle(market="X", price=100_000))
    for acct, usd in (("v", 105), ("s", 10_000), ("insurance", 50)):
        eng.execute(M.Deposit(account=acct, amount=usd * USD))
    order(eng, "s", 1, "sell", 1000, 100_000)
    order(eng, "v", 1, "buy", 1000, 100_000)
    eng.execute(M.Oracle(market="X", price=90_000, ts=1))                # the fund takes v's long
    assert eng.position("insurance", "X")[0] == 1000
    eng.execute(M.Clock(ts=30 * 3600 * 10**9))                           # 30 intervals unsettled
    fund, short = report(eng, "insurance"), report(eng, "s")
    [owed] = [p["unsettled_funding"] for p in short["positions"]]
    [own] = fund["positions"]
    assert owed > 0
    assert fund["equity"] == fund["collateral"] + own["unrealised_pnl"] + owed
