"""The command journal: what makes an acknowledged order outlive the process
(docs/operations.md). Its file format and reading are gateway/logfile.py, snapshots
gateway/snapshots.py, recovery gateway/recovery.py; this module writes it and is the face the
tools read a data folder through (`perpdex verify`, `perpdex stress`, the benchmarks).

The data folder:

    journal/                                the segments (gateway/logfile.py)
    snapshots/                              the snapshots (gateway/snapshots.py)
    durable-seq                             the newest seq an fsync of the journal covered
                                            (`DurableMark`): what tells lost segments apart

Group commit: one loop turn is one `os.write` of all its records; with `fsync = "batch"` a
thread fdatasyncs what was written (one fsync for every turn written while the previous one
ran), and no reply or event of a turn leaves the process before its records are on disk; the
loop takes the next turn meanwhile. A turn never spans two segments: a segment rolls over
between turns, once it is `segment_bytes` or more.

Restart is always possible, and never over a hole: a snapshot is written only once the journal
is on disk up to its seq (every fsync policy); recovery and `perpdex verify` refuse a journal
that ends before the newest seq a snapshot or `durable-seq` says was on disk. A failure of the
journal, in its own thread too, is kept in `Journal.failure`, and from then on `append`, `sync`
and `durable` raise: nothing is acknowledged after it.
"""
from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from pathlib import Path

# The names of the journal family that the tools read from here (`perpdex verify`, `perpdex
# stress`, the benchmarks, the tests) besides those this module uses.
from .logfile import (COMMAND, DEADLINE, HASH, HEADER, REPLY, SEGMENT, TAKEOVER,  # noqa: F401
                      TURN, JournalError, Scan, commands, decode, fsync_dir, journal_end, read,
                      read_all, segments, seq_of, turn)
from .snapshots import (Snapshot, engine_from_snapshot, read_snapshot, snapshots,  # noqa: F401
                        state_hash, write_snapshot)

log = logging.getLogger("perpdex.journal")

POLICIES = ("batch", "interval", "off")
MARK = "durable-seq"                        # in the data folder (`DurableMark`)
MARK_MAGIC = b"PDXDSEQ1"
MARK_SLOT = struct.Struct("<8sQI")          # magic, seq, crc32 of the 16 bytes before it
MARK_FSYNC_S = 1.0                          # the marker's own fsync, at most this often
monotonic = time.monotonic


# ---- the durable marker --------------------------------------------------------------------

def _mark_slot(seq: int) -> bytes:
    head = MARK_MAGIC + seq.to_bytes(8, "little")
    return head + zlib.crc32(head).to_bytes(4, "little")


def read_mark(path: Path) -> int:
    """The seq `DATA/durable-seq` holds: the newer of its two copies that reads; 0 when there is
    no such file (a new folder, or one from before the marker) or it holds only zeros (never
    written). JournalError if it holds bytes and neither copy reads."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return 0
    found = []
    for off in (0, MARK_SLOT.size):
        chunk = data[off:off + MARK_SLOT.size]
        if len(chunk) == MARK_SLOT.size and chunk == _mark_slot(MARK_SLOT.unpack(chunk)[1]):
            found.append(MARK_SLOT.unpack(chunk)[1])
    if not found and any(data):
        raise JournalError(f"{path}: neither copy of the durable seq reads ({len(data)} bytes); "
                           f"if the journal is known to be whole, remove this file "
                           f"(docs/operations.md, \"Recovery\")")
    return max(found, default=0)


class DurableMark:
    """`DATA/durable-seq`: the newest journal seq an fsync of the journal is known to have
    covered. Two copies (`MARK_SLOT`: magic, seq, CRC32), written in turn with `pwrite`, so a
    torn write of one leaves the other. It is written after the journal's fsync returns and
    before that turn's replies may leave, so it never names a seq that is not on disk, and after
    a crash of the process it names at least every acknowledged turn; its own fsync runs at most
    every `MARK_FSYNC_S` (and at a snapshot, a segment's end and close): after a power cut it may
    lag by that much. Recovery and `perpdex verify` refuse a journal that ends before it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        new = not self.path.exists()
        self.seq = read_mark(self.path)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if new:
            fsync_dir(self.path.parent)
        data = os.pread(self.fd, 2 * MARK_SLOT.size, 0)
        self.slot = int(data[:MARK_SLOT.size] == _mark_slot(self.seq))  # keep the newest copy
        self.lock = threading.Lock()
        self.dirty = False
        self.fsynced = 0.0

    def write(self, seq: int) -> None:
        """Name `seq` (a no-op unless it is newer): one pwrite, no fsync. O(1)."""
        with self.lock:
            if seq > self.seq and self.fd >= 0:
                os.pwrite(self.fd, _mark_slot(seq), self.slot * MARK_SLOT.size)
                self.slot ^= 1
                self.seq = seq
                self.dirty = True

    def flush(self, force: bool = False) -> None:
        """fsync what was written, if `force` or the last fsync is `MARK_FSYNC_S` old."""
        with self.lock:
            due = force or monotonic() - self.fsynced >= MARK_FSYNC_S
            if self.dirty and self.fd >= 0 and due:
                os.fdatasync(self.fd)
                self.dirty = False
                self.fsynced = monotonic()

    def close(self) -> None:
        self.flush(force=True)
        with self.lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


# ---- writing -------------------------------------------------------------------------------

class Journal:
    """The Durability of `perpdex serve`: appends each loop turn's records to the newest segment
    with one write, and fsyncs by policy (docs/operations.md, "fsync policies"):

    - "batch": a thread fdatasyncs whatever was written since its last fsync, at once: one
      fsync covers every turn written while the one before ran (group commit). The server holds
      a turn's messages until `durable(seq)` and goes on with the next turn meanwhile
      (`pipelined`); `sync()` waits for it;
    - "interval": a thread fdatasyncs every `interval_ms` when something was written;
    - "off": never for a turn (the operating system writes back when it will).

    Under every policy a segment is fdatasynced when it is full and at close, and
    `make_durable()` (before every snapshot) fdatasyncs what was written. `synced` is the newest
    seq an fdatasync covered; `mark` (`DurableMark`, when given) follows it on disk.

    A failure anywhere (a write, an fsync, the thread's own, `os.dup` out of descriptors
    included) is kept in `failure` (the exception; None while healthy) and from then on
    `append`, `sync`, `durable` and `make_durable` raise JournalError: nothing is acknowledged
    after it. `health()` says where the journal is. `snapshot_failures` counts the snapshots
    that could not be written (gateway/snapshots.py), `snapshot_error` says the last one's error.

    `notes = True`: the Sequencer hands it the gateway's own records too (replies, deadlines)."""

    notes = True
    pipelined = True

    def __init__(self, folder: Path, fsync: str = "batch", interval_ms: int = 10,
                 segment_bytes: int = 64 << 20, next_seq: int = 1, mark: Path | None = None):
        if fsync not in POLICIES:
            raise ValueError(f"journal.fsync: one of {', '.join(POLICIES)}, not {fsync!r}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.policy = fsync
        self.interval = interval_ms / 1000
        self.segment_bytes = segment_bytes
        self.seq = next_seq - 1             # the last record's seq
        self.synced = self.seq              # the last record an fdatasync covered
        self.commands = 0                   # commands appended since this journal was opened
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.dirty = False
        self.fd = -1
        self.size = 0
        self.fsyncs = 0
        self.failure: BaseException | None = None
        self.failed_in = ""                 # what was being done when it failed
        self.snapshot_failures = 0          # snapshots that could not be written, ever
        self.snapshot_error: str | None = None
        self.snapshot_failing = 0           # failed in a row: the pause before the next try
        self.snapshot_retry_at = 0.0        # `monotonic()` before which none is due
        self.prune_failures = 0
        self.lock_fd = -1                   # the data folder's lock (`lock`), when it holds it
        self.closed = False
        self.thread = None
        segs = [p for p in segments(self.folder) if p.parent == self.folder]
        if segs and seq_of(segs[-1]) <= next_seq:
            self._open(segs[-1])
            if self.size:                   # what an earlier run left: on disk before it counts
                os.fdatasync(self.fd)
        else:
            self._open(self.folder / f"{next_seq:020d}{SEGMENT}")
        self.mark = DurableMark(mark) if mark is not None else None
        if self.mark is not None:
            self.mark.write(self.synced)
            self.mark.flush(force=True)
        target = {"batch": self._syncer, "interval": self._flusher}.get(fsync)
        if target is not None:
            self.thread = threading.Thread(target=target, name=f"journal-{fsync}", daemon=True)
            self.thread.start()

    def _open(self, path: Path) -> None:
        new = not path.exists()
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.path = path
        self.size = os.fstat(self.fd).st_size
        if new:
            fsync_dir(self.folder)

    # ---- failure -----------------------------------------------------------------------------

    def _failed(self, e: BaseException, doing: str) -> None:
        """Keep the first failure (with the lock held) and wake every waiter."""
        if self.failure is None:
            self.failure, self.failed_in = e, doing
            log.error("journal %s: failed %s: %s: %s; nothing is acknowledged after this",
                      self.folder, doing, type(e).__name__, e)
        self.cond.notify_all()

    def _fail(self, e: BaseException, doing: str) -> None:
        with self.cond:
            self._failed(e, doing)

    def _error(self) -> JournalError:
        e = self.failure
        return JournalError(f"{self.folder}: the journal failed {self.failed_in} "
                            f"({type(e).__name__}: {e}); nothing is acknowledged after it, and "
                            f"the server stops (docs/operations.md, \"fsync policies\")")

    def _check(self) -> None:
        if self.failure is not None:
            raise self._error() from self.failure

    # ---- the loop's side ---------------------------------------------------------------------

    def append(self, batch: list) -> None:
        """Write one loop turn: its records and the turn marker, in one write; roll the segment
        over once it is full. O(bytes)."""
        self._check()
        data, seq, n = turn(self.seq, batch)
        self.write_turn(data, seq, n)

    def write_turn(self, data: bytes, seq: int, n: int) -> None:
        """Write the bytes of one turn made by `turn` (its last record `seq`, `n` commands)."""
        with self.cond:
            self._check()
            try:
                written = os.write(self.fd, data)
                while written < len(data):          # a short write (a full disk raises)
                    written += os.write(self.fd, data[written:])
            except OSError as e:
                self._failed(e, f"writing the turn ending at seq {seq}")
                raise self._error() from e
            self.size += len(data)
            self.dirty = True
            self.seq = seq
            self.cond.notify_all()
        self.commands += n
        if self.size >= self.segment_bytes:
            self.roll()

    def durable(self, seq: int) -> bool:
        """Whether every record up to `seq` is as durable as the policy makes it. JournalError
        once the journal has failed. O(1)."""
        self._check()
        return self.policy != "batch" or self.synced >= seq

    def sync(self) -> None:
        """Return once everything appended is as durable as the policy makes it ("batch": on
        disk). JournalError once the journal has failed. O(one fsync)."""
        if self.policy == "batch":
            with self.cond:
                while self.synced < self.seq and self.failure is None:
                    self.cond.wait(1.0)
        self._check()

    def make_durable(self) -> None:
        """Everything appended on disk now, whatever the policy, and the marker naming it (before
        a snapshot names the seq). JournalError if it cannot be. O(one fsync)."""
        with self.cond:
            self._check()
            target = self.seq
            behind = self.synced < target
            if behind:
                try:
                    os.fdatasync(self.fd)
                except OSError as e:
                    self._failed(e, f"in the fsync before a snapshot at seq {target}")
                    raise self._error() from e
        if behind:
            self._synced(target)
        self._flush_mark(force=True)

    def roll(self) -> None:
        """Start a new segment at the next seq, the old one fdatasynced first (every policy)."""
        with self.cond:
            target = self.seq
            try:
                os.fdatasync(self.fd)
                os.close(self.fd)
                self.fd = -1
                self.dirty = False
                self._open(self.folder / f"{target + 1:020d}{SEGMENT}")
            except OSError as e:
                self._failed(e, f"rolling over to a new segment at seq {target + 1}")
                raise self._error() from e
        self._synced(target)
        self._flush_mark(force=True)

    def _synced(self, target: int) -> None:
        """An fdatasync covered every record up to `target`: the marker names it (before any
        reply that waits for it can leave), then the waiters are told."""
        if self.mark is not None:
            self.mark.write(target)
        with self.cond:
            self.fsyncs += 1
            self.synced = max(self.synced, target)
            self.cond.notify_all()

    def _flush_mark(self, force: bool = False) -> None:
        if self.mark is not None:
            try:
                self.mark.flush(force)
            except OSError as e:
                self._fail(e, f"in the fsync of {self.mark.path}")
                raise self._error() from e

    # ---- the threads -------------------------------------------------------------------------

    def _syncer(self) -> None:
        """"batch": fsync whatever was written since the last fsync, as soon as there is any.
        Any failure (os.dup out of descriptors too) is kept in `failure`, never lost."""
        try:
            while True:
                with self.cond:
                    while self.synced >= self.seq and not self.closed:
                        self.cond.wait()
                    if self.synced >= self.seq:
                        return
                    target = self.seq
                    fd = os.dup(self.fd)        # a roll may close self.fd meanwhile
                self._fdatasync(fd, target)
        except BaseException as e:          # noqa: BLE001 - kept; the server stops on it
            self._fail(e, "in its fsync thread")

    def _flusher(self) -> None:
        """"interval": fsync what was written, every `interval` seconds. Any failure is kept."""
        try:
            while not self.closed:
                time.sleep(self.interval)
                with self.lock:
                    if not self.dirty or self.fd < 0:
                        continue
                    target = self.seq
                    fd = os.dup(self.fd)
                    self.dirty = False
                self._fdatasync(fd, target)
        except BaseException as e:          # noqa: BLE001 - kept; the server stops on it
            self._fail(e, "in its flush thread")

    def _fdatasync(self, fd: int, target: int) -> None:
        """A thread's fdatasync of `fd` (a duplicate of the segment's, closed after), which
        covers every record up to `target`."""
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self._synced(target)
        self._flush_mark()

    def health(self) -> dict:
        """Where the journal is, for the server's `health` reply: the policy, its thread
        ("running", "stopped", "none" with fsync "off", or "failed: <why>"), the last record
        written and the last one an fdatasync covered, what the marker names, and the
        snapshots that failed. O(1)."""
        if self.failure is not None:
            thread = f"failed: {self.failed_in}: {type(self.failure).__name__}: {self.failure}"
        elif self.thread is None:
            thread = "none"
        else:
            thread = "running" if self.thread.is_alive() else "stopped"
        return {"fsync": self.policy, "thread": thread, "written_seq": self.seq,
                "durable_seq": self.synced, "fsyncs": self.fsyncs,
                "marker_seq": self.mark.seq if self.mark is not None else None,
                "snapshot_failures": self.snapshot_failures,
                "snapshot_error": self.snapshot_error}

    def close(self) -> None:
        """Make everything durable (whatever the policy) and close the segment. A failure of
        this last fsync raises JournalError; one from before is not raised again."""
        if self.closed:
            return
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        if self.thread is not None:
            self.thread.join(timeout=5)
        failed_before = self.failure is not None
        target = None
        with self.lock:
            if self.fd >= 0:
                try:
                    if not failed_before:
                        os.fdatasync(self.fd)
                        target = self.seq
                except OSError as e:
                    self._failed(e, "in the last fsync, at close")
                os.close(self.fd)
                self.fd = -1
        if target is not None:
            self._synced(target)
        if self.mark is not None:
            try:
                self.mark.close()
            except OSError as e:
                self._fail(e, f"in the fsync of {self.mark.path}, at close")
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1
        if not failed_before and self.failure is not None:
            raise self._error() from self.failure


def missing(data_dir: Path, scan: Scan, snapshot: tuple | None = None) -> str | None:
    """None when the journal of `data_dir` reaches every seq known durable: the seq of the
    `snapshot` (path, Snapshot) recovery starts from (one is written only once the journal is on
    disk up to it) and the seq `durable-seq` names; else the sentence that refuses the start,
    naming the missing range. JournalError if the marker does not read. O(1)."""
    jdir = data_dir / "journal"
    path, snap = snapshot or (None, None)
    end = journal_end(jdir, scan, snap.seq if snap is not None else 0)
    claims = [(read_mark(data_dir / MARK), f"{data_dir / MARK} says so")]
    if snap is not None:
        claims.append((snap.seq, f"snapshot {path} covers it"))
    durable, why = max(claims, key=lambda c: c[0])
    if durable <= end:
        return None
    cut = "".join(f"; a torn tail of {n} bytes at {p} offset {o} was found after it"
                  for p, o, n in scan.cut)
    return (f"{jdir}: the journal ends at seq {end} but seq {durable} was durable: segments "
            f"missing for {end + 1}..{durable} ({why}{cut}); nothing is appended behind such a "
            f"hole: restore the missing segments from a copy, or see docs/operations.md, "
            f"\"Recovery\", to accept the loss")



def lock(data_dir: Path) -> int:
    """Take the data folder for this process (an exclusive flock on journal/.lock, which the
    kernel lets go when the process ends, SIGKILL too); JournalError if another server holds
    it. Returns the descriptor, to be kept open."""
    jdir = data_dir / "journal"
    for folder in (data_dir, jdir):     # 0700, with or without keys (plain-text mode has none)
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
    fd = os.open(jdir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalError(f"{data_dir}: in use by another perpdex serve (its journal is "
                           f"locked); two servers on one data folder would corrupt it")
    return fd

