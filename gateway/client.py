"""The Python SDK for `perpdex serve` (docs/sdk.md is its reference page; docs/protocol.md the
wire protocol under it).

    from decimal import Decimal
    from perpdex.gateway.client import connect, InsufficientMargin

    c = connect("mm-1")                                  # keys from perpdex-data/keys
    order = c.sell("BTC-PERP", Decimal("0.010"), Decimal("65010.0"))
    fills = c.wait_fills(order)                          # its own fills, no race

`Client` (synchronous) and `AsyncClient` (asyncio) have the same methods, one per action, with
Decimal prices, sizes and money in and out, typed replies (`Order`, `Fill`, `Account`, ...) and
one exception hierarchy (`PerpdexError`) for every refusal, whether the gateway made it
(`ok: false`) or the engine did (a `rejected` event). `Client.request(type, **fields)` is the raw
door underneath: one request, its reply as a dict, nothing raised for a refusal. `Units` turns
Decimal prices, sizes and money into exact ticks, lots and quote units and back.

This module is the sync `Client` and `connect`; every public name of the SDK is importable from
here, from the room that owns it: errors, units, replies, actions, stream (the private stream's
chain and fill log), transport (sockets, failover, heartbeats), front (the methods, written
once), aio (the asyncio client) and mirror (the public feed's book mirror).
"""
from __future__ import annotations

import time

import zmq

from .actions import AmendOrder, CancelAll, CancelOrder, PlaceOrder
from .aio import AsyncClient, connect_async
from .chain import START as CHAIN_START
from .errors import (REASONS, ChainError, DuplicateOrderId, Forbidden, InsufficientMargin,
                     InvalidOrder, InvalidRequest, MarketClosed, MarketNotReady,
                     OrderNotFound, PerpdexError, PostOnlyWouldCross, RateLimited,
                     ReplyDropped, ResumeGap, ServerError, StreamError, Timeout, Unavailable,
                     UnknownMarket, check, error_for)
from .front import Front, blocking, install
from .mirror import MarketData
from .replies import (Account, Amended, Book, Cancelled, Event, Fill, Level, Mark, OpenOrder,
                      Order, Position, Session, own_sides, typed_event)
from .stream import Chain, FillLog
from .transport import Link, curve_socket, locate, unreachable
from .units import QUOTE_UNIT, Market, Units, quote_units, units, usd

__all__ = [
    "Client", "connect", "AsyncClient", "connect_async", "CHAIN_START", "Chain", "FillLog",
    "curve_socket", "Units", "Market", "units", "usd", "quote_units", "QUOTE_UNIT",
    "PlaceOrder", "CancelOrder", "AmendOrder", "CancelAll",
    "Order", "Fill", "Cancelled", "Amended", "OpenOrder", "Position", "Account", "Book", "Level",
    "Mark", "Session", "Event", "own_sides", "typed_event",
    "PerpdexError", "InvalidRequest", "UnknownMarket", "InvalidOrder", "OrderNotFound",
    "DuplicateOrderId", "PostOnlyWouldCross", "InsufficientMargin", "MarketNotReady",
    "MarketClosed", "Forbidden", "RateLimited", "Unavailable", "Timeout", "ServerError",
    "StreamError", "ResumeGap", "ReplyDropped", "ChainError", "REASONS", "check", "error_for",
]


@install(blocking)
class Client(Link, Front):
    """The synchronous client: a `Link` (one request endpoint, or a replicated venue's nodes
    with failover) with the front door's methods (docs/sdk.md): `place`, `buy`, `sell`,
    `cancel`, `amend`, `cancel_all`, `batch`, `account`, `positions`, `open_orders`, `book`,
    `markets`, `mark`, `session`, `wait_fills`, `events`, ...; `connect()` makes a Client ready
    to trade. The raw door: `request(type, **fields)`, `subscribe`, `stream`, `drain`. `pub` is
    the public feed's endpoint (for `mark` and `market_data`).

    After a failover the session is opened again on the node that answers and a subscribed
    private stream is resumed from the last pseq received. After `session()` the link's thread
    sends a heartbeat whenever the client has sent nothing for a heartbeat interval."""

    def __init__(self, endpoint: str | list[str], server_key: str, secret_key: str,
                 timeout_ms: int = 2000, context: zmq.Context | None = None,
                 failover_ms: int = 20_000, *, pub: str | None = None):
        super().__init__(endpoint, server_key, secret_key, timeout_ms, context, failover_ms)
        self.pushed: list[dict] = []        # private-stream items that arrived between replies
        self.chain: Chain | None = None     # the private stream's, once subscribed
        self._init_front(pub)

    def _route(self, msg) -> bool:
        """Keep a private-stream item (True), in order, for stream(); else the link's."""
        if isinstance(msg, dict) and msg.get("stream") == "private":
            self.pushed.append(self._item(msg))
            return True
        return super()._route(msg)

    def _rejoin(self):
        """On the node now in use: the session as it was asked for, the private stream."""
        if self._cod is not None:
            self._request_here("session", cancel_on_disconnect=self._cod)
        if self.chain is not None:
            self._resume()

    def _resume(self):
        """The private stream on the node now in use, from the last pseq received."""
        at = self.chain.pseq
        while True:                         # page by page (`more`: docs/protocol.md)
            reply = self._request_here("subscribe", resume_from=at)
            if not reply.get("ok"):
                raise error_for(reply.get("reason") or "refused",
                                f"the private stream cannot resume on "
                                f"{self.endpoints[self.at]}: {reply.get('detail')}",
                                "subscribe", "gateway", reply)
            for item in reply["missed"]:
                self.pushed.append(self._item(item))
            if not reply.get("more"):
                break
            at = reply["pseq"]
        if self.chain.head is not None and self.chain.head != reply["hash"]:
            raise ChainError(f"the stream's hash at pseq {reply['pseq']} on "
                             f"{self.endpoints[self.at]} is not the one its items lead to")

    # ---- the private stream, raw ----

    def subscribe(self, resume_from: int | None = None) -> dict:
        """Join this account's private stream (every connection of the account gets it)."""
        fields = {} if resume_from is None else {"resume_from": resume_from}
        reply = self.request("subscribe", **fields)
        if not reply.get("ok"):
            return reply
        if resume_from is None:
            self.chain = Chain(reply["hash"], reply["pseq"])
            return reply
        if self.chain is None or self.chain.pseq != resume_from:
            self.chain = Chain(None, resume_from)   # no history held up to there: trust the first
        for item in reply["missed"]:
            self._item(item)
        if self.chain.head is not None and self.chain.head != reply["hash"]:
            raise ChainError(f"the stream's hash at pseq {reply['pseq']} is not the one its "
                             f"items lead to")
        self.chain.head, self.chain.pseq = reply["hash"], reply["pseq"]
        if reply.get("more"):               # a page: ask again from where it got
            rest = self.subscribe(resume_from=reply["pseq"])
            if rest.get("ok"):
                rest["missed"] = reply["missed"] + rest["missed"]
            return rest
        return reply

    def _subscribed(self) -> bool:
        return self.chain is not None

    def _item(self, item: dict) -> dict:
        """Check a private-stream item against the chain (ChainError if it does not follow), and
        note its fill."""
        if self.chain is not None:
            self.chain.check_item(item)
        if "event" in item:
            self.fill_log.add(item["event"])
        return item

    def resume(self, item: dict) -> list[dict]:
        """After a `suspended` notice (this connection fell behind and left the stream; see
        docs/protocol.md, "Slow connections"): subscribe again from the notice's pseq and
        return what was missed, in order. A `resume_gap` reply raises ResumeGap."""
        reply = self.subscribe(resume_from=item["pseq"])
        if not reply["ok"]:
            raise error_for(reply["reason"], reply["detail"], "subscribe", "gateway", reply)
        return reply["missed"]

    def drain(self) -> list[dict]:
        """Every private-stream item that has arrived (without waiting), in order."""
        self._pump(0)
        out, self.pushed = self.pushed, []
        return out

    def stream(self, n: int, timeout_ms: int | None = None) -> list[dict]:
        """The next `n` private-stream items, in order."""
        while len(self.pushed) < n:
            msg = self._next((timeout_ms or self.timeout_ms) / 1000)
            if msg is None:
                raise Timeout(f"{len(self.pushed)} of {n} stream items arrived")
            self._route(msg)
        out, self.pushed = self.pushed[:n], self.pushed[n:]
        return out

    # ---- sessions, the typed stream, the public feed ----

    def session(self, cancel_on_disconnect: bool = False) -> Session:
        """Open this connection's session (with `cancel_on_disconnect`, its orders are cancelled
        when it goes silent for the session timeout) and start the heartbeat thread, which
        keeps it alive while the client is open, however long the strategy thinks."""
        info = self._open_session(cancel_on_disconnect)
        self._keep_alive(info.beat_every)
        return info

    def events(self, timeout: float | None = 0.0):
        """The private stream's events, typed (`Fill`, `Cancelled`, `Amended`, `OpenOrder` for
        an accepted order, `Event` for the rest), in order: those that have arrived, then each
        next one as it comes, waiting up to `timeout` seconds for it (None: for ever); the
        iteration ends when none comes in time. A suspended stream is resumed by itself."""
        if self.chain is None:
            raise self._not_subscribed()
        me, ms = self._me(), self.markets()
        while True:
            if not self.pushed:
                self._pump(timeout)
                if not self.pushed:
                    return
            item = self.pushed.pop(0)
            if "event" not in item:         # `suspended`: the missed items come first
                self.pushed[0:0] = self.resume(item)
                continue
            if item["event"].get("market") not in (None, *ms):
                ms = self.markets(refresh=True)
            yield typed_event(item["event"], ms, me)

    def wait_fills(self, market, cid=None, *, size=None, timeout: float = 5.0) -> list[Fill]:
        """The fills of one of this account's orders (named by market and cid, or given as an
        `Order`), once they total at least `size` (None: once there is one): every fill of it
        seen so far, oldest first. Whether they arrived before this call or after, on the
        stream or in a reply, they are found: connect() joins the private stream before
        anything is placed. Timeout after `timeout` seconds."""
        market, cid, me, u, want = self._fill_order(market, cid, size)
        deadline = time.monotonic() + timeout
        while True:
            self._pump(0)
            fills, enough = self._fills_seen(me, u, market, cid, want)
            if enough:
                return fills
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._too_late(market, cid, fills, want, timeout)
            self._pump(left)

    def mark(self, market: str, timeout: float = 5.0) -> Mark:
        """The next `mark` message of `market` on the public feed (the oracle's index and the
        mark price; four a second with the simulated oracle)."""
        sub = self._mark_feed(market)
        try:
            u = self._market(market)
            deadline = time.monotonic() + timeout
            while sub.poll(max(0, int((deadline - time.monotonic()) * 1000))):
                found = self._mark(market, u, sub.recv_multipart()[1])
                if found is not None:
                    return found
            raise Timeout(f"no mark of {market} on {self.pub} within {timeout} s")
        finally:
            sub.close(linger=0)

    def market_data(self, pub: str | None = None, markets=None, **kw) -> MarketData:
        """A gateway.mirror.MarketData on the public feed at `pub` (default: the client's), with
        this client's keys and a book mirror of each of `markets` (default: every market),
        snapshots through this client."""
        return MarketData(self, pub or self.pub, markets or list(self.markets()), *self.keys,
                          **kw)


def connect(account: str | None = None, *, router=None, pub: str | None = None,
            data=None, server_key=None, secret_key=None, cancel_on_disconnect: bool = False,
            timeout_ms: int = 2000, failover_ms: int = 20_000) -> Client:
    """A `Client` ready to trade as `account`: the markets read, the session open (heartbeats
    from a thread of its own; `cancel_on_disconnect` if asked), the private stream joined (so
    no fill is ever missed), the account's name checked. `router` may be a list (or a
    comma-separated string) of a replicated venue's nodes. Defaults: $PERPDEX_ROUTER,
    $PERPDEX_PUB, $PERPDEX_DATA, $PERPDEX_ACCOUNT, else tcp://127.0.0.1:7701, :7702 and
    ./perpdex-data, as `perpdex serve` starts."""
    router, pub, server_key, secret_key = locate(account, router, pub, data, server_key,
                                                 secret_key)
    c = Client(router, server_key, secret_key, timeout_ms=timeout_ms, failover_ms=failover_ms,
               pub=pub)
    try:
        try:
            c.markets()
        except Timeout as e:
            raise unreachable(e, router, secret_key) from None
        c.session(cancel_on_disconnect)
        check(c.subscribe(), "subscribe")
        c.account()
    except BaseException:
        c.close()
        raise
    return c
