"""The SDK's replies as typed objects (docs/sdk.md): prices and sizes as Decimal, money as
Decimal USD. Each type reads itself from the events that carry it (`Order.read(events, units,
cid)`, `Fill.read(event, units)`, ...); `typed_event` gives a private-stream event its type and
`own_sides` splits the engine's two-sided fill into each side's own."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from .units import Units, usd


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

    @classmethod
    def read(cls, e: dict, u: Units, me=None, cid=None) -> Fill:
        """A `fill` event as a `Fill` of `me`'s side (of the order `cid`, when given; an
        operator's two-sided fill is read from the taker's side unless `me` is the maker)."""
        sides = own_sides(e)
        o = next((o for o in sides if (me is None or o["account"] == me)
                  and (cid is None or o["cid"] == cid)), sides[0])
        return cls(o["market"], o["cid"], o["oid"], o["side"], u.price(o["price"]),
                   u.size(o["qty"]), usd(o["fee"]), o["liquidity"], u.size(o["remaining"]),
                   o["liquidation"], o["trade_id"], o["ts"])


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

    @classmethod
    def read(cls, events: list, u: Units, cid) -> Order:
        """The `Order` of a new_order reply's events."""
        acc = next(e for e in events if e["type"] == "order_accepted" and e["cid"] == cid)
        me = acc["account"]
        fills = tuple(Fill.read(o, u) for o in _mine(events, me, cid, "taker"))
        gone = next((e for e in events if e["type"] == "order_cancelled" and e["cid"] == cid),
                    None)
        filled = sum((f.size for f in fills), Decimal(0))
        remaining = fills[-1].remaining if fills else u.size(acc["qty"])
        status = "cancelled" if gone else ("filled" if fills and not remaining else "open")
        return cls(acc["market"], cid, acc["oid"], acc["side"], acc["kind"],
                   u.price(acc["price"]), u.size(acc["qty"]), acc["tif"], acc["reduce_only"],
                   status, filled, Decimal(0) if gone else remaining, fills,
                   gone["reason"] if gone else None, acc["seq"], acc["ts"])


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

    @classmethod
    def read(cls, e: dict, u: Units) -> Cancelled:
        """An `order_cancelled` event."""
        return cls(e["market"], e["cid"], e["oid"], u.size(e["remaining"]), e["reason"],
                   e["seq"], e["ts"])


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

    @classmethod
    def read(cls, events: list, u: Units) -> Amended:
        """The `order_amended` among `events`, with the fills it made."""
        e = next(e for e in events if e["type"] == "order_amended")
        fills = tuple(Fill.read(o, u) for o in _mine(events, e["account"], e["cid"], "taker"))
        return cls(e["market"], e["cid"], e["oid"], u.price(e["price"]), u.size(e["qty"]),
                   e["priority_kept"], fills, e["seq"], e["ts"])


@dataclass(frozen=True)
class OpenOrder(_Terms):
    """An order open on the book (or a trigger order waiting), from `account()`: `size` is what
    is left of it."""

    @classmethod
    def read(cls, o: dict, u: Units) -> OpenOrder:
        """An open order of `query_account`, or an `order_accepted` event."""
        return cls(o["market"], o["cid"], o["oid"], o["side"], o["kind"], u.price(o["price"]),
                   u.size(o["qty"]), o["tif"], o["reduce_only"])


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

    @classmethod
    def read(cls, e: dict, markets: dict) -> Account:
        """An `account` event, with the markets' units by name."""
        positions = tuple(
            Position(p["market"], markets[p["market"]].size(p["size"]),
                     markets[p["market"]].price(p["entry_price"]), usd(p["unrealised_pnl"]),
                     usd(p.get("realised_pnl", 0)), usd(p["unsettled_funding"]), p["mode"],
                     usd(p["isolated_margin"]),
                     markets[p["market"]].price(p["liquidation_price"]))
            for p in e["positions"])
        orders = tuple(OpenOrder.read(o, markets[o["market"]]) for o in e["open_orders"])
        return cls(e["account"], usd(e["collateral"]), usd(e["equity"]),
                   usd(e["initial_margin"]), usd(e["maintenance_margin"]), positions, orders)


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

    @property
    def beat_every(self) -> float:
        """Seconds between the client's heartbeats: `heartbeat_ms`, and at most a quarter of
        the session timeout."""
        return max(0.01, min(self.heartbeat_ms, self.session_timeout_ms / 4) / 1000)


@dataclass(frozen=True)
class Event:
    """A private-stream event with no class of its own (`balance`, `margin_call`,
    `liquidation`, `order_triggered`, ...): `type`, `seq`, `ts` and the event's fields as the
    contract writes them (integers: ticks, lots, quote units) in `data`."""
    type: str
    seq: int
    ts: int
    data: dict = field(repr=False, default_factory=dict)


def _mine(events: list, me, cid, liquidity=None) -> list[dict]:
    """The sides of the fills among `events` that are `me`'s order `cid` (as its `liquidity`,
    when given)."""
    return [o for e in events if e.get("type") == "fill" for o in own_sides(e)
            if o["account"] == me and o["cid"] == cid
            and (liquidity is None or o["liquidity"] == liquidity)]


def typed_event(e: dict, markets: dict, me) -> object:
    """A private-stream event as the SDK's type for it: `Fill`, `Cancelled`, `Amended`,
    `OpenOrder` (an `order_accepted`), or `Event` for the rest."""
    kind, u = e.get("type"), markets.get(e.get("market"))
    if u is not None:
        if kind == "fill":
            return Fill.read(e, u, me)
        if kind == "order_cancelled":
            return Cancelled.read(e, u)
        if kind == "order_amended":
            return Amended.read([e], u)
        if kind == "order_accepted":
            return OpenOrder.read(e, u)
    return Event(kind, e.get("seq", 0), e.get("ts", 0), e)
