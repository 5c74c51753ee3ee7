"""A snapshot that cannot be written (a full disk, any OSError) does not stop a healthy venue
(issue 20, finding 6): it is logged, counted (`Journal.snapshot_failures`), its temporary file
removed, and it is tried again after a pause; a `.tmp` left by a process that died while writing
one is removed at boot. A server in this process for the count and the pause, a real server
process for the rest."""
from __future__ import annotations

import errno
import os
import re
import signal
import time

import pytest

from perpdex.gateway import journal as J
from perpdex.gateway import snapshots as S
from perpdex.gateway.config import default_config
from perpdex.gateway.server import Server
from tests.harness import HANG_S, Venue, trade


@pytest.fixture
def server(tmp_path):
    cfg = default_config(tmp_path / "data")
    cfg.router, cfg.pub = f"ipc://{tmp_path}/req", f"ipc://{tmp_path}/pub"
    cfg.journal.snapshot_every = 1
    srv = Server(cfg)
    srv.role.snapshot_at = -1                       # a snapshot is due
    yield srv
    srv.close()


def full_disk_once(monkeypatch):
    """The next fsync of a file (the snapshot's temporary file) fails with ENOSPC."""
    real = os.fsync
    calls = []

    def fsync(fd):
        if not calls:
            calls.append(fd)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(J.os, "fsync", fsync)


def test_a_failed_snapshot_is_counted_and_returns_none_instead_of_raising(server, monkeypatch):
    full_disk_once(monkeypatch)
    assert server.role.take_snapshot() is None
    jr = server.seq.durability
    assert jr.snapshot_failures == 1 and "No space left" in jr.snapshot_error
    assert jr.health()["snapshot_failures"] == 1


def test_a_failed_snapshot_leaves_no_temporary_file(server, monkeypatch):
    full_disk_once(monkeypatch)
    server.role.take_snapshot()
    sdir = server.cfg.data_dir / "snapshots"
    assert list(sdir.iterdir()) == []


def test_a_failed_snapshot_is_tried_again_after_a_pause(server, monkeypatch):
    full_disk_once(monkeypatch)
    now = [1000.0]
    monkeypatch.setattr(S, "monotonic", lambda: now[0])
    server.role.take_snapshot()
    assert not server.role.snapshot_due()          # not at every turn of a full disk
    now[0] += S.SNAPSHOT_RETRY_S[1]
    assert server.role.snapshot_due()
    assert server.role.take_snapshot() is not None
    assert server.seq.durability.snapshot_failures == 1
    assert J.snapshots(server.cfg.data_dir / "snapshots")


def test_a_venue_whose_snapshot_fails_logs_it_and_serves_on(tmp_path):
    v = Venue(tmp_path)
    try:
        v.start()
        trade(v)
        (v.data / "snapshots").write_bytes(b"")    # a file where the folder should be
        v.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + HANG_S
        while "snapshot at seq" not in v.stderr():
            assert v.client("admin").request("heartbeat")["ok"]
            assert time.monotonic() < deadline, v.stderr()
            time.sleep(0.02)
        assert re.search(r"snapshot at seq \d+ failed .*; the venue serves on", v.stderr())
        assert v.proc.poll() is None
        placed = v.client("mm-2").request("new_order", market="BTC-PERP", cid="on",
                                          side="buy", kind="limit", qty=1, price=640_000)
        assert placed["ok"]
        (v.data / "snapshots").unlink()
        assert J.read_snapshot(v.snapshot()).seq > 0
    finally:
        v.stop()


def test_a_temporary_snapshot_file_left_by_a_dead_process_is_removed_at_boot(tmp_path):
    v = Venue(tmp_path)
    try:
        v.start()
        v.kill()
        stale = v.data / "snapshots" / f".{5:020d}{S.SNAPSHOT}.tmp"
        stale.parent.mkdir(exist_ok=True)
        stale.write_bytes(b"half a snapshot")
        v.start()
        assert not stale.exists()
        assert f"removed {stale}" in v.stderr()
    finally:
        v.stop()
