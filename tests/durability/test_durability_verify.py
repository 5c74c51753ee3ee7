"""`perpdex verify DATA_DIR` and `perpdex replay JOURNAL`: a data folder checked from scratch,
against its snapshots and what recovery gives, by the command a person runs."""
import json
import subprocess

import msgspec
import pytest

from perpdex.gateway import journal as J
from tests.harness import PERPDEX, ROOT as ROOT_DIR, Venue, trade
from tests.pages import anchors


def perpdex(*args):
    return subprocess.run([PERPDEX, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def used(tmp_path):
    """A data folder with history: trades, two snapshots, more after them; the server killed."""
    v = Venue(tmp_path)
    v.start()
    trade(v)
    v.snapshot()
    v.client("mm-2").request("new_order", market="BTC-PERP", cid="x", side="buy",
                             kind="limit", qty=1, price=640_000)
    v.snapshot()
    v.client("taker-2").request("new_order", market="BTC-PERP", cid="y", side="sell",
                                kind="limit", qty=1, price=660_000)
    v.kill()
    yield v
    v.stop()


def test_verify_replays_from_scratch_and_every_snapshot_and_the_recovered_state_match(used):
    r = perpdex("verify", str(used.data))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert sum("snapshot" in ln and ": ok" in ln for ln in lines) >= 2
    assert any(ln.startswith("  recovered state") and ": ok" in ln for ln in lines)
    assert lines[-1].startswith("perpdex verify: ok: state hash ")


def test_verify_exits_non_zero_when_a_snapshot_disagrees_with_the_journal(used):
    path = J.snapshots(used.data / "snapshots")[0]
    snap = J.read_snapshot(path)
    J.write_snapshot(path.parent, msgspec.structs.replace(snap, state_hash="0" * 32))
    r = perpdex("verify", str(used.data))
    assert r.returncode == 1 and "MISMATCH" in r.stderr and "FAILED" in r.stderr
    assert "MISMATCH" not in r.stdout and "FAILED" not in r.stdout     # errors on stderr


def test_verify_exits_non_zero_on_a_corrupt_record_and_names_the_file_and_offset(used):
    seg = J.segments(used.data / "journal")[0]
    data = bytearray(seg.read_bytes())
    data[J.HEADER.size + 1] ^= 0xFF
    seg.write_bytes(bytes(data))
    r = perpdex("verify", str(used.data))
    assert r.returncode == 1 and f"{seg}: offset 0: a record whose CRC32" in r.stderr


def test_verify_reports_a_torn_tail_and_changes_nothing(used):
    seg = J.segments(used.data / "journal")[-1]
    with open(seg, "ab") as f:
        f.write(b"\x07\x00\x00")
    size = seg.stat().st_size
    r = perpdex("verify", str(used.data))
    assert r.returncode == 0 and "a torn tail of 3 bytes" in r.stdout
    assert seg.stat().st_size == size


def test_verify_of_a_folder_with_no_journal_exits_2(tmp_path):
    r = perpdex("verify", str(tmp_path))
    assert r.returncode == 2 and "no journal folder" in r.stderr and r.stdout == ""


def test_replay_takes_a_journal_folder_and_gives_the_events_again(used, tmp_path):
    out = tmp_path / "events.jsonl"
    r = perpdex("replay", str(used.data / "journal"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert any(e["type"] == "fill" for e in events)
    same = tmp_path / "again.jsonl"
    assert perpdex("replay", str(used.data), "-o", str(same)).returncode == 0
    assert same.read_bytes() == out.read_bytes()


def test_verify_help_points_at_the_operations_page():
    r = perpdex("verify", "--help")
    assert r.returncode == 0 and "docs/operations.md#perpdex-verify-data_dir" in r.stdout
    assert "perpdex-verify-data_dir" in anchors(ROOT_DIR / "docs" / "operations.md")


def verify_with_changed_gateway_state(used, key: str, change) -> list[str]:
    """`perpdex verify` once the newest snapshot's gateway state `key` is `change(it)`: its
    exit code must be 1; returns its lines (the report's, then the failures')."""
    path = J.snapshots(used.data / "snapshots")[-1]
    snap = J.read_snapshot(path)
    J.write_snapshot(path.parent, msgspec.structs.replace(
        snap, gateway=dict(snap.gateway, **{key: change(snap.gateway[key])})))
    r = perpdex("verify", str(used.data))
    assert r.returncode == 1
    return r.stdout.splitlines() + r.stderr.splitlines()


def test_verify_holds_each_snapshots_private_streams_to_the_replay(used):
    def change(streams):
        streams = dict(streams)
        account, (pseq, items, head) = next(iter(streams.items()))
        streams[account] = [pseq + 1, items, head]
        return streams

    lines = verify_with_changed_gateway_state(used, "streams", change)
    assert any("private streams' pseq and hash chains: MISMATCH" in ln for ln in lines)


def test_verify_holds_each_snapshots_public_chains_to_the_replay(used):
    r = perpdex("verify", str(used.data))
    assert sum("public topics' seq and hash chains: ok" in ln
               for ln in r.stdout.splitlines()) == 2, r.stdout

    def change(public):
        btc = public["BTC-PERP"]
        return dict(public, **{"BTC-PERP": dict(btc, book=[btc["book"][0], bytes(16)])})

    lines = verify_with_changed_gateway_state(used, "public", change)
    assert any("public topics' seq and hash chains: MISMATCH" in ln for ln in lines)
