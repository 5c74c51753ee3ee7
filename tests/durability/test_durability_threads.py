"""Every failure of the journal's own threads is recorded (issue 20, part of finding 1): the fsync
thread ("batch") and the flush thread ("interval") may fail anywhere, `os.dup` of the segment
included (EMFILE once every descriptor is taken); the failure is kept in `Journal.failure`, and
`append`, `sync` and `durable` raise `JournalError` from then on, so that nothing is ever
acknowledged after it. `Journal.health()` says the policy, the thread's state and the written
and durable seqs. Real files; `os.dup` made to fail once, in the journal's thread only."""
from __future__ import annotations

import errno
import os
import threading

import pytest

from perpdex.engine import messages as M
from perpdex.gateway import journal as J


def deposit(k=1):
    return [M.Deposit(account="a", amount=k, ts=k)]


def dup_fails_once_in_the_journal_thread(monkeypatch):
    real = os.dup
    failed = []

    def dup(fd):
        if not failed and threading.current_thread().name.startswith("journal-"):
            failed.append(fd)
            raise OSError(errno.EMFILE, "Too many open files")
        return real(fd)

    monkeypatch.setattr(J.os, "dup", dup)


def failed(jr: J.Journal) -> J.Journal:
    jr.append(deposit())
    jr.thread.join(timeout=30)
    assert not jr.thread.is_alive()
    return jr


@pytest.mark.parametrize("policy", ["batch", "interval"])
def test_a_dup_failure_in_the_journal_thread_is_recorded_as_its_failure(
        tmp_path, monkeypatch, policy):
    dup_fails_once_in_the_journal_thread(monkeypatch)
    jr = failed(J.Journal(tmp_path, fsync=policy, interval_ms=1))
    assert isinstance(jr.failure, OSError) and jr.failure.errno == errno.EMFILE
    jr.close()


@pytest.mark.parametrize("policy", ["batch", "interval"])
def test_after_a_thread_failure_durable_raises(tmp_path, monkeypatch, policy):
    dup_fails_once_in_the_journal_thread(monkeypatch)
    jr = failed(J.Journal(tmp_path, fsync=policy, interval_ms=1))
    with pytest.raises(J.JournalError, match="Too many open files"):
        jr.durable(1)
    jr.close()


@pytest.mark.parametrize("policy", ["batch", "interval"])
def test_after_a_thread_failure_append_and_sync_raise(tmp_path, monkeypatch, policy):
    dup_fails_once_in_the_journal_thread(monkeypatch)
    jr = failed(J.Journal(tmp_path, fsync=policy, interval_ms=1))
    with pytest.raises(J.JournalError):
        jr.sync()
    with pytest.raises(J.JournalError):
        jr.append(deposit(2))
    assert jr.seq == 2                              # the refused turn was not written
    jr.close()


def test_health_says_the_thread_failed_and_why(tmp_path, monkeypatch):
    dup_fails_once_in_the_journal_thread(monkeypatch)
    jr = failed(J.Journal(tmp_path, fsync="batch"))
    h = jr.health()
    assert h["thread"].startswith("failed: ") and "Too many open files" in h["thread"]
    assert (h["written_seq"], h["durable_seq"]) == (2, 0)
    jr.close()


def test_health_says_the_policy_the_running_thread_and_the_written_and_durable_seqs(tmp_path):
    jr = J.Journal(tmp_path, fsync="batch")
    jr.append(deposit())
    jr.sync()
    h = jr.health()
    assert {k: h[k] for k in ("fsync", "thread", "written_seq", "durable_seq")} == {
        "fsync": "batch", "thread": "running", "written_seq": 2, "durable_seq": 2}
    jr.close()
    assert jr.health()["thread"] == "stopped"


def test_with_fsync_off_health_says_there_is_no_thread_and_nothing_durable(tmp_path):
    jr = J.Journal(tmp_path, fsync="off")
    jr.append(deposit())
    h = jr.health()
    assert (h["fsync"], h["thread"], h["written_seq"], h["durable_seq"]) == ("off", "none", 2, 0)
    jr.close()


def test_a_failed_write_is_recorded_and_nothing_is_appended_after_it(tmp_path, monkeypatch):
    jr = J.Journal(tmp_path, fsync="batch")
    jr.append(deposit())
    jr.sync()
    real = os.write
    monkeypatch.setattr(J.os, "write", lambda fd, b: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(J.JournalError, match="No space left"):
        jr.append(deposit(2))
    monkeypatch.setattr(J.os, "write", real)
    assert isinstance(jr.failure, OSError)
    with pytest.raises(J.JournalError):
        jr.append(deposit(3))
    with pytest.raises(J.JournalError):
        jr.durable(2)
    jr.close()
