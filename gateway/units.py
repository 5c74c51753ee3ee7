"""Decimal in, integers out, and back: a market's ticks and lots (`Units`, `Market`) and money
in quote units (micro-USD: `usd`, `quote_units`), converted exactly; rounding only when asked.
docs/sdk.md, "Units: Decimal in and out"."""
from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from .errors import InvalidOrder, InvalidRequest

QUOTE_UNIT = Decimal("0.000001")        # one quote unit in USD: money is micro-USD integers


def decimal_of(x, what: str) -> Decimal:
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
    d = decimal_of(amount, "amount")
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
        return self._whole(decimal_of(price, "price") / self.tick, f"price {price}", self.tick)

    def lots(self, size) -> int:
        return self._whole(decimal_of(size, "size") / self.lot, f"size {size}", self.lot)

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
        return self._round(decimal_of(price, "price"), self.tick, up)

    def round_size(self, size, up: bool = False) -> Decimal:
        """`size` rounded to a whole lot, down (or up)."""
        return self._round(decimal_of(size, "size"), self.lot, up)

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
