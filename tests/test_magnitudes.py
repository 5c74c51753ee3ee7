"""Hostile magnitudes (docs/limits.md): flows drawn near every documented limit, and a fuzz of
the codec and the engine. After every command: the audit identity, long == short, nobody with no
position left below zero, fees and positions recomputed from the events with Python integers, and
a rejected command leaves the state exactly as it was (but for the clock, which every command's
`ts` moves: the contract's "Time")."""
import random

import msgspec
from hypothesis import HealthCheck, given, settings, strategies as st

from perpdex.engine import Engine, messages as M
from perpdex.engine.markets import MAX_MONEY, MAX_TS

enc = msgspec.msgpack.encode
ACCOUNTS = ["a", "b", "c"]
# (tick, lot): multipliers 1, 100, 10^6 and 10^12
SIZES = [("0.001", "0.001"), ("0.1", "0.001"), ("1", "1"), ("1000", "1000")]


def market(tick, lot, taker, maker):
    return M.CreateMarket(market="X", tick_size=tick, lot_size=lot, min_qty=1, imf_ppm=100_000,
                          mmf_ppm=50_000, maker_fee_ppm=maker, taker_fee_ppm=taker,
                          liquidation_fee_ppm=10_000, price_band_ppm=1_000_000,
                          funding_interval_s=3600, funding_cap_ppm=7500, interest_ppm=100)


@st.composite
def hostile_flows(draw):
    tick, lot = draw(st.sampled_from(SIZES))
    taker = draw(st.sampled_from([0, 500, 100_000]))
    maker = draw(st.sampled_from([-taker, 0, 200]))
    eng = Engine()
    eng.execute(market(tick, lot, taker, maker))
    spec = eng.specs[0]
    P, Q = spec.max_price, spec.max_qty
    price = st.one_of(st.sampled_from([1, 2, P // 2, P - 1, P, P + 1]), st.integers(1, P))
    qty = st.one_of(st.sampled_from([1, Q // 3, Q - 1, Q, Q + 1]), st.integers(1, Q))
    money = st.one_of(st.sampled_from([1, MAX_MONEY // 8, MAX_MONEY // 2, MAX_MONEY, MAX_MONEY + 1,
                                       2**63 - 1]), st.integers(1, MAX_MONEY))
    acct = st.sampled_from(ACCOUNTS)
    cmds = [M.Oracle(market="X", price=draw(price))]
    for i in range(draw(st.integers(5, 40))):
        k = draw(st.integers(0, 9))
        ts = i + 1
        if k <= 3:
            cmds.append(M.NewOrder(account=draw(acct), market="X", cid=i, ts=ts,
                                   side=draw(st.sampled_from(["buy", "sell"])),
                                   kind=draw(st.sampled_from(["limit", "limit", "market"])),
                                   qty=draw(qty), price=draw(price),
                                   tif=draw(st.sampled_from(["gtc", "ioc"]))))
        elif k == 4:
            cmds.append(M.Deposit(account=draw(acct), amount=draw(money), ts=ts))
        elif k == 5:
            cmds.append(M.Withdraw(account=draw(acct), amount=draw(money), ts=ts))
        elif k == 6:
            cmds.append(M.Oracle(market="X", price=draw(price), ts=ts))
        elif k == 7:
            cmds.append(M.SetLeverage(account=draw(acct), market="X", ts=ts,
                                      leverage=draw(st.sampled_from([1, 10]))))
        elif k == 8:
            cmds.append(M.SetMarginMode(account=draw(acct), market="X", ts=ts,
                                        mode=draw(st.sampled_from(["cross", "isolated"]))))
        else:
            cmds.append(M.TransferMargin(account=draw(acct), market="X", ts=ts,
                                         amount=draw(st.one_of(money, money.map(lambda v: -v)))))
    return eng, spec, cmds


def check(eng, spec, cmd, events, before):
    fills = [e for e in events if type(e) is M.Fill]
    for f in fills:                               # fees recomputed with Python integers
        notional = f.price * f.qty * spec.multiplier
        assert f.taker_fee == (0 if f.liquidation else -(-notional * spec.taker_fee_ppm // 10**6))
        assert f.maker_fee == -(-notional * spec.maker_fee_ppm // 10**6)
    if events and all(type(e) is M.Rejected for e in events):
        assert eng.state() == before, f"a rejected {type(cmd).__name__} changed the state"
    audit = eng.execute(M.Audit())[0]
    assert audit.deposits - audit.withdrawals == (audit.collateral + audit.unrealised_pnl
                                                  + audit.insurance_fund + audit.fees)
    oi = audit.open_interest["X"]
    assert oi.long == oi.short
    assert 0 <= audit.deposits <= MAX_MONEY
    for a in ACCOUNTS:
        rep = eng.execute(M.QueryAccount(account=a))[0]
        if not rep.positions:
            assert rep.equity >= 0, (a, rep)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_flows())
def test_flows_near_every_limit_keep_every_invariant(flow):
    eng, spec, cmds = flow
    sizes = {a: 0 for a in ACCOUNTS}
    for cmd in cmds:
        eng.execute(M.Clock(ts=cmd.ts))           # time moves with any command (the contract)
        before = eng.state()
        events = eng.execute(cmd)
        for e in events:
            if type(e) is M.Fill:
                sign = 1 if e.taker_side == "buy" else -1
                sizes[e.taker_account] = sizes.get(e.taker_account, 0) + sign * e.qty
                sizes[e.maker_account] = sizes.get(e.maker_account, 0) - sign * e.qty
            elif type(e) is M.LiquidationEvent and e.kind != "book":
                sign = 1 if e.side == "buy" else -1
                sizes[e.account] = sizes.get(e.account, 0) + sign * e.qty
        check(eng, spec, cmd, events, before)
        eng.check_integrity()
        for a in ACCOUNTS:                         # positions recomputed from the events
            if sizes.get(a) is not None:
                assert eng.position(a, "X")[0] == sizes[a], a
            assert abs(eng.position(a, "X")[0]) <= spec.max_qty


# ---- the fuzz: random bytes, and valid commands with one field made hostile -----------------

HOSTILE = [None, True, -1, 0, 2**31, 2**53 + 1, 2**62, 2**63 - 1, -(2**63), 2**64, 10**30, 1.5,
           float("inf"), "", "x" * 100, "é" * 40, [1], {"a": 1}, [[[[[]]]]], b"\x00", -0.0]


def valid_commands():
    return [
        M.NewOrder(account="a", market="X", cid=1, side="buy", kind="limit", qty=5, price=100),
        M.NewOrder(account="b", market="X", cid="s", side="sell", kind="stop_limit", qty=3,
                   price=90, trigger_price=95, tif="alo", reduce_only=True, stp="cancel_both"),
        M.Cancel(account="a", market="X", cid=1), M.CancelAll(account="a"),
        M.Amend(account="a", market="X", cid=1, qty=4, price=101),
        M.Deposit(account="a", amount=10**9), M.Withdraw(account="a", amount=10),
        M.Oracle(market="X", price=100), M.Clock(ts=10), M.SetLeverage(account="a", market="X",
                                                                       leverage=3),
        M.SetMarginMode(account="a", market="X", mode="isolated"),
        M.TransferMargin(account="a", market="X", amount=-5), M.QueryAccount(account="a"),
        market("0.1", "0.001", 500, -100),
    ]


def test_mutated_commands_are_answered_and_a_rejection_changes_nothing():
    seed = random.randrange(2**32)
    r = random.Random(seed)
    eng = Engine()
    eng.execute(market("0.1", "0.001", 500, -100))
    eng.execute_batch(b"".join(enc(c) for c in [M.Oracle(market="X", price=100),
                                                 M.Deposit(account="a", amount=10**12)]))
    for _ in range(1500):
        raw = msgspec.to_builtins(r.choice(valid_commands()))
        field = r.choice(sorted(raw))
        raw[field] = r.choice(HOSTILE)
        if r.random() < 0.2:
            raw[r.choice(["zz", "type", "ts"])] = r.choice(HOSTILE)
        fmt = r.choice(["msgpack", "jsonl"])
        try:
            data = enc(raw) if fmt == "msgpack" else msgspec.json.encode(raw) + b"\n"
        except (TypeError, OverflowError, msgspec.EncodeError):
            continue
        if type(raw.get("ts")) is int and 0 <= raw["ts"] <= MAX_TS:
            eng.execute(M.Clock(ts=raw["ts"]))    # time moves with any command (the contract)
        before = eng.state()
        out = eng.execute_batch(data, fmt)
        evs = (list(msgspec.msgpack.Decoder().decode(b"\xdd" + out.count(b"\xa4type").to_bytes(
            4, "big") + out)) if fmt == "msgpack" else
            [msgspec.json.decode(x) for x in out.splitlines()])
        if evs and all(e["type"] == "rejected" for e in evs):
            assert eng.state() == before, f"seed {seed}: a rejected {raw} changed the state"
    eng.check_integrity()


def test_random_bytes_never_raise_and_the_stream_goes_on():
    seed = random.randrange(2**32)
    r = random.Random(seed)
    for _ in range(300):
        eng = Engine()
        junk = bytes(r.randrange(256) for _ in range(r.randrange(1, 400)))
        tail = enc(M.StateHash())
        for fmt, data in (("msgpack", junk + tail), ("jsonl", junk + b"\n" + msgspec.json.encode(
                M.StateHash()) + b"\n")):
            out = eng.execute_batch(data, fmt)
            assert b"state_hash" in out or b"rejected" in out, f"seed {seed}"


def test_a_ts_at_the_largest_time_is_taken_and_one_past_it_refused():
    eng = Engine()
    eng.execute(market("0.1", "0.001", 0, 0))
    assert eng.execute(M.Clock(ts=MAX_TS)) == [] and eng.clock == MAX_TS
    assert eng.execute_batch(enc({"type": "clock", "ts": MAX_TS + 1})).count(b"invalid_command")
