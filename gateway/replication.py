"""Replicated mode (docs/operations.md, "Replication"): the record log on a NATS JetStream
stream, one writer at a time, followers that apply it, and a takeover when the writer falls
silent.

The log is the journal's records (gateway/logfile.py: commands, kept replies, deadlines, turn
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

A node is in one of two states (gateway/replicated.py). Following: it applies every record, in
order, as serving made it (gateway/follower.py: the engine and the venue's records, the private
streams and the public feed among them) and checks its state hash at each `hash` record; it
answers commands `unavailable` and serves everything that reads. Writing: it is the
`Durability` of its own Sequencer (`ReplicatedLog`): a loop turn's messages leave only once
JetStream has acknowledged the append (stored on a quorum of the stream's replicas). Role
"replica" follows forever; "standby" takes over once no writer has been heard for
`takeover_ms`; "primary" takes over as soon as it has caught up and heard no writer for three
heartbeats.

The NATS client (nats-py) is asyncio: it runs in a thread of its own (`Link`), and the server's
loop talks to it through thread-safe queues and futures, never waiting for it except in a
takeover.
"""
from __future__ import annotations

import asyncio
import logging
import struct
import threading
import time
import zlib
from collections import deque

import msgspec

from perpdex.engine import Engine

from .journal import Journal
from .logfile import COMMAND, HEAD, HEADER, KINDS, decode, turn
from .snapshots import Snapshot

log = logging.getLogger("perpdex.replication")

_encode = msgspec.msgpack.encode
_beat = msgspec.msgpack.Decoder(tuple)
WRONG_LAST_SEQUENCE = 10071     # JetStream's error code for a failed expected-last-sequence
STREAM_IN_USE = 10058           # "stream name already in use" (with another configuration)
PRIMARY_QUIET_BEATS = 3         # a "primary" at start takes over after this many silent beats


class LogSnapshot(Snapshot, kw_only=True):
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
    head = HEADER
    while off < size:
        if size - off < head.size:
            raise ValueError(f"a record header cut short at offset {off}")
        length, seq, kind, crc = head.unpack_from(data, off)
        end = off + head.size + length
        if end > size or kind not in KINDS or zlib.crc32(
                data[off + head.size:end], zlib.crc32(HEAD.pack(length, seq, kind))) != crc:
            raise ValueError(f"a damaged record at offset {off} (seq {seq})")
        yield seq, kind, data[off + head.size:end]
        off = end


def chunks(data: bytes, limit: int) -> list[tuple[int, bytes]]:
    """Whole records of `data` in runs of at most `limit` bytes (a record longer than that on
    its own): [(seq of the run's last record, bytes)]. A loop turn of a busy venue (a thousand
    requests and their kept replies) is more than one JetStream message may hold. O(records)."""
    out = []
    head = HEADER
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

    def __init__(self, link: Link, local: Journal | None, stream_last: int, next_seq: int):
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
        data, last, n = turn(self.seq, batch)
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
            if kind == COMMAND:
                engine.execute(decode(kind, payload))
    return engine
