"""Replicated mode (docs/operations.md, "Replication"): the record log on a NATS JetStream
stream, one writer at a time, followers that apply it, and a takeover when the writer falls
silent.

The log is the journal's records (gateway/journal.py: commands, kept replies, deadlines, turn
markers, and two kinds of its own here: `hash` and `takeover`), numbered 1, 2, 3, ... without
gaps, in JetStream messages on the subject `<stream>.log`: a message holds whole records, the
same bytes the local journal writes (the turns queued behind an append, up to
`max_append_bytes`; a longer turn is cut between records). Every append carries

    Nats-Msg-Id: <node>:<first record seq>          JetStream drops a repeat (a retry)
    Nats-Expected-Last-Sequence: <stream seq>       the stream's last message, as the writer
                                                    knows it: any other writer's append since
                                                    makes this one fail

so two nodes that both believe they write can never both append: the one that loses gets
"wrong last sequence", holds back what it had not acknowledged, and becomes a follower.

Snapshots (engine, gateway state, the feed's numbering) go to the object store
`<stream>-snapshots`, named by the stream seq they cover; the log is purged behind the oldest
kept, and a new follower starts from the newest.

A node is in one of two states. Following: it applies every record, in order, through the code
paths that made it (`journal.apply`: the engine, the kept replies, the private streams, the
public feed) and checks its state hash at each `hash` record; it answers commands `unavailable`
and serves everything that reads. Writing: it is the `Durability` of its own Sequencer
(`ReplicatedLog`): a loop turn's messages leave only once JetStream has acknowledged the append
(stored on a quorum of the stream's replicas). Role "replica" follows forever; "standby" takes
over once no writer has been heard for `takeover_ms`; "primary" takes over as soon as it has
caught up and heard no writer for three heartbeats.

The NATS client (nats-py) is asyncio: it runs in a thread of its own (`Link`), and the server's
loop talks to it through thread-safe queues and futures, never waiting for it except in a
takeover.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import threading
import time
import zlib
from collections import deque

import msgspec

from perpdex.engine import Engine

from . import journal as J
from .durability import NoDurability, StateHash, Takeover
from .feed import Feed
from .server import Server

log = logging.getLogger("perpdex.replication")

_encode = msgspec.msgpack.encode
_beat = msgspec.msgpack.Decoder(tuple)
WRONG_LAST_SEQUENCE = 10071     # JetStream's error code for a failed expected-last-sequence
STREAM_IN_USE = 10058           # "stream name already in use" (with another configuration)
PRIMARY_QUIET_BEATS = 3         # a "primary" at start takes over after this many silent beats


class LogSnapshot(J.Snapshot, kw_only=True):
    """A snapshot published to the object store: the journal's snapshot (`seq` is the last
    record it covers; its gateway state holds each public topic's seq and hash-chain head, so
    that a follower starting from it numbers and chains the feed as the writer does) and the
    stream seq of the log message that record is in."""
    stream_seq: int


class ReplicationError(ValueError):
    """Replicated mode cannot start (NATS out of reach, a stream made otherwise): the message
    says why; `perpdex serve` prints it and exits 2."""


class Fenced(RuntimeError):
    """Another node appended to the log since this one last did: this one is not the writer."""


def records(data: bytes):
    """The records of one log message: (seq, kind, payload), each CRC-checked. ValueError for
    anything that is not whole records. O(bytes)."""
    off, size = 0, len(data)
    head = J.HEADER
    while off < size:
        if size - off < head.size:
            raise ValueError(f"a record header cut short at offset {off}")
        length, seq, kind, crc = head.unpack_from(data, off)
        end = off + head.size + length
        if end > size or kind not in J.KINDS or zlib.crc32(
                data[off + head.size:end], zlib.crc32(J.HEAD.pack(length, seq, kind))) != crc:
            raise ValueError(f"a damaged record at offset {off} (seq {seq})")
        yield seq, kind, data[off + head.size:end]
        off = end


def chunks(data: bytes, limit: int) -> list[tuple[int, bytes]]:
    """Whole records of `data` in runs of at most `limit` bytes (a record longer than that on
    its own): [(seq of the run's last record, bytes)]. A loop turn of a busy venue (a thousand
    requests and their kept replies) is more than one JetStream message may hold. O(records)."""
    out = []
    head = J.HEADER
    start = off = 0
    last = 0
    size = len(data)
    while off < size:
        length, seq, _, _ = head.unpack_from(data, off)
        end = off + head.size + length
        if end - start > limit and off > start:
            out.append((last, data[start:off]))
            start = off
        last = seq
        off = end
    out.append((last, data[start:]))
    return out


def first_seq(data: bytes) -> int:
    """The seq of a log message's first record. O(1)."""
    return struct.unpack_from("<Q", data, 4)[0]


class Link:
    """The NATS connection, in its own thread running an asyncio loop. `call` runs a coroutine
    there and waits for it (a takeover, the start); everything else goes through `spawn` and
    the thread-safe `inbox` (log messages for a follower, in order)."""

    def __init__(self, rc, node: str):
        self.rc = rc
        self.node = node
        self.log_subject = f"{rc.stream}.log"
        self.beat_subject = f"{rc.stream}.beat"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="nats", daemon=True)
        self.thread.start()
        self.nc = self.js = None
        self.inbox: deque = deque()         # (stream seq, data) of the log, in order
        self.sub = None
        self.last_writer_beat = 0.0         # monotonic s: the last sign of life of a writer
        self.writer_node = ""
        self.state = ("standby", 0, 0)      # what our beats say: role, record seq, stream seq
        self.connected = False
        self.closing = False
        self.tasks: list = []               # ours in the NATS thread, cancelled at close

    def call(self, coro, timeout: float):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    # ---- in the NATS thread ------------------------------------------------------------------

    async def connect(self):
        import nats
        from nats.js import api

        async def disconnected():
            self.connected = False
            if not self.closing:
                log.warning("NATS: disconnected; reconnecting")

        async def reconnected():
            self.connected = True           # what was not heard while cut off says nothing:
            self.last_writer_beat = time.monotonic()    # the writer gets a full takeover_ms
            log.info("NATS: reconnected to %s", self.nc.connected_url.netloc)

        async def error(e):
            log.debug("NATS: %s", e)

        self.nc = await nats.connect(
            servers=list(self.rc.servers), name=self.node, connect_timeout=1,
            reconnect_time_wait=0.1, max_reconnect_attempts=-1, allow_reconnect=True,
            ping_interval=1, max_outstanding_pings=2, disconnected_cb=disconnected,
            reconnected_cb=reconnected, error_cb=error)
        self.connected = True
        self.js = self.nc.jetstream(timeout=self.rc.append_timeout_ms / 1000)
        await self.nc.subscribe(self.beat_subject, cb=self._on_beat)
        config = api.StreamConfig(
            name=self.rc.stream, subjects=[self.log_subject], num_replicas=self.rc.replicas,
            storage=api.StorageType.FILE, duplicate_window=120.0,
            allow_direct=True)
        deadline = time.monotonic() + 30
        while True:             # a cluster just started elects its JetStream leader first
            try:
                await self.js.add_stream(config)
                break
            except Exception as e:      # noqa: BLE001 - retried until the deadline, then said
                if getattr(e, "err_code", None) == STREAM_IN_USE:
                    info = await self.js.stream_info(self.rc.stream)
                    if info.config.num_replicas != self.rc.replicas:
                        raise ReplicationError(
                            f"stream {self.rc.stream} exists with {info.config.num_replicas} "
                            f"replicas, the configuration says {self.rc.replicas}")
                    break
                if time.monotonic() > deadline:
                    raise ReplicationError(f"cannot create stream {self.rc.stream}: {e}")
                await asyncio.sleep(0.2)
        while True:             # ... and then the stream its own leader: until then an append
            info = await self.js.stream_info(self.rc.stream)        # finds no responder
            if info.cluster is None or info.cluster.leader:
                break
            if time.monotonic() > deadline:
                raise ReplicationError(f"stream {self.rc.stream} has no leader after 30 s")
            await asyncio.sleep(0.1)
        self.tasks.append(self.loop.create_task(self._beats()))

    async def _beats(self):
        """Our heartbeat, every heartbeat_ms, on core NATS (not in the stream)."""
        every = self.rc.heartbeat_ms / 1000
        while True:
            await asyncio.sleep(every)
            if self.nc.is_connected:
                try:
                    await self.nc.publish(self.beat_subject, _encode([self.node, *self.state]))
                except Exception:       # noqa: BLE001 - a beat lost is a beat late
                    pass

    async def _on_beat(self, msg):
        try:
            node, role, *_ = _beat.decode(msg.data)
        except (msgspec.DecodeError, ValueError):
            return
        if node != self.node and role == "primary":
            self.last_writer_beat = time.monotonic()
            self.writer_node = node

    async def _on_log(self, msg):
        self.inbox.append((msg.metadata.sequence.stream, msg.data))
        self.last_writer_beat = time.monotonic()

    async def follow(self, start: int):
        """Deliver the log from stream seq `start` on into `inbox` (an ordered consumer: in
        order, without gaps, recreated by the client after a reconnect)."""
        from nats.js import api
        await self.unfollow()
        self.inbox.clear()
        self.sub = await self.js.subscribe(
            self.log_subject, cb=self._on_log, ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            config=api.ConsumerConfig(opt_start_seq=start), idle_heartbeat=1.0,
            pending_msgs_limit=-1, pending_bytes_limit=256 << 20)

    async def unfollow(self):
        if self.sub is not None:
            try:
                await self.sub.unsubscribe()
            except Exception:           # noqa: BLE001 - gone already
                pass
            self.sub = None

    async def snapshots(self, create: bool = True):
        """The object store of snapshots, with the stream's replicas: made when missing, or
        None with `create` False."""
        from nats.js import api
        from nats.js.errors import BucketNotFoundError
        bucket = f"{self.rc.stream}-snapshots"
        try:
            return await self.js.object_store(bucket)
        except BucketNotFoundError:
            if not create:
                return None
            return await self.js.create_object_store(bucket, config=api.ObjectStoreConfig(
                replicas=self.rc.replicas, storage=api.StorageType.FILE))

    async def latest_snapshot(self) -> bytes | None:
        """The newest snapshot's bytes (names sort by the stream seq they cover), or None."""
        store = await self.snapshots(create=False)
        if store is None:
            return None
        try:
            names = sorted(o.name for o in await store.list())
        except Exception as e:          # noqa: BLE001 - nats-py: an empty store raises
            if type(e).__name__ != "NotFoundError":
                raise
            return None
        return (await store.get(names[-1])).data if names else None

    async def publish_snapshot(self, stream_seq: int, data: bytes, keep: int):
        """Put a snapshot, keep the newest `keep`, and trim the log behind the oldest kept."""
        store = await self.snapshots()
        await store.put(f"{stream_seq:020d}", data)
        names = sorted(o.name for o in await store.list())
        for old in names[:-keep]:
            await store.delete(old)
        oldest = int(names[-keep:][0])
        await self.js.purge_stream(self.rc.stream, seq=oldest + 1)   # keeps seq > oldest
        log.info("snapshot at stream seq %d published (%d bytes); the log is trimmed to "
                 "stream seq %d on", stream_seq, len(data), oldest + 1)

    async def last_seq(self) -> int:
        return (await self.js.stream_info(self.rc.stream)).state.last_seq

    async def append(self, data: bytes, expected: int):
        """Append one message after stream seq `expected`; its ack. Fenced if another writer
        appended since; any other failure raises as it is (timeout, no quorum)."""
        from nats.js.errors import APIError
        headers = {"Nats-Msg-Id": f"{self.node}:{first_seq(data)}",
                   "Nats-Expected-Last-Sequence": str(expected)}
        try:
            return await self.js.publish(self.log_subject, data, headers=headers)
        except APIError as e:
            if e.err_code == WRONG_LAST_SEQUENCE:
                raise Fenced(f"the log moved on past stream seq {expected}: {e.description}")
            raise

    def close(self):
        self.closing = True

        async def drain():
            for task in self.tasks:
                task.cancel()
            await self.unfollow()
            if self.nc is not None:
                await self.nc.close()
        try:
            self.call(drain(), 3)
        except Exception:               # noqa: BLE001 - closing anyway
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=3)


class ReplicatedLog:
    """The writer's Durability: each loop turn's records go to the local journal and, in the
    NATS thread, to the stream, appended in order and fenced (`Link.append`); a turn is durable
    once both have it (pipelined: the loop goes on meanwhile). Turns queued while an append is
    in flight go together in the next one (group commit), up to `max_append_bytes`.

    An append that fails for any other reason than fencing (no quorum, a timeout) is retried,
    the same message with the same id, every 250 ms until it is taken: meanwhile `unavailable`
    says why, and the server takes no new command. Fenced: `fenced` says so and nothing more
    is appended."""

    notes = True
    pipelined = True
    RETRY = 0.25

    def __init__(self, link: Link, local: J.Journal | None, stream_last: int, next_seq: int):
        self.link = link
        self.local = local
        self.seq = next_seq - 1             # the last record handed in
        self.replicated = self.seq          # the last record the stream acknowledged
        self.stream_last = stream_last      # the stream seq of our last append
        self.queue: deque = deque()         # (last record seq, bytes), not yet appended
        self.cond = threading.Condition()
        self.fenced: str | None = None
        self.unavailable: str | None = None
        self.appends = 0
        self.closed = False
        self.wake = None
        link.call(self._start(), 5)

    async def _start(self):
        self.wake = asyncio.Event()
        self.link.tasks.append(self.link.loop.create_task(self._writer()))

    def append(self, batch: list) -> None:
        """Hand one loop turn over. O(bytes); the append itself happens in the NATS thread."""
        data, last, n = J.turn(self.seq, batch)
        if self.closed:                     # stepped down: nothing of it is ever acknowledged
            self.seq = last
            return
        if self.local is not None:
            self.local.write_turn(data, last, n)
        self.seq = last
        self.queue.extend(chunks(data, self.link.rc.max_append_bytes))
        self.link.loop.call_soon_threadsafe(self.wake.set)

    def durable(self, seq: int) -> bool:
        """Whether record `seq` is on the stream (and the local journal). O(1)."""
        return self.replicated >= seq and (self.local is None or self.local.durable(seq))

    def sync(self, timeout: float = 10.0) -> None:
        """Wait until everything appended is on the stream; OSError when fenced, or when the
        stream has not taken it within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.replicated < self.seq and self.fenced is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OSError(f"the replicated log did not take record {self.seq} in "
                                  f"{timeout:.0f} s ({self.unavailable})")
                self.cond.wait(min(left, 0.5))
        if self.fenced is not None:
            raise OSError(f"fenced: {self.fenced}")
        if self.local is not None:
            self.local.sync()

    async def _writer(self):
        limit = self.link.rc.max_append_bytes
        while not self.closed:
            await self.wake.wait()
            self.wake.clear()
            while self.queue and self.fenced is None:
                last, data = self.queue.popleft()
                parts, size = [data], len(data)
                while self.queue and size + len(self.queue[0][1]) <= limit:
                    last, data = self.queue.popleft()
                    parts.append(data)
                    size += len(data)
                message = b"".join(parts)
                while True:
                    try:
                        ack = await self.link.append(message, self.stream_last)
                        break
                    except Fenced as e:
                        with self.cond:
                            self.fenced = str(e)
                            self.cond.notify_all()
                        log.error("fenced: %s; this node stops writing", e)
                        return
                    except Exception as e:      # noqa: BLE001 - retried: see the class
                        why = f"{type(e).__name__}: {e}".rstrip(": ")
                        if self.unavailable is None:
                            log.error("the replicated log does not take appends (%s); new "
                                      "commands are answered `unavailable`", why)
                        self.unavailable = why
                        await asyncio.sleep(self.RETRY)
                if self.unavailable is not None:
                    log.warning("the replicated log takes appends again")
                self.unavailable = None
                self.stream_last = ack.seq
                self.appends += 1
                self.link.state = ("primary", last, ack.seq)
                with self.cond:
                    self.replicated = last
                    self.cond.notify_all()

    def close(self):
        self.closed = True
        if self.wake is not None:
            self.link.loop.call_soon_threadsafe(self.wake.set)
        if self.local is not None:
            self.local.close()


class ReplicatedServer(Server):
    """`perpdex serve` in replicated mode: follows the log, takes over when it is its turn,
    writes while it is the writer, steps down when fenced."""

    def _start(self, journaled: bool) -> str:
        rc = self.cfg.replication
        self.rc = rc
        self.node = rc.node or f"{socket.gethostname()}-{os.getpid()}"
        self.role = rc.role                 # what it is configured to be
        self.lock_fd = J.lock(self.cfg.data_dir)
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
        self.hash_checks = self.hash_mismatches = 0
        self.takeovers = 0
        self.diverged: str | None = None
        self.hash_at = self.snap_at = 0
        self.snapshot_from = 0
        self.poll_ms = 2
        self.state = "starting"             # follows from the loop's first turn, once the
        self.writer = False                 # server has made its feed
        self.record = self.applied = 0
        return (f"perpdex: replicated mode: node {self.node}, role {rc.role}, stream "
                f"{rc.stream} (R{rc.replicas}) on {', '.join(rc.servers)}; following the log")

    # ---- following ---------------------------------------------------------------------------

    def _follow(self):
        """From the start of the log, with nothing of before: a new follower, or a writer that
        was fenced (what it had not appended is dropped: it was never acknowledged)."""
        self.state = "following"
        self.writer = False
        self.engine = self.seq.engine = Engine()
        self.seq.durability = NoDurability()
        self.seq.notes = False
        self.seq.pending = []
        for kept in (self.replies, self.streams, self.deadlines, self.owners, self.sim_index):
            kept.clear()
        for sess in self.sessions.values():
            sess.orders.clear()
        self.held.clear()
        self.out, self.stream_out, self.pub_out = [], [], []
        self.feed = Feed(self.engine, self.encode)
        self.booted = False
        self.boot_next = False
        self.record_kinds = 0
        self.applied = 0                    # the stream seq applied last
        self.record = 0                     # the record seq applied last
        self.started_following = time.monotonic()
        self.link.state = ("standby" if self.role != "replica" else "replica", 0, 0)
        data = self.link.call(self.link.latest_snapshot(), 60)
        if data is not None:
            self._restore(data)
        self.link.call(self.link.follow(self.applied + 1), 10)

    def _restore(self, data: bytes):
        """Start from a published snapshot: the engine, the gateway's state, the feed's
        numbering; then the log after it."""
        snap = J.unframed(data, f"snapshot in {self.rc.stream}-snapshots", LogSnapshot)
        self.engine = self.seq.engine = J.engine_from_snapshot(snap.engine)
        if J.state_hash(self.engine) != snap.state_hash:
            raise RuntimeError(f"the snapshot at stream seq {snap.stream_seq} does not hold the "
                               f"state its hash says")
        J.restore_gateway_state(self, snap.gateway)
        self.feed = Feed(self.engine, self.encode)
        self.feed.restore_chains(snap.gateway.get("public", {}))   # seqs and hash heads
        self.booted = True
        self.record, self.applied = snap.seq, snap.stream_seq
        self.snapshot_from = snap.stream_seq
        log.info("started from the snapshot at stream seq %d (record %d, %d commands)",
                 snap.stream_seq, snap.seq, snap.commands)

    def _apply_inbox(self, limit: int = 256):
        """Apply up to `limit` log messages that have arrived, in order. O(records)."""
        inbox = self.link.inbox
        for _ in range(limit):
            if not inbox:
                return
            sseq, data = inbox.popleft()
            if sseq <= self.applied:
                continue                    # a redelivery after a reconnect
            if sseq != self.applied + 1:    # trimmed behind a snapshot while this node was
                log.warning("the log goes on at stream seq %d, after %d: starting again from "
                            "the newest snapshot", sseq, self.applied)
                before = self.applied
                self._follow()              # behind: start again from the newest snapshot
                if self.applied <= before:
                    raise RuntimeError(f"the log jumps from stream seq {before} to {sseq}, "
                                       f"and no snapshot covers the gap")
                return
            for seq, kind, payload in records(data):
                if seq != self.record + 1:
                    raise RuntimeError(f"stream seq {sseq}: record {seq} after {self.record}")
                self.record = seq
                if kind == J.TURN:
                    # the turn after the first takeover is the boot: the feed (and the private
                    # streams) start after it, as the writer's did
                    if self.booted:         # a delta per market per turn, as the writer's
                        self.pub_out.extend(self.feed.flush())
                    elif self.boot_next:
                        self.booted = True
                        self.feed = Feed(self.engine, self.encode)
                    elif self.record_kinds & (1 << J.TAKEOVER):
                        self.boot_next = True
                elif kind == J.HASH:
                    self._check_hash(J.decode(kind, payload))
                elif kind == J.TAKEOVER:
                    self.record_kinds |= 1 << J.TAKEOVER
                    t = J.decode(kind, payload)
                    log.info("the log: %s took over at record %d", t.node, seq)
                else:
                    J.apply(self, seq, kind, payload, route=self.booted)
            self.applied = sseq
            self.link.state = (self.link.state[0], self.record, sseq)

    def _check_hash(self, h: StateHash):
        mine = J.state_hash(self.engine)
        self.hash_checks += 1
        if mine != h.state_hash or self.engine.n_commands != h.commands:
            self.hash_mismatches += 1
            self.diverged = (f"after {h.commands} commands the writer's state hash is "
                             f"{h.state_hash}, this node's {mine} after "
                             f"{self.engine.n_commands}")
            log.error("this node's state differs from the writer's: %s; it will never take "
                      "over", self.diverged)

    # ---- the loop's hook ---------------------------------------------------------------------

    def _between(self):
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
            self._flush()                   # what applying routed: the feed, private streams
            if self.role != "replica" and self._may_take_over():
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
        if (not every or self.engine.n_commands - self.snap_at < every or d.queue
                or d.replicated != d.seq or self.seq.pending):
            return
        self.snap_at = self.engine.n_commands
        eng = self.engine
        snap = LogSnapshot(seq=d.seq, commands=eng.n_commands, state_hash=J.state_hash(eng),
                           engine=eng.snapshot(), gateway=J.gateway_state(self),
                           written_ns=time.time_ns(), stream_seq=d.stream_last)
        future = self.link.spawn(self.link.publish_snapshot(
            d.stream_last, J.framed(snap), self.rc.keep_snapshots))
        future.add_done_callback(_said)

    def _may_take_over(self) -> bool:
        if self.diverged or self.link.inbox:
            return False
        quiet = (PRIMARY_QUIET_BEATS * self.rc.heartbeat_ms if self.role == "primary"
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
        t0 = time.perf_counter()
        try:
            last = link.call(link.last_seq(), 5)
            deadline = time.monotonic() + 10
            while self.applied < last:
                self._apply_inbox()
                if time.monotonic() > deadline:
                    log.warning("takeover: the tail (to stream seq %d) did not arrive", last)
                    return
                time.sleep(0.001)
            self._flush()
            if self.diverged:               # the tail said this node's state is not the log's
                return
            rec = self.record + 1
            data, last_rec, _ = J.turn(self.record, [Takeover(self.node, self.seq.now())])
            ack = link.call(link.append(data, self.applied), 5)
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
        self.seq.last = max(self.seq.last, self.engine.clock)
        self.writer = True
        self.state = "writing"
        self.record = last_rec
        self.applied = ack.seq
        link.state = ("primary", last_rec, ack.seq)
        log.info("took over the log at record %d (stream seq %d) after %d commands, in %.3f s",
                 rec, ack.seq, self.engine.n_commands, time.perf_counter() - t0,
                 extra={"event": "takeover", "record": rec, "stream_seq": ack.seq})
        if not self.booted:                 # a new log: this node boots the venue, in a turn of
            self._boot()                    # its own even when there is nothing to boot
            if self.seq.durability.seq == last_rec:
                self.seq.durability.append([])
                self.seq.durability.sync()
            self.booted = True
            self.feed = Feed(self.engine, self.encode)
        self.hash_at = self.snap_at = self.engine.n_commands

    def _local_journal(self, next_seq: int) -> J.Journal | None:
        """The local copy of what this node writes, from `next_seq` on; a journal left from an
        earlier life of the folder is moved aside (the log is the history now)."""
        j = self.cfg.journal
        if not j.enabled:
            return None
        jdir = self.cfg.data_dir / "journal"
        old = J.segments(jdir)
        if old:
            aside = self.cfg.data_dir / f"journal-before-{time.time_ns()}"
            aside.mkdir()
            for seg in old:
                os.replace(seg, aside / seg.name)
            log.info("the local journal of an earlier run is moved to %s", aside)
        return J.Journal(jdir, j.fsync, j.fsync_interval_ms, j.segment_bytes, next_seq=next_seq)

    def _maybe_hash(self):
        """Every `hash_every` commands, the state hash goes into the log for followers."""
        every = self.rc.hash_every
        if every and self.engine.n_commands - self.hash_at >= every:
            self.hash_at = self.engine.n_commands
            self.seq.note(StateHash(self.engine.n_commands, J.state_hash(self.engine)))

    def _maybe_snapshot(self):
        pass                                # replicated mode: the log is the history

    def _refuse(self, cls) -> str | None:
        if self.state != "writing":
            if self.role == "replica":
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
        facts = super().health_facts()
        d = self.seq.durability
        writing = self.state == "writing"
        facts["replication"] = {
            "node": self.node, "role": self.role,
            "state": "fenced" if writing and d.fenced is not None else self.state,
            "writer": writing, "record": d.seq if writing else self.record,
            "stream_seq": d.stream_last if writing else self.applied,
            "unavailable": writing and d.unavailable is not None,
            "hash_checks": self.hash_checks, "hash_mismatches": self.hash_mismatches,
            "takeovers": self.takeovers, "snapshot_from": self.snapshot_from}
        return facts

    def close(self):
        try:
            super().close()
        finally:
            self.link.close()
            os.close(self.lock_fd)


def _said(future):
    """A snapshot that could not be published is logged; the next one is tried as usual."""
    e = future.exception()
    if e is not None:
        log.error("a snapshot could not be published: %s: %s", type(e).__name__, e)


def read_log(servers: list[str], stream: str, timeout: float = 10.0) -> list[tuple]:
    """Every message of the log, (stream seq, bytes, Nats-Msg-Id), oldest first: for `replay`
    and the tests. O(messages), one request each."""
    import nats

    async def read():
        nc = await nats.connect(servers=servers, connect_timeout=2, max_reconnect_attempts=3)
        try:
            js = nc.jetstream(timeout=timeout)
            state = (await js.stream_info(stream)).state
            out = []
            for sseq in range(state.first_seq, state.last_seq + 1):
                m = await js.get_msg(stream, sseq)
                out.append((sseq, m.data, (m.headers or {}).get("Nats-Msg-Id", "")))
            return out
        finally:
            await nc.close()
    return asyncio.run(read())


def replay(messages: list[tuple]) -> Engine:
    """A fresh engine that ran every command of the log, in order (the log must start at its
    first message: no trimming). O(records)."""
    engine = Engine()
    for _, data, *_ in messages:
        for _, kind, payload in records(data):
            if kind == J.COMMAND:
                engine.execute(J.decode(kind, payload))
    return engine
