"""The trading actions as values (docs/sdk.md, "Trading"): `PlaceOrder`, `CancelOrder`,
`AmendOrder`, `CancelAll`. Each knows its request type, its fields in the engine's integers
(`fields`) and how to read its reply (`read`); the clients' methods and `batch` send them."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidOrder
from .replies import Amended, Cancelled, Order
from .units import Units


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
        return Order.read(events, u, cid)


@dataclass(frozen=True)
class CancelOrder:
    """Cancel one order by its cid."""
    market: str
    cid: int | str
    type = "cancel"

    def fields(self, u: Units, cid) -> dict:
        return {"market": self.market, "cid": self.cid}

    def read(self, events: list, u: Units, cid) -> Cancelled:
        return Cancelled.read(next(e for e in events if e["type"] == "order_cancelled"), u)


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
        return Amended.read(events, u)


@dataclass(frozen=True)
class CancelAll:
    """Cancel every open order of the account (in one market, or in all)."""
    market: str | None = None
    type = "cancel_all"

    def fields(self, u, cid) -> dict:
        return {} if self.market is None else {"market": self.market}

    def read(self, events: list, u, cid) -> list[Cancelled]:
        return [Cancelled.read(e, u[e["market"]]) for e in events
                if e["type"] == "order_cancelled"]


def order_key(market, cid) -> tuple[str, object]:
    """(market, cid) from the two, or from an Order / OpenOrder / Cancelled given as `market`."""
    if cid is None and hasattr(market, "cid"):
        return market.market, market.cid
    if cid is None:
        raise InvalidOrder("invalid_command", "name the order: (market, cid), or an Order")
    return market, cid
