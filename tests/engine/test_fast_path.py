"""The msgpack fast path changes speed, never behaviour: the same events as the msgspec path,
however a client lays out its msgpack (key order, integer widths, string headers)."""
import random
import struct

import msgspec
from hypothesis import given, settings, strategies as st

from perpdex.engine import Engine
from tests.conftest import Reached
from tests.crashes import crash_after
from tests.flows import MARKET_FIELDS, flows, leveraged_flows, random_flow


def per_command_jsonl(cmds) -> bytes:
    eng = Engine(margin=False)
    return b"".join(msgspec.json.encode(e) + b"\n" for c in cmds for e in eng.execute(c))


def _int(v: int, r: random.Random) -> bytes:
    """A valid msgpack integer, not always the smallest encoding."""
    choices = []
    if 0 <= v < 128:
        choices.append(bytes([v]))
    if -32 <= v < 0:
        choices.append(struct.pack("b", v))
    if 0 <= v < 2**8:
        choices.append(b"\xcc" + struct.pack(">B", v))
    if 0 <= v < 2**16:
        choices.append(b"\xcd" + struct.pack(">H", v))
    if 0 <= v < 2**32:
        choices.append(b"\xce" + struct.pack(">I", v))
    if 0 <= v < 2**64:
        choices.append(b"\xcf" + struct.pack(">Q", v))
    if -(2**7) <= v < 2**7:
        choices.append(b"\xd0" + struct.pack(">b", v))
    if -(2**15) <= v < 2**15:
        choices.append(b"\xd1" + struct.pack(">h", v))
    if -(2**31) <= v < 2**31:
        choices.append(b"\xd2" + struct.pack(">i", v))
    choices.append(b"\xd3" + struct.pack(">q", v))
    return r.choice(choices)


def _str(s: str, r: random.Random) -> bytes:
    b = s.encode()
    choices = [b"\xd9" + bytes([len(b)]) + b, b"\xda" + struct.pack(">H", len(b)) + b]
    if len(b) < 32:
        choices.append(bytes([0xa0 | len(b)]) + b)
    return r.choice(choices)


def _value(v, r):
    if v is None:
        return b"\xc0"
    if v is True or v is False:
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        return _int(v, r)
    if isinstance(v, str):
        return _str(v, r)
    return msgspec.msgpack.encode(v)


def scrambled(cmd, r: random.Random) -> bytes:
    d = msgspec.to_builtins(cmd)
    items = list(d.items())
    r.shuffle(items)
    head = bytes([0x80 | len(items)]) if len(items) < 16 else b"\xde" + struct.pack(">H", len(items))
    return head + b"".join(_str(k, r) + _value(v, r) for k, v in items)


def test_the_fast_path_gives_the_events_of_the_msgspec_path():
    cmds = random_flow(31, 6000)
    data = b"".join(msgspec.msgpack.encode(c) for c in cmds)
    assert Engine(margin=False).execute_batch(data, "msgpack", "jsonl") == per_command_jsonl(cmds)


@st.composite
def layout_flows(draw):
    """A hypothesis flow (short, shrinking step by step) in a third of the cases, else a seeded
    one of 100 to 400 commands, which builds books, fills, amends and triggers
    (tests.flows.random_flow)."""
    if draw(st.integers(0, 2)) == 0:
        return draw(flows(max_size=80))
    return random_flow(draw(st.integers(0, 2**32 - 1)), draw(st.integers(100, 400)))


def test_any_msgpack_layout_gives_the_same_events():
    seen = Reached()

    @settings(max_examples=150, deadline=None)
    @given(layout_flows())
    def case(cmds):
        r = random.Random(len(cmds))
        data = b"".join(scrambled(c, r) for c in cmds)
        want = per_command_jsonl(cmds)
        assert Engine(margin=False).execute_batch(data, "msgpack", "jsonl") == want
        seen.case(traded=b'"type":"fill"' in want, amended=b'"type":"order_amended"' in want,
                  triggered=b'"type":"order_triggered"' in want, long=len(cmds) >= 100)

    case()
    assert seen.share("traded") >= 0.3 and seen.share("long") >= 0.35, seen
    assert seen["amended"] and seen["triggered"], seen


def test_repeated_and_unknown_keys_take_the_msgspec_path():
    cmds = random_flow(3, 50)
    eng = Engine(margin=False)
    eng.execute_batch(b"".join(msgspec.msgpack.encode(c) for c in cmds[:4]), "msgpack")
    # a cancel whose map has an unknown key: msgspec refuses it by name
    bad = msgspec.msgpack.encode({"type": "cancel", "account": "a", "market": "BTC-PERP",
                                  "cid": 1, "bogus": 1})
    (ev,) = [msgspec.json.decode(x) for x in eng.execute_batch(bad, "msgpack", "jsonl").splitlines()]
    assert ev["reason"] == "invalid_command" and "bogus" in ev["detail"]
    assert ev["detail"].startswith("object 1 at byte 0: ")


def test_with_margin_on_the_fast_path_gives_the_events_of_the_msgspec_path():
    """Amends, cancels and orders with margin, funding and liquidations (a crash sized to the
    flow's positions, tests.crashes): the same bytes. Every case liquidates, most trade."""
    seen = Reached()

    @settings(max_examples=60, deadline=None)
    @given(leveraged_flows())
    def case(cmds):
        cmds = cmds + crash_after(cmds, len(cmds))
        eng = Engine()
        events = [e for c in cmds for e in eng.execute(c)]
        want = b"".join(msgspec.json.encode(e) + b"\n" for e in events)
        data = b"".join(msgspec.msgpack.encode(c) for c in cmds)
        assert Engine().execute_batch(data, "msgpack", "jsonl") == want
        kinds = {type(e).__name__ for e in events}
        seen.case(liquidated="LiquidationEvent" in kinds, traded="Fill" in kinds,
                  funding="FundingEvent" in kinds, amended="OrderAmended" in kinds)

    case()
    assert seen.share("liquidated") >= 0.9 and seen.share("traded") >= 0.9, seen
    assert seen["funding"] and seen["amended"], seen


def test_a_plain_amend_is_read_from_its_bytes_with_null_price_or_qty(monkeypatch):
    from perpdex.engine import core, messages as M
    head = [M.CreateMarket(market="BTC-PERP", **MARKET_FIELDS),
            M.Oracle(market="BTC-PERP", price=10_000),
            M.NewOrder(account="a", market="BTC-PERP", cid=1, side="buy", kind="limit",
                       qty=10, price=10_000),
            M.NewOrder(account="b", market="BTC-PERP", cid="x", side="sell", kind="limit",
                       qty=10, price=10_150)]
    amends = [M.Amend(account="a", market="BTC-PERP", cid=1, price=10_001, qty=None),
              M.Amend(account="a", market="BTC-PERP", cid=1, price=None, qty=4),
              M.Amend(account="b", market="BTC-PERP", cid="x", price=10_120, qty=12),
              M.Amend(account="a", market="BTC-PERP", cid=1, price=10_150, qty=None)]  # crosses
    ref, eng = Engine(margin=False), Engine(margin=False)
    for c in head:
        ref.execute(c)
    want = b"".join(msgspec.json.encode(e) + b"\n" for c in amends for e in ref.execute(c))
    eng.execute_batch(b"".join(msgspec.msgpack.encode(c) for c in head), "msgpack")
    decoded = []
    real = core.decode_msgpack
    monkeypatch.setattr(core, "decode_msgpack", lambda *a: decoded.append(a) or real(*a))
    got = eng.execute_batch(b"".join(msgspec.msgpack.encode(c) for c in amends), "msgpack",
                            "jsonl")
    assert decoded == []                          # none took the msgspec path
    assert got == want and b'"type":"fill"' in got
