"""The journal's file format and its reading: segments of records, read back in order and
checked, and the bytes one loop turn is written as (docs/operations.md, "Recovery").

The data folder's journal:

    journal/00000000000000000001.journal    segments, named by the seq of their first record
    journal/archive/                        covered segments, when `covered_segments = "archive"`

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

A turn never spans two segments (gateway/journal.py writes them).
"""
from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import msgspec

from perpdex.engine import messages as M

from .durability import Deadline, Reply, StateHash, Takeover

log = logging.getLogger("perpdex.journal")

HEADER = struct.Struct("<IQBI")             # length, seq, kind, crc32
HEAD = struct.Struct("<IQB")                # the part the crc covers, with the payload
COMMAND, REPLY, DEADLINE, TURN, HASH, TAKEOVER = 0, 1, 2, 3, 4, 5
KINDS = {COMMAND: "command", REPLY: "reply", DEADLINE: "deadline", TURN: "turn", HASH: "hash",
         TAKEOVER: "takeover"}
MAX_RECORD = 64 * 1024 * 1024               # bytes; a longer length is corruption
SEGMENT = ".journal"

encode = msgspec.msgpack.encode
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


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seq_of(path: Path) -> int:
    return int(path.name.split(".")[0])


def segments(folder: Path) -> list[Path]:
    """The segments of a journal folder (archived ones first), oldest first."""
    found = []
    for d in (folder / "archive", folder):
        if d.is_dir():
            found += [p for p in d.iterdir() if p.name.endswith(SEGMENT) and p.name[0].isdigit()]
    return sorted(found, key=seq_of)


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
                if newest and _damaged_end_marker(data[off:], expect or seq_of(path)):
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
            if expect is None and strict_start and seq != seq_of(path):
                raise JournalError(f"{path}: offset {off}: record seq {seq}, but the segment "
                                   f"is named for {seq_of(path)}")
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
        parts.append(record(seq, kind, encode(item)))
        n += kind == COMMAND
    seq += 1
    parts.append(record(seq, TURN, b""))
    return b"".join(parts), seq, n


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
    return seq_of(segs[0]) - 1 if segs else snapshot_seq


