"""The SDK's front door, written once for both clients (docs/sdk.md): `Front`'s generators
(`g_place`, `g_account`, ...) say which requests a method sends and what it makes of the
replies; `install(blocking)` makes them the sync `Client`'s methods, `install(awaited)` the
`AsyncClient`'s. A method's cost is its requests: one, plus `markets` the first time."""
from __future__ import annotations

import functools
import itertools
import time
from decimal import Decimal

import msgspec
import zmq

from .actions import AmendOrder, CancelAll, CancelOrder, PlaceOrder, order_key
from .chain import topic
from .errors import (InvalidRequest, PerpdexError, StreamError, Timeout, UnknownMarket,
                     check)
from .replies import Account, Book, Fill, Level, Mark, Session
from .stream import FillLog
from .transport import curve_socket
from .units import Units, decimal_of, quote_units, units, usd


class Front:
    """The SDK's methods, written once: each is a generator that yields `(type, fields)` for
    every request it needs and gets the reply back, so `Client` runs it with blocking requests
    and `AsyncClient` with awaited ones (`install`). A refusal raises (`check`). A client is a
    Front over a connection that has `ctx`, `keys`, `request` and `_subscribed()` (whether the
    private stream is joined)."""

    def _init_front(self, pub: str | None):
        self.pub = pub                      # the public feed's endpoint, for mark()
        self.name = None                    # the account, once a reply has named it
        self._markets: dict | None = None
        self._cids = itertools.count(time.time_ns())
        self.fill_log = FillLog()
        self.session_info: Session | None = None
        self._cod: bool | None = None       # cancel_on_disconnect asked for, if a session

    def _saw(self, reply: dict) -> None:
        """Learn from a command's reply: its fills, and the account's name."""
        for e in reply.get("events") or ():
            if not self.fill_log.add(e) and self.name is None and e.get("type") in (
                    "order_accepted", "order_cancelled", "account"):
                self.name = e["account"]

    def g_markets(self, refresh: bool = False):
        """The venue's markets by name (`Market`: units, sizes, fees); asked once, then kept
        (`refresh=True` asks again)."""
        if self._markets is None or refresh:
            reply = check((yield ("markets", {})), "markets")
            self._markets = units(reply)
        return dict(self._markets)

    def g_market(self, market: str):
        """One market's `Market` (UnknownMarket if the venue has none of that name)."""
        ms = yield from self.g_markets()
        if market not in ms:
            ms = yield from self.g_markets(refresh=True)
        if market not in ms:
            raise UnknownMarket("unknown_market", f"no market {market!r}; the venue has "
                                                  f"{', '.join(sorted(ms))}")
        return ms[market]

    def g_run(self, action):
        """One action (`PlaceOrder`, `CancelOrder`, `AmendOrder`, `CancelAll`): its reply,
        typed."""
        if isinstance(action, CancelAll):
            u = yield from self.g_markets()
        else:
            u = yield from self.g_market(action.market)
        cid = getattr(action, "cid", None)
        if cid is None and action.type == "new_order":
            cid = next(self._cids)
        reply = check((yield (action.type, action.fields(u, cid))), action.type)
        self._saw(reply)
        return action.read(reply["events"], u, cid)

    def g_place(self, market: str, side: str, size, price=None, *, tif: str = "gtc",
                cid=None, reduce_only: bool = False, post_only: bool = False,
                trigger_price=None, kind: str | None = None, stp: str | None = None,
                expire_ts: int | None = None):
        """Place an order: `size` in the base currency and `price` in USD, as Decimal (or str,
        int); no price: a market order. Returns the `Order`: its status, and the fills it made
        on entry. Raises InvalidOrder, InsufficientMargin, MarketNotReady, RateLimited, ..."""
        return (yield from self.g_run(PlaceOrder(market, side, size, price, tif, cid,
                                                 reduce_only, post_only, trigger_price, kind,
                                                 stp, expire_ts)))

    def g_buy(self, market: str, size, price=None, **kw):
        """`place(market, "buy", size, price, ...)`."""
        return (yield from self.g_place(market, "buy", size, price, **kw))

    def g_sell(self, market: str, size, price=None, **kw):
        """`place(market, "sell", size, price, ...)`."""
        return (yield from self.g_place(market, "sell", size, price, **kw))

    def g_cancel(self, market, cid=None):
        """Cancel one order, named by (market, cid) or given as an `Order`: its `Cancelled`.
        OrderNotFound when it is not open."""
        return (yield from self.g_run(CancelOrder(*order_key(market, cid))))

    def g_amend(self, market, cid=None, *, price=None, size=None):
        """Change an open order's price and/or remaining size: its `Amended`."""
        market, cid = order_key(market, cid)
        return (yield from self.g_run(AmendOrder(market, cid, price, size)))

    def g_cancel_all(self, market: str | None = None):
        """Cancel every open order (in `market`, or everywhere): the `Cancelled` of each."""
        return (yield from self.g_run(CancelAll(market)))

    def g_batch(self, actions):
        """Up to 256 actions in one request, run by the server cancels first, then the rest,
        each in order. Returns one result per action, in the order given: the typed reply, or
        the PerpdexError that refused that action (returned, not raised: one refused item does
        not spoil the others). A refusal of the whole batch (rate limited, ...) is raised."""
        ms = yield from self.g_markets()
        items, plan = [], []
        for a in actions:
            if isinstance(a, CancelAll):
                u = ms
            else:
                u = ms.get(a.market) or (yield from self.g_market(a.market))
            cid = getattr(a, "cid", None)
            if cid is None and a.type == "new_order":
                cid = next(self._cids)
            items.append({"type": a.type, **a.fields(u, cid)})
            plan.append((a, u, cid))
        reply = check((yield ("batch", {"items": items})), "batch")
        out: list = []
        for (a, u, cid), r in zip(plan, reply["results"]):
            try:
                check(r, a.type)
                self._saw(r)
                out.append(a.read(r["events"], u, cid))
            except PerpdexError as e:
                out.append(e)
        return out

    def g_account(self):
        """The account: collateral, equity, margins (USD), positions and open orders."""
        reply = check((yield ("query_account", {})), "query_account")
        e = reply["events"][0]
        self.name = e["account"]
        ms = yield from self.g_markets()
        if any(x["market"] not in ms for x in e["positions"] + e["open_orders"]):
            ms = yield from self.g_markets(refresh=True)
        return Account.read(e, ms)

    def g_positions(self):
        """The account's positions (`Position`), by market name."""
        return list((yield from self.g_account()).positions)

    def g_open_orders(self, market: str | None = None):
        """The account's open orders (`OpenOrder`), in acceptance order."""
        orders = (yield from self.g_account()).open_orders
        return [o for o in orders if market is None or o.market == market]

    def g_book(self, market: str, depth: int = 5):
        """The engine's book now, `depth` levels a side (1 to 100), best first."""
        u = yield from self.g_market(market)
        r = check((yield ("book", {"market": market, "depth": depth})), "book")
        return Book(market, tuple(Level(u.price(p), u.size(q)) for p, q in r["bids"]),
                    tuple(Level(u.price(p), u.size(q)) for p, q in r["asks"]))

    def g_set_leverage(self, market: str, leverage: int):
        """Cap the account's leverage in `market` (1 to the market's `max_leverage`)."""
        check((yield ("set_leverage", {"market": market, "leverage": leverage})), "set_leverage")

    def g_set_margin_mode(self, market: str, mode: str):
        """"cross" or "isolated" (only with no position and no open order in `market`)."""
        check((yield ("set_margin_mode", {"market": market, "mode": mode})), "set_margin_mode")

    def g_transfer_margin(self, market: str, amount):
        """Move `amount` USD into (positive) or out of (negative) an isolated position."""
        check((yield ("transfer_margin", {"market": market, "amount": quote_units(amount)})),
              "transfer_margin")

    def g_withdraw(self, amount):
        """Withdraw `amount` USD; returns the new collateral (USD)."""
        reply = check((yield ("withdraw", {"amount": quote_units(amount)})), "withdraw")
        return next((usd(e["collateral"]) for e in reply["events"] if e["type"] == "balance"),
                    None)

    def g_schedule_cancel(self, after: float | None):
        """The dead-man's switch: every order of the account is cancelled `after` seconds from
        now unless this is called again in time; None disarms it. Returns the deadline (ns since
        the epoch) or None."""
        after_ms = None if after is None else max(1, int(Decimal(repr(after)).scaleb(3)))
        reply = check((yield ("schedule_cancel", {"after_ms": after_ms})), "schedule_cancel")
        return reply["at"]

    def g_health(self):
        """The server's `health` reply (docs/observability.md)."""
        return check((yield ("health", {})), "health")

    def g_open_session(self, cancel_on_disconnect: bool):
        r = check((yield ("session", {"cancel_on_disconnect": cancel_on_disconnect})),
                  "session")
        self._cod = cancel_on_disconnect
        self.session_info = Session(cancel_on_disconnect, r["heartbeat_ms"],
                                    r["session_timeout_ms"])
        return self.session_info

    def g_me(self):
        """The account's name (asked once)."""
        if self.name is None:
            yield from self.g_account()
        return self.name

    def _not_subscribed(self) -> StreamError:
        return StreamError("not_subscribed", "fills and events come from the private stream, "
                           "which must be joined before the orders are placed: connect() joins "
                           "it; a Client made by hand calls subscribe() first")

    def g_fill_order(self, market, cid, size):
        """wait_fills' arguments: (market, cid, me, the market's units, the size awaited)."""
        market, cid = order_key(market, cid)
        if not self._subscribed():
            raise self._not_subscribed()
        me = yield from self.g_me()
        u = yield from self.g_market(market)
        return market, cid, me, u, None if size is None else decimal_of(size, "size")

    def _fills_seen(self, me, u: Units, market: str, cid, want) -> tuple[list[Fill], bool]:
        """The order's fills seen so far, oldest first, and whether they are enough (a fill;
        with `want`, that much in size)."""
        fills = [Fill.read(e, u, me, cid) for e in self.fill_log.of(me, market, cid)]
        return fills, bool(fills) and (want is None or sum(f.size for f in fills) >= want)

    def _too_late(self, market: str, cid, fills: list[Fill], want, timeout: float) -> Timeout:
        return Timeout(f"{market} {cid!r}: {sum(f.size for f in fills)} filled within "
                       f"{timeout} s, waiting for {want or 'a fill'}")

    def _mark_feed(self, market: str):
        """A SUB socket on the public feed's `mark.<market>` topic."""
        if not self.pub:
            raise InvalidRequest("invalid_command", "mark() reads the public feed: give the "
                                 "client its endpoint (pub=..., or $PERPDEX_PUB for connect())")
        sub = curve_socket(self.ctx, zmq.SUB, *self.keys)
        sub.setsockopt(zmq.SUBSCRIBE, topic("mark", market))
        sub.connect(self.pub)
        return sub

    @staticmethod
    def _mark(market: str, u: Units, body: bytes) -> Mark | None:
        """A `mark` message's body as a `Mark` of `market` (None: another market's)."""
        m = msgspec.msgpack.decode(body)
        if m.get("market") != market:
            return None
        return Mark(market, u.price(m["index"]), u.price(m["mark"]), m["seq"], m["ts"])


FRONT = ("markets", "place", "buy", "sell", "cancel", "amend", "cancel_all", "batch", "account",
         "positions", "open_orders", "book", "set_leverage", "set_margin_mode",
         "transfer_margin", "withdraw", "schedule_cancel", "health")
_INTERNAL = ("market", "open_session", "me", "fill_order")


def blocking(gen_fn):
    """A front-door generator run with blocking requests."""
    @functools.wraps(gen_fn)
    def method(self, *args, **kw):
        gen, reply = gen_fn(self, *args, **kw), None
        try:
            while True:
                type_, fields = gen.send(reply)
                reply = self.request(type_, **fields)
        except StopIteration as done:
            return done.value
    return method


def awaited(gen_fn):
    """A front-door generator run with awaited requests."""
    @functools.wraps(gen_fn)
    async def method(self, *args, **kw):
        gen, reply = gen_fn(self, *args, **kw), None
        try:
            while True:
                type_, fields = gen.send(reply)
                reply = await self.request(type_, **fields)
        except StopIteration as done:
            return done.value
    return method


def install(wrap):
    """Class decorator: the front door's methods, each run by `wrap`."""
    def decorate(cls):
        for name in FRONT:
            method = wrap(getattr(Front, "g_" + name))
            method.__name__, method.__qualname__ = name, f"{cls.__name__}.{name}"
            setattr(cls, name, method)
        for name in _INTERNAL:
            setattr(cls, "_" + name, wrap(getattr(Front, "g_" + name)))
        return cls
    return decorate
