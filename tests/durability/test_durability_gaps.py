"""Restart is always possible, and never over a hole (issue 20, findings 4 and 5): a snapshot is
written only once the journal is on disk up to its seq, under every fsync policy; a journal that
ends behind a snapshot, or behind the newest seq the durable marker (`DATA/durable-seq`) says
was on disk, stops the start and `perpdex verify` with a sentence naming the missing range, and
nothing is appended behind the hole. Real server processes and files; SIGKILL."""
from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from perpdex.gateway import journal as J
from perpdex.gateway import snapshots as S
from perpdex.gateway.config import default_config
from perpdex.gateway.server import Server
from tests.harness import PERPDEX, Venue, orders, state, trade


def turn_ends(seg: Path) -> list[tuple[int, int]]:
    """(seq, the byte offset just after it) of every turn marker in a segment."""
    data = seg.read_bytes()
    off, out = 0, []
    while off + J.HEADER.size <= len(data):
        length, seq, kind, _ = J.HEADER.unpack_from(data, off)
        off += J.HEADER.size + length
        if kind == J.TURN:
            out.append((seq, off))
    return out


def missing(end: int, durable: int) -> str:
    return (f"journal ends at seq {end} but seq {durable} was durable: segments missing for "
            f"{end + 1}..{durable}")


@pytest.mark.parametrize("policy", ["off", "interval", "batch"])
def test_a_snapshot_is_written_only_once_every_journal_byte_before_it_is_fsynced(
        tmp_path, monkeypatch, policy):
    cfg = default_config(tmp_path / "data")
    cfg.router, cfg.pub = f"ipc://{tmp_path}/req", f"ipc://{tmp_path}/pub"
    cfg.journal.fsync = policy
    cfg.journal.fsync_interval_ms = 60_000          # its thread never gets there by itself
    synced: dict = {}                               # inode: bytes of it an fdatasync covered
    lock = threading.Lock()
    real = os.fdatasync

    def fdatasync(fd):
        st = os.fstat(fd)
        real(fd)
        with lock:
            synced[st.st_ino] = max(synced.get(st.st_ino, 0), st.st_size)

    monkeypatch.setattr(J.os, "fdatasync", fdatasync)
    srv = Server(cfg)
    try:
        jr = srv.seq.durability
        seen = []
        write = S.write_snapshot

        def checked(folder, snap):
            st = os.fstat(jr.fd)
            seen.append((snap.seq, jr.seq, synced.get(st.st_ino, 0), st.st_size))
            return write(folder, snap)

        monkeypatch.setattr(S, "write_snapshot", checked)
        assert srv.role.take_snapshot() is not None
        [(snap_seq, written, on_disk, size)] = seen
        assert snap_seq == written and on_disk == size > 0
    finally:
        srv.close()


@pytest.fixture
def ahead(tmp_path):
    """A venue (fsync off) whose journal was cut, as a power cut can leave it, to the turn before
    its snapshot's seq; killed. (The venue, the seq the journal ends at, the snapshot, the
    segment, its size, the state before the kill.)"""
    v = Venue(tmp_path, fsync="off")
    try:
        v.start()
        trade(v)
        snap = J.read_snapshot(v.snapshot())
        before = state(v)
        orders(v, "mm-2", 3, "late")
        v.kill()
        seg = J.segments(v.data / "journal")[-1]
        end, at = [(s, o) for s, o in turn_ends(seg) if s < snap.seq][-1]
        with open(seg, "r+b") as f:
            f.truncate(at)
        (v.data / J.MARK).unlink()          # as in a folder from before the marker
        yield v, end, snap, seg, at, before
    finally:
        v.stop()


def test_a_snapshot_ahead_of_the_journal_stops_the_start_naming_the_missing_records(ahead):
    v, end, snap, seg, at, _ = ahead
    rc, err = v.start(ok=False)
    assert rc == 2 and missing(end, snap.seq) in err, err
    assert f"snapshot {J.snapshots(v.data / 'snapshots')[-1]} covers it" in err
    assert seg.stat().st_size == at                 # nothing appended behind the hole


def test_with_the_segments_moved_aside_the_venue_starts_from_the_snapshot_and_verifies(ahead):
    v, end, snap, seg, at, before = ahead
    aside = v.data / "journal-before-gap"
    aside.mkdir()
    for s in J.segments(v.data / "journal"):
        s.rename(aside / s.name)
    assert f"snapshot {J.snapshots(v.data / 'snapshots')[-1].name}" in v.start()
    assert state(v) == before
    v.kill()
    assert verify(v).returncode == 0


def test_with_the_loss_accepted_the_venue_starts_from_what_the_journal_holds(ahead):
    v, end, snap, seg, at, _ = ahead
    for s in J.snapshots(v.data / "snapshots"):
        s.unlink()
    assert f"up to seq {end:,}" in v.start()
    v.kill()
    assert verify(v).returncode == 0


@pytest.fixture
def killed(tmp_path):
    """A venue whose journal spans several segments, killed: (the venue, its segments, the seq
    the marker holds)."""
    v = Venue(tmp_path, segment_bytes=4096)
    try:
        v.start()
        orders(v, "mm-2", 40, "m")
        v.kill()
        segs = J.segments(v.data / "journal")
        assert len(segs) >= 3
        yield v, segs, J.read_mark(v.data / J.MARK)
    finally:
        v.stop()


def lose_newest(segs: list[Path], durable: int) -> int:
    """Remove the newest segment that holds a durable record, and every one after it; returns
    the seq the journal ends at then."""
    lost = [s for s in segs if int(s.name.split(".")[0]) <= durable][-1]
    for s in segs[segs.index(lost):]:
        s.unlink()
    return int(lost.name.split(".")[0]) - 1


def verify(v: Venue) -> subprocess.CompletedProcess:
    return subprocess.run([PERPDEX, "verify", str(v.data)], capture_output=True, text=True,
                          timeout=120)


def test_a_journal_with_segments_missing_after_the_snapshot_stops_the_start(killed):
    v, segs, durable = killed
    segs[1].unlink()
    rc, err = v.start(ok=False)
    assert rc == 2 and f"{segs[2]}: offset 0: record seq" in err


def test_the_marker_holds_the_last_acknowledged_turn_after_a_kill(killed):
    v, segs, durable = killed
    _, scan = J.read_all(v.data / "journal")
    assert durable == scan.last


def test_a_restart_with_the_newest_segments_lost_is_refused_naming_the_missing_range(killed):
    v, segs, durable = killed
    end = lose_newest(segs, durable)
    rc, err = v.start(ok=False)
    assert rc == 2 and missing(end, durable) in err, err
    assert str(v.data / J.MARK) in err


def test_verify_refuses_a_journal_whose_newest_segments_are_lost(killed):
    v, segs, durable = killed
    end = lose_newest(segs, durable)
    r = verify(v)
    assert r.returncode == 1 and missing(end, durable) in r.stderr, r.stderr
    assert "FAILED" in r.stderr.splitlines()[-1]


def test_verify_says_the_marker_is_covered_when_nothing_is_lost(killed):
    v, segs, durable = killed
    r = verify(v)
    assert r.returncode == 0, r.stdout
    assert f"durable seq {durable:,} (DATA/{J.MARK}): ok" in r.stdout


def test_a_data_folder_with_its_whole_journal_lost_is_refused(killed):
    v, segs, durable = killed
    for s in segs:
        s.unlink()
    rc, err = v.start(ok=False)
    assert rc == 2 and missing(0, durable) in err, err


def test_a_new_data_folder_starts_and_restarts_with_its_marker(tmp_path):
    v = Venue(tmp_path)
    try:
        assert v.start().startswith("perpdex: a new data folder")
        assert J.read_mark(v.data / J.MARK) > 0
        v.kill()
        assert v.start().startswith("perpdex: recovered")
    finally:
        v.stop()


def test_the_marker_names_only_what_an_fdatasync_covered(tmp_path):
    mark = tmp_path / J.MARK
    jr = J.Journal(tmp_path / "journal", fsync="off", mark=mark)
    jr.append([])
    jr.append([])
    assert J.read_mark(mark) == 0                   # written, never fsynced
    jr.make_durable()
    assert J.read_mark(mark) == jr.seq == 2
    jr.close()


def test_a_marker_with_one_copy_torn_reads_the_other(tmp_path):
    mark = tmp_path / J.MARK
    jr = J.Journal(tmp_path / "journal", fsync="batch", mark=mark)
    for _ in range(3):
        jr.append([])
        jr.sync()
    jr.close()
    data = bytearray(mark.read_bytes())
    newest = J.read_mark(mark)
    for slot in range(2):                           # damage each copy in turn
        bad = bytearray(data)
        bad[slot * J.MARK_SLOT.size + 10] ^= 0x40
        mark.write_bytes(bytes(bad))
        assert J.read_mark(mark) in (newest, newest - 1)
