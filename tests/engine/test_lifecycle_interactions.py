"""Where the lifecycle meets liquidation and the state (found in review; each failed first):
a halted market is never traded by a liquidation from another market, a queued scope that has
gone cross is not liquidated as the isolated one it was, a settlement's gainers pay the fund
back first, the state hash sees every piece of lifecycle state, and `settled` is no status to
set."""
import msgspec

from perpdex.engine import Engine, messages as M

USD = 1_000_000
PLAIN = dict(tick_size="0.01", lot_size="0.001", min_qty=1, imf_ppm=100_000, mmf_ppm=50_000,
             maker_fee_ppm=0, taker_fee_ppm=0, liquidation_fee_ppm=10_000,
             price_band_ppm=100_000, funding_interval_s=3600, funding_cap_ppm=7500,
             interest_ppm=100)


def engine(*markets, **over):
    eng = Engine()
    for m in markets:
        assert eng.execute(M.CreateMarket(market=m, **dict(PLAIN, **over))) == []
        eng.execute(M.Oracle(market=m, price=100_000, ts=1))
    return eng


def deposit(eng, account, usd):
    eng.execute(M.Deposit(account=account, amount=int(usd * USD)))


def order(eng, account, market, cid, side, qty, price, **kw):
    return eng.execute(M.NewOrder(account=account, market=market, cid=cid, side=side,
                                  kind="limit", qty=qty, price=price, **kw))


def isolate(eng, account, market, usd):
    eng.execute(M.SetMarginMode(account=account, market=market, mode="isolated"))
    eng.execute(M.TransferMargin(account=account, market=market, amount=usd * USD))


def test_a_cross_account_liquidated_from_another_market_leaves_a_halted_market_alone():
    eng = engine("X", "Y")
    deposit(eng, "mm", 1_000_000)
    deposit(eng, "a", 2_000)
    deposit(eng, "insurance", 1_000)
    for m in ("Y", "X"):
        order(eng, "mm", m, 1, "sell", 9_000, 100_000)
        order(eng, "a", m, 1, "buy", 9_000, 100_000)
    order(eng, "mm", "Y", 2, "buy", 20_000, 99_000)               # would take a's Y position
    eng.execute(M.SetMarketStatus(market="Y", status="halted"))
    events = eng.execute(M.Oracle(market="X", price=87_000))
    assert all(e.market == "X" for e in events if type(e) in (M.Fill, M.LiquidationEvent))
    assert eng.position("a", "Y")[0] == 9_000


def test_a_queued_isolated_scope_that_went_cross_is_not_liquidated_as_it_was():
    eng = engine("X", max_liquidations_per_update=1)
    deposit(eng, "mm", 1_000_000)
    deposit(eng, "insurance", 10_000)
    for a in ("a1", "a2"):
        deposit(eng, a, 5_000)
        isolate(eng, a, "X", 1_000)
    order(eng, "mm", "X", 1, "sell", 18_000, 100_000)
    order(eng, "a1", "X", 1, "buy", 9_000, 100_000)
    order(eng, "a2", "X", 1, "buy", 9_000, 100_000)
    order(eng, "mm", "X", 2, "buy", 100_000, 91_000)
    eng.execute(M.Oracle(market="X", price=91_500, ts=2))          # one liquidated, one waits
    order(eng, "a2", "X", 2, "sell", 9_000, 91_000, tif="ioc", ts=2)
    eng.execute(M.SetMarginMode(account="a2", market="X", mode="cross", ts=2))
    order(eng, "mm", "X", 3, "sell", 1_000, 91_500, ts=2)
    order(eng, "a2", "X", 3, "buy", 1_000, 91_500, ts=2)           # healthy, cross
    events = eng.execute(M.Clock(ts=3))
    assert not [e for e in events if type(e) is M.LiquidationEvent and e.account == "a2"]
    assert eng.position("a2", "X")[0] == 1_000


def test_what_the_fund_pays_in_a_settlement_comes_back_from_its_gainers_first():
    eng = engine("X", "Y")
    for a, usd in (("mm", 1_000_000), ("g", 100_000), ("insurance", 1), ("a1", 5_000),
                   ("c", 1_900)):
        deposit(eng, a, usd)
    isolate(eng, "a1", "X", 1_000)
    order(eng, "g", "X", 1, "sell", 21_000, 100_000)
    order(eng, "a1", "X", 1, "buy", 9_000, 100_000)
    order(eng, "c", "X", 1, "buy", 12_000, 100_000)
    order(eng, "mm", "Y", 1, "sell", 6_000, 100_000)
    order(eng, "c", "Y", 1, "buy", 6_000, 100_000)
    order(eng, "mm", "Y", 2, "buy", 100_000, 99_000)
    events = eng.execute(M.SettleMarket(market="X", price=86_000))
    payers = [e.account for e in events if type(e) is M.Balance and e.reason == "socialised_loss"]
    assert payers == ["g"]
    a = eng.execute(M.Audit())[0]
    assert a.deposits - a.withdrawals == (a.collateral + a.unrealised_pnl + a.insurance_fund
                                          + a.fees)


def test_the_state_hash_sees_the_status_a_scheduled_update_and_waiting_funding_parameters():
    def hashed(*cmds):
        eng = engine("X")
        eng.execute(M.Clock(ts=2))
        for c in cmds:
            eng.execute(c)
        return eng.execute(M.StateHash())[0].hash
    plain = hashed()
    assert hashed(M.SetMarketStatus(market="X", status="halted")) != plain
    assert hashed(M.UpdateMarket(market="X", taker_fee_ppm=9, effective_ts=10**15)) != plain
    assert (hashed(M.UpdateMarket(market="X", funding_cap_ppm=100))
            != hashed(M.UpdateMarket(market="X", funding_cap_ppm=100, effective_ts=2 * 10**12)))


def test_settled_is_not_a_status_to_set_even_in_a_hand_built_command():
    eng = engine("X")
    deposit(eng, "a", 1_000)
    deposit(eng, "b", 1_000)
    order(eng, "a", "X", 1, "buy", 10, 100_000)
    order(eng, "b", "X", 1, "sell", 10, 100_000)
    [ev] = eng.execute(M.SetMarketStatus(market="X", status="settled"))
    assert ev.reason == "invalid_command"
    assert msgspec.to_builtins(eng.execute(M.Audit())[0])["open_interest"]["X"]["long"] == 10
    assert [type(e) for e in order(eng, "a", "X", 2, "sell", 10, 100_000,
                                   reduce_only=True)] == [M.OrderAccepted]
