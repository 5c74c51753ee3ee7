"""The command journal, snapshots and recovery: what makes an acknowledged order outlive the
process (docs/operations.md).

The data folder:

    journal/00000000000000000001.journal    segments, named by the seq of their first record
    journal/archive/                        covered segments, when `covered_segments = "archive"`
    snapshots/00000000000000004711.snapshot one per snapshot, named by the seq it covers
    durable-seq                             the newest seq an fsync of the journal covered
                                            (`DurableMark`): what tells lost segments apart

A segment is a run of records, each

    u32 length | u64 seq | u8 kind | u32 crc32 | payload (length bytes)

little-endian; `crc32` covers the 13 header bytes before it and the payload. `seq` numbers every
record 1, 2, 3, ... with no gaps across segments. Kinds:

    0 command   the sequenced command, msgpack (the engine's Struct encoding, `ts` in it)
    1 reply     a kept reply: [account, req_id, reply bytes] (the retry cache)
    2 deadline  [account, at ns or null]: a dead-man's switch armed, renewed, disarmed or run out
    3 turn      the end of one loop turn (empty): what comes after the last one was never
                acknowledged, and recovery cuts it off
    4 hash      [commands, state hash]: the primary's state hash at that point (replicated
                mode: followers check theirs against it; gateway/replication.py)
    5 takeover  [node, ns]: a node became the writer of the replicated log here

Group commit: one loop turn is one `os.write` of all its records; with `fsync = "batch"` a
thread fdatasyncs what was written (one fsync for every turn written while the previous one
ran), and no reply or event of a turn leaves the process before its records are on disk; the
loop takes the next turn meanwhile. A turn never spans two segments: a segment rolls over
between turns, once it is `segment_bytes` or more.

Restart is always possible, and never over a hole: a snapshot is written only once the journal
is on disk up to its seq (every fsync policy); recovery and `perpdex verify` refuse a journal
that ends before the newest seq a snapshot or `durable-seq` says was on disk. A failure of the
journal, in its own thread too, is kept in `Journal.failure`, and from then on `append`, `sync`
and `durable` raise: nothing is acknowledged after it. A snapshot that cannot be written is
logged, counted (`Journal.snapshot_failures`) and tried again later; the venue serves on.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import msgspec

from perpdex.engine import Engine, messages as M

from .durability import Deadline, Reply, StateHash, Takeover
from .feed import Feed

log = logging.getLogger("perpdex.journal")

HEADER = struct.Struct("<IQBI")             # length, seq, kind, crc32
HEAD = struct.Struct("<IQB")                # the part the crc covers, with the payload
COMMAND, REPLY, DEADLINE, TURN, HASH, TAKEOVER = 0, 1, 2, 3, 4, 5
KINDS = {COMMAND: "command", REPLY: "reply", DEADLINE: "deadline", TURN: "turn", HASH: "hash",
         TAKEOVER: "takeover"}
MAX_RECORD = 64 * 1024 * 1024               # bytes; a longer length is corruption
SEGMENT = ".journal"
SNAPSHOT = ".snapshot"
SNAP_MAGIC = b"PDXSNAP1"
SNAP_HEAD = struct.Struct("<8sIQ")          # magic, crc32 of the body, body length
POLICIES = ("batch", "interval", "off")
MARK = "durable-seq"                        # in the data folder (`DurableMark`)
MARK_MAGIC = b"PDXDSEQ1"
MARK_SLOT = struct.Struct("<8sQI")          # magic, seq, crc32 of the 16 bytes before it
MARK_FSYNC_S = 1.0                          # the marker's own fsync, at most this often
SNAPSHOT_RETRY_S = (1.0, 60.0)              # after a failed snapshot: the first pause, the longest
monotonic = time.monotonic                  # (a test moves it)

_encode = msgspec.msgpack.encode
_command = msgspec.msgpack.Decoder(M.AnyCommand)
_reply = msgspec.msgpack.Decoder(Reply)
_deadline = msgspec.msgpack.Decoder(Deadline)


class JournalError(ValueError):
    """A journal or a snapshot that recovery must not go past; the message names the file and
    the offset."""


def record(seq: int, kind: int, payload: bytes) -> bytes:
    """One record's bytes. O(len(payload))."""
    crc = zlib.crc32(payload, zlib.crc32(HEAD.pack(len(payload), seq, kind)))
    return HEADER.pack(len(payload), seq, kind, crc) + payload


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seq_of(path: Path) -> int:
    return int(path.name.split(".")[0])


def segments(folder: Path) -> list[Path]:
    """The segments of a journal folder (archived ones first), oldest first."""
    found = []
    for d in (folder / "archive", folder):
        if d.is_dir():
            found += [p for p in d.iterdir() if p.name.endswith(SEGMENT) and p.name[0].isdigit()]
    return sorted(found, key=_seq_of)


# ---- reading -------------------------------------------------------------------------------

@dataclass
class Scan:
    """What a read of the journal found."""
    records: int = 0
    first: int = 0                  # seq of the first record read (0: none)
    last: int = 0                   # seq of the last record of a complete turn
    commands: int = 0
    cut: list = field(default_factory=list)     # (file, offset, bytes): a torn tail or an
                                                # unfinished turn after the last complete one


def read(folder: Path, after: int = 0, strict_start: bool = True) -> Iterator[tuple]:
    """Yield (seq, kind, payload) of every record of complete turns with seq > `after`, in
    order; then return a `Scan` (as StopIteration's value; `read_all` gives it). A record cut
    short or failing its CRC at the end of the newest segment is a torn tail: it and what follows
    are reported in `Scan.cut` (nothing is changed here). Anything else wrong raises JournalError
    with the file and offset. O(bytes)."""
    scan = Scan()
    segs = segments(folder)
    expect = None
    pending: list = []              # records of the turn being read
    for n, path in enumerate(segs):
        newest = n == len(segs) - 1
        data = path.read_bytes()
        size = len(data)
        off = 0
        turn_start = 0
        while off < size:
            bad = None
            if size - off < HEADER.size:
                bad = "a record header cut short"
            else:
                length, seq, kind, crc = HEADER.unpack_from(data, off)
                end = off + HEADER.size + length
                if length > MAX_RECORD:
                    bad = f"a record length of {length} bytes"
                elif end > size:
                    bad = "a record cut short"
                elif zlib.crc32(data[off + HEADER.size:end],
                                zlib.crc32(HEAD.pack(length, seq, kind))) != crc:
                    bad = "a record whose CRC32 does not match"
                elif kind not in KINDS:
                    bad = f"a record of unknown kind {kind}"
            if bad is not None:
                torn = newest and (bad.endswith("cut short") or not any(data[off:]) or
                                   (bad.startswith("a record whose") and end == size))
                if newest and _damaged_end_marker(data[off:], expect or _seq_of(path)):
                    bad = ("a turn's end marker, whole but not what it must be (a flipped bit, "
                           "not a torn write: that turn was written whole)")
                    torn = False
                later = _valid_record_after(data, off, expect or 1) if torn else None
                if later is not None:
                    bad += f", with a valid record after it at offset {later}"
                if not torn or later is not None:
                    raise JournalError(f"{path}: offset {off}: {bad}; the journal is corrupt "
                                       f"here (recovery does not skip records: restore this "
                                       f"file from a copy, or see docs/operations.md)")
                scan.cut.append((path, turn_start, size - turn_start))
                pending = []
                break
            if expect is not None and seq != expect:
                raise JournalError(f"{path}: offset {off}: record seq {seq}, expected {expect}")
            if expect is None and strict_start and seq != _seq_of(path):
                raise JournalError(f"{path}: offset {off}: record seq {seq}, but the segment "
                                   f"is named for {_seq_of(path)}")
            expect = seq + 1
            if scan.first == 0:
                scan.first = seq
            payload = data[off + HEADER.size:end]
            off = end
            if kind == TURN:
                for rec in pending:
                    if rec[0] > after:
                        scan.records += 1
                        scan.commands += rec[1] == COMMAND
                        yield rec
                if seq > after:
                    yield (seq, TURN, b"")
                scan.last = seq
                pending = []
                turn_start = off
            else:
                pending.append((seq, kind, payload))
        else:
            if pending:                 # a turn without its end: never acknowledged
                if not newest:
                    raise JournalError(f"{path}: offset {turn_start}: a turn without its end "
                                       f"marker in a segment that is not the newest")
                scan.cut.append((path, turn_start, size - turn_start))
                pending = []
    return scan


def _damaged_end_marker(tail: bytes, seq: int) -> bool:
    """Whether `tail`, the last bytes of the newest segment where a record fails its check, is
    the end marker of turn `seq` whole but damaged: a marker is exactly `record(seq, TURN,
    b"")`, so it is its own check. A torn write leaves a prefix of it (the file short) or a
    prefix and zeros; a flipped bit leaves its whole length with three of its four fields (length,
    seq, kind, CRC32) as they must be. O(1)."""
    want = record(seq, TURN, b"")
    if len(tail) != len(want) or tail == want:
        return False
    kept = len(tail.rstrip(b"\0"))
    if tail[:kept] == want[:kept]:              # a prefix and zeros: torn
        return False
    got, must = HEADER.unpack(tail), HEADER.unpack(want)
    return sum(a == b for a, b in zip(got, must)) >= 3


def _valid_record_after(data: bytes, off: int, expect: int) -> int | None:
    """The offset of a record after `off` whose CRC32 holds and whose seq is plausible (from
    `expect` on), or None: what tells a torn tail (nothing valid after it) from a record
    damaged in the middle of the newest segment (say, a flipped length). Runs only on a bad
    tail. O(tail bytes)."""
    size = len(data)
    for p in range(off + 1, size - HEADER.size + 1):
        length, seq, kind, crc = HEADER.unpack_from(data, p)
        if not expect <= seq < expect + (1 << 32) or kind not in KINDS:
            continue
        end = p + HEADER.size + length
        if end <= size and zlib.crc32(data[p + HEADER.size:end],
                                      zlib.crc32(HEAD.pack(length, seq, kind))) == crc:
            return p
    return None


def read_all(folder: Path, after: int = 0):
    """(list of records, Scan) of `read`."""
    out: list = []
    gen = read(folder, after)
    while True:
        try:
            out.append(next(gen))
        except StopIteration as stop:
            return out, stop.value


def decode(kind: int, payload: bytes):
    if kind == COMMAND:
        return _command.decode(payload)
    if kind == REPLY:
        return _reply.decode(payload)
    if kind == DEADLINE:
        return _deadline.decode(payload)
    if kind == HASH:
        return msgspec.msgpack.decode(payload, type=StateHash)
    if kind == TAKEOVER:
        return msgspec.msgpack.decode(payload, type=Takeover)
    return None


def commands(folder: Path) -> bytes:
    """The journal's commands as one msgpack stream (for `perpdex replay DIR`). O(bytes)."""
    recs, _ = read_all(folder)
    return b"".join(p for _, k, p in recs if k == COMMAND)


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
            _fsync_dir(self.path.parent)
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

_KIND_OF = {Reply: REPLY, Deadline: DEADLINE, StateHash: HASH, Takeover: TAKEOVER}


def turn(last: int, batch: list) -> tuple[bytes, int, int]:
    """The records of one loop turn (numbered from `last` + 1) and its turn marker: (bytes, the
    marker's seq, the number of commands). The journal writes these bytes; the replicated log
    appends the same bytes (gateway/replication.py). O(bytes)."""
    parts = []
    seq = last
    n = 0
    kind_of = _KIND_OF.get
    for item in batch:
        seq += 1
        kind = kind_of(type(item), COMMAND)
        parts.append(record(seq, kind, _encode(item)))
        n += kind == COMMAND
    seq += 1
    parts.append(record(seq, TURN, b""))
    return b"".join(parts), seq, n


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
    that could not be written (`take_snapshot`), `snapshot_error` says the last one's error.

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
        if segs and _seq_of(segs[-1]) <= next_seq:
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
            _fsync_dir(self.folder)

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


def cut_tail(scan: Scan) -> None:
    """Cut off what `read` found after the last complete turn, with a log line saying how much."""
    for path, offset, size in scan.cut:
        log.warning("journal %s: cut %d bytes at offset %d after the last complete turn "
                    "(a torn or unfinished write that was never acknowledged)", path, size, offset)
        with open(path, "r+b") as f:
            f.truncate(offset)
            f.flush()
            os.fsync(f.fileno())


def journal_end(folder: Path, scan: Scan, snapshot_seq: int = 0) -> int:
    """The seq the journal ends at, as `read` found it: its last complete turn; with none, the
    seq before its oldest segment (the covered ones deleted, the newest still empty); with no
    segment at all, the snapshot's (a journal that starts again after it)."""
    if scan.last:
        return scan.last
    segs = segments(folder)
    return _seq_of(segs[0]) - 1 if segs else snapshot_seq


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


# ---- snapshots -----------------------------------------------------------------------------

class Snapshot(msgspec.Struct, kw_only=True):
    """A snapshot file's body (msgpack). `engine` is `Engine.snapshot()`."""
    seq: int                        # the last journal record it covers (a turn marker)
    commands: int                   # commands the engine had run
    state_hash: str                 # the engine's state hash at `seq`
    engine: bytes
    gateway: dict                   # the gateway's own state (gateway/server.py durable_state)
    written_ns: int = 0


def engine_from_snapshot(data: bytes) -> Engine:
    """The engine a snapshot holds (ValueError: bytes that are no snapshot of this build)."""
    return Engine.from_snapshot(data)


def framed(snap: Snapshot) -> bytes:
    """A snapshot's bytes: magic, CRC32 and length of the body, then the body (msgpack). The
    files in snapshots/ hold these; so do the snapshots replicated mode publishes."""
    body = _encode(snap)
    return SNAP_HEAD.pack(SNAP_MAGIC, zlib.crc32(body), len(body)) + body


def unframed(data: bytes, where, kind=None) -> Snapshot:
    """`framed` read back and checked (magic, length, CRC32); JournalError naming `where`."""
    if len(data) < SNAP_HEAD.size:
        raise JournalError(f"{where}: {len(data)} bytes, shorter than a snapshot header")
    magic, crc, length = SNAP_HEAD.unpack_from(data)
    body = data[SNAP_HEAD.size:]
    if magic != SNAP_MAGIC:
        raise JournalError(f"{where}: not a perpdex snapshot (magic {magic!r})")
    if len(body) != length:
        raise JournalError(f"{where}: body of {len(body)} bytes, the header says {length}")
    if zlib.crc32(body) != crc:
        raise JournalError(f"{where}: the CRC32 of the body does not match")
    try:
        return msgspec.msgpack.decode(body, type=kind or Snapshot)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise JournalError(f"{where}: unreadable snapshot body: {e}")


def write_snapshot(folder: Path, snap: Snapshot) -> Path:
    """Write atomically: a temporary file, fsync, rename, fsync of the folder. O(bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{snap.seq:020d}{SNAPSHOT}"
    tmp = folder / f".{final.name}.tmp"
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(framed(snap))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):      # a full disk leaves nothing behind
            tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    return final


def remove_unfinished(folder: Path) -> None:
    """Remove the temporary files of snapshots never finished (a process that stopped while
    writing one), with a log line each. At boot, with the data folder locked."""
    if not folder.is_dir():
        return
    for tmp in folder.glob(f".*{SNAPSHOT}.tmp"):
        tmp.unlink()
        log.warning("removed %s: a snapshot that was never finished (its process stopped "
                    "while writing it)", tmp)


def read_snapshot(path: Path) -> Snapshot:
    """A snapshot file, checked (magic, length, CRC32); JournalError saying what is wrong."""
    return unframed(path.read_bytes(), path)


def snapshots(folder: Path) -> list[Path]:
    """Snapshot files, oldest first."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.name.endswith(SNAPSHOT)
                   and p.name[0].isdigit()), key=_seq_of)


def state_hash(engine) -> str:
    """The engine's state hash, read as a view (executing `state_hash` would number an event).
    The digest of docs/state-hash.md. O(orders + positions)."""
    return hashlib.blake2b(_encode(engine.state()), digest_size=16).hexdigest()


# ---- the server's side: recovery, snapshots ------------------------------------------------

def gateway_state(server) -> dict:
    """What a restart needs of the gateway besides the engine: the kept replies (oldest first),
    each private stream's pseq, resume buffer and chain head, the dead-man's switches, and the
    simulated oracle's last prices and the public chain heads. O(kept items)."""
    return {
        "retries": {a: [[rid, r.replies[rid]] for rid in r.order]
                    for a, r in server.replies.items()},
        "streams": {a: [st.pseq, list(st.buffer), st.head] for a, st in server.streams.items()},
        "deadlines": dict(server.deadlines),
        "sim_index": dict(server.sim_index),
        "public": server.feed.chains() if server.feed is not None else {},
    }


def restore_gateway_state(server, g: dict) -> None:
    from .server import Retries
    server.replies.clear()
    for account, kept in g.get("retries", {}).items():
        r = server.replies[account] = Retries(server.limits.retry_window)
        for rid, data in kept:
            r.add(rid, data)
    server.streams.clear()
    for account, (pseq, items, head) in g.get("streams", {}).items():
        st = server._stream(account)
        st.pseq = pseq
        st.buffer.extend(items)
        st.head = head
    server.deadlines.clear()
    server.deadlines.update(g.get("deadlines", {}))
    server.sim_index.update(g.get("sim_index", {}))


def apply(server, seq: int, kind: int, payload: bytes, route: bool = True) -> None:
    """One journal record, through the code paths that made it. O(the command)."""
    if kind == COMMAND:
        cmd = _command.decode(payload)
        events = server.engine.execute(cmd)
        if route:
            server._route(events, None)
        if type(cmd) is M.Oracle and server.sim is not None:
            server.sim_index[cmd.market] = cmd.price
    elif kind == REPLY:
        from .server import Retries
        rep = _reply.decode(payload)
        seen = server.replies.get(rep.account)
        if seen is None:
            seen = server.replies[rep.account] = Retries(server.limits.retry_window)
        seen.add(rep.req_id, rep.data)
    elif kind == DEADLINE:
        d = _deadline.decode(payload)
        if d.at is None:
            server.deadlines.pop(d.account, None)
        else:
            server.deadlines[d.account] = d.at


def _load_newest_snapshot(server, jdir: Path, sdir: Path):
    """The newest snapshot that reads and restores; a bad one is logged and the one before is
    tried. Returns (Snapshot, path) or (None, None)."""
    for path in reversed(snapshots(sdir)):
        try:
            snap = read_snapshot(path)
            engine = engine_from_snapshot(snap.engine)
        except (JournalError, ValueError, OSError) as e:
            log.error("snapshot %s cannot be used (%s); trying the one before", path, e)
            continue
        server.engine = server.seq.engine = engine
        restore_gateway_state(server, snap.gateway)
        return snap, path
    return None, None


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


def recover(server) -> str:
    """Recover `server` from its data folder: the newest valid snapshot, then the journal after
    it, replayed through the server's own code paths; a torn tail is cut. A journal that ends
    before a seq known durable (the snapshot's, `durable-seq`'s) stops the start, changing
    nothing. A new data folder is booted (the configured markets and deposits, once). Plugs the
    journal into the Sequencer. Returns a line saying what was recovered. JournalError stops the
    start."""
    cfg = server.cfg
    jdir, sdir = cfg.data_dir / "journal", cfg.data_dir / "snapshots"
    t0 = time.perf_counter()
    held = lock(cfg.data_dir)
    remove_unfinished(sdir)
    snap, spath = _load_newest_snapshot(server, jdir, sdir)
    after = snap.seq if snap is not None else 0
    # The public feed is replayed too, turn by turn (its messages go nowhere): its topics' seq
    # and hash chains go on after the restart where the journal left them.
    feed = server.feed = Feed(server.engine, server.encode)
    if snap is not None:
        feed.restore_chains(snap.gateway.get("public", {}))
    gen = read(jdir, after)
    n = commands = 0
    first_turn = True
    while True:
        try:
            seq, kind, payload = next(gen)
        except StopIteration as stop:
            scan = stop.value
            break
        if n == 0 and seq != after + 1:
            raise JournalError(f"{jdir}: the journal goes on at seq {seq}, but "
                               f"{'the snapshot ' + spath.name if snap else 'a new journal'} "
                               f"needs seq {after + 1} next: segments are missing")
        n += 1
        if kind == TURN:
            first_turn = False
            feed.flush()
            continue
        commands += kind == COMMAND
        apply(server, seq, kind, payload, route=not (after == 0 and first_turn))
    hole = missing(cfg.data_dir, scan, (spath, snap) if snap is not None else None)
    if hole is not None:
        raise JournalError(hole)
    cut_tail(scan)
    last = max(after, scan.last)
    server.pub_out.clear()
    server.stream_out.clear()
    j = cfg.journal
    jr = Journal(jdir, j.fsync, j.fsync_interval_ms, j.segment_bytes, next_seq=last + 1,
                 mark=cfg.data_dir / MARK)
    jr.lock_fd = held               # let go when the journal closes
    server.seq.durability = jr
    server.seq.notes = True
    server.seq.last = max(server.seq.last, server.engine.clock)
    server.snapshot_at = server.engine.n_commands
    if last == 0:
        server._boot()
        if jr.seq == 0:             # nothing configured: the boot is still a turn of its own
            jr.append([])
            jr.sync()
        return (f"perpdex: a new data folder {cfg.data_dir}: the journal starts "
                f"(fsync {j.fsync}); {len(cfg.markets)} markets and "
                f"{sum(1 for a in cfg.accounts.values() if a.deposit)} deposits booted")
    cut = sum(c[2] for c in scan.cut)
    return (f"perpdex: recovered {cfg.data_dir} in {time.perf_counter() - t0:.3f} s: "
            + (f"snapshot {spath.name} (seq {snap.seq}, {snap.commands:,} commands), "
               if snap else "no snapshot, ")
            + f"then {n:,} journal records ({commands:,} commands) up to seq {last:,}"
            + (f"; cut a torn tail of {cut} bytes" if cut else "")
            + f"; engine: {server.engine.n_commands:,} commands, next oid "
              f"{server.engine.next_oid}")


def snapshot_due(server) -> bool:
    """Every `snapshot_every` commands; after a failed one, not before its pause is over."""
    every = server.cfg.journal.snapshot_every
    if not every or server.engine.n_commands - server.snapshot_at < every:
        return False
    return monotonic() >= getattr(server.seq.durability, "snapshot_retry_at", 0.0)


def take_snapshot(server) -> Path | None:
    """A snapshot of the engine and the gateway, between turns (nothing pending), then the
    retention policy. The journal is made durable up to the snapshot's seq first, whatever the
    fsync policy (JournalError if it cannot be: the server stops). A snapshot that cannot be
    written (OSError: a full disk, ...) is logged and counted (`Journal.snapshot_failures`),
    leaves no file, and is tried again after a pause (`SNAPSHOT_RETRY_S`, doubling): None is
    returned and the venue serves on. Blocks the loop while it is written: O(state)."""
    jr = server.seq.durability
    jr.make_durable()               # never a snapshot ahead of the journal on disk
    cfg = server.cfg
    sdir = cfg.data_dir / "snapshots"
    eng = server.engine
    t0 = time.perf_counter()
    data = eng.snapshot()
    snap = Snapshot(seq=jr.seq, commands=eng.n_commands, state_hash=state_hash(eng),
                    engine=data, gateway=gateway_state(server), written_ns=time.time_ns())
    try:
        path = write_snapshot(sdir, snap)
    except OSError as e:
        jr.snapshot_failures += 1
        jr.snapshot_failing += 1
        jr.snapshot_error = f"{type(e).__name__}: {e}"
        first, longest = SNAPSHOT_RETRY_S
        pause = min(longest, first * 2 ** (jr.snapshot_failing - 1))
        jr.snapshot_retry_at = monotonic() + pause
        log.error("snapshot at seq %d failed (%s); the venue serves on and tries again in "
                  "%.0f s (%d snapshots failed so far)", snap.seq, jr.snapshot_error, pause,
                  jr.snapshot_failures)
        return None
    jr.snapshot_failing, jr.snapshot_retry_at = 0, 0.0
    server.snapshot_at = eng.n_commands
    log.info("snapshot %s: seq %d, %d commands, %d bytes in %.3f s", path.name, snap.seq,
             snap.commands, path.stat().st_size, time.perf_counter() - t0)
    try:
        prune(cfg.data_dir, cfg.journal.keep_snapshots, cfg.journal.covered_segments, jr)
    except OSError as e:
        jr.prune_failures += 1
        log.error("after snapshot %s, the older snapshots and covered segments could not be "
                  "removed (%s: %s); tried again after the next snapshot", path.name,
                  type(e).__name__, e)
    return path


def prune(data_dir: Path, keep: int, covered: str, jr: Journal | None = None) -> None:
    """Keep the newest `keep` snapshots; the segments all of whose records the oldest kept
    snapshot covers are kept, archived (journal/archive/) or deleted. The segment being written
    is never touched."""
    snaps = snapshots(data_dir / "snapshots")
    for old in snaps[:-keep]:
        old.unlink()
    if covered == "keep" or not snaps:
        return
    oldest = _seq_of(snaps[-keep:][0])
    jdir = data_dir / "journal"
    segs = [p for p in segments(jdir) if p.parent == jdir]
    for seg, nxt in zip(segs, segs[1:]):
        if _seq_of(nxt) - 1 > oldest or (jr is not None and seg == jr.path):
            break
        if covered == "delete":
            seg.unlink()
        else:
            (jdir / "archive").mkdir(exist_ok=True)
            os.replace(seg, jdir / "archive" / seg.name)
    _fsync_dir(jdir)
