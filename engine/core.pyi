"""What Python can call on the engine (engine/core.pyx). See docs/engine-api.md."""
from typing import Any, Literal, Sequence

from .markets import MarketSpec
from .messages import Command, Event

Format = Literal["msgpack", "jsonl"]

class Engine:
    def __init__(self, margin: bool = True) -> None: ...
    # ---- commands in, events out ------------------------------------------------------------
    def execute(self, cmd: Command) -> list[Event]:
        """One command Struct -> its events as Structs. O(1) + O(fills) for an order."""
    def execute_batch(self, data: bytes | bytearray | memoryview, fmt: Format = "msgpack",
                      out: Format | None = None) -> bytes:
        """Encoded commands -> encoded events (what cannot be decoded: invalid_command)."""
    def execute_many(self, items: Sequence[Any], fmt: Format = "msgpack") -> bytes:
        """Decoded commands (and engine.codec.Malformed items) -> encoded events."""
    def execute_msgpack(self, data: bytes | bytearray | memoryview, first: int = 1,
                        offset: int = 0, out: Format = "msgpack") -> bytes:
        """Complete msgpack commands (as MsgpackFramer.split gives them) -> encoded events."""
    # ---- the per-command API ------------------------------------------------------------------
    def new_order(self, account: int | str, market: str, cid: int | str, side: str, qty: Any,
                  price: Any = None, kind: str = "limit", tif: str = "gtc", ts: int = 0,
                  reduce_only: bool = False, stp: str = "cancel_maker",
                  trigger_price: Any = None, expire_ts: int | None = None) -> int:
        """As the new_order command; the number of fills (rows of `fills`)."""
    def cancel(self, account: int | str, market: str, cid: int | str, ts: int = 0) -> bool:
        """As the cancel command; True when the order was cancelled."""
    def amend(self, account: int | str, market: str, cid: int | str, price: Any = None,
              qty: Any = None, ts: int = 0) -> int:
        """As the amend command (None: unchanged); the number of fills its re-entry made."""
    # ---- the handle calls (docs/engine-api.md: codes are places in messages' tuples) -------
    def account_handle(self, account: int | str) -> int:
        """The account's integer handle; KeyError if no command has named it."""
    def market_handle(self, market: str) -> int:
        """The market's integer handle; KeyError if there is none."""
    def place(self, account: int, market: int, cid: int, side: int, qty: int, price: int = 0,
              kind: int = 0, tif: int = 0, ts: int = 0, flags: int = 0, trigger_price: int = 0,
              expire_ts: int = 0) -> tuple[int, tuple[tuple[int, int, int | str, int | str], ...]]:
        """As new_order; (oid or 0 if rejected, the fills as (price, qty, maker_cid, taker_cid))."""
    def cancel_order(self, account: int, market: int, cid: int, ts: int = 0) -> bool:
        """As cancel; True when the order was cancelled."""
    def amend_order(self, account: int, market: int, cid: int, price: int = 0, qty: int = 0,
                    ts: int = 0) -> tuple[tuple[int, int, int | str, int | str], ...]:
        """As amend (0: unchanged); the fills its re-entry made, as place gives them."""
    def execute_records(self, commands: Any, results: bytearray | None = None,
                        fills: bytearray | None = None) -> tuple[bytearray, bytearray]:
        """64-byte command records in; (an int64 result a command, a 64-byte record a fill)."""
    record_events: bool
    """Whether new_order / cancel encode their events for last_events() (default True; off,
    the events are numbered, not encoded)."""
    @property
    def last_reason(self) -> str | None:
        """The last per-command call's rejection reason; None if it was accepted."""
    @property
    def fills(self) -> memoryview:
        """The last new_order's fills: int64 rows (price, qty, taker_oid, maker_oid)."""
    def last_events(self) -> list[Event]:
        """The last per-command call's events, as Structs (ValueError if record_events was
        off during it)."""
    # ---- snapshots ----------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """The whole state as bytes (same build only). O(orders + positions + accounts)."""
    @staticmethod
    def from_snapshot(data: bytes) -> "Engine":
        """An engine in that state; ValueError for bytes that are no snapshot of this build."""
    # ---- views (change nothing) -------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The canonical state whose digest is the state hash. O(orders + positions)."""
    def book(self, market: str, depth: int = 5) -> dict[str, list[list[int]]]:
        """{"bids": [[price, qty], ...], "asks": [...]}, best first. O(depth)."""
    def position(self, account: int | str, market: str) -> tuple[int, int]:
        """(size in lots, cost in quote units); (0, 0) if none."""
    def check_integrity(self) -> None:
        """Raise AssertionError if any index disagrees with the books. O(orders)."""
    def risk_violations(self, market: str) -> list[tuple[Any, ...]]:
        """Scopes left liquidatable or wrongly warned (for tests). O(positions)."""
    def market_names(self) -> list[str]: ...
    def market_status(self, market: str) -> str: ...
    @property
    def specs(self) -> list[MarketSpec]: ...
    @property
    def clock(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def next_oid(self) -> int: ...
    @property
    def n_commands(self) -> int: ...
    @property
    def n_fills(self) -> int: ...
    def work(self) -> dict[str, int]: ...
    @property
    def margin(self) -> bool: ...
    @property
    def deposits(self) -> int: ...
    @property
    def withdrawals(self) -> int: ...
    @property
    def fees(self) -> int: ...
