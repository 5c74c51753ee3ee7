"""The public market-data feed (docs/protocol.md, "Market data"): anonymous messages on per-market
topics, each topic numbered 1, 2, 3, ... with no gaps, L2 book deltas with a CRC32 of the top
levels, and the snapshots that line up with them (the zguide's Clone pattern).

The server hands every event of a loop turn to `Feed.event` and, once the turn is durable, asks
`Feed.flush` for the turn's messages. What the engine writes about an account (cids, oids,
accounts, remaining sizes, fees, a stop's trigger) never reaches a public message: a trade is
built field by field from the fill, and a liquidation likewise.

Book deltas are derived here, not in the engine: a market that any order event touched in the
turn is read back with `Engine.book(market, <all levels>)` and compared with the levels published
so far; the changed levels (0: removed) go out as one `book` message per market per turn. That
costs O(levels of the touched books) a turn; an engine call that lists the levels changed since
the last call would make it O(changed levels).
"""
from __future__ import annotations

import zlib

from engine import messages as M

CHECKSUM_LEVELS = 25                # levels a side in the checksum
ALL = 2**31 - 1                     # "every level" for Engine.book
KINDS = ("book", "trade", "mark", "funding", "liquidation")
HEARTBEAT = b"heartbeat"            # the topic of the feed's heartbeat (every topic's last seq)

# Events that may change a book: their market is read back at the end of the turn.
_BOOK_EVENTS = (M.OrderAccepted, M.OrderCancelled, M.OrderAmended, M.OrderTriggered, M.Fill,
                M.LiquidationEvent)


def topic(kind: str, market: str) -> bytes:
    """The topic frame of a public message: `<kind>.<market>`, e.g. b"book.BTC-PERP"."""
    return f"{kind}.{market}".encode()


def checksum_text(bids, asks, levels: int = CHECKSUM_LEVELS) -> str:
    """The checksummed string: the best `levels` bids (best first), `|`, the best `levels` asks
    (best first); each level `price:qty` in decimal integers (ticks, lots), levels joined by
    `,`. An empty book is "|"."""
    return (",".join(f"{p}:{q}" for p, q in bids[:levels]) + "|"
            + ",".join(f"{p}:{q}" for p, q in asks[:levels]))


def checksum(bids, asks) -> int:
    """CRC32 (IEEE 802.3, as zlib.crc32) of `checksum_text` in ASCII: an unsigned 32-bit integer.
    O(CHECKSUM_LEVELS)."""
    return zlib.crc32(checksum_text(bids, asks).encode())


class _Market:
    """The levels of one book as published so far, and the number of each topic."""

    __slots__ = ("bids", "asks", "seqs", "topics")

    def __init__(self, market: str):
        self.bids: dict[int, int] = {}      # price -> total qty, as the last delta left it
        self.asks: dict[int, int] = {}
        self.topics = {k: topic(k, market) for k in KINDS}
        self.seqs = dict.fromkeys(KINDS, 0)


class Feed:
    """The publisher's side of the feed: what each topic has published, and this turn's
    messages. Not thread-safe; the server's loop owns it."""

    def __init__(self, engine, encode):
        self.engine = engine
        self.encode = encode
        self.markets: dict[str, _Market] = {}
        self.touched: set[str] = set()      # markets whose book may have changed this turn
        self.out: list = []                 # (topic, bytes), this turn
        self.handlers = {M.Fill: self._fill, M.Mark: self._mark, M.FundingEvent: self._funding,
                         M.LiquidationEvent: self._liquidation}
        self.book_events = frozenset(_BOOK_EVENTS)
        self.stats = {"book": 0, "levels": 0}

    def _market(self, market: str) -> _Market:
        mk = self.markets.get(market)
        if mk is None:
            mk = self.markets[market] = _Market(market)
        return mk

    def _publish(self, mk: _Market, kind: str, msg: dict) -> None:
        n = mk.seqs[kind] = mk.seqs[kind] + 1
        msg["seq"] = n
        self.out.append((mk.topics[kind], self.encode(msg)))

    # ---- events in (O(1) each) -------------------------------------------------------------

    def event(self, ev) -> None:
        t = type(ev)
        if t in self.book_events:
            self.touched.add(ev.market)
        h = self.handlers.get(t)
        if h is not None:
            h(ev)

    def _fill(self, ev) -> None:
        self._publish(self._market(ev.market), "trade", {
            "type": "trade", "market": ev.market, "seq": 0, "ts": ev.ts, "trade_id": ev.seq,
            "price": ev.price, "qty": ev.qty, "taker_side": ev.taker_side,
            "liquidation": ev.liquidation})

    def _mark(self, ev) -> None:
        self._publish(self._market(ev.market), "mark", {
            "type": "mark", "market": ev.market, "seq": 0, "ts": ev.ts, "index": ev.index,
            "mark": ev.mark})

    def _funding(self, ev) -> None:
        self._publish(self._market(ev.market), "funding", {
            "type": "funding", "market": ev.market, "seq": 0, "ts": ev.ts,
            "rate_ppm": ev.rate_ppm, "index_price": ev.index_price})

    def _liquidation(self, ev) -> None:
        self._publish(self._market(ev.market), "liquidation", {
            "type": "liquidation", "market": ev.market, "seq": 0, "ts": ev.ts,
            "side": ev.side, "qty": ev.qty, "price": ev.price, "kind": ev.kind})

    # ---- the end of a turn -----------------------------------------------------------------

    def flush(self) -> list:
        """This turn's messages, in order: the trades, marks, funding and liquidations as they
        happened, then one `book` delta per market whose levels changed. O(events + levels of
        the touched books)."""
        if self.touched:
            ts = self.engine.clock
            for market in sorted(self.touched):
                self._delta(market, ts)
            self.touched.clear()
        out, self.out = self.out, []
        return out

    def _delta(self, market: str, ts: int) -> None:
        mk = self._market(market)
        now = self.engine.book(market, ALL)
        bids = _changes(mk.bids, now["bids"])
        asks = _changes(mk.asks, now["asks"])
        if not bids and not asks:
            return
        self.stats["book"] += 1
        self.stats["levels"] += len(bids) + len(asks)
        bids.sort(key=_price, reverse=True)
        asks.sort(key=_price)
        self._publish(mk, "book", {
            "type": "book", "market": market, "seq": 0, "ts": ts, "bids": bids, "asks": asks,
            "checksum": checksum(now["bids"], now["asks"])})

    def heartbeat(self, ts: int) -> None:
        """One `heartbeat` message: the last seq of every topic, so that a subscriber learns of a
        lost last message on a quiet topic. Not numbered itself."""
        seqs = {}
        for market in self.engine.market_names():
            mk = self._market(market)
            for kind in KINDS:
                seqs[mk.topics[kind].decode()] = mk.seqs[kind]
        self.out.append((HEARTBEAT, self.encode({"type": "heartbeat", "ts": ts,
                                                 "seqs": seqs})))

    # ---- snapshots -------------------------------------------------------------------------

    def snapshot(self, market: str, depth: int | None) -> dict:
        """The book as the last published delta left it: `seq` (that delta's number), `bids`,
        `asks` (best first, `depth` levels a side, or all), and the checksum of its top levels.
        O(depth) when the market is quiet this turn, O(levels log levels) otherwise."""
        mk = self._market(market)
        if market not in self.touched:      # the engine's book is what was published
            book = self.engine.book(market, ALL if depth is None else max(depth,
                                                                          CHECKSUM_LEVELS))
            bids, asks = book["bids"], book["asks"]
        else:
            bids = sorted(([p, q] for p, q in mk.bids.items()), key=_price, reverse=True)
            asks = sorted(([p, q] for p, q in mk.asks.items()), key=_price)
        crc = checksum(bids, asks)
        if depth is not None:
            bids, asks = bids[:depth], asks[:depth]
        return {"market": market, "seq": mk.seqs["book"], "bids": bids, "asks": asks,
                "checksum": crc}


def _price(level):
    return level[0]


def _changes(published: dict, levels: list) -> list:
    """The levels that differ between `published` and the engine's `levels` ([price, qty] best
    first), as [price, new qty] (0: gone); `published` is brought up to date. O(levels)."""
    changed = []
    seen = {}
    for p, q in levels:
        seen[p] = q
        if published.get(p) != q:
            changed.append([p, q])
    if len(seen) != len(published) or changed:
        for p in published:
            if p not in seen:
                changed.append([p, 0])
        published.clear()
        published.update(seen)
    return changed
