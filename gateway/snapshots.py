"""Snapshots: the engine and the venue's own records at one journal seq, in a file of their own
(docs/operations.md, "Snapshots"), so that a restart replays only the journal after it.

    snapshots/00000000000000004711.snapshot one per snapshot, named by the seq it covers

A snapshot is written only once the journal is on disk up to its seq (every fsync policy). One
that cannot be written is logged, counted (`Journal.snapshot_failures`) and tried again later;
the venue serves on. The folder is 0700, like the rest of the data folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import time
import zlib
from pathlib import Path

import msgspec

from perpdex.engine import Engine

from .logfile import JournalError, encode, fsync_dir, segments, seq_of

log = logging.getLogger("perpdex.journal")

SNAPSHOT = ".snapshot"
SNAP_MAGIC = b"PDXSNAP1"
SNAP_HEAD = struct.Struct("<8sIQ")          # magic, crc32 of the body, body length
SNAPSHOT_RETRY_S = (1.0, 60.0)              # after a failed snapshot: the first pause, the longest
monotonic = time.monotonic                  # (a test moves it)


class Snapshot(msgspec.Struct, kw_only=True):
    """A snapshot file's body (msgpack). `engine` is `Engine.snapshot()`."""
    seq: int                        # the last journal record it covers (a turn marker)
    commands: int                   # commands the engine had run
    state_hash: str                 # the engine's state hash at `seq`
    engine: bytes
    gateway: dict                   # the gateway's own state (gateway/records.py)
    written_ns: int = 0


def engine_from_snapshot(data: bytes) -> Engine:
    """The engine a snapshot holds (ValueError: bytes that are no snapshot of this build)."""
    return Engine.from_snapshot(data)


def framed(snap: Snapshot) -> bytes:
    """A snapshot's bytes: magic, CRC32 and length of the body, then the body (msgpack). The
    files in snapshots/ hold these; so do the snapshots replicated mode publishes."""
    body = encode(snap)
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
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
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
    fsync_dir(folder)
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
                   and p.name[0].isdigit()), key=seq_of)


def state_hash(engine) -> str:
    """The engine's state hash, read as a view (executing `state_hash` would number an event).
    The digest of docs/state-hash.md. O(orders + positions)."""
    return hashlib.blake2b(encode(engine.state()), digest_size=16).hexdigest()


# ---- taking one --------------------------------------------------------------------------

def due(every: int, engine, since: int, jr) -> bool:
    """Every `every` commands after `since`; after a failed one, not before its pause is over."""
    if not every or engine.n_commands - since < every:
        return False
    return monotonic() >= getattr(jr, "snapshot_retry_at", 0.0)


def take(cfg, engine, records, jr) -> Path | None:
    """A snapshot of the engine and the venue's records (gateway/records.py), between turns
    (nothing pending), then the retention policy. The journal `jr` is made durable up to the
    snapshot's seq first, whatever the fsync policy (JournalError if it cannot be: the server
    stops). A snapshot that cannot be written (OSError: a full disk, ...) is logged and counted
    (`Journal.snapshot_failures`), leaves no file, and is tried again after a pause
    (`SNAPSHOT_RETRY_S`, doubling): None is returned and the venue serves on. Blocks the loop
    while it is written: O(state)."""
    jr.make_durable()               # never a snapshot ahead of the journal on disk
    sdir = cfg.data_dir / "snapshots"
    t0 = time.perf_counter()
    data = engine.snapshot()
    snap = Snapshot(seq=jr.seq, commands=engine.n_commands, state_hash=state_hash(engine),
                    engine=data, gateway=records.snapshot(), written_ns=time.time_ns())
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


def prune(data_dir: Path, keep: int, covered: str, jr=None) -> None:
    """Keep the newest `keep` snapshots; the segments all of whose records the oldest kept
    snapshot covers are kept, archived (journal/archive/) or deleted. The segment being written
    is never touched."""
    snaps = snapshots(data_dir / "snapshots")
    for old in snaps[:-keep]:
        old.unlink()
    if covered == "keep" or not snaps:
        return
    oldest = seq_of(snaps[-keep:][0])
    jdir = data_dir / "journal"
    segs = [p for p in segments(jdir) if p.parent == jdir]
    for seg, nxt in zip(segs, segs[1:]):
        if seq_of(nxt) - 1 > oldest or (jr is not None and seg == jr.path):
            break
        if covered == "delete":
            seg.unlink()
        else:
            (jdir / "archive").mkdir(exist_ok=True)
            os.replace(seg, jdir / "archive" / seg.name)
    fsync_dir(jdir)
