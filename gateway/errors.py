"""The SDK's exceptions: one hierarchy (`PerpdexError`) for every refusal, whichever layer made
it, and `REASONS`, the class of each reason code of docs/contract.md and docs/protocol.md
(observability presets its series from it). `check(reply)` raises what a reply refuses.

This module imports nothing of the project.
"""
from __future__ import annotations


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


# Each reason code of the contract and the protocol, and the class it raises.
REASONS: dict[str, type[PerpdexError]] = {
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
# Requests whose `InvalidRequest` is an `InvalidOrder`.
ORDER_REQUESTS = frozenset({"new_order", "cancel", "amend", "cancel_all"})


def error_for(reason: str, detail: str = "", request: str | None = None,
              layer: str = "gateway", reply: dict | None = None) -> PerpdexError:
    """The exception of one refusal (an unknown reason: PerpdexError itself)."""
    cls = REASONS.get(reason, PerpdexError)
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
