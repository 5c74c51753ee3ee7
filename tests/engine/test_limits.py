"""Money at the edges (docs/contract.md, "Limits"): no arithmetic wraps, a refused command changes
nothing, nobody is left below zero after a liquidation, and amend is margin-checked."""
import msgspec
import pytest

from perpdex.engine import Engine, messages as M
from perpdex.engine.markets import MAX_MONEY, MAX_TS, NOTIONAL_LIMIT

USD = 1_000_000
BTC = dict(tick_size="0.1", lot_size="0.001", min_qty=1, imf_ppm=100_000, mmf_ppm=50_000,
           maker_fee_ppm=-100, taker_fee_ppm=500, liquidation_fee_ppm=10_000,
           price_band_ppm=50_000, funding_interval_s=3600, funding_cap_ppm=7500,
           interest_ppm=100)                       # the embedded default's BTC-PERP


def run(eng, cmd):
    return [msgspec.to_builtins(e) for e in eng.execute(cmd)]


def reasons(evs):
    return [e["reason"] for e in evs if e["type"] == "rejected"]


def state_hash(eng):
    return run(eng, M.StateHash())[0]["hash"]


def balanced(eng):
    a = run(eng, M.Audit())[0]
    return (a["deposits"] - a["withdrawals"]
            == a["collateral"] + a["unrealised_pnl"] + a["insurance_fund"] + a["fees"])


def btc(**over):
    eng = Engine()
    assert run(eng, M.CreateMarket(market="BTC-PERP", **dict(BTC, **over))) == []
    run(eng, M.Oracle(market="BTC-PERP", price=650_000))
    return eng


def test_every_market_limit_keeps_its_notional_within_the_limit():
    for tick, lot in (("0.1", "0.001"), ("0.001", "0.001"), ("1", "1000000"), ("0.000001", "1")):
        eng = btc(tick_size=tick, lot_size=lot)
        spec = eng.specs[0]
        assert spec.max_price * spec.max_qty * spec.multiplier <= NOTIONAL_LIMIT


def test_a_bid_whose_requirement_would_wrap_is_refused():
    eng = btc()
    run(eng, M.Deposit(account="a", amount=1 * USD))
    run(eng, M.SetLeverage(account="a", market="BTC-PERP", leverage=1))
    evs = run(eng, M.NewOrder(account="a", market="BTC-PERP", cid=1, side="buy", kind="limit",
                              qty=2**40, price=650_000))
    assert reasons(evs) == ["invalid_qty"]
    biggest = eng.specs[0].max_qty
    evs = run(eng, M.NewOrder(account="a", market="BTC-PERP", cid=1, side="buy", kind="limit",
                              qty=biggest, price=650_000))
    assert reasons(evs) == ["insufficient_margin"]
    report = run(eng, M.QueryAccount(account="a"))[0]
    assert report["initial_margin"] == 0 and report["open_orders"] == []


def test_two_accounts_without_collateral_cannot_trade_a_notional_that_wraps():
    eng = btc(tick_size="0.001", lot_size="0.001")                 # multiplier 1
    run(eng, M.Oracle(market="BTC-PERP", price=2**32))
    for acct, side in (("a", "sell"), ("b", "buy")):
        evs = run(eng, M.NewOrder(account=acct, market="BTC-PERP", cid=1, side=side,
                                  kind="limit", qty=2**32, price=2**32))
        assert not [e for e in evs if e["type"] == "fill"]
    run(eng, M.Oracle(market="BTC-PERP", price=2**31))
    assert reasons(run(eng, M.Withdraw(account="b", amount=10**9))) == ["insufficient_collateral"]
    assert balanced(eng)


def test_a_position_cannot_grow_past_the_markets_largest_qty():
    eng = btc()
    spec = eng.specs[0]
    for acct in ("a", "b"):
        run(eng, M.Deposit(account=acct, amount=MAX_MONEY // 4))
    run(eng, M.NewOrder(account="a", market="BTC-PERP", cid=1, side="sell", kind="limit",
                        qty=spec.max_qty, price=650_000))
    run(eng, M.NewOrder(account="b", market="BTC-PERP", cid=1, side="buy", kind="limit",
                        qty=spec.max_qty, price=650_000))
    run(eng, M.NewOrder(account="a", market="BTC-PERP", cid=2, side="sell", kind="limit",
                        qty=5, price=650_000))
    evs = run(eng, M.NewOrder(account="b", market="BTC-PERP", cid=2, side="buy", kind="limit",
                              qty=5, price=650_000))
    assert [e for e in evs if e["type"] == "fill"] == []
    assert eng.position("b", "BTC-PERP")[0] == spec.max_qty


def test_deposits_that_would_pass_the_largest_balance_are_refused_whole():
    eng = btc()
    assert reasons(run(eng, M.Deposit(account="a", amount=2**63 - 1))) == ["invalid_amount"]
    run(eng, M.Deposit(account="a", amount=MAX_MONEY))
    before = state_hash(eng)
    assert reasons(run(eng, M.Deposit(account="a", amount=1))) == ["invalid_amount"]
    assert reasons(run(eng, M.Deposit(account="b", amount=1))) == ["invalid_amount"]
    assert state_hash(eng) == before and balanced(eng)


def test_a_transfer_that_would_wrap_a_balance_is_refused():
    eng = btc()
    run(eng, M.Deposit(account="a", amount=100 * USD))
    run(eng, M.SetMarginMode(account="a", market="BTC-PERP", mode="isolated"))
    before = state_hash(eng)
    for amount in (-(2**63), 2**63 - 1, -(2**62)):
        evs = run(eng, M.TransferMargin(account="a", market="BTC-PERP", amount=amount))
        assert reasons(evs) == ["invalid_amount"]
    assert state_hash(eng) == before


@pytest.mark.parametrize("field,value", [("funding_interval_s", 10**10),
                                         ("oracle_max_age_s", 10**10),
                                         ("tick_size", "1e999999999"), ("lot_size", "1e-999999"),
                                         ("max_qty", 2**62)])
def test_a_market_with_an_out_of_range_parameter_is_refused(field, value):
    eng = Engine()
    evs = run(eng, M.CreateMarket(market="X", **dict(BTC, **{field: value})))
    assert reasons(evs) == ["invalid_market"]
    assert eng.market_names() == []


def test_a_clock_beyond_the_largest_time_is_refused_and_the_stream_goes_on():
    eng = btc()
    data = b"".join(msgspec.msgpack.encode({"type": "clock", "ts": t})
                    for t in (2**63 - 1, 2**62 + 1)) + msgspec.msgpack.encode(M.StateHash())
    events = msgspec.msgpack.Decoder().decode(b"\xdd\x00\x00\x00\x03" + eng.execute_batch(data))
    assert [e.get("reason") for e in events[:2]] == ["invalid_command"] * 2
    assert events[2]["type"] == "state_hash" and eng.clock < 2**62
    assert reasons(run(eng, M.Clock(ts=2**62 + 1))) == ["invalid_command"]     # hand-built


def test_a_liquidation_into_the_book_leaves_no_negative_equity():
    """The issue's minimal flow: the closing fill used to pay the taker fee on top of the
    bankruptcy price, leaving -0.851 USD that nobody paid."""
    eng = Engine()
    run(eng, M.CreateMarket(market="X", tick_size="0.01", lot_size="0.001", min_qty=1,
                            imf_ppm=100_000, mmf_ppm=50_000, maker_fee_ppm=0,
                            taker_fee_ppm=1000, liquidation_fee_ppm=10_000, price_band_ppm=500_000,
                            funding_interval_s=3600, funding_cap_ppm=7500, interest_ppm=0))
    run(eng, M.Oracle(market="X", price=100_000))
    run(eng, M.Deposit(account="A", amount=150 * USD))
    run(eng, M.Deposit(account="B", amount=10_000 * USD))
    run(eng, M.NewOrder(account="B", market="X", cid=1, side="sell", kind="limit", qty=1000,
                        price=100_000))
    run(eng, M.NewOrder(account="A", market="X", cid=1, side="buy", kind="limit", qty=1000,
                        price=100_000))
    run(eng, M.NewOrder(account="B", market="X", cid=2, side="buy", kind="limit", qty=1000,
                        price=85_100))
    evs = run(eng, M.Oracle(market="X", price=85_101))
    assert [e["kind"] for e in evs if e["type"] == "liquidation"] == ["book"]
    report = run(eng, M.QueryAccount(account="A"))[0]
    assert report["positions"] == [] and report["equity"] >= 0
    assert balanced(eng)


def test_amend_that_raises_the_requirement_above_equity_is_refused():
    eng = btc()
    run(eng, M.Deposit(account="a", amount=100 * USD))
    run(eng, M.NewOrder(account="a", market="BTC-PERP", cid=1, side="buy", kind="limit", qty=1,
                        price=640_000))
    before = state_hash(eng)
    evs = run(eng, M.Amend(account="a", market="BTC-PERP", cid=1, qty=1_000_000))
    assert reasons(evs) == ["insufficient_margin"]
    assert state_hash(eng) == before
    assert run(eng, M.QueryAccount(account="a"))[0]["open_orders"][0]["qty"] == 1


def test_a_funding_boundary_looks_only_at_its_own_markets_positions():
    eng = btc()
    run(eng, M.CreateMarket(market="ETH-PERP", **BTC))
    run(eng, M.Oracle(market="ETH-PERP", price=30_000))
    for acct in range(50):
        run(eng, M.Deposit(account=acct, amount=10**4 * USD))
    for acct in range(0, 50, 2):
        run(eng, M.NewOrder(account=acct, market="ETH-PERP", cid=1, side="sell", kind="limit",
                            qty=10, price=30_000))
        run(eng, M.NewOrder(account=acct + 1, market="ETH-PERP", cid=1, side="buy",
                            kind="limit", qty=10, price=30_000))
    evs = run(eng, M.Clock(ts=3600 * 10**9))
    assert [e["type"] for e in evs].count("funding") == 2 and balanced(eng)


def test_hand_built_commands_with_wrong_values_never_raise():
    eng = btc()
    for cmd in (M.Deposit(account="a", amount=2**80), M.Withdraw(account="a", amount=-(2**70)),
                M.NewOrder(account="a", market="BTC-PERP", cid=1, side="buy", kind="limit",
                           qty=True, price=10**30)):
        evs = run(eng, cmd)
        assert [e["type"] for e in evs] == ["rejected"]


# ---- the codec: bounded nesting and line length, the stream going on -------------------------

def _decode_stream(data: bytes) -> list[dict]:
    return list(msgspec.msgpack.Decoder().decode(b"\xdd" + data.count(b"\xa4type").to_bytes(4, "big")
                                                 + data)) if data else []


def test_a_msgpack_object_nested_too_deep_is_rejected_and_the_next_command_runs():
    eng = Engine()
    out = eng.execute_batch(b"\x91" * 5000 + b"\x00" + msgspec.msgpack.encode(M.StateHash()))
    evs = _decode_stream(out)
    assert [e["type"] for e in evs] == ["rejected", "state_hash"]
    assert evs[0]["reason"] == "invalid_command"


def test_a_json_line_nested_too_deep_is_rejected_and_the_next_line_runs():
    eng = Engine()
    data = b'{"type":' + b"[" * 5000 + b"]" * 5000 + b'}\n{"type":"state_hash"}\n'
    lines = [msgspec.json.decode(x) for x in eng.execute_batch(data, "jsonl").splitlines()]
    assert [e["type"] for e in lines] == ["rejected", "state_hash"]
    assert "nested too deeply" in lines[0]["detail"]


def test_a_json_line_longer_than_the_limit_is_skipped_in_linear_time():
    from perpdex.engine.codec import MAX_LINE, CommandReader
    reader = CommandReader("jsonl")
    big = b'{"type":"state_hash","x":"' + b"a" * (4 * MAX_LINE) + b'"}\n{"type":"state_hash"}\n'
    items = []
    for i in range(0, len(big), 4096):          # quadratic before: each chunk copied the tail
        items += reader.feed(big[i:i + 4096])
    items += reader.close()
    assert "longer than" in items[0].detail and isinstance(items[1], M.StateHash)


def test_a_bool_qty_is_invalid_qty():
    eng = btc()
    line = (b'{"type":"new_order","account":"a","market":"BTC-PERP","cid":1,"side":"buy",'
            b'"kind":"limit","qty":true,"price":650000}\n')
    ev = msgspec.json.decode(eng.execute_batch(line, "jsonl"))
    assert ev["reason"] == "invalid_qty"


def _funded_pair(interval_s):
    eng = btc(funding_interval_s=interval_s)
    run(eng, M.Clock(ts=interval_s * 10**9))                 # the first boundary after the oracle
    for acct in ("a", "b"):
        run(eng, M.Deposit(account=acct, amount=10**6 * USD))
    run(eng, M.NewOrder(account="a", market="BTC-PERP", cid=1, side="sell", kind="limit",
                        qty=100, price=650_000))
    run(eng, M.NewOrder(account="b", market="BTC-PERP", cid=1, side="buy", kind="limit",
                        qty=100, price=650_000))
    return eng


def test_a_long_clock_jump_applies_its_empty_funding_intervals_at_once():
    """A year at a 60 s interval used to be 525,600 boundaries, each looping over positions."""
    eng = _funded_pair(60)
    year = 365 * 86400 * 10**9
    evs = [e for e in run(eng, M.Clock(ts=year)) if e["type"] == "funding"]
    assert len(evs) == 1 and evs[0]["intervals"] == (year - 60 * 10**9) // (60 * 10**9)
    assert balanced(eng)


def test_intervals_applied_at_once_move_money_as_one_by_one():
    at_once, one_by_one = _funded_pair(60), _funded_pair(60)
    run(at_once, M.Clock(ts=11 * 60 * 10**9))
    for k in range(2, 12):
        run(one_by_one, M.Clock(ts=k * 60 * 10**9))
    for acct in ("a", "b"):
        x = run(at_once, M.QueryAccount(account=acct))[0]
        y = run(one_by_one, M.QueryAccount(account=acct))[0]
        assert x["equity"] == y["equity"] and x["positions"] == y["positions"]


def test_adl_ranks_a_3m_usd_position_by_its_exact_score():
    """|cost| x equity of a 3M USD short passes 2^63: computed in int64 (as it was), both
    products below wrapped negative and the small short (score 0.087) was deleveraged before
    the big one (0.455)."""
    eng = btc(taker_fee_ppm=0, maker_fee_ppm=0, price_band_ppm=200_000)
    for acct, usd in (("big-short", 310_000), ("small-short", 65_000), ("bankrupt", 6_600),
                      ("whale-long", 10_000_000)):
        run(eng, M.Deposit(account=acct, amount=usd * USD))
    for cid, (seller, buyer, qty) in enumerate((("big-short", "whale-long", 46_000),
                                                ("small-short", "bankrupt", 1_000))):
        run(eng, M.NewOrder(account=seller, market="BTC-PERP", cid=cid, side="sell",
                            kind="limit", qty=qty, price=650_000))
        evs = run(eng, M.NewOrder(account=buyer, market="BTC-PERP", cid=cid, side="buy",
                                  kind="limit", qty=qty, price=650_000))
        assert [e["type"] for e in evs].count("fill") == 1
    evs = run(eng, M.Oracle(market="BTC-PERP", price=580_000))     # no book, no fund: ADL
    adl = [(e["account"], e["qty"]) for e in evs if e["type"] == "liquidation"]
    assert adl == [("bankrupt", 1_000), ("big-short", 1_000)]
    assert balanced(eng)


# Run in a child with 384 MiB of address space and 10 s: before the fix it looped for ever and
# took all the memory of the machine.
_PAST_MAX_TS = """
import resource, sys, msgspec
resource.setrlimit(resource.RLIMIT_AS, (384 << 20, 384 << 20))
from perpdex.engine import Engine, messages as M
eng = Engine()
eng.execute(M.CreateMarket(market="X", tick_size="0.1", lot_size="0.001", min_qty=1,
    imf_ppm=100_000, mmf_ppm=50_000, maker_fee_ppm=0, taker_fee_ppm=0,
    liquidation_fee_ppm=10_000, price_band_ppm=1_000_000, funding_interval_s=3600,
    funding_cap_ppm=7500, interest_ppm=100))
eng.execute(M.Oracle(market="X", price=100))
eng.execute(M.Deposit(account="a", amount=10**12))      # a known account: the fast path reads it
cmd = {"type": "new_order", "account": "a", "market": "X", "cid": 1, "side": "buy",
       "kind": "limit", "qty": 5, "price": 100, "ts": int(sys.argv[1])}
out = eng.execute_batch(msgspec.msgpack.encode(cmd))
evs = msgspec.msgpack.Decoder().decode(b"\\xdd" + out.count(b"\\xa4type").to_bytes(4, "big") + out)
print(msgspec.json.encode([[e["type"], e.get("reason")] for e in evs] + [eng.clock]).decode())
"""


@pytest.mark.parametrize("ts", [MAX_TS + 1, 2**63 - 1])
def test_a_new_order_past_the_largest_time_is_refused_on_the_fast_path_too(ts):
    import json
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", _PAST_MAX_TS, str(ts)], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 0, r.stderr[-500:]
    assert json.loads(r.stdout) == [["rejected", "invalid_command"], 0]
