"""Every command and event of the contract (docs/contract.md) as a msgspec Struct.

Commands are imperative (`NewOrder`, `Cancel`), events past tense (`OrderAccepted`, `Fill`).
Both are tagged unions on the field `type`. Field names and their order follow the contract;
the Cython core writes events with exactly these keys in exactly this order, and the tests check
that `msgspec` re-encodes what the core wrote byte for byte.

Numbers are integers in the contract's units: prices in ticks, quantities in lots, money in quote
units (1e-6 USD), rates in ppm, `ts` in nanoseconds. `qty`, `price` and `trigger_price` accept any
JSON number (and strings) at the codec so that a bad value is answered with the contract's
`invalid_qty` / `invalid_price` rather than a generic `invalid_command`.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union, get_args

import msgspec
from msgspec import Meta, Struct

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# The latest `ts` (ns since the epoch, the year 2116): a later one is refused (docs/contract.md).
MAX_TS = 2**62

Int64 = Annotated[int, Meta(ge=INT64_MIN, le=INT64_MAX)]
NonNegInt64 = Annotated[int, Meta(ge=0, le=INT64_MAX)]
# An account is named by an integer or a short string; the gateway derives it from the
# authenticated key, the replay tool takes it from the file.
AccountId = Union[Int64, Annotated[str, Meta(min_length=1, max_length=64)]]
# A client order id: an integer or a string of at most 36 characters (the contract).
Cid = Union[Int64, Annotated[str, Meta(min_length=1, max_length=36)]]
MarketName = Annotated[str, Meta(min_length=1, max_length=32)]
# Values the engine itself judges, so that it can answer with the contract's reason code.
LooseNumber = Union[bool, int, float, str, None]   # bool too: true is `invalid_qty`, not unreadable

Side = Literal["buy", "sell"]
OrderKind = Literal[
    "limit", "market", "stop_market", "stop_limit", "take_profit_market", "take_profit_limit"
]
TimeInForce = Literal["gtc", "ioc", "fok", "alo", "gtd"]     # gtd: an extension
StpMode = Literal["cancel_maker", "cancel_taker", "cancel_both"]
MarginMode = Literal["cross", "isolated"]

# The vocabulary's one source: a name's small integer code is its place in these tuples. The
# core's enums (engine/book.pxd), the writer's value tokens (engine/wire.pyx) and the name
# tables (engine/state.pyx) are built from them or checked against them when they load.
SIDES = get_args(Side)
ORDER_KINDS = get_args(OrderKind)
TIFS = get_args(TimeInForce)
STP_MODES = get_args(StpMode)


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------

class Command(Struct, tag_field="type", forbid_unknown_fields=True, frozen=True, kw_only=True,
              gc=False):
    """Base of every command. `ts` (ns) advances the engine clock, which never runs backwards.

    Commands hold numbers, strings and (create_market) a list of tiers: no cycles, so gc=False.
    """

    ts: Annotated[int, Meta(ge=0, le=MAX_TS)] = 0


class Tier(Struct, forbid_unknown_fields=True, frozen=True):
    max_notional: Annotated[int, Meta(gt=0, le=INT64_MAX)]
    imf_ppm: Annotated[int, Meta(gt=0, le=1_000_000)]
    mmf_ppm: Annotated[int, Meta(gt=0, le=1_000_000)]


class OracleSource(Struct, forbid_unknown_fields=True, frozen=True):
    """Extension: one source of a market's index (docs/contract.md, "A multi-source index")."""
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    weight: Annotated[int, Meta(gt=0, le=1_000_000)] = 1


class CreateMarket(Command, tag="create_market"):
    market: MarketName
    tick_size: Union[str, int, float]   # a decimal string; a JSON number is read by its repr
    lot_size: Union[str, int, float]
    min_qty: Int64
    imf_ppm: Int64
    mmf_ppm: Int64
    maker_fee_ppm: Int64
    taker_fee_ppm: Int64
    liquidation_fee_ppm: Int64
    price_band_ppm: Int64
    funding_interval_s: Int64
    funding_cap_ppm: Int64
    interest_ppm: Int64
    tiers: Union[list[Tier], None] = None
    oracle_max_age_s: Int64 = 0
    # Extension: the most open orders one account may have in this market (`too_many_orders`).
    max_orders_per_account: Int64 = 1000
    # Extension: the most accounts (or isolated positions) liquidated per mark update; the rest
    # carry over to the next mark update or clock tick.
    max_liquidations_per_update: Int64 = 100
    # Extension: the largest price (ticks) and quantity (lots, of an order and of a position);
    # 0 derives them from the multiplier (engine.markets, "Limits" in docs/contract.md).
    max_price: Int64 = 0
    max_qty: Int64 = 0
    # Extension: a multi-source index: the weighted median of the sources fresher than
    # oracle_max_age_s and within oracle_max_deviation_ppm of their median (0: no filter); with
    # fewer than oracle_min_sources of them the index is stale. None: one source, as the contract.
    oracle_sources: Union[list[OracleSource], None] = None
    oracle_min_sources: Int64 = 1
    oracle_max_deviation_ppm: Int64 = 0
    # Extension: 0 (the contract's mark, median(index, bid, ask)) or N: the basis-average mark,
    # the median of the index, the index plus the average of (mid - index) over the last N
    # oracles, and the contract's mark (docs/contract.md, "A mark two orders cannot pin").
    mark_ema_updates: Int64 = 0
    # Extension: the price velocity guard. An `oracle` whose index moves more than
    # velocity_max_ppm from the last index puts an active market in post_only for
    # velocity_pause_s seconds (docs/contract.md, "A price velocity guard"). 0: off.
    velocity_max_ppm: Int64 = 0
    velocity_pause_s: Int64 = 0


class Deposit(Command, tag="deposit"):
    account: AccountId
    amount: Int64


class Withdraw(Command, tag="withdraw"):
    account: AccountId
    amount: Int64


class Oracle(Command, tag="oracle"):
    market: MarketName
    price: LooseNumber
    # Extension: which of the market's configured sources this price is from (multi-source).
    source: Union[Annotated[str, Meta(min_length=1, max_length=64)], None] = None


class Clock(Command, tag="clock"):
    pass


class SetLeverage(Command, tag="set_leverage"):
    account: AccountId
    market: MarketName
    leverage: Int64


class SetMarginMode(Command, tag="set_margin_mode"):
    account: AccountId
    market: MarketName
    mode: MarginMode


class TransferMargin(Command, tag="transfer_margin"):
    account: AccountId
    market: MarketName
    amount: Int64


class NewOrder(Command, tag="new_order"):
    account: AccountId
    market: MarketName
    cid: Cid
    side: Side
    kind: OrderKind
    qty: LooseNumber
    price: LooseNumber = None
    trigger_price: LooseNumber = None
    tif: TimeInForce = "gtc"
    reduce_only: bool = False
    stp: StpMode = "cancel_maker"
    # Extension: tif "gtd" rests until the clock reaches `expire_ts` (ns), then is cancelled
    # with reason `expired`; required with gtd, refused with any other tif (`invalid_expiry`).
    expire_ts: Union[Int64, None] = None


class Cancel(Command, tag="cancel"):
    account: AccountId
    market: MarketName
    cid: Cid


class CancelAll(Command, tag="cancel_all"):
    account: AccountId
    market: Union[MarketName, None] = None


class Amend(Command, tag="amend"):
    account: AccountId
    market: MarketName
    cid: Cid
    price: LooseNumber = None
    qty: LooseNumber = None


class StateHash(Command, tag="state_hash"):
    pass


class QueryAccount(Command, tag="query_account"):
    account: AccountId


class Audit(Command, tag="audit"):
    pass


# ---- extensions: a market's lifecycle (docs/contract.md, "Market lifecycle") -------------------

MarketStatusName = Literal["active", "post_only", "reduce_only", "halted"]


class SetMarketStatus(Command, tag="set_market_status"):
    """Extension: active, post_only (nothing may take), reduce_only (only reduce-only orders),
    or halted (nothing matches; trigger orders and liquidations wait)."""
    market: MarketName
    status: MarketStatusName


class SettleMarket(Command, tag="settle_market"):
    """Extension: delist at a final price: funding settled, every order cancelled, every
    position closed at `price` (ticks), the market closed for ever."""
    market: MarketName
    price: LooseNumber


class UpdateMarket(Command, tag="update_market", omit_defaults=True):
    """Extension: change a live market's parameters; a field left out keeps its value
    (`tiers: []` removes the tiers). `effective_ts` (ns) schedules it; absent or past: now."""
    market: MarketName
    min_qty: Union[Int64, None] = None
    imf_ppm: Union[Int64, None] = None
    mmf_ppm: Union[Int64, None] = None
    tiers: Union[list[Tier], None] = None
    maker_fee_ppm: Union[Int64, None] = None
    taker_fee_ppm: Union[Int64, None] = None
    liquidation_fee_ppm: Union[Int64, None] = None
    price_band_ppm: Union[Int64, None] = None
    funding_cap_ppm: Union[Int64, None] = None
    interest_ppm: Union[Int64, None] = None
    oracle_max_age_s: Union[Int64, None] = None
    max_orders_per_account: Union[Int64, None] = None
    max_liquidations_per_update: Union[Int64, None] = None
    oracle_min_sources: Union[Int64, None] = None
    oracle_max_deviation_ppm: Union[Int64, None] = None
    velocity_max_ppm: Union[Int64, None] = None
    velocity_pause_s: Union[Int64, None] = None
    effective_ts: Union[Int64, None] = None


AnyCommand = Union[
    NewOrder, Cancel, CancelAll, Amend, Oracle, Clock, Deposit, Withdraw, CreateMarket,
    SetLeverage, SetMarginMode, TransferMargin, StateHash, QueryAccount, Audit,
    SetMarketStatus, SettleMarket, UpdateMarket,
]

COMMAND_TYPES: dict[str, type[Command]] = {
    cls.__struct_config__.tag: cls for cls in AnyCommand.__args__  # type: ignore[attr-defined]
}


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------

class Event(Struct, tag_field="type", frozen=True, gc=False):
    """Base of every event: `seq` numbers the whole stream (1, 2, 3, ...), `ts` is the clock.

    Events hold only numbers and strings, so they can never be part of a reference cycle:
    `gc=False` keeps them out of the garbage collector's work (and its pauses).
    """

    seq: int
    ts: int


class OrderAccepted(Event, tag="order_accepted"):
    account: AccountId
    market: str
    cid: Cid
    oid: int
    side: Side
    kind: OrderKind
    price: Union[int, None]  # None for market orders
    qty: int
    tif: TimeInForce
    reduce_only: bool


class Rejected(Event, tag="rejected", omit_defaults=True, kw_only=True):
    """`account`, `market` and `cid` are present where the command had them."""

    command: Union[str, None]
    account: Union[AccountId, None] = None
    market: Union[str, None] = None
    cid: Union[Cid, None] = None
    reason: str
    detail: str


class Fill(Event, tag="fill"):
    market: str
    price: int
    qty: int
    taker_side: Side
    taker_account: AccountId
    taker_cid: Cid
    taker_oid: int
    taker_remaining: int
    maker_account: AccountId
    maker_cid: Cid
    maker_oid: int
    maker_remaining: int
    taker_fee: int
    maker_fee: int
    liquidation: bool


class OrderCancelled(Event, tag="order_cancelled"):
    account: AccountId
    market: str
    cid: Cid
    oid: int
    remaining: int
    reason: str


class OrderAmended(Event, tag="order_amended"):
    account: AccountId
    market: str
    cid: Cid
    oid: int
    price: Union[int, None]  # None for a stop or take-profit market order
    qty: int
    priority_kept: bool


class OrderTriggered(Event, tag="order_triggered"):
    account: AccountId
    market: str
    cid: Cid
    oid: int
    trigger_price: int
    mark: int


class Mark(Event, tag="mark"):
    market: str
    index: int
    mark: int


class StateHashEvent(Event, tag="state_hash"):
    hash: str


class Balance(Event, tag="balance"):
    """An account's cash changed outside a trade: `reason` is deposit, withdraw,
    transfer_margin or funding, or (an extension) insurance: the insurance fund made good a
    liquidated account's negative equity. `collateral` is the new cash."""

    account: AccountId
    collateral: int
    reason: str


class LiquidationEvent(Event, tag="liquidation"):
    """One step of a liquidation: `kind` book (IOC into the book), backstop (the insurance fund
    takes the position over at the bankruptcy price) or adl. `side` is the closing trade's side."""

    account: AccountId
    market: str
    side: Side
    qty: int
    price: int
    mark: int
    kind: Literal["book", "backstop", "adl"]
    fee: int


class MarginCall(Event, tag="margin_call"):
    account: AccountId
    equity: int
    maintenance_margin: int


class FundingEvent(Event, tag="funding", omit_defaults=True):
    market: str
    rate_ppm: int
    index_price: int
    # Extension: boundaries with no premium sample between them (a long clock jump) are applied
    # as one, at one rate; `intervals` says how many (absent: 1).
    intervals: int = 1


class MarketStatusEvent(Event, tag="market_status"):
    """Extension: a market's status changed (`settled` after `settle_market`, with its price;
    the velocity guard's pause, with `until`, the ts at which it ends)."""
    market: str
    status: str
    price: Union[int, None] = None
    until: Union[int, None] = None


class MarketUpdated(Event, tag="market_updated"):
    """Extension: a market's parameters, as they are (or will be, from `effective_ts`)."""
    market: str
    effective_ts: int
    min_qty: int
    imf_ppm: int
    mmf_ppm: int
    tiers: list[Tier]
    maker_fee_ppm: int
    taker_fee_ppm: int
    liquidation_fee_ppm: int
    price_band_ppm: int
    funding_cap_ppm: int
    interest_ppm: int
    oracle_max_age_s: int
    max_orders_per_account: int
    max_liquidations_per_update: int
    oracle_min_sources: int = 1
    oracle_max_deviation_ppm: int = 0
    velocity_max_ppm: int = 0
    velocity_pause_s: int = 0


class IndexStale(Event, tag="index_stale"):
    """Extension: an `oracle` of a multi-source market left fewer fresh, sane sources than it
    needs: the index is not moved, and growing positions are refused (`oracle_stale`)."""
    market: str
    source: str
    sources: int
    needed: int


class Settlement(Event, tag="settlement"):
    """Extension: a position closed by `settle_market`: `side` is the closing trade's side,
    `realised_pnl` what the close realised (no fee)."""
    account: AccountId
    market: str
    side: Side
    qty: int
    price: int
    realised_pnl: int


class PositionInfo(Struct, frozen=True, gc=False):
    market: str
    size: int
    entry_price: Union[int, None]        # ticks, the exact cost basis rounded to the nearest tick
    unrealised_pnl: int
    unsettled_funding: int
    mode: MarginMode
    isolated_margin: int
    liquidation_price: Union[int, None]  # ticks; None: no mark liquidates it
    realised_pnl: int = 0                # extension: realised in this market so far (fees apart)


class OrderInfo(Struct, frozen=True, gc=False):
    market: str
    cid: Cid
    oid: int
    side: Side
    kind: OrderKind
    price: Union[int, None]
    qty: int
    tif: TimeInForce
    reduce_only: bool


class AccountEvent(Event, tag="account"):
    account: AccountId
    collateral: int
    equity: int
    initial_margin: int
    maintenance_margin: int
    positions: list[PositionInfo]
    open_orders: list[OrderInfo]


class OpenInterest(Struct, frozen=True, gc=False):
    long: int
    short: int


class AuditEvent(Event, tag="audit"):
    deposits: int
    withdrawals: int
    collateral: int
    unrealised_pnl: int
    insurance_fund: int
    fees: int
    open_interest: dict[str, OpenInterest]


AnyEvent = Union[
    OrderAccepted, Rejected, Fill, OrderCancelled, OrderAmended, OrderTriggered, Mark,
    StateHashEvent, Balance, LiquidationEvent,
    MarginCall, FundingEvent, AccountEvent, AuditEvent,
    MarketStatusEvent, MarketUpdated, Settlement, IndexStale,
]


# --------------------------------------------------------------------------------------------
# Reason codes, each owned by one stage (exchange-core's CommandResultCode, grouped by stage)
# --------------------------------------------------------------------------------------------

class Reason:
    # codec: the command could not be read
    INVALID_COMMAND = "invalid_command"
    # order entry validation, in the contract's order
    UNKNOWN_MARKET = "unknown_market"
    INVALID_QTY = "invalid_qty"
    BELOW_MIN_QTY = "below_min_qty"
    INVALID_PRICE = "invalid_price"
    DUPLICATE_CID = "duplicate_cid"
    NO_MARK_PRICE = "no_mark_price"
    PRICE_OUT_OF_BAND = "price_out_of_band"
    REDUCE_ONLY_WOULD_INCREASE = "reduce_only_would_increase"
    ORACLE_STALE = "oracle_stale"
    TOO_MANY_ORDERS = "too_many_orders"
    INSUFFICIENT_MARGIN = "insufficient_margin"
    POST_ONLY_WOULD_CROSS = "post_only_would_cross"
    # cancel / amend
    UNKNOWN_ORDER = "unknown_order"
    # accounts
    INSUFFICIENT_COLLATERAL = "insufficient_collateral"
    # extensions (docs/contract-extensions.md)
    INVALID_MARKET = "invalid_market"
    INVALID_AMOUNT = "invalid_amount"
    INVALID_LEVERAGE = "invalid_leverage"
    MARGIN_MODE_LOCKED = "margin_mode_locked"
    NOT_ISOLATED = "not_isolated"
    MARKET_EXISTS = "market_exists"
    # extensions: a market's lifecycle
    MARKET_HALTED = "market_halted"
    MARKET_SETTLED = "market_settled"
    MARKET_POST_ONLY = "market_post_only"
    MARKET_REDUCE_ONLY = "market_reduce_only"
    # extension: good-till-date orders
    INVALID_EXPIRY = "invalid_expiry"
    # extension: a multi-source index
    UNKNOWN_SOURCE = "unknown_source"


class CancelReason:
    USER = "user"
    IOC_REMAINDER = "ioc_remainder"
    FOK_UNFILLED = "fok_unfilled"
    SELF_TRADE = "self_trade"
    MARGIN = "margin"
    LIQUIDATION = "liquidation"
    REDUCE_ONLY = "reduce_only"
    # extensions: a triggered order that cannot enter the book
    PRICE_OUT_OF_BAND = "price_out_of_band"
    POST_ONLY_WOULD_CROSS = "post_only_would_cross"
    # extension: a market's status (reduce_only, settled) took the order off
    MARKET_STATUS = "market_status"
    # extension: a gtd order whose expire_ts the clock has reached
    EXPIRED = "expired"


# The cancel reasons in their code order (engine/wire.pyx's value tokens, engine/book.pxd).
CANCEL_REASONS = tuple(v for k, v in vars(CancelReason).items() if k.isupper())
# The rejection reasons in their code order (Engine.execute_records: a result -1 - code).
REASONS = tuple(v for k, v in vars(Reason).items() if k.isupper())


def command_decoder(kind: str):
    """A reusable decoder for one command (`json` or `msgpack`)."""
    if kind == "json":
        return msgspec.json.Decoder(AnyCommand)
    return msgspec.msgpack.Decoder(AnyCommand)
