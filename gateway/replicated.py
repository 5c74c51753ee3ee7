"""`perpdex serve` in replicated mode (docs/operations.md, "Replication"): the server's role
(gateway/writer.py, "A role's interface") that follows the record log (gateway/follower.py)
while another node writes, takes over when it is its turn, writes while it is the writer (its
Durability is the log, gateway/replication.py) and steps down when fenced. It holds its own
state (the link, the follower, where it is) and uses only the server's public face
(gateway/dispatch.py, "What a role may use").
"""
from __future__ import annotations

import logging
import os
import socket
import time

from .durability import NoDurability, StateHash, Takeover
from .follower import Follower
from .journal import Journal, lock
from .logfile import segments, turn
from .replication import (PRIMARY_QUIET_BEATS, Fenced, Link, LogSnapshot, ReplicatedLog,
                          ReplicationError)
from .snapshots import framed, state_hash

log = logging.getLogger("perpdex.replication")


class Replicated:
    """The replicated role: follows the log, takes over when it is its turn, writes while it
    is the writer, steps down when fenced."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.rc = rc = cfg.replication
        self.node = rc.node or f"{socket.gethostname()}-{os.getpid()}"
        self.kind = rc.role                 # what it is configured to be: primary, standby,
        self.writer = False                 # replica; it writes only once it took over
        self.poll_ms = 2
        self.state = "starting"             # follows from the loop's first turn, once the
        self.takeovers = 0                  # server has made its feed
        self.hash_at = self.snap_at = 0
        self.server = self.seq = self.records = None
        self.link = self.follower = None
        self.lock_fd: int | None = None
        self.started_following = 0.0

    def start(self, server) -> str:
        """Lock the data folder, reach NATS (for 30 s at most) and make the follower; the
        loop's first turn follows the log."""
        self.server, self.seq, self.records = server, server.seq, server.records
        rc = self.rc
        self.lock_fd = lock(self.cfg.data_dir)
        self.link = Link(rc, self.node)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.link.call(self.link.connect(), 35)
                break
            except ReplicationError:
                raise
            except Exception as e:      # noqa: BLE001 - the start waits for NATS a while
                if time.monotonic() > deadline:
                    raise ReplicationError(f"cannot reach NATS at {', '.join(rc.servers)} "
                                           f"(tried for 30 s): {type(e).__name__} {e}")
                time.sleep(0.5)
        self.follower = Follower(self.records)
        server.use(self.follower.engine)
        return (f"perpdex: replicated mode: node {self.node}, role {rc.role}, stream "
                f"{rc.stream} (R{rc.replicas}) on {', '.join(rc.servers)}; following the log")

    # ---- following ---------------------------------------------------------------------------

    def _follow(self):
        """From the start of the log, with nothing of before: a new follower, or a writer that
        was fenced (what it had not appended is dropped: it was never acknowledged)."""
        self.state = "following"
        self.writer = False
        self.seq.durability = NoDurability()
        self.seq.notes = False
        self.seq.pending = []
        self.server.drop_turns()
        self.server.use(self.follower.reset())
        self.started_following = time.monotonic()
        self.link.state = ("standby" if self.kind != "replica" else "replica", 0, 0)
        data = self.link.call(self.link.latest_snapshot(), 60)
        if data is not None:
            self.server.use(self.follower.restore(
                data, f"snapshot in {self.rc.stream}-snapshots"))
        self.link.call(self.link.follow(self.follower.applied + 1), 10)

    def _apply_inbox(self, limit: int = 256):
        """Apply up to `limit` log messages that have arrived, in order. O(records)."""
        inbox = self.link.inbox
        f = self.follower
        for _ in range(limit):
            if not inbox:
                return
            sseq, data = inbox.popleft()
            if sseq <= f.applied:
                continue                    # a redelivery after a reconnect
            if sseq != f.applied + 1:       # trimmed behind a snapshot while this node was
                log.warning("the log goes on at stream seq %d, after %d: starting again from "
                            "the newest snapshot", sseq, f.applied)
                before = f.applied
                self._follow()              # behind: start again from the newest snapshot
                if f.applied <= before:
                    raise RuntimeError(f"the log jumps from stream seq {before} to {sseq}, "
                                       f"and no snapshot covers the gap")
                return
            f.apply(sseq, data, *self.server.outputs())
            self.link.state = (self.link.state[0], f.record, sseq)

    # ---- between loop turns ------------------------------------------------------------------

    def between(self) -> None:
        if self.state == "starting":
            try:
                self._follow()
            except Exception as e:      # noqa: BLE001 - NATS unreachable: the next turn tries
                log.warning("cannot start following the log (%s: %s); trying again",
                            type(e).__name__, e)
                self.state = "starting"
                time.sleep(0.2)
                return
        if self.state == "following":
            self._apply_inbox()
            self.server.flush()             # what applying routed: the feed, private streams
            if self.kind != "replica" and self._may_take_over():
                self._take_over()
            return
        d = self.seq.durability
        if d.fenced is not None:
            log.error("this node was the writer and is no longer (%s): it drops what it had "
                      "not appended (never acknowledged) and follows the log", d.fenced)
            d.close()
            self.writer = False
            self.state = "starting"         # the next turn follows the log from its start
            return
        if self.link.writer_node and time.monotonic() - self.link.last_writer_beat < 1:
            # another node says it writes: an empty turn finds out which of us does
            self.link.writer_node = ""
            if not d.queue and d.replicated == d.seq:
                d.append([])
        self._maybe_hash()
        self._maybe_publish()

    def _maybe_publish(self):
        """Every `snapshot_every` commands, once everything handed in is on the stream (the
        loop never waits for it), a snapshot to the object store, in the NATS thread; the log
        is trimmed behind the oldest one kept. Taking it holds the loop: O(state)."""
        every = self.rc.snapshot_every
        d = self.seq.durability
        eng = self.server.engine
        if (not every or eng.n_commands - self.snap_at < every or d.queue
                or d.replicated != d.seq or self.seq.pending):
            return
        self.snap_at = eng.n_commands
        snap = LogSnapshot(seq=d.seq, commands=eng.n_commands, state_hash=state_hash(eng),
                           engine=eng.snapshot(), gateway=self.records.snapshot(),
                           written_ns=time.time_ns(), stream_seq=d.stream_last)
        future = self.link.spawn(self.link.publish_snapshot(
            d.stream_last, framed(snap), self.rc.keep_snapshots))
        future.add_done_callback(said)

    def _may_take_over(self) -> bool:
        if self.follower.diverged or self.link.inbox:
            return False
        quiet = (PRIMARY_QUIET_BEATS * self.rc.heartbeat_ms if self.kind == "primary"
                 else self.rc.takeover_ms) / 1000
        now = time.monotonic()
        last = max(self.link.last_writer_beat, self.started_following)
        if now - last < quiet:
            return False
        self.started_following = now        # the next try (if this one fails) waits again
        return True

    def _take_over(self):
        """Finish the tail, then append a takeover record fenced on the last message applied:
        if it is taken, this node is the writer from the next record on."""
        link = self.link
        f = self.follower
        t0 = time.perf_counter()
        try:
            last = link.call(link.last_seq(), 5)
            deadline = time.monotonic() + 10
            while f.applied < last:
                self._apply_inbox()
                if time.monotonic() > deadline:
                    log.warning("takeover: the tail (to stream seq %d) did not arrive", last)
                    return
                time.sleep(0.001)
            self.server.flush()
            if f.diverged:                  # the tail said this node's state is not the log's
                return
            rec = f.record + 1
            data, last_rec, _ = turn(f.record, [Takeover(self.node, self.seq.now())])
            ack = link.call(link.append(data, f.applied), 5)
        except Fenced:
            log.info("takeover: another node appended first; following on")
            return
        except Exception as e:          # noqa: BLE001 - no quorum, a timeout: try again later
            log.warning("takeover failed (%s: %s); trying again later", type(e).__name__, e)
            return
        link.call(link.unfollow(), 5)
        link.inbox.clear()
        self.takeovers += 1
        self.seq.durability = ReplicatedLog(link, self._local_journal(last_rec + 1),
                                            ack.seq, last_rec + 1)
        self.seq.notes = True
        engine = self.server.engine
        self.seq.last = max(self.seq.last, engine.clock)
        self.writer = True
        self.state = "writing"
        f.record = last_rec
        f.applied = ack.seq
        link.state = ("primary", last_rec, ack.seq)
        log.info("took over the log at record %d (stream seq %d) after %d commands, in %.3f s",
                 rec, ack.seq, engine.n_commands, time.perf_counter() - t0,
                 extra={"event": "takeover", "record": rec, "stream_seq": ack.seq})
        if not f.booted:                    # a new log: this node boots the venue, in a turn of
            self.server.boot()              # its own even when there is nothing to boot
            if self.seq.durability.seq == last_rec:
                self.seq.durability.append([])
                self.seq.durability.sync()
            f.booted = True
            self.records.attach(engine)
        self.hash_at = self.snap_at = engine.n_commands

    def _local_journal(self, next_seq: int) -> Journal | None:
        """The local copy of what this node writes, from `next_seq` on; a journal left from an
        earlier life of the folder is moved aside (the log is the history now)."""
        j = self.cfg.journal
        if not j.enabled:
            return None
        jdir = self.cfg.data_dir / "journal"
        old = segments(jdir)
        if old:
            aside = self.cfg.data_dir / f"journal-before-{time.time_ns()}"
            aside.mkdir()
            for seg in old:
                os.replace(seg, aside / seg.name)
            log.info("the local journal of an earlier run is moved to %s", aside)
        return Journal(jdir, j.fsync, j.fsync_interval_ms, j.segment_bytes, next_seq=next_seq)

    def _maybe_hash(self):
        """Every `hash_every` commands, the state hash goes into the log for followers."""
        every = self.rc.hash_every
        eng = self.server.engine
        if every and eng.n_commands - self.hash_at >= every:
            self.hash_at = eng.n_commands
            self.seq.note(StateHash(eng.n_commands, state_hash(eng)))

    def maybe_snapshot(self) -> None:
        pass                                # no local snapshots: the log is the history (its
                                            # snapshots are published from `between`)

    def ask_snapshot(self) -> None:
        pass

    def refuse(self, cls) -> str | None:
        """Why this node takes no command now (the detail of an `unavailable` reply), or
        None."""
        if self.state != "writing":
            if self.kind == "replica":
                return ("this server is a read replica: it serves market data and "
                        "queries of the book; send commands to the primary")
            return ("this server is a standby following the primary; send commands to the "
                    "primary (the client fails over by itself when given every endpoint)")
        d = self.seq.durability
        if d.fenced is not None:
            return "this server is no longer the primary; send commands to the one that is"
        if d.unavailable is not None:
            return ("the replicated log cannot take an append now (no quorum of its "
                    "servers); nothing new is accepted until it can, and everything "
                    "acknowledged is kept; retry later")
        return None

    def health_facts(self) -> dict:
        """The `replication` fact of `health` (docs/observability.md)."""
        d = self.seq.durability
        writing = self.state == "writing"
        f = self.follower
        return {"replication": {
            "node": self.node, "role": self.kind,
            "state": "fenced" if writing and d.fenced is not None else self.state,
            "writer": writing, "record": d.seq if writing else f.record,
            "stream_seq": d.stream_last if writing else f.applied,
            "unavailable": writing and d.unavailable is not None,
            "hash_checks": f.hash_checks, "hash_mismatches": f.hash_mismatches,
            "takeovers": self.takeovers, "snapshot_from": f.snapshot_from}}

    def threads(self) -> dict:
        """The NATS client's thread."""
        t = getattr(self.link, "thread", None)
        return {} if t is None else {"nats": None if t.is_alive() else "dead"}

    def close(self) -> None:
        """After the server's close: the link to NATS, the data folder's lock."""
        try:
            if self.link is not None:
                self.link.close()
        finally:
            if self.lock_fd is not None:
                os.close(self.lock_fd)


def said(future):
    """A snapshot that could not be published is logged; the next one is tried as usual."""
    e = future.exception()
    if e is not None:
        log.error("a snapshot could not be published: %s: %s", type(e).__name__, e)
