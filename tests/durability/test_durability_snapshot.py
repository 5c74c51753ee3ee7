"""Snapshots: files that round-trip random engine states (compared by state hash, and by what the
engine does next), taken every N commands by a real server, and the retention of the segments
they cover: kept, archived or deleted, the venue recovering and verifying either way."""
import random
import subprocess

import msgspec
import pytest

from perpdex.engine import Engine, messages as M
from perpdex.gateway import journal as J
from tests.flows import random_flow
from tests.harness import PERPDEX, Venue, orders, state, trade


@pytest.mark.parametrize("seed", range(6))
def test_a_snapshot_file_round_trips_a_random_state_by_state_hash_and_by_what_comes_next(
        tmp_path, seed):
    r = random.Random(seed)
    cmds = random_flow(seed, 600)
    cut = r.randrange(50, len(cmds) - 50)
    eng = Engine()
    for cmd in cmds[:cut]:
        eng.execute(cmd)
    snap = J.Snapshot(seq=cut, commands=eng.n_commands, state_hash=J.state_hash(eng),
                      engine=eng.snapshot(), gateway={})
    back = J.read_snapshot(J.write_snapshot(tmp_path, snap))
    twin = J.engine_from_snapshot(back.engine)
    assert J.state_hash(twin) == back.state_hash == J.state_hash(eng), f"seed {seed}"
    assert (twin.seq, twin.clock, twin.next_oid) == (eng.seq, eng.clock, eng.next_oid)
    for cmd in cmds[cut:]:
        assert (msgspec.to_builtins(twin.execute(cmd)) ==
                msgspec.to_builtins(eng.execute(cmd))), f"seed {seed}"
    assert J.state_hash(twin) == J.state_hash(eng)


def test_bytes_that_are_no_snapshot_are_refused_with_value_error():
    with pytest.raises(ValueError):
        J.engine_from_snapshot(b"not a snapshot")


def test_the_server_takes_a_snapshot_every_n_commands_and_keeps_the_newest(tmp_path):
    v = Venue(tmp_path, snapshot_every=20, keep_snapshots=2)
    try:
        v.start()
        v.client("oracle").request("oracle", market="BTC-PERP", price=650_000)
        orders(v, "mm-1", 40, "s")
        snaps = J.snapshots(v.data / "snapshots")
        assert len(snaps) == 2
        last = J.read_snapshot(snaps[-1])
        assert last.commands >= 80 and last.gateway["streams"]["mm-1"][0] > 0
    finally:
        v.stop()


@pytest.mark.parametrize("policy", ["archive", "delete"])
def test_covered_segments_are_archived_or_deleted_and_the_venue_recovers_and_verifies(
        tmp_path, policy):
    v = Venue(tmp_path, segment_bytes=4096, snapshot_every=30, keep_snapshots=1,
              covered_segments=policy)
    try:
        v.start()
        trade(v)
        orders(v, "mm-2", 60, "p")
        before = state(v)
        v.kill()
        jdir = v.data / "journal"
        live = [p for p in J.segments(jdir) if p.parent == jdir]
        archived = sorted((jdir / "archive").glob("*.journal"))
        assert _first(live) > 1
        assert bool(archived) == (policy == "archive")
        v.start()
        assert state(v) == before
        v.kill()
        r = subprocess.run([PERPDEX, "verify", str(v.data)], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert ("were deleted: replaying from snapshot" in r.stdout) == (policy == "delete")
    finally:
        v.stop()


def _first(segs):
    return int(segs[0].name.split(".")[0])


def test_state_hash_is_a_view_that_numbers_no_event():
    eng = Engine()
    eng.execute(M.Deposit(account="a", amount=5))
    seq = eng.seq
    J.state_hash(eng)
    assert eng.seq == seq


def test_the_durability_benchmark_measures_a_small_big_state(tmp_path):
    from bench.durability import big_state
    res = big_state(2000, 200, tmp_path / "data", log=lambda *_: None)
    assert res["snapshot_bytes"] > 0 and res["restart_from_journal_s"] >= 0
    assert res["commands"] == 2000 + 200 + 3
