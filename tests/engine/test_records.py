"""The binary batch path (docs/engine-api.md): Engine.execute_records takes 64-byte command
records and gives one result a command and a 64-byte record a fill, and leaves the state the
commands would."""
import struct

import pytest

from perpdex.engine import Engine, messages as M
from tests import flows as F

CMD = struct.Struct("<BBBBB3xiiqqqqqq")
FILL = struct.Struct("<qqqqqqqq")
NEW, CANCEL, AMEND = 1, 2, 3


def order(a, m, cid, side, qty, price=0, kind=0, tif=0, ts=0, flags=0, trigger=0, expire=0):
    return CMD.pack(NEW, side, kind, tif, flags, a, m, cid, price, qty, trigger, ts, expire)


def cancel(a, m, cid, ts=0):
    return CMD.pack(CANCEL, 0, 0, 0, 0, a, m, cid, 0, 0, 0, ts, 0)


def amend(a, m, cid, price=0, qty=0, ts=0):
    return CMD.pack(AMEND, 0, 0, 0, 0, a, m, cid, price, qty, 0, ts, 0)


def results_of(buf):
    return list(struct.unpack(f"<{len(buf) // 8}q", buf))


def fills_of(buf):
    return [FILL.unpack_from(buf, i) for i in range(0, len(buf), FILL.size)]


def test_records_give_oids_results_and_fill_records():
    eng, mm, t, btc = F.funded_market()
    data = (order(mm, btc, 1, 1, 5, 10_000) + order(mm, btc, 2, 1, 5, 10_001)
            + order(t, btc, 7, 0, 8, 10_001) + cancel(mm, btc, 2) + cancel(mm, btc, 2))
    results, fills = eng.execute_records(data)
    code = M.REASONS.index("unknown_order")
    assert results_of(results) == [1, 2, 3, 1, -1 - code]
    assert fills_of(fills) == [(2, 10_000, 5, 1, 7, 1, 3, 0), (2, 10_001, 3, 2, 7, 2, 3, 0)]


def test_the_callers_bytearrays_are_reused():
    eng, mm, t, btc = F.funded_market()
    results, fills = bytearray(b"x" * 100), bytearray(b"y" * 100)
    out = eng.execute_records(order(mm, btc, 1, 1, 5, 10_000), results, fills)
    assert out[0] is results and out[1] is fills
    assert results_of(results) == [1] and fills == b""


def test_a_rejection_is_its_reason_code():
    eng, mm, t, btc = F.funded_market(margin=True)
    results, _ = eng.execute_records(order(t, btc, 1, 0, 0, 10_000) + order(99, btc, 1, 0, 5, 1)
                                     + amend(t, btc, 5, 10_000))
    assert [M.REASONS[-1 - r] for r in results_of(results)] == [
        "invalid_qty", "invalid_command", "unknown_order"]


def test_a_buffer_that_is_not_whole_records_is_refused():
    eng, *_ = F.funded_market()
    with pytest.raises(ValueError, match="64-byte records"):
        eng.execute_records(b"\x01" * 65)


def test_an_unknown_record_type_is_invalid_command():
    eng, mm, t, btc = F.funded_market()
    results, _ = eng.execute_records(b"\x09" + bytes(63))
    assert results_of(results) == [-1 - M.REASONS.index("invalid_command")]


def test_a_string_cid_maker_is_flagged_in_the_fill_record():
    eng, mm, t, btc = F.funded_market()
    eng.new_order("m", "BTC-PERP", "ask-1", "sell", 5, 10_000)
    _, fills = eng.execute_records(order(t, btc, 9, 0, 2, 10_000))
    assert fills_of(fills) == [(0, 10_000, 2, 0, 9, 1, 2, 1)]


def test_records_leave_the_state_and_seq_of_the_commands():
    flow = F.random_flow(13, 1500)
    by_records, by_cmd = Engine(), Engine()
    taken = 0
    for cmd in flow:
        by_cmd.execute(cmd)
        rec = _record(by_records, cmd)
        if rec is None:
            by_records.execute(cmd)
        else:
            by_records.execute_records(rec)
            taken += 1
    assert by_records.state() == by_cmd.state() and by_records.seq == by_cmd.seq
    assert taken > 500


def _record(eng, cmd):
    """`cmd` as a record; None where a record cannot say it (flows.as_handles)."""
    call = F.as_handles(eng, cmd)
    if call is None:
        return None
    name, args = call
    if name == "place":
        a, m, cid, side, qty, price, kind, tif, ts, flags, trigger, expire = args
        return order(a, m, cid, side, qty, price, kind, tif, ts, flags, trigger, expire)
    return (cancel if name == "cancel_order" else amend)(*args)
