"""A follower of the replicated log (gateway/replication.py): the engine and the venue's records
(gateway/records.py) kept up to date by applying the log's records in order, as serving made
them, from its start or from a published snapshot, with the writer's state hash checked at each
`hash` record. It takes the records and hands back the engine; it knows nothing of the server.
"""
from __future__ import annotations

import logging

from perpdex.engine import Engine

from .durability import StateHash
from .logfile import HASH, TAKEOVER, TURN, decode
from .records import Records
from .replication import LogSnapshot, records as log_records
from .snapshots import engine_from_snapshot, state_hash, unframed

log = logging.getLogger("perpdex.replication")


class Follower:
    """Where a node is in the log (`record`, the stream seq `applied`), whether the venue is
    booted in it yet, and the hash checks (kept across restarts of the following)."""

    def __init__(self, records: Records):
        self.records = records
        self.hash_checks = self.hash_mismatches = 0
        self.diverged: str | None = None
        self.snapshot_from = 0
        self.reset()

    def reset(self) -> Engine:
        """From the start of the log, with nothing of before; the new engine."""
        self.engine = Engine()
        self.records.clear()
        self.records.attach(self.engine)
        self.booted = False
        self.boot_next = False
        self.record_kinds = 0
        self.applied = 0                    # the stream seq applied last
        self.record = 0                     # the record seq applied last
        return self.engine

    def restore(self, data: bytes, where: str) -> Engine:
        """Start from a published snapshot: the engine, the records, the feed's numbering;
        then the log after it. The engine it holds."""
        snap = unframed(data, where, LogSnapshot)
        engine = engine_from_snapshot(snap.engine)
        if state_hash(engine) != snap.state_hash:
            raise RuntimeError(f"the snapshot at stream seq {snap.stream_seq} does not hold the "
                               f"state its hash says")
        self.engine = engine
        self.records.attach(engine)
        self.records.restore(snap.gateway)      # seqs and hash heads of the feed too
        self.booted = True
        self.record, self.applied = snap.seq, snap.stream_seq
        self.snapshot_from = snap.stream_seq
        log.info("started from the snapshot at stream seq %d (record %d, %d commands)",
                 snap.stream_seq, snap.seq, snap.commands)
        return engine

    def apply(self, sseq: int, data: bytes, pub_out: list, stream_out: list) -> None:
        """One log message (stream seq `sseq`, the next one): its records applied in order, the
        feed's and the private streams' messages added to `pub_out` and `stream_out`.
        RuntimeError when a record is out of order. O(records)."""
        for seq, kind, payload in log_records(data):
            if seq != self.record + 1:
                raise RuntimeError(f"stream seq {sseq}: record {seq} after {self.record}")
            self.record = seq
            if kind == TURN:
                # the turn after the first takeover is the boot: the feed (and the private
                # streams) start after it, as the writer's did
                if self.booted:             # a delta per market per turn, as the writer's
                    pub_out.extend(self.records.feed.flush())
                elif self.boot_next:
                    self.booted = True
                    self.records.attach(self.engine)
                elif self.record_kinds & (1 << TAKEOVER):
                    self.boot_next = True
            elif kind == HASH:
                self.check_hash(decode(kind, payload))
            elif kind == TAKEOVER:
                self.record_kinds |= 1 << TAKEOVER
                log.info("the log: %s took over at record %d", decode(kind, payload).node, seq)
            else:
                self.records.apply(self.engine, kind, payload,
                                   stream_out if self.booted else None)
        self.applied = sseq

    def check_hash(self, h: StateHash) -> None:
        mine = state_hash(self.engine)
        self.hash_checks += 1
        if mine != h.state_hash or self.engine.n_commands != h.commands:
            self.hash_mismatches += 1
            self.diverged = (f"after {h.commands} commands the writer's state hash is "
                             f"{h.state_hash}, this node's {mine} after "
                             f"{self.engine.n_commands}")
            log.error("this node's state differs from the writer's: %s; it will never take "
                      "over", self.diverged)
