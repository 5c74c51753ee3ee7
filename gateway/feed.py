"""The public market-data feed (docs/protocol.md, "Market data"): anonymous messages on per-market
topics, each topic numbered 1, 2, 3, ... with no gaps, L2 book deltas with a CRC32 of the top
levels, and the snapshots that line up with them (the zguide's Clone pattern).

The server hands every event of a loop turn to `Feed.row` (its index row from Engine.route;
`Feed.event` takes an event Struct) and, once the turn is durable, asks
`Feed.flush` for the turn's messages. What the engine writes about an account (cids, oids,
accounts, remaining sizes, fees, a stop's trigger) never reaches a public message: a trade is
built field by field from the fill, and a liquidation likewise.

Book deltas are derived here, not in the engine. The order events of a turn name the price
levels they touch (an accepted order its price, a fill the maker's level, a cancel or an amend
the level of the order it names, which the feed remembers by oid), and at the end of the turn
each touched book is read back with `Engine.book(market, depth)` just deep enough to hold every
touched level (`_delta`), and compared with the levels published so far; the changed levels
(0: removed) go out as one `book` message per market per turn. A cancel far down a deep book
costs a read that deep: an engine call that gives the total of given price levels (or lists the
levels changed since the last call) would make it O(changed levels). An event the feed cannot
place (a liquidation, an oid it never saw) reads the whole book back.

Each topic is a hash chain (docs/protocol.md, "Hash chains"): every message ends with its
`hash`, the blake2b-128 of the topic's previous hash and every byte of the message before the
hash itself. The chain heads and the topics' numbers are functions of the journal alone (the
events and the loop-turn boundaries), so recovery rebuilds them and the feed goes on where it
was (gateway/recovery.py).
"""
from __future__ import annotations

import zlib
from itertools import islice

import msgspec
from sortedcontainers import SortedDict

from perpdex.engine import ROUTE, ROW_FIELDS, messages as M

from .chain import (CHECKSUM_LEVELS, FEED_KINDS as KINDS, HASH_SIZE, HEARTBEAT, START,
                    checksum, side_text, step, topic)

ALL = 2**31 - 1                     # "every level" for Engine.book
_SIDE = {side: i for i, side in enumerate(M.SIDES)}
_ACCEPTED, _CANCELLED, _AMENDED, _FILL, _MARK, _RARE = (
    ROUTE[k] for k in ("order_accepted", "order_cancelled", "order_amended", "fill", "mark",
                       "rare"))
# The handlers below take a row's fields from its 5th (the 8th for a fill) in their order:
# held against the engine's ROW_FIELDS at import.
assert ROW_FIELDS["fill"][7:] == ("market", "taker_side", "price", "qty", "taker_oid",
                                  "taker_remaining", "maker_oid", "maker_remaining",
                                  "liquidation", "seq", "ts")
assert ROW_FIELDS["order_accepted"][4:8] == ("oid", "market", "side", "price")
assert ROW_FIELDS["order_cancelled"][4:] == ("oid", "market")
assert ROW_FIELDS["order_amended"][4:] == ("oid", "market", "price")
assert ROW_FIELDS["mark"][4:] == ("market", "index", "mark", "seq", "ts")
_PLACEHOLDER = bytes(HASH_SIZE)     # the hash's place while the message is encoded


class _Market:
    """The levels of one book as published so far, what this turn touched, and the number of
    each topic."""

    __slots__ = ("bids", "asks", "seqs", "heads", "topics", "touched", "full", "text")

    def __init__(self, market: str):
        self.bids = SortedDict()            # -price -> total qty, as the last delta left it
        self.asks = SortedDict()            # price -> total qty
        self.topics = {k: topic(k, market) for k in KINDS}
        self.seqs = dict.fromkeys(KINDS, 0)
        self.heads = dict.fromkeys(KINDS, START)  # each topic's hash at its seq
        self.touched = (set(), set())       # prices this turn may have changed: bids, asks
        self.full = False                   # this turn needs a read of every level
        self.text = ["", ""]                # each side's part of the checksummed string


class Feed:
    """The publisher's side of the feed: what each topic has published, the resting orders'
    levels (oid -> market, side, price: to know which level a cancel or an amend touches), and
    this turn's messages. Not thread-safe; the server's loop owns it."""

    def __init__(self, engine, encode):
        self.engine = engine
        self.encode = encode
        self.markets: dict[str, _Market] = {}
        self.orders: dict[int, tuple] = {}  # oid -> (_Market, side 0 bid / 1 ask, price)
        self.touched: set[str] = set()      # markets whose book may have changed this turn
        self.out: list = []                 # (topic, bytes), this turn
        self.handlers = {
            M.OrderAccepted: lambda e: self.accepted(e.oid, e.market, _SIDE[e.side], e.price),
            M.OrderCancelled: lambda e: self.gone(e.oid, e.market),
            M.OrderAmended: lambda e: self.amended(e.oid, e.market, e.price),
            M.Fill: lambda e: self.fill(e.market, _SIDE[e.taker_side], e.price, e.qty,
                                        e.taker_oid, e.taker_remaining, e.maker_oid,
                                        e.maker_remaining, e.liquidation, e.seq, e.ts),
            M.Mark: lambda e: self.mark(e.market, e.index, e.mark, e.seq, e.ts),
            M.OrderTriggered: self._triggered, M.FundingEvent: self._funding,
                         M.LiquidationEvent: self._liquidation,
                         M.MarketStatusEvent: self._status, M.MarketUpdated: self._status}
        self.stats = {"book": 0, "levels": 0, "full_reads": 0, "reads": 0}
        for market in engine.market_names():    # an engine that has books already (a replay)
            mk = self._market(market)
            now = engine.book(market, ALL)
            _all_changes(mk.bids, now["bids"], -1)
            _all_changes(mk.asks, now["asks"], 1)
            mk.text = [side_text(now["bids"]), side_text(now["asks"])]

    def _market(self, market: str) -> _Market:
        mk = self.markets.get(market)
        if mk is None:
            mk = self.markets[market] = _Market(market)
        return mk

    def _publish(self, mk: _Market, kind: str, msg: dict) -> None:
        """Number `msg` in its topic and chain it: `hash` goes last, and covers the topic's
        previous hash and every byte before it. One blake2b of the message's size."""
        n = mk.seqs[kind] = mk.seqs[kind] + 1
        msg["seq"] = n
        msg["hash"] = _PLACEHOLDER
        body = self.encode(msg)[:-HASH_SIZE]
        head = mk.heads[kind] = step(mk.heads[kind], body)
        self.out.append((mk.topics[kind], body + head))

    # ---- the chains' state, for snapshots of the venue's records (gateway/records.py) --------

    def chains(self) -> dict:
        """{market: {kind: [seq, hash]}} of every topic that published something."""
        return {m: {k: [mk.seqs[k], mk.heads[k]] for k in KINDS if mk.seqs[k]}
                for m, mk in self.markets.items() if any(mk.seqs.values())}

    def restore_chains(self, chains: dict) -> None:
        """Continue every topic from `chains` (as `chains()` gave them)."""
        for market, topics in chains.items():
            mk = self._market(market)
            for kind, (seq, head) in topics.items():
                mk.seqs[kind] = seq
                mk.heads[kind] = bytes(head)

    # ---- events in (O(1) each) -------------------------------------------------------------

    def row(self, data: bytes, row: tuple) -> None:
        """One event as Engine.route indexes it (docs/engine-api.md, "Routing a command's
        events"; engine ROW_FIELDS): the order events and marks from their rows' fields, the
        rare ones from the Struct their row carries. Nothing is decoded."""
        kind = row[0]
        if kind == _FILL:
            self.fill(*row[7:])
        elif kind == _ACCEPTED:
            self.accepted(*row[4:8])
        elif kind == _CANCELLED:
            self.gone(*row[4:])
        elif kind == _AMENDED:
            self.amended(*row[4:])
        elif kind == _MARK:
            self.mark(*row[4:])
        elif kind == _RARE:
            self.event(row[4])

    def event(self, ev) -> None:
        """One event as a Struct (Engine.execute's)."""
        h = self.handlers.get(type(ev))
        if h is not None:
            h(ev)

    def _touch(self, mk: _Market, market: str, side: int, price) -> None:
        if price is not None:
            mk.touched[side].add(price)
        self.touched.add(market)

    def _full(self, market: str) -> None:
        self._market(market).full = True
        self.touched.add(market)

    def accepted(self, oid: int, market: str, side: int, price) -> None:
        """An order rests (side 0 bid, 1 ask; price None: a stop-market kind, no level)."""
        mk = self._market(market)
        self.orders[oid] = (mk, side, price)
        self._touch(mk, market, side, price)

    def gone(self, oid: int, market: str) -> None:
        """An order left the book (cancelled): its level touched."""
        info = self.orders.pop(oid, None)
        if info is None:
            self._full(market)
        else:
            self._touch(info[0], market, info[1], info[2])

    def amended(self, oid: int, market: str, price) -> None:
        info = self.orders.get(oid)
        if info is None:
            self._full(market)
            return
        mk, side, old = info
        self._touch(mk, market, side, old)
        self._touch(mk, market, side, price)
        self.orders[oid] = (mk, side, price if price is not None else old)

    def _triggered(self, ev) -> None:
        info = self.orders.get(ev.oid)
        if info is None:
            self._full(ev.market)
        else:
            self._touch(info[0], ev.market, info[1], info[2])

    def fill(self, market: str, taker_side: int, price: int, qty: int, taker_oid: int,
             taker_remaining: int, maker_oid: int, maker_remaining: int, liquidation: bool,
             seq: int, ts: int) -> None:
        """A trade: the maker's level touched, the public trade published (taker_side 0 buy)."""
        mk = self._market(market)
        self._touch(mk, market, 1 - taker_side, price)
        if maker_remaining == 0:
            self.orders.pop(maker_oid, None)
        if taker_remaining == 0:
            self.orders.pop(taker_oid, None)
        self._publish(mk, "trade", {
            "type": "trade", "market": market, "seq": 0, "ts": ts, "trade_id": seq,
            "price": price, "qty": qty, "taker_side": M.SIDES[taker_side],
            "liquidation": liquidation})

    def mark(self, market: str, index: int, mark: int, seq: int, ts: int) -> None:
        self._publish(self._market(market), "mark", {
            "type": "mark", "market": market, "seq": 0, "ts": ts, "index": index,
            "mark": mark})

    def _funding(self, ev) -> None:
        self._publish(self._market(ev.market), "funding", {
            "type": "funding", "market": ev.market, "seq": 0, "ts": ev.ts,
            "rate_ppm": ev.rate_ppm, "index_price": ev.index_price})

    def _liquidation(self, ev) -> None:
        self._full(ev.market)               # rare: read the whole book back
        self._publish(self._market(ev.market), "liquidation", {
            "type": "liquidation", "market": ev.market, "seq": 0, "ts": ev.ts,
            "side": ev.side, "qty": ev.qty, "price": ev.price, "kind": ev.kind})

    def _status(self, ev) -> None:
        """A market's status or parameters changed (docs/contract.md, "Market lifecycle"):
        the event as the engine wrote it, on the market's `status` topic."""
        msg = msgspec.to_builtins(ev)
        msg["seq"] = 0
        self._publish(self._market(ev.market), "status", msg)

    # ---- the end of a turn -----------------------------------------------------------------

    def flush(self) -> list:
        """This turn's messages, in order: the trades, marks, funding and liquidations as they
        happened, then one `book` delta per market whose levels changed. O(events + the depth
        of the worst touched level of each touched book)."""
        if self.touched:
            ts = self.engine.clock
            for market in sorted(self.touched):
                self._delta(market, ts)
            self.touched.clear()
        out, self.out = self.out, []
        return out

    def _delta(self, market: str, ts: int) -> None:
        """Read back the touched levels and publish what changed. Every level that exists now
        at or above the worst touched price was published before or was touched (a new level
        comes from an order at that price), so the best `published there + touched` levels
        hold every touched price. O(that depth + touched * log levels)."""
        mk = self._market(market)
        tb, ta = mk.touched
        if mk.full:
            depth = ALL
            self.stats["full_reads"] += 1
        else:
            db = mk.bids.bisect_right(-min(tb)) + len(tb) if tb else 0
            da = mk.asks.bisect_right(max(ta)) + len(ta) if ta else 0
            depth = max(db, da, CHECKSUM_LEVELS)
        self.stats["reads"] += 1
        now = self.engine.book(market, depth)
        if mk.full:
            bids = _all_changes(mk.bids, now["bids"], -1)
            asks = _all_changes(mk.asks, now["asks"], 1)
            dirty = (True, True)
        else:
            dirty = (_in_top(mk.bids, tb, -1), _in_top(mk.asks, ta, 1))
            bids = _changes(mk.bids, now["bids"], tb, -1)
            asks = _changes(mk.asks, now["asks"], ta, 1)
        tb.clear()
        ta.clear()
        mk.full = False
        if not bids and not asks:
            return
        self.stats["book"] += 1
        self.stats["levels"] += len(bids) + len(asks)
        bids.sort(key=_price, reverse=True)
        asks.sort(key=_price)
        text = mk.text
        if dirty[0]:
            text[0] = side_text(now["bids"])
        if dirty[1]:
            text[1] = side_text(now["asks"])
        self._publish(mk, "book", {
            "type": "book", "market": market, "seq": 0, "ts": ts, "bids": bids, "asks": asks,
            "checksum": zlib.crc32(f"{text[0]}|{text[1]}".encode())})

    def heartbeat(self, ts: int) -> None:
        """One `heartbeat` message: the last seq and hash of every topic, so that a subscriber
        learns of a lost last message on a quiet topic (and can check it holds the same
        history). Not numbered or chained itself."""
        seqs, heads = {}, {}
        for market in self.engine.market_names():
            mk = self._market(market)
            for kind in KINDS:
                t = mk.topics[kind].decode()
                seqs[t] = mk.seqs[kind]
                heads[t] = mk.heads[kind]
        self.out.append((HEARTBEAT, self.encode({"type": "heartbeat", "ts": ts,
                                                 "seqs": seqs, "heads": heads})))

    # ---- snapshots -------------------------------------------------------------------------

    def snapshot(self, market: str, depth: int | None) -> dict:
        """The book as the last published delta left it: `seq` (that delta's number), `hash`
        (the topic's hash at it), `bids`, `asks` (best first, `depth` levels a side, or all),
        and the checksum of its top levels. O(depth + 25)."""
        mk = self._market(market)
        n = max(depth or 0, CHECKSUM_LEVELS) if depth is not None else None
        bids = [[-p, q] for p, q in islice(mk.bids.items(), n)]
        asks = [[p, q] for p, q in islice(mk.asks.items(), n)]
        crc = checksum(bids, asks)
        if depth is not None:
            bids, asks = bids[:depth], asks[:depth]
        return {"market": market, "seq": mk.seqs["book"], "hash": mk.heads["book"],
                "bids": bids, "asks": asks, "checksum": crc}


def _price(level):
    return level[0]


def _in_top(published: SortedDict, touched: set, sign: int) -> bool:
    """Whether a touched price may change the side's top 25 levels: the side had fewer, or
    the price is at or above its 25th level (a change below it leaves the top 25 as they
    were). Called before `published` is updated. O(log levels)."""
    if not touched:
        return False
    if len(published) < CHECKSUM_LEVELS:
        return True
    return min(sign * p for p in touched) <= published.peekitem(CHECKSUM_LEVELS - 1)[0]


def _changes(published: SortedDict, levels: list, touched: set, sign: int) -> list:
    """The touched prices whose total differs between `published` (keys `sign * price`) and
    the engine's best `levels` (which hold every touched price that has a level), as
    [price, new qty] (0: gone); `published` is brought up to date. O(levels + touched)."""
    if not touched:
        return []
    now = dict(map(tuple, levels))
    changed = []
    for p in touched:
        q = now.get(p, 0)
        key = sign * p
        if published.get(key, 0) != q:
            changed.append([p, q])
            if q:
                published[key] = q
            else:
                del published[key]
    return changed


def _all_changes(published: SortedDict, levels: list, sign: int) -> list:
    """Every level that differs between `published` and all the engine's `levels`, as
    [price, new qty] (0: gone); `published` is replaced. O(levels log levels)."""
    now = {p: q for p, q in levels}
    changed = [[p, q] for p, q in now.items() if published.get(sign * p) != q]
    changed += [[sign * k, 0] for k in published if sign * k not in now]
    published.clear()
    published.update({sign * p: q for p, q in now.items()})
    return changed
