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
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path

import msgspec
import zmq
import zmq.asyncio
import zmq.auth


def curve_socket(ctx, kind: int, server_key: str, secret_key: str):
    """A socket of `kind` that speaks CURVE to the server, with this account's key pair."""
    sock = ctx.socket(kind)
    sock.linger = 0
    pub, sec = zmq.auth.load_certificate(secret_key)
    sock.curve_publickey = pub
    sock.curve_secretkey = sec
    sock.curve_serverkey = zmq.auth.load_certificate(server_key)[0]
    return sock


# ---- errors ----------------------------------------------------------------------------------

class PerpdexError(Exception):
    """Every refusal, whichever layer made it. `reason` is the protocol's or the contract's
    reason code (`insufficient_margin`, `rate_limited`, ...), `detail` the server's sentence,
    `request` the request type refused, `layer` who refused: "gateway" (an `ok: false` reply),
    "engine" (a `rejected` event in an `ok: true` reply) or "client" (refused before sending),
    `reply` the whole reply (None from the client)."""

    def __init__(self, reason: str, detail: str = "", request: str | None = None,
                 layer: str = "client", reply: dict | None = None):
        self.reason, self.detail, self.request = reason, detail, request
        self.layer, self.reply = layer, reply
        super().__init__(self._message())

    def _message(self) -> str:
        what = f"{self.request}: " if self.request else ""
        return f"{what}{self.reason}: {self.detail}" if self.detail else f"{what}{self.reason}"


class InvalidRequest(PerpdexError, ValueError):
    """The request is malformed or names something that does not fit (`invalid_command`,
    `too_large`, `invalid_amount`, `invalid_leverage`, `margin_mode_locked`, ...). Also a
    ValueError, as the client's own checks were before the SDK had a hierarchy."""


class UnknownMarket(InvalidRequest):
    """`unknown_market` (or a market the `markets` reply does not list)."""


class InvalidOrder(InvalidRequest):
    """An order, cancel or amend the venue will not take as given: `invalid_qty`,
    `below_min_qty`, `invalid_price`, `price_out_of_band`, `reduce_only_would_increase`,
    `too_many_orders`, an `invalid_command` of an order request, or a price that is not a whole
    number of ticks (refused by the client)."""


class OrderNotFound(InvalidOrder):
    """`unknown_order`: the order is not open (filled, cancelled, or never placed)."""


class DuplicateOrderId(InvalidOrder):
    """`duplicate_cid`: the account has an open order with that cid."""


class PostOnlyWouldCross(InvalidOrder):
    """`post_only_would_cross`: a post-only (`alo`) order would have traded on entry."""


class InsufficientMargin(PerpdexError):
    """`insufficient_margin` (an order, an amend or a lower leverage would raise the initial
    requirement above equity) or `insufficient_collateral` (a withdrawal or a transfer)."""


class MarketNotReady(PerpdexError):
    """`no_mark_price` (no oracle price yet) or `oracle_stale` (the last one is too old)."""


class MarketClosed(PerpdexError):
    """The market's status (docs/contract.md, the market lifecycle) refuses this: `market_halted`,
    `market_settled`, `market_post_only` (only orders that rest), `market_reduce_only`."""


class Forbidden(PerpdexError):
    """`forbidden`: the key's role may not send this request."""


class RateLimited(PerpdexError):
    """`rate_limited`: over a budget. `retry_after_ms` is the server's wait (an int, at least 1),
    `retry_after` the same in seconds. Nothing was run: send it again after the wait."""

    def __init__(self, *args, **kw):
        reply = kw.get("reply") or {}
        self.retry_after_ms: int = int(reply.get("retry_after_ms") or 1)
        self.retry_after: float = self.retry_after_ms / 1000
        super().__init__(*args, **kw)

    def _message(self) -> str:
        # The wait comes from `retry_after_ms` (the server's detail says the same number).
        return f"{self.request}: over a budget; retry after {self.retry_after_ms} ms"


class Unavailable(PerpdexError):
    """The venue cannot take the request now: `unavailable` (replicated mode: no writer, no
    quorum), after the client's failover gave up. Nothing was run; try again later."""


class Timeout(Unavailable, RuntimeError):
    """No reply in time: the server is down, or it refused the key at the CURVE handshake (a
    key that is not one of its accounts gets nothing back at all)."""

    def __init__(self, detail: str = "no reply", **kw):
        super().__init__("timeout", detail, **kw)


class ServerError(PerpdexError):
    """`internal_error`: the server failed on this request and logged it. What did happen is in
    the private stream; `account()` gives the account's state."""


class StreamError(PerpdexError, RuntimeError):
    """The private stream cannot go on as it was: `resume_gap` (resuming from before what the
    server keeps: subscribe afresh and ask `account()`), or a broken hash chain."""


class ResumeGap(StreamError):
    """`resume_gap`."""


class ReplyDropped(PerpdexError):
    """`reply_dropped`: a retried request ran once, but its reply is no longer kept."""


class ChainError(StreamError):
    """An event whose hash does not follow from the ones before it: this is not the history the
    engine produced (or an item is missing). docs/protocol.md, "Hash chains"."""

    def __init__(self, detail: str = "", **kw):
        super().__init__("chain_break", detail, **kw)


_BY_REASON: dict[str, type[PerpdexError]] = {
    "invalid_command": InvalidRequest, "too_large": InvalidRequest,
    "invalid_amount": InvalidRequest, "invalid_leverage": InvalidRequest,
    "margin_mode_locked": InvalidRequest, "not_isolated": InvalidRequest,
    "invalid_market": InvalidRequest, "market_exists": InvalidRequest,
    "unknown_source": InvalidRequest,
    "unknown_market": UnknownMarket,
    "invalid_qty": InvalidOrder, "below_min_qty": InvalidOrder, "invalid_price": InvalidOrder,
    "invalid_expiry": InvalidOrder,
    "price_out_of_band": InvalidOrder, "reduce_only_would_increase": InvalidOrder,
    "too_many_orders": InvalidOrder, "unknown_order": OrderNotFound,
    "duplicate_cid": DuplicateOrderId, "post_only_would_cross": PostOnlyWouldCross,
    "insufficient_margin": InsufficientMargin, "insufficient_collateral": InsufficientMargin,
    "no_mark_price": MarketNotReady, "oracle_stale": MarketNotReady,
    "market_halted": MarketClosed, "market_settled": MarketClosed,
    "market_post_only": MarketClosed, "market_reduce_only": MarketClosed,
    "forbidden": Forbidden, "rate_limited": RateLimited, "unavailable": Unavailable,
    "internal_error": ServerError, "resume_gap": ResumeGap, "reply_dropped": ReplyDropped,
}
ORDER_REQUESTS = frozenset({"new_order", "cancel", "amend", "cancel_all"})


def error_for(reason: str, detail: str = "", request: str | None = None,
              layer: str = "gateway", reply: dict | None = None) -> PerpdexError:
    """The exception of one refusal (an unknown reason: PerpdexError itself)."""
    cls = _BY_REASON.get(reason, PerpdexError)
    if cls is InvalidRequest and request in ORDER_REQUESTS:
        cls = InvalidOrder
    return cls(reason, detail or "", request=request, layer=layer, reply=reply)


def check(reply: dict, request: str | None = None) -> dict:
    """The reply, if nothing in it is a refusal; else the refusal raised: an `ok: false` reply
    (the gateway's) or a `rejected` event among its events (the engine's)."""
    if not reply.get("ok"):
        raise error_for(reply.get("reason") or "refused", reply.get("detail") or "", request,
                        "gateway", reply)
    for e in reply.get("events") or ():
        if e.get("type") == "rejected":
            raise error_for(e.get("reason") or "rejected", e.get("detail") or "",
                            e.get("command") or request, "engine", reply)
    return reply


CHAIN_START = bytes(16)


class Chain:
    """Checks one hash chain: each item's `hash` must be blake2b-128 over the previous hash and
    the item's event bytes (msgpack, as sent). `head` is the hash after the last item checked;
    None: trust the first item's hash (a public subscriber that joined midway)."""

    def __init__(self, head: bytes | None = CHAIN_START, pseq: int | None = None):
        self.head = head
        self.pseq = pseq

    @staticmethod
    def next(head: bytes, event: bytes) -> bytes:
        return hashlib.blake2b(head + event, digest_size=16).digest()

    def check(self, event: bytes, claimed: bytes, pseq: int | None = None) -> None:
        """Take one item (its event's bytes and the hash it carries); ChainError if it does not
        follow. O(len(event))."""
        if pseq is not None and self.pseq is not None and pseq != self.pseq + 1:
            raise ChainError(f"pseq {pseq} after {self.pseq}: items are missing")
        if self.head is not None and self.next(self.head, event) != claimed:
            raise ChainError(f"the hash of the event at pseq {pseq} does not follow from the "
                             f"one before: this is not the history the engine produced")
        self.head = claimed
        if pseq is not None:
            self.pseq = pseq

    def check_item(self, item: dict) -> None:
        """A private-stream item as the Client decodes it (its event re-encoded: msgspec writes
        the bytes the server sent). A `suspended` notice carries no event and is skipped."""
        if "event" in item:
            self.check(msgspec.msgpack.encode(item["event"]), item["hash"], item["pseq"])


# ---- units -----------------------------------------------------------------------------------

QUOTE_UNIT = Decimal("0.000001")        # one quote unit in USD: money is micro-USD integers


def _decimal(x, what: str) -> Decimal:
    """A Decimal from a Decimal, an int or a str; a float by its shortest repr (0.1 is 0.1),
    which is what was meant far more often than the binary value."""
    if isinstance(x, Decimal):
        return x
    if isinstance(x, bool) or not isinstance(x, (int, float, str)):
        raise InvalidRequest("invalid_command", f"{what} must be a Decimal, an int or a str, "
                                                f"not {type(x).__name__}")
    try:
        d = Decimal(repr(x)) if isinstance(x, float) else Decimal(x)
    except ArithmeticError:
        raise InvalidRequest("invalid_command", f"{what} {x!r} is not a number") from None
    if not d.is_finite():
        raise InvalidRequest("invalid_command", f"{what} {x!r} is not a finite number")
    return d


def usd(quote_units: int | None) -> Decimal | None:
    """Quote units (micro-USD integers: collateral, PnL, fees, funding) as Decimal USD."""
    return None if quote_units is None else Decimal(quote_units).scaleb(-6)


def quote_units(amount) -> int:
    """Decimal USD as quote units, exactly (an amount finer than 0.000001 is refused)."""
    d = _decimal(amount, "amount")
    n = d.scaleb(6)
    if n != n.to_integral_value():
        raise InvalidRequest("invalid_amount", f"amount {amount} is finer than 0.000001 USD, "
                                               f"the quote unit")
    return int(n)


class Units:
    """A market's decimal units. Conversions are exact: a price that is not a whole number of
    ticks (or a size not a whole number of lots) is refused (InvalidOrder, a ValueError), never
    rounded in silence; `round_price` and `round_size` round when asked to. Money (collateral,
    fees, PnL) is in quote units in the engine, micro-USD: `money` and `quote` convert it.
    `Client.markets()` gives a `Market`, which is a Units with the market's parameters."""

    def __init__(self, spec: dict):
        self.market = spec["market"]
        self.tick = Decimal(spec["tick_size"])
        self.lot = Decimal(spec["lot_size"])

    def ticks(self, price) -> int:
        return self._whole(_decimal(price, "price") / self.tick, f"price {price}", self.tick)

    def lots(self, size) -> int:
        return self._whole(_decimal(size, "size") / self.lot, f"size {size}", self.lot)

    def price(self, ticks: int | None) -> Decimal | None:
        return None if ticks is None else ticks * self.tick

    def size(self, lots: int | None) -> Decimal | None:
        return None if lots is None else lots * self.lot

    @staticmethod
    def money(quote_units_: int | None) -> Decimal | None:
        """Quote units (collateral, PnL, fees, funding) as Decimal USD."""
        return usd(quote_units_)

    @staticmethod
    def quote(amount) -> int:
        """Decimal USD as quote units, exactly."""
        return quote_units(amount)

    def round_price(self, price, up: bool = False) -> Decimal:
        """`price` rounded to a whole tick, down (or up)."""
        return self._round(_decimal(price, "price"), self.tick, up)

    def round_size(self, size, up: bool = False) -> Decimal:
        """`size` rounded to a whole lot, down (or up)."""
        return self._round(_decimal(size, "size"), self.lot, up)

    @staticmethod
    def _round(x: Decimal, step: Decimal, up: bool) -> Decimal:
        n = (x / step).to_integral_value(ROUND_CEILING if up else ROUND_FLOOR)
        return n * step

    def _whole(self, x: Decimal, what: str, step: Decimal) -> int:
        if x != x.to_integral_value():
            raise InvalidOrder("invalid_price" if what.startswith("price") else "invalid_qty",
                               f"{self.market}: {what} is not a multiple of {step}")
        return int(x)


class Market(Units):
    """One market of the `markets` reply: its units and what a client needs to trade in it.
    `spec` is the reply's map as it came (docs/protocol.md, "Markets")."""

    def __init__(self, spec: dict):
        super().__init__(spec)
        self.spec = spec
        self.min_size = self.size(spec.get("min_qty", 1))
        self.max_leverage: int | None = spec.get("max_leverage")
        self.maker_fee = Decimal(spec.get("maker_fee_ppm", 0)).scaleb(-6)    # a rate: 0.0005
        self.taker_fee = Decimal(spec.get("taker_fee_ppm", 0)).scaleb(-6)
        self.price_band = Decimal(spec.get("price_band_ppm", 0)).scaleb(-6)
        self.status: str = spec.get("status", "active")     # the market's lifecycle status

    def __repr__(self):
        return f"Market({self.market!r}, tick={self.tick}, lot={self.lot})"


def units(reply: dict) -> dict[str, Units]:
    """The markets of a `markets` reply, by name."""
    return {m["market"]: Market(m) for m in reply["markets"]}


# ---- replies as typed objects ----------------------------------------------------------------

@dataclass(frozen=True)
class Fill:
    """One fill of one of this account's orders, from its own side: `side` is this order's,
    `liquidity` "maker" or "taker", `fee` in USD (negative: a rebate received), `remaining` what
    is left of this order after it. `trade_id` is the engine's seq of the fill (the public
    trade's `trade_id`)."""
    market: str
    cid: int | str
    oid: int
    side: str
    price: Decimal
    size: Decimal
    fee: Decimal
    liquidity: str
    remaining: Decimal
    liquidation: bool
    trade_id: int
    ts: int


@dataclass(frozen=True)
class _Terms:
    """What an order is: the fields `Order` and `OpenOrder` share."""
    market: str
    cid: int | str
    oid: int
    side: str
    kind: str
    price: Decimal | None
    size: Decimal
    tif: str
    reduce_only: bool


@dataclass(frozen=True)
class Order(_Terms):
    """An order as the venue took it (the reply to `place`): `size` as placed, `status` "open"
    (resting, or a trigger order waiting for its mark), "filled" or "cancelled"
    (`cancel_reason` says why: `ioc_remainder`, `fok_unfilled`, `self_trade`, `margin`, ...),
    the fills it made on entry (a taker's fills are in its reply: no waiting) and what is
    left."""
    status: str
    filled: Decimal
    remaining: Decimal
    fills: tuple[Fill, ...] = ()
    cancel_reason: str | None = None
    seq: int = 0
    ts: int = 0


@dataclass(frozen=True)
class Cancelled:
    """An order cancelled (`reason`: `user`, `ioc_remainder`, `margin`, `liquidation`, ...),
    with what was still open."""
    market: str
    cid: int | str
    oid: int
    remaining: Decimal
    reason: str
    seq: int = 0
    ts: int = 0


@dataclass(frozen=True)
class Amended:
    """An order amended: its new price and size, whether it kept its place in the queue, and the
    fills it made if it re-entered across the book."""
    market: str
    cid: int | str
    oid: int
    price: Decimal | None
    size: Decimal
    priority_kept: bool
    fills: tuple[Fill, ...] = ()
    seq: int = 0
    ts: int = 0


@dataclass(frozen=True)
class OpenOrder(_Terms):
    """An order open on the book (or a trigger order waiting), from `account()`: `size` is what
    is left of it."""


@dataclass(frozen=True)
class Position:
    """A position: `size` signed (negative: short), prices in USD per unit, money in USD
    (`unsettled_funding` positive: owed by the account)."""
    market: str
    size: Decimal
    entry_price: Decimal | None
    unrealised_pnl: Decimal
    realised_pnl: Decimal
    unsettled_funding: Decimal
    mode: str
    isolated_margin: Decimal
    liquidation_price: Decimal | None


@dataclass(frozen=True)
class Account:
    """The account's state (`query_account`), money in USD. `available` is equity above the
    initial margin: what new orders and withdrawals may use."""
    account: str | int
    collateral: Decimal
    equity: Decimal
    initial_margin: Decimal
    maintenance_margin: Decimal
    positions: tuple[Position, ...]
    open_orders: tuple[OpenOrder, ...]

    @property
    def available(self) -> Decimal:
        return self.equity - self.initial_margin

    def position(self, market: str) -> Position | None:
        return next((p for p in self.positions if p.market == market), None)


@dataclass(frozen=True)
class Level:
    price: Decimal
    size: Decimal


@dataclass(frozen=True)
class Book:
    """The engine's book at the moment of the request, best first (a live mirror:
    `market_data`)."""
    market: str
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]

    @property
    def best_bid(self) -> Level | None:
        return self.bids[0] if self.bids else None

    @property
    def best_ask(self) -> Level | None:
        return self.asks[0] if self.asks else None


@dataclass(frozen=True)
class Mark:
    """The last `mark` message of a market's public feed: the oracle's `index` and the `mark`."""
    market: str
    index: Decimal
    mark: Decimal
    seq: int
    ts: int


@dataclass(frozen=True)
class Session:
    """What `session()` opened: heartbeats (sent by the client's own thread or task) every
    `heartbeat_ms`; without them the server ends the session after `session_timeout_ms`."""
    cancel_on_disconnect: bool
    heartbeat_ms: int
    session_timeout_ms: int


@dataclass(frozen=True)
class Event:
    """A private-stream event with no class of its own (`balance`, `margin_call`,
    `liquidation`, `order_triggered`, ...): `type`, `seq`, `ts` and the event's fields as the
    contract writes them (integers: ticks, lots, quote units) in `data`."""
    type: str
    seq: int
    ts: int
    data: dict = field(repr=False, default_factory=dict)


def own_sides(e: dict) -> list[dict]:
    """A `fill` event as its sides see it: the gateway sends each account its own side (one
    map with `account`, `side`, `cid`, `oid`, `remaining`, `fee`, `liquidity`, `trade_id`:
    docs/protocol.md, "Fills"); an operator's reply (or the engine's output) holds the engine's
    fill with both sides, which this splits into the same two maps."""
    if "liquidity" in e:
        return [e]
    maker_side = "sell" if e["taker_side"] == "buy" else "buy"
    return [dict(type="fill", seq=e["seq"], ts=e["ts"], account=e[p + "account"],
                 market=e["market"], side=side, cid=e[p + "cid"], oid=e[p + "oid"],
                 price=e["price"], qty=e["qty"], remaining=e[p + "remaining"],
                 fee=e[p + "fee"], liquidity=p[:-1], liquidation=e["liquidation"],
                 trade_id=e["seq"])
            for p, side in (("taker_", e["taker_side"]), ("maker_", maker_side))]


def _fill(e: dict, u: Units, me=None, cid=None) -> Fill:
    """A `fill` event as a `Fill` of `me`'s side (of the order `cid`, when given; an
    operator's two-sided fill is read from the taker's side unless `me` is the maker)."""
    sides = own_sides(e)
    o = next((o for o in sides if (me is None or o["account"] == me)
              and (cid is None or o["cid"] == cid)), sides[0])
    return Fill(o["market"], o["cid"], o["oid"], o["side"], u.price(o["price"]),
                u.size(o["qty"]), usd(o["fee"]), o["liquidity"], u.size(o["remaining"]),
                o["liquidation"], o["trade_id"], o["ts"])


def _mine(events: list, me, cid, liquidity=None) -> list[dict]:
    """The sides of the fills among `events` that are `me`'s order `cid` (as its `liquidity`,
    when given)."""
    return [o for e in events if e.get("type") == "fill" for o in own_sides(e)
            if o["account"] == me and o["cid"] == cid
            and (liquidity is None or o["liquidity"] == liquidity)]


def _order(events: list, u: Units, cid) -> Order:
    """The `Order` of a new_order reply's events."""
    acc = next(e for e in events if e["type"] == "order_accepted" and e["cid"] == cid)
    me = acc["account"]
    fills = tuple(_fill(o, u) for o in _mine(events, me, cid, "taker"))
    gone = next((e for e in events if e["type"] == "order_cancelled" and e["cid"] == cid), None)
    filled = sum((f.size for f in fills), Decimal(0))
    remaining = fills[-1].remaining if fills else u.size(acc["qty"])
    status = "cancelled" if gone else ("filled" if fills and not remaining else "open")
    return Order(acc["market"], cid, acc["oid"], acc["side"], acc["kind"], u.price(acc["price"]),
                 u.size(acc["qty"]), acc["tif"], acc["reduce_only"], status, filled,
                 Decimal(0) if gone else remaining, fills, gone["reason"] if gone else None,
                 acc["seq"], acc["ts"])


def _cancelled(e: dict, u: Units) -> Cancelled:
    return Cancelled(e["market"], e["cid"], e["oid"], u.size(e["remaining"]), e["reason"],
                     e["seq"], e["ts"])


def _amended(events: list, u: Units) -> Amended:
    e = next(e for e in events if e["type"] == "order_amended")
    fills = tuple(_fill(o, u) for o in _mine(events, e["account"], e["cid"], "taker"))
    return Amended(e["market"], e["cid"], e["oid"], u.price(e["price"]), u.size(e["qty"]),
                   e["priority_kept"], fills, e["seq"], e["ts"])


def _open_order(o: dict, u: Units) -> OpenOrder:
    return OpenOrder(o["market"], o["cid"], o["oid"], o["side"], o["kind"], u.price(o["price"]),
                     u.size(o["qty"]), o["tif"], o["reduce_only"])


def _account(e: dict, markets: dict) -> Account:
    positions = tuple(
        Position(p["market"], markets[p["market"]].size(p["size"]),
                 markets[p["market"]].price(p["entry_price"]), usd(p["unrealised_pnl"]),
                 usd(p.get("realised_pnl", 0)), usd(p["unsettled_funding"]), p["mode"],
                 usd(p["isolated_margin"]), markets[p["market"]].price(p["liquidation_price"]))
        for p in e["positions"])
    orders = tuple(_open_order(o, markets[o["market"]]) for o in e["open_orders"])
    return Account(e["account"], usd(e["collateral"]), usd(e["equity"]),
                   usd(e["initial_margin"]), usd(e["maintenance_margin"]), positions, orders)


def typed_event(e: dict, markets: dict, me) -> object:
    """A private-stream event as the SDK's type for it: `Fill`, `Cancelled`, `Amended`,
    `OpenOrder` (an `order_accepted`), or `Event` for the rest."""
    kind, u = e.get("type"), markets.get(e.get("market"))
    if u is not None:
        if kind == "fill":
            return _fill(e, u, me)
        if kind == "order_cancelled":
            return _cancelled(e, u)
        if kind == "order_amended":
            return _amended([e], u)
        if kind == "order_accepted":
            return _open_order(e, u)
    return Event(kind, e.get("seq", 0), e.get("ts", 0), e)


# ---- requests, for `batch` (and what every method sends) --------------------------------------

@dataclass(frozen=True)
class PlaceOrder:
    """A new order: `size` in the base currency, `price` in USD (None: a market order);
    `kind` defaults to "limit" with a price, "market" without; `post_only` is `tif="alo"`;
    `cid` defaults to a fresh number (the `Order` reply carries it)."""
    market: str
    side: str
    size: object
    price: object = None
    tif: str = "gtc"
    cid: int | str | None = None
    reduce_only: bool = False
    post_only: bool = False
    trigger_price: object = None
    kind: str | None = None
    stp: str | None = None
    expire_ts: int | None = None         # with tif="gtd": when it expires (ns, the venue's clock)
    type = "new_order"

    def fields(self, u: Units, cid) -> dict:
        if self.side not in ("buy", "sell"):
            raise InvalidOrder("invalid_command", f"side is 'buy' or 'sell', not {self.side!r}",
                               request="new_order")
        kind = self.kind or ("limit" if self.price is not None else "market")
        if self.trigger_price is not None and self.kind is None:
            raise InvalidOrder("invalid_command", "a trigger_price needs its kind: stop_market, "
                               "stop_limit, take_profit_market or take_profit_limit",
                               request="new_order")
        out = {"market": self.market, "cid": cid, "side": self.side, "kind": kind,
               "qty": u.lots(self.size), "tif": "alo" if self.post_only else self.tif,
               "reduce_only": self.reduce_only}
        if self.price is not None:
            out["price"] = u.ticks(self.price)
        if self.trigger_price is not None:
            out["trigger_price"] = u.ticks(self.trigger_price)
        if self.stp is not None:
            out["stp"] = self.stp
        if self.expire_ts is not None:
            out["expire_ts"] = self.expire_ts
        return out

    def read(self, events: list, u: Units, cid) -> Order:
        return _order(events, u, cid)


@dataclass(frozen=True)
class CancelOrder:
    """Cancel one order by its cid."""
    market: str
    cid: int | str
    type = "cancel"

    def fields(self, u: Units, cid) -> dict:
        return {"market": self.market, "cid": self.cid}

    def read(self, events: list, u: Units, cid) -> Cancelled:
        return _cancelled(next(e for e in events if e["type"] == "order_cancelled"), u)


@dataclass(frozen=True)
class AmendOrder:
    """Change an open order's price and/or size (None: unchanged; `size` is the new remaining
    size)."""
    market: str
    cid: int | str
    price: object = None
    size: object = None
    type = "amend"

    def fields(self, u: Units, cid) -> dict:
        return {"market": self.market, "cid": self.cid,
                "price": None if self.price is None else u.ticks(self.price),
                "qty": None if self.size is None else u.lots(self.size)}

    def read(self, events: list, u: Units, cid) -> Amended:
        return _amended(events, u)


@dataclass(frozen=True)
class CancelAll:
    """Cancel every open order of the account (in one market, or in all)."""
    market: str | None = None
    type = "cancel_all"

    def fields(self, u, cid) -> dict:
        return {} if self.market is None else {"market": self.market}

    def read(self, events: list, u, cid) -> list[Cancelled]:
        return [_cancelled(e, u[e["market"]]) for e in events if e["type"] == "order_cancelled"]


def _key(market, cid) -> tuple[str, object]:
    """(market, cid) from the two, or from an Order / OpenOrder / Cancelled given as `market`."""
    if cid is None and hasattr(market, "cid"):
        return market.market, market.cid
    if cid is None:
        raise InvalidOrder("invalid_command", "name the order: (market, cid), or an Order")
    return market, cid


class FillLog:
    """Every fill this client has seen, by (account, market, cid) of each side, from its replies
    and its private stream, so that an order's fills can be awaited whether they arrived before
    or after the call. Keeps the last `orders` orders' fills."""

    def __init__(self, orders: int = 8192):
        self.orders = orders
        self.by_order: OrderedDict = OrderedDict()

    def add(self, e: dict) -> bool:
        if e.get("type") != "fill":
            return False
        for o in own_sides(e):
            key = (o["account"], o["market"], o["cid"])
            got = self.by_order.get(key)
            if got is None:
                got = self.by_order[key] = []
                while len(self.by_order) > self.orders:
                    self.by_order.popitem(last=False)
            if all(f["seq"] != o["seq"] for f in got):
                got.append(o)
        return True

    def of(self, me, market: str, cid) -> list[dict]:
        return list(self.by_order.get((me, market, cid), ()))


def _enough(fills: list[Fill], size: Decimal | None) -> bool:
    return bool(fills) and (size is None or sum(f.size for f in fills) >= size)


# ---- the front door, once for both clients ---------------------------------------------------

class _Front:
    """The SDK's methods, written once: each is a generator that yields `(type, fields)` for
    every request it needs and gets the reply back, so `Client` runs it with blocking requests
    and `AsyncClient` with awaited ones (`_install`). A refusal raises (`check`)."""

    def _init_front(self, pub: str | None):
        self.pub = pub                      # the public feed's endpoint, for mark()
        self.name = None                    # the account, once a reply has named it
        self._markets: dict | None = None
        self._cids = itertools.count(time.time_ns())
        self.fill_log = FillLog()
        self.session_info: Session | None = None
        self._cod: bool | None = None       # cancel_on_disconnect asked for, if a session
        self.heartbeats = 0                 # heartbeats the client sent by itself

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
            self._markets = {m["market"]: Market(m) for m in reply["markets"]}
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
        return (yield from self.g_run(CancelOrder(*_key(market, cid))))

    def g_amend(self, market, cid=None, *, price=None, size=None):
        """Change an open order's price and/or remaining size: its `Amended`."""
        market, cid = _key(market, cid)
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
        return _account(e, ms)

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

    def _beat_every(self) -> float:
        """Seconds between heartbeats: the server's heartbeat_ms, and at most a quarter of its
        session timeout."""
        info = self.session_info
        return max(0.01, min(info.heartbeat_ms, info.session_timeout_ms / 4) / 1000)

    def _mark(self, market: str, u: Units, body: bytes) -> Mark | None:
        m = msgspec.msgpack.decode(body)
        if m.get("market") != market:
            return None
        return Mark(market, u.price(m["index"]), u.price(m["mark"]), m["seq"], m["ts"])

    def _no_pub(self) -> InvalidRequest:
        return InvalidRequest("invalid_command", "mark() reads the public feed: give the client "
                              "its endpoint (pub=..., or $PERPDEX_PUB for connect())")


FRONT = ("markets", "place", "buy", "sell", "cancel", "amend", "cancel_all", "batch", "account",
         "positions", "open_orders", "book", "set_leverage", "set_margin_mode",
         "transfer_margin", "withdraw", "schedule_cancel", "health")
_INTERNAL = ("market", "open_session", "me")


def _sync(gen_fn):
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


def _async(gen_fn):
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


def _install(wrap):
    """Class decorator: the front door's methods, each run by `wrap`."""
    def decorate(cls):
        for name in FRONT:
            method = wrap(getattr(_Front, "g_" + name))
            method.__name__, method.__qualname__ = name, f"{cls.__name__}.{name}"
            setattr(cls, name, method)
        for name in _INTERNAL:
            setattr(cls, "_" + name, wrap(getattr(_Front, "g_" + name)))
        return cls
    return decorate


# ---- the synchronous client ------------------------------------------------------------------

SLICE_S = 0.05          # the longest a wait holds the socket, so that heartbeats get their turn


@_install(_sync)
class Client(_Front):
    """The synchronous client. `endpoint` is one request endpoint, or the list of a replicated
    venue's nodes (docs/operations.md, "Replication"): then a request that gets no reply within
    `timeout_ms`, or `unavailable`, is sent again, the same bytes and req_id (a retry, answered
    once), to the next node, round and round for up to `failover_ms`; once a node answers, the
    session is opened again there and a subscribed private stream is resumed from the last pseq
    received. `pub` is the public feed's endpoint (for `mark` and `market_data`).

    The front door (docs/sdk.md): `place`, `buy`, `sell`, `cancel`, `amend`, `cancel_all`,
    `batch`, `account`, `positions`, `open_orders`, `book`, `markets`, `mark`, `session`,
    `wait_fills`, `events`, ...; `connect()` makes a Client ready to trade. The raw door:
    `request(type, **fields)`, `subscribe`, `stream`, `drain`.

    After `session()` a thread of the client's own sends a heartbeat whenever the client has
    sent nothing for a heartbeat interval. Every use of the socket holds `self._lock`, and no
    wait holds it for more than 50 ms."""

    def __init__(self, endpoint: str | list[str], server_key: str, secret_key: str,
                 timeout_ms: int = 2000, context: zmq.Context | None = None,
                 failover_ms: int = 20_000, *, pub: str | None = None):
        self.ctx = context or zmq.Context.instance()
        self.endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        self.at = 0                         # the node in use
        self.failover_ms = failover_ms
        self.failovers = 0
        self.keys = (server_key, secret_key)
        self._lock = threading.RLock()
        self.sock = self._connect()
        self.timeout_ms = timeout_ms
        # req_ids must not repeat within the server's retry window for the account (a repeat is
        # a retry and gets the first reply): number from the moment this client was made.
        self._ids = itertools.count(time.time_ns())
        self.pushed: list[dict] = []        # private-stream items that arrived between replies
        self.chain: Chain | None = None     # the private stream's, once subscribed
        self._last_sent = time.monotonic()
        self._beat_ids: set = set()         # req_ids of heartbeats whose replies are dropped
        self._beat: threading.Thread | None = None
        self._stop = threading.Event()
        self._init_front(pub)

    def _connect(self):
        sock = curve_socket(self.ctx, zmq.DEALER, *self.keys)
        sock.connect(self.endpoints[self.at])
        return sock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- the socket, shared with the heartbeat thread ----

    def _send(self, data: bytes) -> None:
        with self._lock:
            self.sock.send(data)
            self._last_sent = time.monotonic()

    def _next(self, timeout_s: float | None):
        """The next message (decoded), waiting up to `timeout_s` (None: for ever); None if
        nothing came. The socket is held for at most SLICE_S at a time."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait = SLICE_S if deadline is None else max(0.0, min(SLICE_S,
                                                                 deadline - time.monotonic()))
            with self._lock:
                if self.sock.poll(int(wait * 1000)):
                    return msgspec.msgpack.decode(self.sock.recv())
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _route(self, msg) -> bool:
        """Keep a private-stream item (True); drop a heartbeat's reply (True); else False."""
        if isinstance(msg, dict):
            if msg.get("stream") == "private":
                self.pushed.append(self._item(msg))     # kept for stream(), in order
                return True
            rid = msg.get("req_id")
            if isinstance(rid, int) and rid in self._beat_ids:
                self._beat_ids.discard(rid)
                return True
        return False

    def _pump(self, timeout_s: float | None) -> None:
        """Wait up to `timeout_s` for a message, then take every one that has arrived."""
        msg = self._next(timeout_s)
        while msg is not None:
            self._route(msg)                # a stray reply here belongs to nobody: dropped
            msg = self._next(0)

    def send_raw(self, data: bytes) -> dict:
        if len(self.endpoints) == 1:
            self._send(data)
            return self._receive()
        try:
            req_id = msgspec.msgpack.decode(data).get("req_id")
        except (msgspec.DecodeError, AttributeError):
            req_id = None
        return self._ask(data, req_id)

    def _ask(self, data: bytes, req_id) -> dict:
        """Send `data` and wait for its reply, failing over as the class says."""
        deadline = time.monotonic() + self.failover_ms / 1000
        tried = 0
        while True:
            self._send(data)
            try:
                reply = self._receive(req_id)
            except Timeout:
                reply = None
            if reply is not None and reply.get("reason") != "unavailable":
                if tried:
                    self._rejoin()
                return reply
            if time.monotonic() >= deadline:
                if reply is not None:
                    return reply
                raise Timeout(f"no node answered within {self.failover_ms} ms")
            tried += 1
            if tried % len(self.endpoints) == 0:
                time.sleep(0.05)            # every node said no: a breath before the next round
            with self._lock:
                self.sock.close(linger=0)
                self.at = (self.at + 1) % len(self.endpoints)
                self.sock = self._connect()
            self.failovers += 1

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

    def request(self, type: str, **fields) -> dict:
        """Send one request; return its reply (`ok`, and `events` or `reason` and `detail`), as
        the server sent it: a refusal is not raised here (the front door's methods raise)."""
        req_id = next(self._ids)
        data = msgspec.msgpack.encode({"req_id": req_id, "type": type, **fields})
        if len(self.endpoints) > 1:
            return self._ask(data, req_id)
        self._send(data)
        reply = self._receive()
        if reply.get("req_id") not in (req_id, None):
            raise RuntimeError(f"reply {reply.get('req_id')} to request {req_id}")
        return reply

    def request_retrying(self, type: str, **fields) -> dict:
        """`request`, sent again (the same req_id: answered once) while no reply comes or the
        reply is `unavailable`, to the next endpoint (the same one when there is one), for up
        to `failover_ms`; then the last reply, or Timeout."""
        req_id = next(self._ids)
        return self._ask(msgspec.msgpack.encode({"req_id": req_id, "type": type, **fields}),
                         req_id)

    def _request_here(self, type: str, **fields) -> dict:
        req_id = next(self._ids)
        self._send(msgspec.msgpack.encode({"req_id": req_id, "type": type, **fields}))
        return self._receive(req_id)

    def _receive(self, req_id=None) -> dict:
        """The next reply (with `req_id`: the next reply to it; an earlier copy's is dropped).
        Timeout when nothing at all arrives for `timeout_ms`."""
        while True:
            msg = self._next(self.timeout_ms / 1000)
            if msg is None:
                raise Timeout(f"no reply within {self.timeout_ms} ms")
            if self._route(msg):
                continue
            if req_id is not None and isinstance(msg, dict) and msg.get("req_id") not in (
                    req_id, None):
                continue
            return msg

    # ---- sessions and heartbeats ----

    def session(self, cancel_on_disconnect: bool = False) -> Session:
        """Open this connection's session (with `cancel_on_disconnect`, its orders are cancelled
        when it goes silent for the session timeout) and start the heartbeat thread, which
        keeps it alive while the client is open, however long the strategy thinks."""
        info = self._open_session(cancel_on_disconnect)
        if self._beat is None:
            self._beat = threading.Thread(target=self._beats, name="perpdex-heartbeats",
                                          daemon=True)
            self._beat.start()
        return info

    def _beats(self):
        """The heartbeat thread: a heartbeat whenever nothing was sent for an interval. It only
        sends (never waits for a reply: `_route` drops those), and never blocks."""
        while not self._stop.wait(self._beat_every() / 2):
            if time.monotonic() - self._last_sent < self._beat_every():
                continue
            req_id = next(self._ids)
            data = msgspec.msgpack.encode({"req_id": req_id, "type": "heartbeat"})
            with self._lock:
                if len(self._beat_ids) > 10_000:    # replies that never came (a dead node)
                    self._beat_ids.clear()
                self._beat_ids.add(req_id)
                try:
                    self.sock.send(data, zmq.NOBLOCK)
                except zmq.ZMQError:
                    continue                # no peer now: the next request fails over
                self._last_sent = time.monotonic()
            self.heartbeats += 1

    # ---- the private stream, typed ----

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
        market, cid = _key(market, cid)
        if self.chain is None:
            raise self._not_subscribed()
        me, u = self._me(), self._market(market)
        want = None if size is None else _decimal(size, "size")
        deadline = time.monotonic() + timeout
        while True:
            self._pump(0)
            fills = [_fill(e, u, me, cid) for e in self.fill_log.of(me, market, cid)]
            if _enough(fills, want):
                return fills
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"{market} {cid!r}: {sum(f.size for f in fills)} filled within "
                              f"{timeout} s, waiting for {want or 'a fill'}")
            self._pump(left)

    def mark(self, market: str, timeout: float = 5.0) -> Mark:
        """The next `mark` message of `market` on the public feed (the oracle's index and the
        mark price; four a second with the simulated oracle)."""
        if not self.pub:
            raise self._no_pub()
        u = self._market(market)
        sub = curve_socket(self.ctx, zmq.SUB, *self.keys)
        sub.setsockopt(zmq.SUBSCRIBE, f"mark.{market}".encode())
        sub.connect(self.pub)
        try:
            deadline = time.monotonic() + timeout
            while sub.poll(max(0, int((deadline - time.monotonic()) * 1000))):
                found = self._mark(market, u, sub.recv_multipart()[1])
                if found is not None:
                    return found
            raise Timeout(f"no mark of {market} on {self.pub} within {timeout} s")
        finally:
            sub.close(linger=0)

    def market_data(self, pub: str | None = None, markets=None, **kw):
        """A gateway.mirror.MarketData on the public feed at `pub` (default: the client's), with
        this client's keys and a book mirror of each of `markets` (default: every market),
        snapshots through this client."""
        from .mirror import MarketData
        return MarketData(self, pub or self.pub, markets or list(self.markets()), *self.keys,
                          **kw)

    def close(self):
        self._stop.set()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join(timeout=2)
        with self._lock:
            self.sock.close(linger=0)


# ---- the asyncio client ----------------------------------------------------------------------

@_install(_async)
class AsyncClient(_Front):
    """The asyncio client: the same methods as `Client`, awaited (`await c.place(...)`), and
    `request(...)`, `stream()` yielding raw private-stream items, `events()` typed ones.

    One reader task routes what arrives: replies to their waiting request (by req_id), stream
    items to a queue, in order. Given a list of endpoints it fails over as `Client` does (within
    `failover_s`), opens the session again and resumes a subscribed private stream on the node
    that answers from the last pseq it queued. After `session()` a task sends the heartbeats;
    a strategy that blocks the event loop for longer than the session timeout starves it."""

    def __init__(self, endpoint: str | list[str], server_key: str, secret_key: str,
                 timeout: float = 2.0, failover_s: float = 20.0, *, pub: str | None = None):
        self.ctx = zmq.asyncio.Context.instance()
        self.endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        self.at = 0
        self.failover_s = failover_s
        self.failovers = 0
        self.keys = (server_key, secret_key)
        self.sock = self._connect()
        self.timeout = timeout
        self._ids = itertools.count(time.time_ns())
        self._waiting: dict = {}
        self.items: asyncio.Queue = asyncio.Queue()
        self.pseq: int | None = None        # the last private-stream item queued, once subscribed
        self._reader = asyncio.ensure_future(self._read())
        self._beat: asyncio.Task | None = None
        self._filled = asyncio.Event()      # set whenever a fill is noted
        self._last_sent = 0.0
        self._init_front(pub)

    def _connect(self):
        sock = curve_socket(self.ctx, zmq.DEALER, *self.keys)
        sock.connect(self.endpoints[self.at])
        return sock

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.close()

    async def _read(self):
        while True:
            msg = msgspec.msgpack.decode(await self.sock.recv())
            if isinstance(msg, dict) and msg.get("stream") == "private":
                if "event" in msg:
                    self.pseq = msg["pseq"]
                    if self.fill_log.add(msg["event"]):
                        self._filled.set()
                await self.items.put(msg)
                continue
            fut = self._waiting.pop(msg.get("req_id") if isinstance(msg, dict) else None, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    async def _once(self, data: bytes, req_id):
        """Send and wait for the reply to `req_id` on the node in use; None on no reply."""
        fut = asyncio.get_running_loop().create_future()
        self._waiting[req_id] = fut
        await self.sock.send(data)
        self._last_sent = asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(fut, self.timeout)
        except asyncio.TimeoutError:
            self._waiting.pop(req_id, None)
            return None

    async def request(self, type: str, **fields) -> dict:
        """One request; its reply as the server sent it (a refusal is not raised here)."""
        req_id = next(self._ids)
        data = msgspec.msgpack.encode({"req_id": req_id, "type": type, **fields})
        if len(self.endpoints) == 1:
            reply = await self._once(data, req_id)
            if reply is None:
                raise Timeout(f"no reply within {self.timeout} s")
        else:
            reply = await self._ask(data, req_id)
        if type == "subscribe" and reply.get("ok"):
            self.pseq = reply["pseq"]
        return reply

    async def _ask(self, data: bytes, req_id) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.failover_s
        tried = 0
        while True:
            reply = await self._once(data, req_id)
            if reply is not None and reply.get("reason") != "unavailable":
                if tried and self._cod is not None:
                    await self._once(msgspec.msgpack.encode(
                        {"req_id": (rid := next(self._ids)), "type": "session",
                         "cancel_on_disconnect": self._cod}), rid)
                if tried and self.pseq is not None:
                    await self._resume()
                return reply
            if loop.time() >= deadline:
                if reply is not None:
                    return reply
                raise Timeout(f"no node answered within {self.failover_s} s")
            tried += 1
            if tried % len(self.endpoints) == 0:
                await asyncio.sleep(0.05)       # every node said no: a breath, then again
            self._reader.cancel()
            self.sock.close(linger=0)
            self.at = (self.at + 1) % len(self.endpoints)
            self.sock = self._connect()
            self._reader = asyncio.ensure_future(self._read())
            self.failovers += 1

    async def _resume(self):
        """The private stream on the node now in use, from the last pseq queued."""
        while True:                         # page by page (`more`: docs/protocol.md)
            req_id = next(self._ids)
            reply = await self._once(msgspec.msgpack.encode(
                {"req_id": req_id, "type": "subscribe", "resume_from": self.pseq}), req_id)
            if reply is None or not reply.get("ok"):
                raise error_for((reply or {}).get("reason") or "timeout",
                                f"the private stream cannot resume on "
                                f"{self.endpoints[self.at]}: {reply}", "subscribe", "gateway",
                                reply)
            for item in reply["missed"]:
                self.pseq = item["pseq"]
                if self.fill_log.add(item["event"]):
                    self._filled.set()
                await self.items.put(item)
            if not reply.get("more"):
                break

    async def stream(self):
        while True:
            yield await self.items.get()

    async def session(self, cancel_on_disconnect: bool = False) -> Session:
        """Open this connection's session and start the heartbeat task (see `Client.session`)."""
        info = await self._open_session(cancel_on_disconnect)
        if self._beat is None:
            self._beat = asyncio.ensure_future(self._beats())
        return info

    async def _beats(self):
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._beat_every() / 2)
            if loop.time() - self._last_sent < self._beat_every():
                continue
            try:                            # the reply finds no waiter and is dropped
                await self.sock.send(msgspec.msgpack.encode(
                    {"req_id": next(self._ids), "type": "heartbeat"}), zmq.NOBLOCK)
            except zmq.ZMQError:
                continue
            self._last_sent = loop.time()
            self.heartbeats += 1

    async def events(self, timeout: float | None = None):
        """`Client.events`, as an async iterator (`timeout` None: for ever)."""
        if self.pseq is None:
            raise self._not_subscribed()
        me, ms = await self._me(), await self.markets()
        while True:
            try:
                item = await asyncio.wait_for(self.items.get(), timeout)
            except asyncio.TimeoutError:
                return
            if "event" not in item:         # `suspended`: resume from the last item queued
                await self._resume()
                continue
            if item["event"].get("market") not in (None, *ms):
                ms = await self.markets(refresh=True)
            yield typed_event(item["event"], ms, me)

    async def wait_fills(self, market, cid=None, *, size=None,
                         timeout: float = 5.0) -> list[Fill]:
        """`Client.wait_fills`, awaited."""
        market, cid = _key(market, cid)
        if self.pseq is None:
            raise self._not_subscribed()
        me, u = await self._me(), await self._market(market)
        want = None if size is None else _decimal(size, "size")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._filled.clear()
            fills = [_fill(e, u, me, cid) for e in self.fill_log.of(me, market, cid)]
            if _enough(fills, want):
                return fills
            try:
                await asyncio.wait_for(self._filled.wait(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise Timeout(f"{market} {cid!r}: {sum(f.size for f in fills)} filled within "
                              f"{timeout} s, waiting for {want or 'a fill'}") from None

    async def mark(self, market: str, timeout: float = 5.0) -> Mark:
        """`Client.mark`, awaited."""
        if not self.pub:
            raise self._no_pub()
        u = await self._market(market)
        sub = curve_socket(self.ctx, zmq.SUB, *self.keys)
        sub.setsockopt(zmq.SUBSCRIBE, f"mark.{market}".encode())
        sub.connect(self.pub)
        try:
            async def first():
                while True:
                    found = self._mark(market, u, (await sub.recv_multipart())[1])
                    if found is not None:
                        return found
            return await asyncio.wait_for(first(), timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"no mark of {market} on {self.pub} within {timeout} s") from None
        finally:
            sub.close(linger=0)

    def market_data(self, pub: str | None = None, markets=None, **kw):
        """A gateway.mirror.AsyncMarketData on the public feed (await its start())."""
        from .mirror import AsyncMarketData
        if markets is None:
            if self._markets is None:
                raise InvalidRequest("invalid_command", "name the markets (or await "
                                                        "markets() first)")
            markets = list(self._markets)
        return AsyncMarketData(self, pub or self.pub, markets, *self.keys, **kw)

    def close(self):
        if self._beat is not None:
            self._beat.cancel()
        self._reader.cancel()
        self.sock.close(linger=0)


# ---- connect ---------------------------------------------------------------------------------

def _where(account, router, pub, data, server_key, secret_key):
    """Endpoints and key files from the arguments, else the environment, else the defaults of
    `perpdex serve` run in this folder (docs/sdk.md, "Connecting")."""
    data = Path(data or os.environ.get("PERPDEX_DATA") or "perpdex-data")
    account = account or os.environ.get("PERPDEX_ACCOUNT")
    router = router or os.environ.get("PERPDEX_ROUTER") or "tcp://127.0.0.1:7701"
    routers = router.split(",") if isinstance(router, str) else list(router)
    pub = pub or os.environ.get("PERPDEX_PUB") or "tcp://127.0.0.1:7702"
    server_key = Path(server_key or data / "keys" / "server.key")
    if secret_key is None:
        if not account:
            raise InvalidRequest("invalid_command", "name the account (connect('mm-1')), its "
                                 "secret_key file, or set $PERPDEX_ACCOUNT")
        secret_key = data / "keys" / f"{account}.key_secret"
    for path in (server_key, Path(secret_key)):
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no such key file. `perpdex serve` writes the server's public key and "
                f"one key pair per configured account to its data folder's keys/ "
                f"({data}/keys here): run from the folder it was started in, or give "
                f"data=... (or $PERPDEX_DATA)")
    return (routers[0] if len(routers) == 1 else routers), pub, str(server_key), str(secret_key)


def _unreachable(e: Timeout, router, secret_key) -> Timeout:
    return Timeout(f"{e.detail}: is `perpdex serve` running at {router}, and is {secret_key} "
                   f"the key of one of its accounts? (a key the server does not know gets no "
                   f"answer at all)")


def connect(account: str | None = None, *, router=None, pub: str | None = None,
            data=None, server_key=None, secret_key=None, cancel_on_disconnect: bool = False,
            timeout_ms: int = 2000, failover_ms: int = 20_000) -> Client:
    """A `Client` ready to trade as `account`: the markets read, the session open (heartbeats
    from a thread of its own; `cancel_on_disconnect` if asked), the private stream joined (so
    no fill is ever missed), the account's name checked. `router` may be a list (or a
    comma-separated string) of a replicated venue's nodes. Defaults: $PERPDEX_ROUTER,
    $PERPDEX_PUB, $PERPDEX_DATA, $PERPDEX_ACCOUNT, else tcp://127.0.0.1:7701, :7702 and
    ./perpdex-data, as `perpdex serve` starts."""
    router, pub, server_key, secret_key = _where(account, router, pub, data, server_key,
                                                 secret_key)
    c = Client(router, server_key, secret_key, timeout_ms=timeout_ms, failover_ms=failover_ms,
               pub=pub)
    try:
        try:
            c.markets()
        except Timeout as e:
            raise _unreachable(e, router, secret_key) from None
        c.session(cancel_on_disconnect)
        check(c.subscribe(), "subscribe")
        c.account()
    except BaseException:
        c.close()
        raise
    return c


async def connect_async(account: str | None = None, *, router=None, pub: str | None = None,
                        data=None, server_key=None, secret_key=None,
                        cancel_on_disconnect: bool = False, timeout: float = 2.0,
                        failover_s: float = 20.0) -> AsyncClient:
    """`connect`, for asyncio: an `AsyncClient` ready to trade."""
    router, pub, server_key, secret_key = _where(account, router, pub, data, server_key,
                                                 secret_key)
    c = AsyncClient(router, server_key, secret_key, timeout=timeout, failover_s=failover_s,
                    pub=pub)
    try:
        try:
            await c.markets()
        except Timeout as e:
            raise _unreachable(e, router, secret_key) from None
        await c.session(cancel_on_disconnect)
        check(await c.request("subscribe"), "subscribe")
        await c.account()
    except BaseException:
        c.close()
        raise
    return c
