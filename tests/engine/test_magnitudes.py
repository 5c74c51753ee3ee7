"""Hostile magnitudes (docs/limits.md): flows drawn near every documented limit, and a fuzz of
the codec and the engine. After every command: the audit identity, long == short, nobody with no
position left below zero, fees and positions recomputed from the events with Python integers, and
a rejected command leaves the state exactly as it was (but for the clock, which every command's
`ts` moves: the contract's "Time")."""
import random
import re

import msgspec
from hypothesis import HealthCheck, given, settings, strategies as st

from perpdex.engine import Engine, messages as M
from perpdex.engine.markets import MAX_MONEY, MAX_TS
from tests.conftest import Reached

enc = msgspec.msgpack.encode
ACCOUNTS = ["a", "b", "c"]
# (tick, lot): multipliers 1, 100, 10^6 and 10^12
SIZES = [("0.001", "0.001"), ("0.1", "0.001"), ("1", "1"), ("1000", "1000")]


def market(tick, lot, taker, maker):
    return M.CreateMarket(market="X", tick_size=tick, lot_size=lot, min_qty=1, imf_ppm=100_000,
                          mmf_ppm=50_000, maker_fee_ppm=maker, taker_fee_ppm=taker,
                          liquidation_fee_ppm=10_000, price_band_ppm=1_000_000,
                          funding_interval_s=3600, funding_cap_ppm=7500, interest_ppm=100)


# Leverage (tenths) of the orders sized to an account's funds: 10 % initial margin is 10x.
LEVERAGE_TENTHS = [1, 5, 10, 30, 60, 80, 95, 99]


@st.composite
def hostile_flows(draw):
    """Funded accounts trading near the mark, at sizes their deposits carry up to the edge of
    10x, mixed with values drawn at every documented limit (prices, quantities and amounts at
    1, the largest and one past it); the oracle walks and now and then gaps by about what
    takes a 10x position to its maintenance margin. Shaped so that most cases trade (the
    recomputations below run), not filtered into it."""
    tick, lot = draw(st.sampled_from(SIZES))
    taker = draw(st.sampled_from([0, 500, 100_000]))
    maker = draw(st.sampled_from([-taker, 0, 200]))
    eng = Engine()
    eng.execute(market(tick, lot, taker, maker))
    spec = eng.specs[0]
    P, Q, mult = spec.max_price, spec.max_qty, spec.multiplier
    price = st.one_of(st.sampled_from([1, 2, P // 2, P - 1, P, P + 1]), st.integers(1, P))
    qty = st.one_of(st.sampled_from([1, Q // 3, Q - 1, Q, Q + 1]), st.integers(1, Q))
    money = st.one_of(st.sampled_from([1, MAX_MONEY // 8, MAX_MONEY // 2, MAX_MONEY, MAX_MONEY + 1,
                                       2**63 - 1]), st.integers(1, MAX_MONEY))
    acct = st.sampled_from(ACCOUNTS)
    # the index: at a limit (a case in five), or where a lot is worth something
    mark = draw(st.sampled_from([1, P // 2, P]) if draw(st.integers(0, 4)) == 0 else
                st.integers(max(1, P // 1000), P))
    funds = {}
    cmds = [M.Oracle(market="X", price=mark)]
    for a in ACCOUNTS:                            # funded: together at most MAX_MONEY
        # at a limit (a case in four), or between 20 lots at 1x and what leaves room for a
        # position at 4x and more within the largest quantity
        high = min(MAX_MONEY // 3, Q * mark * mult // 4)
        low = min(mult * mark * 20, high)
        funds[a] = draw(st.sampled_from([MAX_MONEY // 3, MAX_MONEY // 8])
                        if draw(st.integers(0, 3)) == 0 else st.integers(low, high))
        cmds.append(M.Deposit(account=a, amount=funds[a], ts=0))

    def near_mark(side):
        """At the mark, or up to 1 % off it on the side's own side of the book."""
        off = draw(st.integers(0, mark // 100))
        return min(P, max(1, mark - off if side == "buy" else mark + off))

    def sized(a, p):
        """What `a`'s deposit carries at `p`, at a leverage from a tenth to just under 10x."""
        lev = draw(st.sampled_from(LEVERAGE_TENTHS))
        return min(Q, max(1, funds[a] * lev // (10 * p * mult)))

    def crash(ts, gap=None):
        """The book emptied and the index gaps 8 % to 30 %: past the maintenance margin of a
        position at 4x and more (10 % initial, 5 % maintenance)."""
        for a in ACCOUNTS:
            cmds.append(M.CancelAll(account=a, ts=ts))
        if gap is None:
            gap = draw(st.sampled_from([-30, -20, -12, -8, 8, 12, 20, 30]))
        to = min(P, max(1, mark + mark * gap // 100))
        cmds.append(M.Oracle(market="X", price=to, ts=ts))
        return to

    turn = 0
    n = draw(st.integers(5, 40))
    for i in range(n):
        k = draw(st.integers(0, 12))
        ts = i + 1
        if k <= 3:                                # a trade near the mark, sized to the funds:
            turn += 1                             # a resting order, another account's across
            maker = ACCOUNTS[(turn + draw(st.integers(0, 2))) % 3]
            taker = ACCOUNTS[(ACCOUNTS.index(maker) + 1 + draw(st.integers(0, 1))) % 3]
            side = ("buy", "sell")[(turn + draw(st.integers(0, 1))) % 2]
            other = "sell" if side == "buy" else "buy"
            p = near_mark(other)                  # the maker's: at or a little off the mark
            cmds.append(M.NewOrder(account=maker, market="X", cid=i, ts=ts, side=other,
                                   kind="limit", qty=sized(maker, p), price=p,
                                   tif=draw(st.sampled_from(["gtc", "gtc", "alo"]))))
            if k <= 2:                            # most often taken at once
                through = min(P, max(1, p + (1 if side == "buy" else -1) * (p // 100)))
                cmds.append(M.NewOrder(account=taker, market="X", cid=f"t{i}", ts=ts, side=side,
                                       kind=draw(st.sampled_from(["limit", "limit", "market"])),
                                       qty=sized(taker, through), price=through,
                                       tif=draw(st.sampled_from(["ioc", "gtc", "fok"]))))
        elif k <= 5:                              # an order at the limits
            cmds.append(M.NewOrder(account=draw(acct), market="X", cid=i, ts=ts,
                                   side=draw(st.sampled_from(["buy", "sell"])),
                                   kind=draw(st.sampled_from(["limit", "limit", "market"])),
                                   qty=draw(qty), price=draw(price),
                                   tif=draw(st.sampled_from(["ioc", "gtc"]))))
        elif k == 6:
            cmds.append(M.Deposit(account=draw(acct), amount=draw(money), ts=ts))
        elif k == 7:
            cmds.append(M.Withdraw(account=draw(acct), amount=draw(money), ts=ts))
        elif k == 8:                              # a step, or to a limit
            move = draw(st.sampled_from([-3, -1, 1, 3, None]))
            to = draw(price) if move is None else min(P, max(1, mark + mark * move // 100))
            mark = to if to <= P else mark        # P + 1 is refused: the mark stays
            cmds.append(M.Oracle(market="X", price=to, ts=ts))
        elif k == 12:
            mark = crash(ts)
        elif k == 9:
            cmds.append(M.SetLeverage(account=draw(acct), market="X", ts=ts,
                                      leverage=draw(st.sampled_from([1, 10]))))
        elif k == 10:
            cmds.append(M.SetMarginMode(account=draw(acct), market="X", ts=ts,
                                        mode=draw(st.sampled_from(["cross", "isolated"]))))
        else:
            cmds.append(M.TransferMargin(account=draw(acct), market="X", ts=ts,
                                         amount=draw(st.one_of(money, money.map(lambda v: -v)))))
    # and last, whatever came before, a crash each way: the longs' and then the shorts' (or
    # the other way round), each sized past the maintenance margin of a position at 4x
    gap = draw(st.sampled_from([-20, -15, 15, 20]))
    before = mark
    crash(n + 1, gap)
    mark = before
    crash(n + 2, -gap)
    return eng, spec, cmds


def check(eng, spec, cmd, events, before):
    fills = [e for e in events if type(e) is M.Fill]
    for f in fills:                               # fees recomputed with Python integers
        notional = f.price * f.qty * spec.multiplier
        maker_fee = -(-notional * spec.maker_fee_ppm // 10**6)
        # a liquidation's fills: no taker fee, and the maker earns no rebate (docs/contract.md)
        assert f.taker_fee == (0 if f.liquidation else -(-notional * spec.taker_fee_ppm // 10**6))
        assert f.maker_fee == (max(maker_fee, 0) if f.liquidation else maker_fee)
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


def run_hostile_flow(eng, spec, cmds) -> dict:
    """Every command, then every check; what the flow reached (its fills, the largest fill's
    notional, liquidations, positions held at the end)."""
    sizes = {a: 0 for a in ACCOUNTS}
    reached = {"fills": 0, "notional": 0, "liquidations": 0, "held": False}
    for cmd in cmds:
        eng.execute(M.Clock(ts=cmd.ts))           # time moves with any command (the contract)
        before = eng.state()
        events = eng.execute(cmd)
        for e in events:
            if type(e) is M.Fill:
                sign = 1 if e.taker_side == "buy" else -1
                sizes[e.taker_account] = sizes.get(e.taker_account, 0) + sign * e.qty
                sizes[e.maker_account] = sizes.get(e.maker_account, 0) - sign * e.qty
                reached["fills"] += 1
                reached["notional"] = max(reached["notional"], e.price * e.qty * spec.multiplier)
            elif type(e) is M.LiquidationEvent:
                reached["liquidations"] += 1
                if e.kind != "book":
                    sign = 1 if e.side == "buy" else -1
                    sizes[e.account] = sizes.get(e.account, 0) + sign * e.qty
        check(eng, spec, cmd, events, before)
        eng.check_integrity()
        for a in ACCOUNTS:                         # positions recomputed from the events
            if sizes.get(a) is not None:
                assert eng.position(a, "X")[0] == sizes[a], a
            assert abs(eng.position(a, "X")[0]) <= spec.max_qty
    reached["held"] = any(sizes.values())
    return reached


def test_flows_near_every_limit_keep_every_invariant():
    """The flows trade (at least half the cases fill, so the fee and position recomputations
    run), some at notionals within a thousandth of the largest amount, many keep positions and
    many liquidate."""
    seen = Reached()

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(hostile_flows())
    def case(flow):
        reached = run_hostile_flow(*flow)
        seen.case(traded=reached["fills"] > 0, held=reached["held"],
                  liquidated=reached["liquidations"] > 0,
                  near_max_money=reached["notional"] >= MAX_MONEY // 1000)

    case()
    assert seen.share("traded") >= 1 / 2, seen
    assert seen.share("held") >= 0.3, seen
    assert seen.share("liquidated") >= 0.15 and seen.share("near_max_money") >= 0.04, seen


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


def answers(out: bytes) -> list[dict]:
    return [msgspec.json.decode(x) for x in out.splitlines()]


# msgpack's framing, from its spec, for the test's own reading of junk: the bytes a header
# byte is followed by ("fixed"), or the width of the length that follows it and how many
# values (None: that many bytes) the length counts, the ext's type byte included.
FIXED = {0xc0: 0, 0xc2: 0, 0xc3: 0, 0xca: 4, 0xcb: 8, 0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8,
         0xd0: 1, 0xd1: 2, 0xd2: 4, 0xd3: 8, 0xd4: 2, 0xd5: 3, 0xd6: 5, 0xd7: 9, 0xd8: 17}
LENGTH = {0xc4: (1, None, 0), 0xc5: (2, None, 0), 0xc6: (4, None, 0), 0xc7: (1, None, 1),
          0xc8: (2, None, 1), 0xc9: (4, None, 1), 0xd9: (1, None, 0), 0xda: (2, None, 0),
          0xdb: (4, None, 0), 0xdc: (2, 1, 0), 0xdd: (4, 1, 0), 0xde: (2, 2, 0), 0xdf: (4, 2, 0)}


def value_end(data: bytes, i: int):
    """Where the msgpack value at `i` ends, or None (it runs past the end, or a byte starts no
    value)."""
    b = data[i]
    i += 1
    if b <= 0x7f or b >= 0xe0:
        return i
    if b <= 0x9f:
        values = (b & 0x0f) * (2 if b <= 0x8f else 1)
    elif b <= 0xbf:
        values, i = 0, i + (b & 0x1f)
    elif b in FIXED:
        values, i = 0, i + FIXED[b]
    elif b in LENGTH:
        width, per, extra = LENGTH[b]
        n = int.from_bytes(data[i:i + width], "big")
        i += width
        values, i = (0, i + n + extra) if per is None else (n * per, i)
    else:
        return None                               # 0xc1
    for _ in range(values):
        if i >= len(data) or (i := value_end(data, i)) is None:
            return None
    return i if i <= len(data) else None


def test_random_bytes_never_raise_and_the_stream_goes_on():
    """JSON Lines: whatever the junk lines, the trailing command is answered. msgpack has no
    framing: the bytes are read value by value, each answered in order, so the answers tile
    the input: each piece is one whole msgpack value (as the test frames it, `value_end`), but
    the last when it claims more bytes than are left, or starts with a byte that starts no
    value: then one rejection says so and counts every byte left. The trailing command is
    answered exactly when a piece begins where it does."""
    seed = random.randrange(2**32)
    r = random.Random(seed)
    tails = 0
    for _ in range(300):
        eng = Engine()
        junk = bytes(r.randrange(256) for _ in range(r.randrange(1, 400)))
        evs = answers(eng.execute_batch(junk + b"\n" + msgspec.json.encode(M.StateHash())
                                        + b"\n", "jsonl", "jsonl"))
        assert evs[-1]["type"] == "state_hash", f"seed {seed}"
        assert all(e["type"] == "rejected" for e in evs[:-1]), f"seed {seed}"
        data = junk + enc(M.StateHash())
        evs = answers(eng.execute_batch(data, "msgpack", "jsonl"))
        answered = evs[-1]["type"] == "state_hash"
        rejected = evs[:-1] if answered else evs
        assert all(e["type"] == "rejected" for e in rejected), f"seed {seed}"
        at = [int(re.match(r"object (\d+) at byte (\d+): ", e["detail"]).group(2))
              for e in rejected] + [len(junk) if answered else len(data)]
        assert at[0] == 0 and at == sorted(set(at)), f"seed {seed}: {evs}"
        last, left = rejected[-1]["detail"], len(data) - at[-2]
        unframed = (f"the stream ends inside a msgpack object ({left} bytes)" in last
                    or f"the rest of the stream ({left} bytes) cannot be framed" in last)
        pieces = list(zip(at, at[1:]))
        for a, b in pieces[:-1] if unframed and not answered else pieces:
            assert value_end(data, a) == b, f"seed {seed}: bytes {a}..{b} {data[a:b]!r}"
        if unframed and not answered:
            assert value_end(data, at[-2]) is None, f"seed {seed}: {last}"
        assert answered == (len(junk) in at), f"seed {seed}: {evs}"
        tails += answered
    assert tails >= 1, f"seed {seed}: no junk ever ended on a whole value"


def test_junk_made_of_whole_msgpack_values_never_swallows_the_next_command():
    """Values of every msgpack type that are not commands: each is refused on its own, and the
    command after them is answered."""
    seed = random.randrange(2**32)
    r = random.Random(seed)
    values = [0, -1, 2**40, -(2**40), 1.5, True, None, "", "x" * 40, "é" * 300, b"\x00" * 70,
              [], [1, [2, [3]]], {}, {"type": "nope"}, {"type": 5}, {"type": "new_order"},
              {1: 2}, list(range(20)), {"k%d" % i: i for i in range(20)}]
    for _ in range(300):
        eng = Engine()
        junk = [r.choice(values) for _ in range(r.randrange(1, 30))]
        evs = answers(eng.execute_batch(b"".join(enc(v) for v in junk) + enc(M.StateHash()),
                                        "msgpack", "jsonl"))
        assert [e["type"] for e in evs] == ["rejected"] * len(junk) + ["state_hash"], \
            f"seed {seed}: {junk}"


def test_a_ts_at_the_largest_time_is_taken_and_one_past_it_refused():
    eng = Engine()
    eng.execute(market("0.1", "0.001", 0, 0))
    assert eng.execute(M.Clock(ts=MAX_TS)) == [] and eng.clock == MAX_TS
    assert eng.execute_batch(enc({"type": "clock", "ts": MAX_TS + 1})).count(b"invalid_command")
