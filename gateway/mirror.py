"""The SDK's side of the public feed (docs/protocol.md, "Market data"): a local book mirror per
market, kept from a snapshot plus the numbered `book` deltas, each checked against the delta's
CRC32, and resynchronised by itself on a gap or a mismatch; and the trade, mark, funding and
liquidation streams with the same gap detection.

    md = MarketData(client, "tcp://127.0.0.1:7702", ["BTC-PERP"], server_key, secret_key,
                    on_update=print)
    while True:
        md.poll(100)                    # reads what arrived, calls on_update for each change
        book = md.books["BTC-PERP"]
        print(book.best_bid(), book.best_ask(), md.marks.get("BTC-PERP"))

`AsyncMarketData` is the same for `AsyncClient`, with `async for update in md.updates()`.

The procedure is docs/protocol.md's "The snapshot procedure", step by step (the zguide's Clone
pattern): subscribe first and hold the deltas (step 1); ask for a `snapshot` (2); load it and
go through the held deltas (3: `FeedState.loaded`); then each delta by its seq against the
mirror's last seq L (4: `BookMirror.apply`): at or below L it is dropped, at any step (the
snapshot holds it: deltas published before the snapshot can arrive after its reply), L + 1 is
applied and checked, beyond L + 1 is a gap. A gap, a heartbeat that names a seq beyond L (or L
with another hash), a hash that does not chain or a checksum that differs from the mirror's own
means the mirror has lost something: it asks for a new snapshot and goes on (5).

Every message is checked against its topic's hash chain (docs/protocol.md, "Hash chains"): a
`book` delta from the snapshot's `hash` on, the other topics from the first message seen (and
across a gap, from the message or the heartbeat after it). A message whose hash is not the
chain's next is a `chain_break` update, counted in `FeedState.breaks`; a book mirror treats it
like a gap (it resyncs), the other topics go on from the message's own hash.
"""
from __future__ import annotations

from itertools import islice

import msgspec
import zmq
from sortedcontainers import SortedDict

from .chain import CHECKSUM_LEVELS, HASH_SIZE, HEARTBEAT, MIRROR_KINDS, checksum, step, topic
from .transport import curve_socket

_decode = msgspec.msgpack.Decoder().decode


class Resync(Exception):
    """The mirror lost a delta (a gap) or disagrees with the checksum: it needs a snapshot."""


class ChainBreak(Resync):
    """A message's hash is not the next of its topic's chain: changed, lost or reordered."""


def chain_next(head: bytes, body: bytes) -> bytes:
    """The hash a message `body` (as received) must carry after `head`: the chain's step over
    every byte of the body before its last HASH_SIZE (the hash itself). O(len(body))."""
    return step(head, body[:-HASH_SIZE])


class BookMirror:
    """One market's L2 book: price -> total qty a side, the seq of the last delta applied, and
    the checksum check. `seq` is None until the first snapshot."""

    def __init__(self, market: str):
        self.market = market
        self.bids: SortedDict = SortedDict()    # -price -> qty (best first)
        self.asks: SortedDict = SortedDict()    # price -> qty (best first)
        self.seq: int | None = None
        self.head: bytes | None = None          # the book topic's hash at `seq`
        self.resyncs = 0                        # snapshots taken after the first

    def load(self, snap: dict) -> None:
        """Replace the book with a snapshot reply (`seq`, `bids`, `asks`, `checksum`)."""
        if self.seq is not None:
            self.resyncs += 1
        self.bids = SortedDict({-p: q for p, q in snap["bids"]})
        self.asks = SortedDict({p: q for p, q in snap["asks"]})
        self.seq = snap["seq"]
        self.head = snap.get("hash")
        if self.checksum() != snap["checksum"]:
            raise Resync(f"{self.market}: the snapshot's checksum does not match its levels")

    def apply(self, delta: dict, body: bytes | None = None) -> bool:
        """Apply one `book` delta (`body`: its bytes as received, for the hash chain; None:
        not checked); False if it is older than the mirror (dropped). Raises Resync on a gap
        or a checksum mismatch, ChainBreak when its hash is not the chain's next (the mirror
        is then stale). O(changed levels * log levels + 25 + len(body))."""
        seq = delta["seq"]
        if self.seq is None or seq <= self.seq:
            return False                        # step 4: held already (the snapshot has it)
        if seq != self.seq + 1:                 # step 4: a gap
            raise Resync(f"{self.market}: book delta {seq} after {self.seq}: "
                         f"{seq - self.seq - 1} lost")
        if body is not None and self.head is not None:
            head = chain_next(self.head, body)
            if head != delta.get("hash"):
                raise ChainBreak(f"{self.market}: book delta {seq}: its hash is not the "
                                 f"chain's next (changed, or not this history)")
            self.head = head
        for side, key in ((self.bids, -1), (self.asks, 1)):
            for p, q in delta["bids" if key < 0 else "asks"]:
                if q:
                    side[key * p] = q
                else:
                    side.pop(key * p, None)
        self.seq = seq
        if self.checksum() != delta["checksum"]:
            raise Resync(f"{self.market}: checksum mismatch after book delta {seq}")
        return True

    def levels(self, side: str, n: int | None = None) -> list[list[int]]:
        """The best `n` levels (all if None) of "bids" or "asks": [[price, qty], ...]."""
        if side == "bids":
            return [[-k, v] for k, v in islice(self.bids.items(), n)]
        return [[k, v] for k, v in islice(self.asks.items(), n)]

    def best_bid(self):
        """[price, qty] of the best bid, or None."""
        return [-self.bids.peekitem(0)[0], self.bids.peekitem(0)[1]] if self.bids else None

    def best_ask(self):
        return list(self.asks.peekitem(0)) if self.asks else None

    def checksum(self) -> int:
        """The feed's checksum of the mirror's top CHECKSUM_LEVELS levels a side."""
        return checksum([(-p, q) for p, q in islice(self.bids.items(), CHECKSUM_LEVELS)],
                        list(islice(self.asks.items(), CHECKSUM_LEVELS)))


class FeedState:
    """What a subscriber knows, without any I/O: the mirrors, the last seq of every topic, the
    last mark of each market, and what to do with each message. `handle` returns the updates
    to hand to the user and the markets that need a snapshot."""

    def __init__(self, markets, kinds=MIRROR_KINDS):
        self.books = {m: BookMirror(m) for m in markets}
        self.kinds = set(kinds)
        self.last: dict[str, int] = {}          # topic -> last seq seen (not for book)
        self.marks: dict[str, dict] = {}        # market -> its last mark message
        self.gaps: dict[str, int] = {}          # topic -> messages known lost
        self.heads: dict[str, bytes] = {}       # topic -> its hash at last[topic] (not book)
        self.breaks: dict[str, int] = {}        # topic -> messages whose hash did not chain
        self.pending: dict[str, list] = {}      # market -> (delta, body) held until its
                                                # snapshot

    def handle(self, topic: str, msg: dict, body: bytes | None = None) -> tuple[list, set]:
        """One message as received (`body`: its bytes, for the hash chain; None: not
        checked)."""
        updates, stale = [], set()
        kind = msg.get("type")
        if kind == "heartbeat":
            heads = msg.get("heads", {})
            for t, seq in msg["seqs"].items():
                k, _, market = t.partition(".")
                head = heads.get(t)
                if k == "book":
                    book = self.books.get(market)
                    if book is None or book.seq is None or market in self.pending:
                        continue
                    if seq > book.seq:
                        stale.add(market)
                    elif seq == book.seq and None not in (head, book.head) \
                            and head != book.head:
                        self._break(t, seq, updates)
                        updates.append({"type": "resync", "market": market,
                                        "detail": f"{t}: the heartbeat's hash at {seq} is not "
                                                  f"the mirror's"})
                        stale.add(market)
                elif t not in self.last:
                    if k in self.kinds and market in self.books and head is not None:
                        self.last[t] = seq      # the chain is checked from here
                        self._adopt(t, head)
                else:
                    if seq > self.last[t]:
                        self._gap(t, self.last[t], seq + 1, updates, msg)
                        self.last[t] = seq
                        self._adopt(t, head)
                    elif seq == self.last[t] and None not in (head, self.heads.get(t)) \
                            and head != self.heads[t]:
                        self._break(t, seq, updates)
                        self._adopt(t, head)
            return updates, stale
        market = msg.get("market")
        if kind == "book":
            book = self.books.get(market)
            if book is None:
                return updates, stale
            if market in self.pending:
                self.pending[market].append((msg, body))
                return updates, stale
            try:
                if book.apply(msg, body):
                    updates.append({"type": "book", "market": market, "seq": msg["seq"],
                                    "book": book, "delta": msg})
            except Resync as e:
                if isinstance(e, ChainBreak):
                    self._break(topic, msg["seq"], updates)
                stale.add(market)
                updates.append({"type": "resync", "market": market, "detail": str(e)})
            return updates, stale
        last = self.last.get(topic)
        seq = msg["seq"]
        if last is not None and seq != last + 1:
            self._gap(topic, last, seq, updates, msg)
        elif body is not None and topic in self.heads:
            if chain_next(self.heads[topic], body) != msg.get("hash"):
                self._break(topic, seq, updates)
        self.last[topic] = seq
        self._adopt(topic, msg.get("hash"))
        if kind == "mark":
            self.marks[market] = msg
        updates.append(msg)
        return updates, stale

    def _gap(self, topic, last, seq, updates, msg):
        self.gaps[topic] = self.gaps.get(topic, 0) + seq - last - 1
        updates.append({"type": "gap", "topic": topic, "after": last, "lost": seq - last - 1})

    def _adopt(self, topic, head):
        """Go on from `head` (a message's own hash, after a gap or a break)."""
        if head is None:
            self.heads.pop(topic, None)
        else:
            self.heads[topic] = head

    def _break(self, topic, seq, updates):
        self.breaks[topic] = self.breaks.get(topic, 0) + 1
        updates.append({"type": "chain_break", "topic": topic, "seq": seq})

    def loaded(self, market: str, snap: dict) -> tuple[list, set]:
        """A snapshot arrived: load it, then the deltas held meanwhile (those not above its seq
        are dropped)."""
        updates, stale = [], set()
        book = self.books[market]
        held = self.pending.pop(market, [])
        seq = snap["seq"]
        try:
            book.load(snap)
            for d, body in held:
                seq = d["seq"]
                book.apply(d, body)
        except Resync as e:
            if isinstance(e, ChainBreak):
                self._break(f"book.{market}", seq, updates)
            stale.add(market)
            updates.append({"type": "resync", "market": market, "detail": str(e)})
            return updates, stale
        updates.append({"type": "book", "market": market, "seq": book.seq, "book": book,
                        "delta": None})
        return updates, stale


def _sub_socket(ctx, endpoint, markets, server_key, secret_key, kinds, hwm):
    sub = curve_socket(ctx, zmq.SUB, server_key, secret_key) if server_key else ctx.socket(
        zmq.SUB)
    sub.linger = 0
    sub.rcvhwm = hwm
    for m in markets:
        for k in kinds:
            sub.setsockopt(zmq.SUBSCRIBE, topic(k, m))
    sub.setsockopt(zmq.SUBSCRIBE, HEARTBEAT)
    sub.connect(endpoint)
    return sub


class MarketData:
    """The synchronous subscriber: a SUB socket on the feed, snapshots through `client` (a
    gateway.client.Client), a BookMirror per market in `books`, the last mark in `marks`.
    `on_update(update)` is called for every change: a `book` update (with the mirror), a
    `trade`, `mark`, `funding` or `liquidation` message, a `gap` (messages of a stream lost),
    a `chain_break` (a message whose hash does not chain: `breaks` counts them a topic) or a
    `resync` (the mirror is being rebuilt)."""

    def __init__(self, client, endpoint: str, markets, server_key: str | None = None,
                 secret_key: str | None = None, on_update=None, kinds=MIRROR_KINDS,
                 hwm: int = 100_000):
        self.client = client
        self.state = FeedState(markets, kinds)
        self.books = self.state.books
        self.marks = self.state.marks
        self.breaks = self.state.breaks     # topic -> messages whose hash did not chain
        self.on_update = on_update
        self.stale: set[str] = set()            # markets whose mirror needs a snapshot
        self.sock = _sub_socket(client.ctx, endpoint, markets, server_key, secret_key, kinds,
                                hwm)
        for m in markets:
            self._resync(m)

    def _resync(self, market: str) -> None:
        for _ in range(10):                     # each try is one snapshot request
            self.state.pending[market] = []
            self._read(0)                       # deltas already queued are held, in order
            reply = self.client.request("snapshot", market=market)
            if not reply["ok"]:
                raise RuntimeError(f"{reply['reason']}: {reply['detail']}")
            updates, stale = self.state.loaded(market, reply)
            self._deliver(updates)
            if market not in stale:
                self.stale.discard(market)
                return
        raise RuntimeError(f"{market}: the mirror could not be resynchronised in 10 snapshots")

    def _deliver(self, updates):
        if self.on_update is not None:
            for u in updates:
                self.on_update(u)

    def _read(self, timeout_ms: int) -> None:
        """Handle every message that has arrived; the markets found stale join `self.stale`."""
        if not self.sock.poll(timeout_ms):
            return
        recv = self.sock.recv_multipart
        handle = self.state.handle
        while True:
            try:
                topic, body = recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            updates, stale = handle(topic.decode(), _decode(body), body)
            if stale:
                self.stale |= stale
            if updates and self.on_update is not None:
                self._deliver(updates)

    def poll(self, timeout_ms: int = 0) -> int:
        """Read everything that has arrived (waiting up to `timeout_ms` for the first message),
        repairing any mirror that lost a delta. Returns the number of snapshots taken."""
        self._read(timeout_ms)
        n = 0
        while self.stale:
            self._resync(min(self.stale))
            n += 1
        return n

    def close(self):
        self.sock.close(linger=0)


class AsyncMarketData:
    """`MarketData` for asyncio, with an `AsyncClient`: `async for update in md.updates()`.
    Start with `await md.start()`."""

    def __init__(self, client, endpoint: str, markets, server_key: str | None = None,
                 secret_key: str | None = None, kinds=MIRROR_KINDS, hwm: int = 100_000):
        self.client = client
        self.markets = list(markets)
        self.state = FeedState(self.markets, kinds)
        self.books = self.state.books
        self.marks = self.state.marks
        self.breaks = self.state.breaks     # topic -> messages whose hash did not chain
        self.sock = _sub_socket(client.ctx, endpoint, self.markets, server_key, secret_key,
                                kinds, hwm)
        self.ready: list = []

    async def start(self):
        for m in self.markets:
            await self._resync(m)

    async def _resync(self, market: str):
        for _ in range(10):
            self.state.pending[market] = []
            await self._drain()
            reply = await self.client.request("snapshot", market=market)
            if not reply["ok"]:
                raise RuntimeError(f"{reply['reason']}: {reply['detail']}")
            updates, stale = self.state.loaded(market, reply)
            self.ready.extend(updates)
            if market not in stale:
                return
        raise RuntimeError(f"{market}: the mirror could not be resynchronised in 10 snapshots")

    async def _drain(self) -> set:
        stale: set = set()
        while await self.sock.poll(0):
            topic, body = await self.sock.recv_multipart()
            updates, s = self.state.handle(topic.decode(), _decode(body), body)
            stale |= s
            self.ready.extend(updates)
        return stale

    async def updates(self):
        """Every update, in order, for ever; a lost delta is repaired before the next update."""
        while True:
            while self.ready:
                yield self.ready.pop(0)
            topic, body = await self.sock.recv_multipart()
            updates, stale = self.state.handle(topic.decode(), _decode(body), body)
            self.ready.extend(updates)
            stale |= await self._drain()
            for market in sorted(stale):
                await self._resync(market)

    def close(self):
        self.sock.close(linger=0)
