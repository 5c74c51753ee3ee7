"""The private streams on the server's side (the client's: gateway/stream.py): each account's
numbered, hash-chained events (`Stream`), kept for resuming and fanned out to the connections
subscribed, and each account's retry cache (`Retries`): the replies a repeated req_id gets
again. Both are part of the venue's records (gateway/records.py).

A fill goes to each side as that side's `OwnFill`: its own order's fields, nothing of the
counterparty's (docs/protocol.md, "Fills").
"""
from __future__ import annotations

from collections import deque
from itertools import islice

import msgspec
from msgspec import Raw

from perpdex.engine import ROUTE, ROW_FIELDS, messages as M

from . import protocol as P
from .chain import HASH_SIZE, START, step
from .limits import Limits

# A private-stream item, {"stream": "private", "pseq": n, "hash": h, "event": {...}}, built from
# the event's bytes (encoded once for every destination) without decoding them again; `hash` is
# the stream's hash chain at pseq n (docs/protocol.md, "Hash chains").
ITEM_HEAD = b"\x84\xa6stream\xa7private\xa4pseq"
ITEM_HASH = b"\xa4hash\xc4\x10"          # HASH_SIZE bytes of binary follow
ITEM_EVENT = b"\xa5event"
_pack = msgspec.msgpack.encode
_FILL = ROUTE["fill"]
_MAKER, _MID, _VEND = (ROW_FIELDS["fill"].index(f) for f in ("maker_account", "mid", "vend"))


class Retries:
    """An account's retry cache: the last `keep` req_ids of its commands and batches, and the
    replies of the newest of them, encoded (bytes: nothing for the garbage collector to walk),
    at most `max_bytes` in all. Over the bytes, the oldest replies drop first; their ids stay
    (`replies[rid]` is None) until `keep` newer ids pass, so that a retry of one is answered
    `reply_dropped`, never run twice. A reply larger than `max_bytes` is not kept at all.
    O(1) a lookup, an insert, an eviction (amortised)."""

    __slots__ = ("keep", "max_bytes", "replies", "order", "kept", "bytes")

    def __init__(self, keep: int, max_bytes: int | None = None):
        self.keep = keep
        self.max_bytes = max_bytes if max_bytes is not None else Limits.retry_bytes
        self.replies: dict = {}             # req_id -> reply bytes, or None: dropped
        self.order: deque = deque()         # every req_id kept, oldest first
        self.kept: deque = deque()          # the req_ids whose reply is kept, oldest first
        self.bytes = 0                      # the bytes of the kept replies

    def add(self, req_id, reply: bytes | None):
        old = self.replies.get(req_id, False)
        if old is False:
            self.order.append(req_id)
            if len(self.order) > self.keep:
                gone = self.order.popleft()
                data = self.replies.pop(gone)
                if data is not None:
                    self.bytes -= len(data)
                    self.kept.popleft()         # the oldest kept is the oldest id
        elif old is not None:                   # replaced (a journal replayed twice)
            self.bytes -= len(old)
            self.kept.remove(req_id)
        if reply is None or len(reply) > self.max_bytes:
            self.replies[req_id] = None
        else:
            self.replies[req_id] = reply
            self.kept.append(req_id)
            self.bytes += len(reply)
        self.trim()

    def trim(self):
        """Drop the oldest replies until the kept ones fit `max_bytes`."""
        while self.bytes > self.max_bytes:
            rid = self.kept.popleft()
            self.bytes -= len(self.replies[rid])
            self.replies[rid] = None


class RetryBooks(dict):
    """account -> Retries, each made with the limits' window and byte bound."""

    def __init__(self, keep: int, max_bytes: int):
        super().__init__()
        self.keep = keep
        self.max_bytes = max_bytes

    def of(self, account) -> Retries:
        """The account's retry cache, made when it has none. O(1)."""
        seen = self.get(account)
        if seen is None:
            seen = self[account] = Retries(self.keep, self.max_bytes)
        return seen


class Stream:
    """An account's private stream: its events numbered 1, 2, 3, ... (`pseq`), the last
    `stream_buffer` of them kept, encoded, for clients that resume (bytes: nothing for the
    garbage collector to walk), and the connections subscribed. buffer[i] has pseq
    `pseq - len(buffer) + 1 + i`."""

    __slots__ = ("pseq", "buffer", "subscribers", "head")

    def __init__(self, keep: int):
        self.pseq = 0
        self.head = START           # the hash chain's head at pseq (docs/protocol.md)
        self.buffer: deque[bytes] = deque(maxlen=keep)
        self.subscribers: set[bytes] = set()

class Streams(dict):
    """account -> Stream, for the accounts of the configuration (`accounts`: names)."""

    def __init__(self, keep: int, accounts):
        super().__init__()
        self.keep = keep
        self.accounts = accounts

    def of(self, account: str) -> Stream:
        """The account's stream, made when it has none. O(1)."""
        st = self.get(account)
        if st is None:
            st = self[account] = Stream(self.keep)
        return st

    def push(self, views, out: list) -> None:
        """Each (account, event bytes) of `views` (`private_views`) numbered and chained in its
        account's stream, kept, and (connection, item, pseq) for each subscriber added to `out`.
        An account the configuration does not name has no stream. O(views * subscribers)."""
        for account, data in views:
            st = self.get(account)
            if st is None:
                if account not in self.accounts:
                    continue
                st = self.of(account)
            st.pseq += 1
            st.head = step(st.head, data)
            item = b"".join((ITEM_HEAD, _pack(st.pseq), ITEM_HASH, st.head,
                             ITEM_EVENT, data))
            st.buffer.append(item)
            for identity in st.subscribers:
                out.append((identity, item, st.pseq))

    def leave(self, identity: bytes) -> None:
        """A connection gone: out of every stream. O(streams)."""
        for st in self.values():
            st.subscribers.discard(identity)

    def page(self, account: str, since: int | None, budget: int, req_id):
        """What a `subscribe` from `since` gets: (reply, whether it joins the stream now). With
        `since`, what came after it, at most `budget` bytes (at least one item): a reply with
        `more` does not join, its `pseq` and `hash` are those of its last item, and the client
        asks again from there (docs/protocol.md). O(page)."""
        st = self.of(account)
        missed = []
        pseq, head = st.pseq, st.head
        more = False
        if since is not None:
            if since > st.pseq:
                return P.error(req_id, "invalid_command",
                               f"resume_from must be an integer from 0 to {st.pseq}"), False
            oldest = st.pseq - len(st.buffer) + 1
            if since + 1 < oldest:
                return P.error(req_id, "resume_gap",
                               f"events after {since} are no longer kept (the oldest kept is "
                               f"{oldest}); subscribe afresh and ask query_account"), False
            n = st.pseq - since
            size = 0
            last = b""
            for item in islice(st.buffer, len(st.buffer) - n, None):
                if missed and size + len(item) > budget:
                    break
                missed.append(Raw(item))
                size += len(item)
                last = item
            if len(missed) < n:
                more = True
                pseq = since + len(missed)
                head = item_hash(last, pseq)
        return {"req_id": req_id, "ok": True, "pseq": pseq, "hash": head, "missed": missed,
                "more": more}, not more


def item_hash(item: bytes, pseq: int) -> bytes:
    """The `hash` of a private-stream item (its chain's head at `pseq`), read from its bytes."""
    at = len(ITEM_HEAD) + len(_pack(pseq)) + len(ITEM_HASH)
    return item[at:at + HASH_SIZE]


class OwnFill(msgspec.Struct, tag_field="type", tag="fill", frozen=True, gc=False):
    """A fill as one side sees it (docs/protocol.md, "Fills"): the private stream's and a
    trader's replies'. Its own order's side, cid, oid, remaining and fee, and nothing of the
    counterparty's: no account, cid, oid, remaining or fee. `trade_id` is the engine's seq of
    the fill, the public trade's `trade_id`; `liquidity` says whether this side was the maker
    or the taker."""
    seq: int
    ts: int
    account: M.AccountId
    market: str
    side: str
    cid: M.Cid
    oid: int
    price: int
    qty: int
    remaining: int
    fee: int
    liquidity: str
    liquidation: bool
    trade_id: int


def own_fills(ev) -> tuple:
    """A fill's two sides, each as its own account sees it: ((account, OwnFill), ...), the
    taker's first (a self-match gives the account both, as two fills). O(1)."""
    maker_side = "sell" if ev.taker_side == "buy" else "buy"
    return ((ev.taker_account, OwnFill(
                ev.seq, ev.ts, ev.taker_account, ev.market, ev.taker_side, ev.taker_cid,
                ev.taker_oid, ev.price, ev.qty, ev.taker_remaining, ev.taker_fee, "taker",
                ev.liquidation, ev.seq)),
            (ev.maker_account, OwnFill(
                ev.seq, ev.ts, ev.maker_account, ev.market, maker_side, ev.maker_cid,
                ev.maker_oid, ev.price, ev.qty, ev.maker_remaining, ev.maker_fee, "maker",
                ev.liquidation, ev.seq)))


def row_views(data: bytes, row: tuple) -> tuple:
    """What of one routed event (Engine.route's bytes and index row, docs/engine-api.md) goes
    to which private stream: ((account, bytes), ...), as `private_views` says, from the bytes
    the engine wrote (a fill's two own views it wrote after the fill). O(1)."""
    kind, start, end, account = row[0], row[1], row[2], row[3]
    if kind == _FILL:
        return (account, data[end:row[_MID]]), (row[_MAKER], data[row[_MID]:row[_VEND]])
    return () if account is None else ((account, data[start:end]),)


def private_views(ev, encode) -> tuple:
    """What of one engine event goes to which private stream, encoded: ((account, bytes),
    ...). A fill goes to each side as that side's `OwnFill`; any other event to the account
    it names, as the engine wrote it; an event naming no account to none. O(1)."""
    if type(ev) is M.Fill:
        return tuple((account, encode(view)) for account, view in own_fills(ev))
    account = getattr(ev, "account", None)
    return () if account is None else ((account, encode(ev)),)
