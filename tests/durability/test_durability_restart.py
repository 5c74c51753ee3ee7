"""`perpdex serve` killed and started again on its data folder: what was acknowledged is there,
nothing is credited twice, retries, streams and the dead-man's switch carry over; a torn tail is
cut, a corrupt record in the middle stops the start, a corrupt snapshot falls back. Real server
processes, real CURVE sockets on random loopback ports, SIGKILL."""
from __future__ import annotations

import re
import time
from pathlib import Path

import msgspec
import pytest

from perpdex.gateway import journal as J
from perpdex.gateway import logfile as L
from tests.conftest import open_orders
from tests.harness import HANG_S, Venue, state, trade

enc = msgspec.msgpack.encode


@pytest.fixture
def venue(tmp_path):
    v = Venue(tmp_path)
    yield v
    v.stop()


def replayed(v: Venue) -> tuple[str, str]:
    """(the state hash the venue reports now, that of a from-scratch replay of its journal once
    the server is killed right after): equal when the journal holds exactly what ran."""
    said = v.client("admin").request("state_hash")["events"][0]["hash"]
    v.kill()
    from perpdex.engine import Engine
    eng = Engine()
    recs, _ = J.read_all(v.data / "journal")
    for _, kind, payload in recs:
        if kind == J.COMMAND:
            eng.execute(J.decode(kind, payload))
    return said, J.state_hash(eng)


def test_a_killed_server_restarts_with_every_acknowledged_order_fill_and_balance(venue):
    assert venue.start().startswith("perpdex: a new data folder")
    trade(venue)
    before = state(venue)
    assert before["mm-1"]["open_orders"] and before["taker-1"]["positions"]
    venue.kill()
    line = venue.start()
    assert line.startswith("perpdex: recovered") and "commands" in line
    assert state(venue) == before
    said, replay = replayed(venue)
    assert said == replay


def test_configured_deposits_are_credited_once_when_the_data_folder_is_new(venue):
    venue.start()
    deposits = state(venue)["audit"]["deposits"]
    for _ in range(2):
        venue.kill()
        venue.start()
        assert state(venue)["audit"]["deposits"] == deposits


def test_a_req_id_repeated_after_a_restart_returns_the_original_reply(venue):
    venue.start()
    venue.client("oracle").request("oracle", market="BTC-PERP", price=650_000)
    msg = enc({"req_id": "once", "type": "new_order", "market": "BTC-PERP", "cid": "r1",
               "side": "buy", "kind": "limit", "qty": 1, "price": 640_000})
    first = venue.client("mm-2").send_raw(msg)
    assert first["ok"] and first["events"][0]["type"] == "order_accepted"
    venue.kill()
    venue.start()
    again = venue.client("mm-2").send_raw(msg)
    assert again == first
    orders = venue.client("mm-2").request("query_account")["events"][0]["open_orders"]
    assert [o["cid"] for o in orders] == ["r1"]


def test_a_private_stream_resumes_from_its_last_pseq_across_a_restart(venue):
    venue.start()
    venue.client("oracle").request("oracle", market="BTC-PERP", price=650_000)
    c = venue.client("mm-1")
    start = c.subscribe()["pseq"]
    for k in range(4):
        c.request("new_order", market="BTC-PERP", cid=f"s{k}", side="buy", kind="limit", qty=1,
                  price=640_000)
    items = c.stream(4)
    assert [i["pseq"] for i in items] == list(range(start + 1, start + 5))
    venue.kill()
    venue.start()
    c = venue.client("mm-1")
    reply = c.subscribe(resume_from=start + 1)
    assert reply["ok"] and reply["pseq"] == start + 4
    assert reply["missed"] == items[1:]
    c.request("cancel", market="BTC-PERP", cid="s0")
    assert c.stream(1)[0]["pseq"] == start + 5


def test_a_dead_mans_switch_keeps_its_deadline_across_a_restart(venue):
    """The switch runs after the restart, and not before its deadline: the cancel's own `ts`
    (the server's clock, which stamped `at` too) says so, however long the restart took (no
    claim about how fast a restart is; HANG_S only catches a hang)."""
    venue.start()
    venue.client("oracle").request("oracle", market="BTC-PERP", price=650_000)
    c = venue.client("mm-2")
    c.request("new_order", market="BTC-PERP", cid="dms", side="buy", kind="limit", qty=1,
              price=640_000)
    at = c.request("schedule_cancel", after_ms=2500)["at"]
    start = c.subscribe()["pseq"]
    venue.kill()
    venue.start()
    c = venue.client("mm-2")
    deadline = time.monotonic() + HANG_S
    while open_orders(c.request("query_account")):
        assert time.monotonic() < deadline, "the switch did not run after the restart"
        time.sleep(0.1)
    missed = [i["event"] for i in c.subscribe(resume_from=start + 1)["missed"]]
    (cancel,) = [e for e in missed if e["type"] == "order_cancelled"]
    assert (cancel["cid"], cancel["reason"]) == ("dms", "user")
    assert cancel["ts"] >= at, (cancel, at)


def newest_segment(v: Venue) -> Path:
    return J.segments(v.data / "journal")[-1]


def test_a_torn_tail_is_cut_with_a_log_line_saying_how_much(venue):
    venue.start()
    trade(venue)
    before = state(venue)
    venue.kill()
    with open(newest_segment(venue), "ab") as f:    # half a record: a write the kill tore
        f.write(L.record(10**6, J.COMMAND, b"\x81\xa4type\xa5clock" * 4)[:-7])
    venue.start()
    assert re.search(r"cut \d+ bytes at offset \d+", venue.stderr())
    assert state(venue) == before


def test_a_corrupt_record_in_the_middle_stops_the_start_naming_the_file_and_offset(venue):
    venue.start()
    trade(venue)
    venue.kill()
    seg = newest_segment(venue)
    data = bytearray(seg.read_bytes())
    data[J.HEADER.size + 2] ^= 0xFF                 # inside the first record's payload
    seg.write_bytes(bytes(data))
    rc, err = venue.start(ok=False)
    assert rc == 2
    assert f"{seg}: offset 0: a record whose CRC32 does not match" in err


def test_a_corrupt_snapshot_falls_back_to_the_one_before(venue):
    venue.start()
    trade(venue)
    older = venue.snapshot()
    venue.client("mm-2").request("new_order", market="BTC-PERP", cid="late", side="buy",
                                 kind="limit", qty=1, price=640_000)
    newer = venue.snapshot()
    before = state(venue)
    venue.kill()
    data = bytearray(newer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newer.write_bytes(bytes(data))
    line = venue.start()
    assert f"snapshot {older.name}" in line
    assert f"{newer.name} cannot be used" in venue.stderr()
    assert state(venue) == before


def test_a_restart_from_a_snapshot_gives_the_state_hash_of_the_full_replay(venue):
    venue.start()
    trade(venue)
    venue.snapshot()
    venue.client("taker-2").request("new_order", market="BTC-PERP", cid="after", side="sell",
                                    kind="limit", qty=1, price=660_000)
    before = state(venue)
    venue.kill()
    assert "snapshot" in venue.start()
    assert state(venue) == before


def test_a_second_server_on_a_data_folder_in_use_is_refused(venue):
    venue.start()
    first = venue.proc
    (venue.tmp / "other").mkdir()
    other = Venue(venue.tmp / "other")
    other.data, other.conf = venue.data, venue.conf
    rc, err = other.start(ok=False)
    assert rc == 2 and "in use by another perpdex serve" in err
    assert first.poll() is None
    venue.proc = first
    assert venue.client("mm-1").request("heartbeat")["ok"]
