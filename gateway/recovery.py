"""Recovery: a venue back from its data folder (docs/operations.md, "Recovery"). The newest
snapshot that reads, then the journal after it, each record applied as serving made it; a torn
tail is cut, and a journal that ends before a seq known durable stops the start, changing
nothing. It takes the venue's records and an engine and hands back the engine and the journal
to go on writing; it knows nothing of the server.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from perpdex.engine import Engine

from .journal import MARK, Journal, lock, missing
from .logfile import COMMAND, TURN, JournalError, cut_tail, read
from .records import Records
from .snapshots import engine_from_snapshot, read_snapshot, remove_unfinished, snapshots

log = logging.getLogger("perpdex.journal")


@dataclass
class Recovered:
    engine: Engine              # the state the journal left
    journal: Journal            # where the next turn is written (it holds the folder's lock)
    new: bool                   # a new data folder: nothing was there, the venue boots
    said: str                   # what was recovered, in a line ("" when new)


def newest_snapshot(sdir: Path):
    """(Snapshot, path, engine) of the newest snapshot that reads and restores; a bad one is
    logged and the one before is tried. (None, None, None) when none does."""
    for path in reversed(snapshots(sdir)):
        try:
            snap = read_snapshot(path)
            engine = engine_from_snapshot(snap.engine)
        except (JournalError, ValueError, OSError) as e:
            log.error("snapshot %s cannot be used (%s); trying the one before", path, e)
            continue
        return snap, path, engine
    return None, None, None


def recover(cfg, records: Records, engine: Engine) -> Recovered:
    """The venue of `cfg.data_dir` into `records` (and its feed: the public topics' seq and
    chains go on where the journal left them) and the engine handed back. The boot turn is
    applied without routing, as it was served. JournalError stops the start. O(journal after
    the snapshot)."""
    jdir, sdir = cfg.data_dir / "journal", cfg.data_dir / "snapshots"
    t0 = time.perf_counter()
    held = lock(cfg.data_dir)
    remove_unfinished(sdir)
    snap, spath, restored = newest_snapshot(sdir)
    if restored is not None:
        engine = restored
    records.attach(engine)
    if snap is not None:
        records.restore(snap.gateway)
    after = snap.seq if snap is not None else 0
    gen = read(jdir, after)
    n = commands = 0
    sink: list = []                 # what subscribers would get: nobody is subscribed yet
    route = after != 0              # the boot turn (a new journal's first) goes nowhere
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
            route = True
            records.feed.flush()
            continue
        commands += kind == COMMAND
        records.apply(engine, kind, payload, sink if route else None)
    hole = missing(cfg.data_dir, scan, (spath, snap) if snap is not None else None)
    if hole is not None:
        raise JournalError(hole)
    cut_tail(scan)
    last = max(after, scan.last)
    j = cfg.journal
    jr = Journal(jdir, j.fsync, j.fsync_interval_ms, j.segment_bytes, next_seq=last + 1,
                 mark=cfg.data_dir / MARK)
    jr.lock_fd = held               # let go when the journal closes
    if last == 0:
        return Recovered(engine, jr, True, "")
    cut = sum(c[2] for c in scan.cut)
    return Recovered(engine, jr, False, (
        f"perpdex: recovered {cfg.data_dir} in {time.perf_counter() - t0:.3f} s: "
        + (f"snapshot {spath.name} (seq {snap.seq}, {snap.commands:,} commands), "
           if snap else "no snapshot, ")
        + f"then {n:,} journal records ({commands:,} commands) up to seq {last:,}"
        + (f"; cut a torn tail of {cut} bytes" if cut else "")
        + f"; engine: {engine.n_commands:,} commands, next oid {engine.next_oid}"))
