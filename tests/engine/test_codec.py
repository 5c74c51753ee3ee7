"""Bad input becomes `rejected` / `invalid_command` with a sentence, and the stream goes on."""
import msgspec
import pytest

from perpdex.engine import CommandReader, Engine, Malformed, messages as M
from tests.flows import MARKET_FIELDS


def replay_jsonl(text: str) -> list[dict]:
    out = Engine(margin=False).execute_batch(text.encode(), "jsonl")
    return [msgspec.json.decode(line) for line in out.splitlines()]


def test_a_malformed_line_is_rejected_and_the_replay_goes_on():
    events = replay_jsonl('not json\n{"type":"clock","ts":5}\n{"type":"state_hash"}\n')
    assert events[0]["reason"] == "invalid_command" and "malformed" in events[0]["detail"]
    assert events[0]["detail"].startswith("line 1: ")
    assert [e["type"] for e in events] == ["rejected", "state_hash"]
    assert events[1]["ts"] == 5


def test_an_unknown_type_is_named_in_the_detail():
    (ev,) = replay_jsonl('{"type":"teleport","account":"a"}\n')
    assert ev["command"] == "teleport" and ev["account"] == "a"
    assert "unknown command type 'teleport'" in ev["detail"]


def test_a_missing_field_is_named_in_the_detail():
    (ev,) = replay_jsonl('{"type":"cancel","account":"a","market":"X"}\n')
    assert ev["reason"] == "invalid_command" and "`cid`" in ev["detail"]
    assert (ev["command"], ev["account"], ev["market"]) == ("cancel", "a", "X")


def test_a_field_of_the_wrong_type_is_named_by_its_path():
    (ev,) = replay_jsonl('{"type":"deposit","account":"a","amount":"ten"}\n')
    assert "$.amount" in ev["detail"]


def test_an_unknown_field_is_rejected_not_ignored():
    (ev,) = replay_jsonl('{"type":"cancel","account":"a","market":"X","cid":1,"reduceonly":true}\n')
    assert ev["reason"] == "invalid_command" and "reduceonly" in ev["detail"]


def test_a_cid_longer_than_36_characters_is_invalid():
    (ev,) = replay_jsonl('{"type":"cancel","account":"a","market":"X","cid":"%s"}\n' % ("c" * 37))
    assert ev["reason"] == "invalid_command" and "$.cid" in ev["detail"]


def test_a_line_that_is_not_an_object_is_rejected():
    (ev,) = replay_jsonl("[1, 2]\n")
    assert ev["reason"] == "invalid_command" and ev["command"] is None


def test_blank_lines_are_skipped():
    assert replay_jsonl("\n\n   \n") == []


def test_a_last_line_without_newline_is_read():
    assert [e["type"] for e in replay_jsonl('{"type":"state_hash"}')] == ["state_hash"]


@pytest.mark.parametrize("fmt", ["jsonl", "msgpack"])
def test_chunking_does_not_change_what_is_read(fmt):
    cmds = [M.Clock(ts=i) for i in range(50)] + [M.StateHash()]
    enc = msgspec.json.encode if fmt == "jsonl" else msgspec.msgpack.encode
    sep = b"\n" if fmt == "jsonl" else b""
    data = b"".join(enc(c) + sep for c in cmds)
    whole = CommandReader(fmt)
    expected = whole.feed(data) + whole.close()
    bytewise = CommandReader(fmt)
    got = []
    for i in range(len(data)):
        got += bytewise.feed(data[i:i + 1])
    got += bytewise.close()
    assert got == expected == cmds


def test_a_bad_msgpack_object_is_rejected_and_the_stream_goes_on():
    data = (msgspec.msgpack.encode({"type": "nope"}) + msgspec.msgpack.encode(5)
            + msgspec.msgpack.encode(M.StateHash()))
    out = Engine(margin=False).execute_batch(data, "msgpack", "jsonl").splitlines()
    events = [msgspec.json.decode(x) for x in out]
    assert [e["type"] for e in events] == ["rejected", "rejected", "state_hash"]
    assert events[0]["detail"].startswith("object 1 at byte 0: unknown command type")
    assert "object 2" in events[1]["detail"]


def test_a_truncated_msgpack_stream_is_reported_once_at_the_end():
    data = msgspec.msgpack.encode(M.StateHash()) + msgspec.msgpack.encode(M.Clock(ts=1))[:-2]
    r = CommandReader("msgpack")
    items = r.feed(data) + r.close()
    assert isinstance(items[0], M.StateHash)
    assert isinstance(items[1], Malformed) and "ends inside a msgpack object" in items[1].detail


def test_a_byte_that_starts_no_msgpack_object_stops_framing_with_a_clear_error():
    data = msgspec.msgpack.encode(M.StateHash()) + b"\xc1garbage"
    r = CommandReader("msgpack")
    items = r.feed(data) + r.close()
    assert isinstance(items[0], M.StateHash)
    assert "0xc1 starts no msgpack object" in items[1].detail and "skipped" in items[1].detail


def test_a_struct_built_by_hand_with_a_bad_value_is_rejected_not_raised():
    eng = Engine(margin=False)
    eng.execute(M.CreateMarket(market="X", **MARKET_FIELDS))
    (ev,) = eng.execute(M.NewOrder(account="a", market="X", cid=1, side="up", kind="limit", qty=2))
    assert ev.reason == "invalid_command" and "up" in ev.detail


def test_an_unknown_format_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        CommandReader("xml")


@pytest.mark.parametrize("cmd", [M.Deposit(account="a" * 65, amount=5),
                                 M.Deposit(account="a", amount=5, ts=-7),
                                 M.QueryAccount(account=""),
                                 M.Cancel(account="a", market="M" * 33, cid=1),
                                 M.Cancel(account="a", market="BTC-PERP", cid="c" * 37)],
                         ids=["account-65-chars", "negative-ts", "empty-account",
                              "market-33-chars", "cid-37-chars"])
def test_a_hand_built_command_out_of_bounds_is_rejected_as_its_bytes_are(cmd):
    eng = Engine()
    (ev,) = eng.execute(cmd)
    encoded = Engine().execute_batch(msgspec.msgpack.encode(cmd))
    (want,) = msgspec.msgpack.decode(b"\x91" + encoded)
    assert ev.reason == want["reason"] == "invalid_command"
    assert ev.command == want["command"] and want["detail"].endswith(ev.detail)
    assert eng.seq == 1 and eng.deposits == 0
