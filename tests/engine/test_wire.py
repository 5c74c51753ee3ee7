"""The core writes events byte for byte as msgspec would encode the same Structs."""
import msgspec

from perpdex.engine import Engine, messages as M
from perpdex.engine.codec import decode_event_json
from tests.flows import create_markets, random_flow


def test_json_events_are_what_msgspec_encodes():
    out = Engine(margin=False).execute_many(random_flow(21, 3000), "jsonl")
    lines = out.splitlines()
    assert len(lines) > 3000
    for line in lines:
        assert msgspec.json.encode(decode_event_json(line)) == line


def test_msgpack_events_are_what_msgspec_encodes():
    cmds = random_flow(22, 3000)
    js = Engine(margin=False).execute_many(cmds, "jsonl").splitlines()
    mp = Engine(margin=False).execute_many(cmds, "msgpack")
    expected = b"".join(msgspec.msgpack.encode(decode_event_json(line)) for line in js)
    assert mp == expected


def test_strings_that_need_escaping_survive_both_formats():
    cid = 'q"\\\n\t\x01é€'
    cmds = create_markets(["BTC-PERP"]) + [
        M.Oracle(market="BTC-PERP", price=10_000),
        M.NewOrder(account='acct "x"', market="BTC-PERP", cid=cid, side="buy", kind="limit",
                   qty=5, price=9_999),
    ]
    line = Engine(margin=False).execute_many(cmds, "jsonl").splitlines()[-1]
    assert msgspec.json.decode(line)["cid"] == cid
    assert msgspec.json.decode(line)["account"] == 'acct "x"'
    eng = Engine(margin=False)
    for c in cmds:
        evs = eng.execute(c)
    assert evs[0].cid == cid


def test_the_largest_integers_round_trip_and_nothing_wraps():
    """Account keys and cids at the ends of int64, price and qty at the market's limits: the
    fill's fees and the position's cost are exact (they used to wrap past 2^63)."""
    eng = Engine(margin=False)
    for c in create_markets(["BTC-PERP"], maker_fee_ppm=-150):
        eng.execute(c)
    spec = eng.specs[0]
    price, qty = spec.max_price, spec.max_qty
    eng.execute(M.Oracle(market="BTC-PERP", price=price))
    eng.execute(M.NewOrder(account=-(2**63), market="BTC-PERP", cid=2**63 - 1, side="sell",
                           kind="limit", qty=qty, price=price))
    evs = eng.execute(M.NewOrder(account=2**62, market="BTC-PERP", cid=-(2**63), side="buy",
                                 kind="limit", qty=qty, price=price))
    fill = evs[1]
    assert fill.maker_account == -(2**63) and fill.maker_cid == 2**63 - 1
    assert fill.taker_cid == -(2**63) and fill.maker_fee < 0
    assert fill.taker_fee == -(-(price * qty * 100 * 450) // 10**6)
    assert eng.position(2**62, "BTC-PERP") == (qty, price * qty * 100)
