"""Accounts, money and margin, one rule of the contract per test (margin on, as a venue runs)."""
import msgspec
from hypothesis import given, settings

from engine import Engine, messages as M
from tests.conftest import Exchange, only, reason, types
from tests.flows import MARKETS, create_markets, flows

ETH = dict(tick_size="0.01", lot_size="0.01", min_qty=1, imf_ppm=500_000, mmf_ppm=200_000,
           maker_fee_ppm=0, taker_fee_ppm=0, liquidation_fee_ppm=0, price_band_ppm=500_000,
           funding_interval_s=3600, funding_cap_ppm=7500, interest_ppm=0)
USD = 1_000_000


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


def test_the_worked_example_is_safe_at_1251():
    x = worked_example()
    x.oracle(125_100)
    acct = account(x, "alice")
    assert acct["equity"] == (20 * 1251 - 20_000) * USD
    assert acct["maintenance_margin"] == 4 * 1251 * USD
    assert acct["equity"] >= acct["maintenance_margin"]


def test_the_worked_example_is_liquidatable_at_1249():
    x = worked_example()
    x.oracle(124_900)
    acct = account(x, "alice")
    assert acct["equity"] < acct["maintenance_margin"]


def test_the_worked_example_liquidation_price_is_1250():
    x = worked_example()
    (pos,) = account(x, "alice")["positions"]
    assert pos["liquidation_price"] == 125_000               # 1250.00 USD
    assert (pos["size"], pos["entry_price"]) == (2_000, 200_000)


def test_an_order_that_raises_the_requirement_above_equity_is_rejected():
    x = worked_example()                    # alice's equity 20000 = her initial margin
    assert reason(x.order("alice", 2, "buy", 1, 190_000)) == "insufficient_margin"


def test_an_order_that_does_not_raise_the_requirement_is_accepted_when_under_margined():
    x = worked_example()
    x.oracle(150_000)                       # equity 10000 < initial 15000
    assert types(x.order("alice", 2, "sell", 500, 160_000)) == ["order_accepted"]


def test_a_rejection_for_margin_says_how_much():
    x = worked_example()
    detail = only(x.order("alice", 2, "buy", 1, 190_000), "rejected")["detail"]
    assert "initial margin" in detail and "equity" in detail


def test_a_maker_that_fails_the_prefill_check_is_cancelled_and_matching_goes_on():
    x = Exchange(margin=True, **ETH)
    for a, usd in (("alice", 30_000), ("bob", 1_000_000), ("carol", 1_000_000)):
        x.run(M.Deposit(account=a, amount=usd * USD))
    x.oracle(200_000)
    x.order("bob", 1, "sell", 2_000, 200_000)
    x.order("alice", 1, "buy", 2_000, 200_000)              # long 20 ETH, 10000 spare
    x.order("alice", 2, "buy", 1_000, 190_000)              # 30 ETH at 2000: 30000, all she has
    x.order("carol", 1, "buy", 500, 189_000)
    x.oracle(170_000)           # equity 24000; 23 ETH filled at 1900 would need 25500 at 1700
    events = x.order("bob", 2, "sell", 300, 150_000, tif="ioc")
    assert types(events) == ["order_accepted", "order_cancelled", "fill"]
    assert events[1] == {**events[1], "account": "alice", "reason": "margin", "remaining": 1_000}
    assert events[2]["maker_account"] == "carol"


def test_a_taker_that_fails_the_prefill_check_has_its_remainder_cancelled():
    x = Exchange(margin=True, **dict(ETH, imf_ppm=100_000, mmf_ppm=50_000, price_band_ppm=100_000))
    x.run(M.Deposit(account="alice", amount=2_100 * USD))
    x.run(M.Deposit(account="bob", amount=1_000_000 * USD))
    x.oracle(200_000)
    x.order("bob", 1, "sell", 1_000, 219_000)
    # 10 ETH at the 2000 mark needs 2000 of initial margin: she passes the placement check, but
    # paying 2190 loses 1900 of equity at the mark, so the fill would leave her short of margin.
    events = x.order("alice", 1, "buy", 1_000, 219_000)
    assert types(events) == ["order_accepted", "order_cancelled"]
    assert events[1] == {**events[1], "reason": "margin", "remaining": 1_000}


def test_a_fill_that_only_shrinks_a_position_is_always_allowed():
    x = worked_example()
    x.oracle(126_000)                       # equity 5200, initial 12600: deeply under-margined
    x.order("bob", 2, "buy", 1_000, 126_000)
    events = x.order("alice", 2, "sell", 1_000, 126_000)
    assert types(events) == ["order_accepted", "fill"]


def test_fees_move_from_collateral_to_the_venue():
    x = Exchange(margin=True)
    x.oracle(10_001)
    for a in ("m", "t"):
        x.run(M.Deposit(account=a, amount=10_000 * USD))
    x.order("m", 1, "sell", 3, 10_001)
    fill = only(x.order("t", 1, "buy", 3, 10_001), "fill")
    audit = only(x.run(M.Audit()), "audit")
    assert audit["fees"] == fill["taker_fee"] + fill["maker_fee"] == 1351 - 450
    assert account(x, "t")["collateral"] == 10_000 * USD - 1351
    assert account(x, "m")["collateral"] == 10_000 * USD + 450


def test_closing_a_position_realises_pnl_into_collateral():
    x = worked_example()
    x.oracle(210_000)
    x.order("bob", 2, "buy", 2_000, 210_000)
    x.order("alice", 2, "sell", 2_000, 210_000)
    acct = account(x, "alice")
    assert acct["positions"] == [] and acct["collateral"] == (20_000 + 2_000) * USD


def test_a_partial_close_keeps_the_cost_basis_exact():
    x = worked_example()
    x.oracle(200_000)
    x.order("bob", 2, "buy", 3, 200_300)
    x.order("alice", 2, "sell", 3, 200_300)             # 3 of 2000 lots, +3 * 3 USD
    acct = account(x, "alice")
    assert acct["collateral"] == 20_000 * USD + 3 * 300 * 100
    assert acct["positions"][0]["entry_price"] == 200_000


def test_withdraw_within_the_free_margin_is_paid_out():
    x = Exchange(margin=True)
    x.run(M.Deposit(account="a", amount=100 * USD))
    ev = only(x.run(M.Withdraw(account="a", amount=40 * USD)), "balance")
    assert (ev["collateral"], ev["reason"]) == (60 * USD, "withdraw")


def test_withdraw_that_would_leave_the_account_below_initial_margin_is_refused():
    x = worked_example()
    assert reason(x.run(M.Withdraw(account="alice", amount=1))) == "insufficient_collateral"


def test_withdraw_of_more_than_the_cash_is_refused():
    x = Exchange(margin=True)
    x.run(M.Deposit(account="a", amount=100))
    assert reason(x.run(M.Withdraw(account="a", amount=101))) == "insufficient_collateral"
    assert reason(x.run(M.Withdraw(account="nobody", amount=1))) == "insufficient_collateral"


def test_deposit_creates_the_account_and_answers_a_balance_event():
    x = Exchange(margin=True)
    ev = only(x.run(M.Deposit(account="new", amount=5)), "balance")
    assert (ev["account"], ev["collateral"], ev["reason"]) == ("new", 5, "deposit")


def test_a_deposit_that_is_not_positive_is_rejected():
    x = Exchange(margin=True)
    assert reason(x.run(M.Deposit(account="a", amount=0))) == "invalid_amount"


def test_leverage_raises_the_initial_fraction_to_one_over_leverage():
    x = Exchange(margin=True, **dict(ETH, imf_ppm=100_000, mmf_ppm=50_000))
    x.run(M.Deposit(account="a", amount=1_000 * USD))
    x.oracle(200_000)
    assert types(x.order("a", 1, "buy", 400, 190_000)) == ["order_accepted"]   # 8000 at 10x: 800
    x.run(M.SetLeverage(account="a", market="BTC-PERP", leverage=10))
    assert account(x, "a")["initial_margin"] == 800 * USD
    assert reason(x.run(M.SetLeverage(account="a", market="BTC-PERP", leverage=5))) == \
        "insufficient_margin"                                                  # 1600 > 1000
    assert reason(x.run(M.SetLeverage(account="a", market="BTC-PERP", leverage=11))) == \
        "invalid_leverage"


def test_tiers_make_the_requirement_continuous_at_the_boundary():
    tiers = [M.Tier(max_notional=10_000 * USD, imf_ppm=100_000, mmf_ppm=50_000),
             M.Tier(max_notional=100_000 * USD, imf_ppm=200_000, mmf_ppm=100_000)]
    x = Exchange(margin=True, **dict(ETH, imf_ppm=100_000, mmf_ppm=50_000, tiers=tiers))
    x.run(M.Deposit(account="a", amount=100_000 * USD))
    x.oracle(100_000)                                       # 1000 USD
    x.order("a", 1, "buy", 1_000, 90_000)                   # 10 ETH at the 1000 mark: 10000 USD
    assert account(x, "a")["initial_margin"] == 1_000 * USD  # tier 0 at its boundary
    x.order("a", 2, "buy", 1, 90_000)                       # just past it: tier 1, no jump
    assert account(x, "a")["initial_margin"] == 1_000 * USD + 2 * USD


def test_the_audit_balances_and_open_interest_matches():
    x = worked_example()
    x.oracle(190_000)
    audit = only(x.run(M.Audit()), "audit")
    assert audit["deposits"] - audit["withdrawals"] == (
        audit["collateral"] + audit["unrealised_pnl"] + audit["insurance_fund"] + audit["fees"])
    assert audit["open_interest"] == {"BTC-PERP": {"long": 2_000, "short": 2_000}}


def _funded(cmds):
    deposits = [M.Deposit(account=a, amount=5_000_000, ts=0) for a in ("a", "b", 3)]
    return cmds[:2] + deposits + cmds[2:] + [M.Audit(ts=10**6)]


@settings(max_examples=200, deadline=None)
@given(flows(max_size=150))
def test_after_any_leveraged_flow_the_audit_balances_to_the_unit(cmds):
    eng = Engine()
    for c in _funded(cmds):
        events = eng.execute(c)
    eng.check_integrity()
    audit = msgspec.to_builtins(events[-1])
    assert audit["deposits"] - audit["withdrawals"] == (
        audit["collateral"] + audit["unrealised_pnl"] + audit["insurance_fund"] + audit["fees"])
    for m in MARKETS:
        oi = audit["open_interest"][m]
        assert oi["long"] == oi["short"]


def test_create_markets_helper_is_margin_ready():
    eng = Engine()
    assert all(eng.execute(c) == [] for c in create_markets())
