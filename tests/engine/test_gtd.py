"""Good-till-date orders (docs/contract.md, "Good-till-date orders", an extension): `tif: gtd`
with `expire_ts` rests like gtc until the clock reaches `expire_ts`, then is cancelled with
reason `expired` by that command, oldest expiry first."""
import msgspec

from perpdex.engine import Engine, messages as M

PLAIN = dict(tick_size="0.01", lot_size="0.001", min_qty=1, imf_ppm=100_000, mmf_ppm=50_000,
             maker_fee_ppm=0, taker_fee_ppm=0, liquidation_fee_ppm=10_000,
             price_band_ppm=100_000, funding_interval_s=3600, funding_cap_ppm=7500,
             interest_ppm=0, max_orders_per_account=10_000)
S = 10**9


def venue():
    eng = Engine()
    eng.execute(M.CreateMarket(market="X", **PLAIN))
    eng.execute(M.Oracle(market="X", price=100_000))
    for acct in ("a", "b"):
        eng.execute(M.Deposit(account=acct, amount=10**12))
    return eng


def gtd(eng, account, cid, side, qty, price, expire_ts, ts=0):
    return eng.execute(M.NewOrder(account=account, market="X", cid=cid, side=side, kind="limit",
                                  qty=qty, price=price, tif="gtd", expire_ts=expire_ts, ts=ts))


def test_a_gtd_order_rests_until_the_clock_reaches_its_time_then_is_cancelled_expired():
    eng = venue()
    [acc] = gtd(eng, "a", 1, "buy", 5, 99_000, 10 * S)
    assert (acc.tif, acc.qty) == ("gtd", 5)
    assert eng.execute(M.Clock(ts=10 * S - 1)) == []
    [ev] = eng.execute(M.Clock(ts=10 * S))
    assert (type(ev), ev.cid, ev.remaining, ev.reason) == (M.OrderCancelled, 1, 5, "expired")
    assert eng.book("X")["bids"] == []


def test_any_command_that_moves_the_clock_expires_them_first():
    eng = venue()
    gtd(eng, "a", 1, "buy", 5, 99_000, 10 * S)
    events = eng.execute(M.NewOrder(account="b", market="X", cid=1, side="sell",
                                    kind="limit", qty=5, price=99_000, ts=11 * S))
    assert [type(e) for e in events] == [M.OrderCancelled, M.OrderAccepted]   # no fill


def test_an_expiry_must_be_given_with_gtd_only_and_after_the_clock():
    eng = venue()
    eng.execute(M.Clock(ts=5 * S))
    cases = [dict(tif="gtd"), dict(tif="gtd", expire_ts=5 * S), dict(tif="gtc", expire_ts=9 * S),
             dict(tif="ioc", expire_ts=9 * S)]
    for kw in cases:
        [ev] = eng.execute(M.NewOrder(account="a", market="X", cid=1, side="buy", kind="limit",
                                      qty=1, price=99_000, **kw))
        assert ev.reason == "invalid_expiry", kw


def test_a_clock_jump_over_thousands_of_expiries_cancels_them_oldest_first_then_by_oid():
    eng = venue()
    n = 3_000
    expiries = [(k * 7919) % n + 1 for k in range(n)]          # every time once, shuffled
    cmds = [M.NewOrder(account="a", market="X", cid=k, side="buy", kind="limit", qty=1,
                       price=90_000 + k % 500, tif="gtd", expire_ts=e * S)
            for k, e in enumerate(expiries)]
    eng.execute_batch(b"".join(msgspec.msgpack.encode(c) for c in cmds))
    events = eng.execute(M.Clock(ts=n * S))
    assert len(events) == n and {e.reason for e in events} == {"expired"}
    assert [e.cid for e in events] == sorted(range(n), key=lambda k: expiries[k])
    assert eng.execute(M.QueryAccount(account="a"))[0].open_orders == []


def test_an_order_filled_or_cancelled_before_its_time_never_expires():
    eng = venue()
    gtd(eng, "a", 1, "buy", 5, 99_000, 10 * S)
    gtd(eng, "a", 2, "buy", 5, 98_000, 10 * S)
    eng.execute(M.NewOrder(account="b", market="X", cid=1, side="sell", kind="limit", qty=5,
                           price=99_000))
    eng.execute(M.Cancel(account="a", market="X", cid=2))
    assert eng.execute(M.Clock(ts=20 * S)) == []


def test_a_gtd_order_keeps_its_expiry_through_an_amend_and_a_snapshot():
    eng = venue()
    gtd(eng, "a", 1, "buy", 5, 99_000, 10 * S)
    eng.execute(M.Amend(account="a", market="X", cid=1, price=98_000, qty=7))
    copy = Engine.from_snapshot(eng.snapshot())
    assert copy.state() == eng.state()
    assert copy.execute(M.Clock(ts=10 * S)) == eng.execute(M.Clock(ts=10 * S))
    assert eng.book("X")["bids"] == copy.book("X")["bids"] == []


def test_the_per_command_api_and_the_msgpack_path_take_gtd_too():
    api, batch, struct = venue(), venue(), venue()
    cmd = M.NewOrder(account="a", market="X", cid=1, side="buy", kind="limit", qty=5,
                     price=99_000, tif="gtd", expire_ts=10 * S)
    want = struct.execute(cmd)
    api.new_order("a", "X", 1, "buy", 5, 99_000, "limit", "gtd", 0, False, "cancel_maker",
                  None, 10 * S)
    out = batch.execute_batch(msgspec.msgpack.encode(cmd), "msgpack", "jsonl")
    assert [msgspec.json.decode(x) for x in out.splitlines()] == [msgspec.to_builtins(e)
                                                                 for e in want]
    assert api.state() == batch.state() == struct.state()
