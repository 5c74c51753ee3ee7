"""Market specifications: the decimal configuration of `create_market` made into integers.

`tick_size` and `lot_size` are decimal strings; the market's multiplier (quote units per tick per
lot) is `tick_size * lot_size / 0.000001` and must be a positive whole number, so that
`notional = price (ticks) * qty (lots) * multiplier` is exact integer arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from math import isqrt

from .messages import MAX_TS, CreateMarket, OracleSource, Tier  # noqa: F401 (MAX_TS: a limit)

QUOTE_UNIT = Decimal("0.000001")
PPM = 1_000_000
MAX_PRICE = 2**40      # ticks: no market's max_price is larger
MAX_QTY = 2**40        # lots: no market's max_qty is larger

# ---- the magnitudes (docs/contract.md, "Limits") ---------------------------------------------
# Chosen so that every product and sum the engine computes fits its type by construction:
# a market's max_price * max_qty * multiplier is at most NOTIONAL_LIMIT, so any position's
# notional at any accepted mark, its cost basis, a fill's notional, fee and realised PnL, and
# every requirement are at most 2^61 in magnitude (an unrealised PnL at most 2^61 too: both
# terms have the same sign), and sums of them are taken in 128 bits.
NOTIONAL_LIMIT = 2**61        # quote units (about 2.3 trillion USD)
MAX_MONEY = 2**61             # quote units: one deposit, one balance, the venue's total deposits
MAX_MULTIPLIER = 10**12
MAX_INTERVAL_S = 366 * 86400  # funding_interval_s and oracle_max_age_s: at most a year


class MarketConfigError(ValueError):
    """A `create_market` that cannot make a market; the message is the `detail`."""


@dataclass(frozen=True)
class TierSpec:
    max_notional: int
    imf_ppm: int
    mmf_ppm: int
    imf_deduction: int
    mmf_deduction: int


@dataclass(frozen=True)
class MarketSpec:
    name: str
    tick_size: Decimal
    lot_size: Decimal
    multiplier: int
    min_qty: int
    imf_ppm: int
    mmf_ppm: int
    maker_fee_ppm: int
    taker_fee_ppm: int
    liquidation_fee_ppm: int
    price_band_ppm: int
    funding_interval_s: int
    funding_cap_ppm: int
    interest_ppm: int
    oracle_max_age_s: int
    max_orders_per_account: int
    max_liquidations_per_update: int
    max_price: int              # ticks: the largest price of an order or an oracle
    max_qty: int                # lots: the largest order, and the largest position
    limits_set: bool            # max_price / max_qty were configured (they enter the hash)
    tiers: tuple[TierSpec, ...]
    sources: tuple = ()         # ((name, weight), ...): a multi-source index; () one source
    min_sources: int = 1
    max_deviation_ppm: int = 0
    mark_ema_updates: int = 0   # 0: the contract's mark; N: the basis-average mark
    velocity_max_ppm: int = 0   # the price velocity guard (0: off) and its pause
    velocity_pause_s: int = 0

    def hash_record(self) -> list:
        """The spec's part of the canonical state (see docs/state-hash.md)."""
        return [
            self.name, str(self.tick_size), str(self.lot_size), self.multiplier, self.min_qty,
            self.imf_ppm, self.mmf_ppm, self.maker_fee_ppm, self.taker_fee_ppm,
            self.liquidation_fee_ppm, self.price_band_ppm, self.funding_interval_s,
            self.funding_cap_ppm, self.interest_ppm, self.oracle_max_age_s,
            self.max_orders_per_account, self.max_liquidations_per_update,
            [[t.max_notional, t.imf_ppm, t.mmf_ppm] for t in self.tiers],
        ] + ([self.max_price, self.max_qty] if self.limits_set else []) + (
            [[list(x) for x in self.sources], self.min_sources, self.max_deviation_ppm]
            if self.sources else []) + (
            [["mark_ema_updates", self.mark_ema_updates]] if self.mark_ema_updates else []) + (
            [["velocity", self.velocity_max_ppm, self.velocity_pause_s]]
            if self.velocity_max_ppm else [])


def _decimal(field: str, value: str | int | float) -> Decimal:
    """A decimal string, as the contract says; a JSON number is read by its shortest repr
    (0.1 -> Decimal("0.1")), never through binary floating point arithmetic."""
    try:
        d = Decimal(repr(value) if type(value) is float else str(value))
        if d.is_finite() and not -30 <= d.adjusted() <= 30:
            raise MarketConfigError(f"{field} must be between 1e-30 and 1e30, got {value!r}")
    except (InvalidOperation, ArithmeticError):
        raise MarketConfigError(f"{field} must be a decimal string such as \"0.1\", got {value!r}")
    if not d.is_finite() or d <= 0:
        raise MarketConfigError(f"{field} must be a positive decimal, got {value!r}")
    return d


def _ppm(field: str, value: int, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise MarketConfigError(f"{field} must be between {lo} and {hi} ppm, got {value}")
    return value


def _tiers(cmd: CreateMarket) -> tuple[TierSpec, ...]:
    """Continuous tiers: deduction_k = deduction_(k-1) + max_notional_(k-1) * (rate_k - rate_(k-1)) / 1e6.

    A deduction must be exact for the requirement never to jump at a boundary, so each
    `max_notional * rate step` must be a whole multiple of 1e6.
    """
    out: list[TierSpec] = []
    prev = None
    for k, t in enumerate(cmd.tiers or ()):
        where = f"tiers[{k}]"
        if t.mmf_ppm > t.imf_ppm:
            raise MarketConfigError(f"{where}: mmf_ppm {t.mmf_ppm} is above imf_ppm {t.imf_ppm}")
        if prev is None:
            imf_d = mmf_d = 0
        else:
            if t.max_notional <= prev.max_notional:
                raise MarketConfigError(
                    f"{where}: max_notional {t.max_notional} must rise above {prev.max_notional}")
            if t.imf_ppm < prev.imf_ppm or t.mmf_ppm < prev.mmf_ppm:
                raise MarketConfigError(f"{where}: rates must not fall as notional rises")
            di = prev.max_notional * (t.imf_ppm - prev.imf_ppm)
            dm = prev.max_notional * (t.mmf_ppm - prev.mmf_ppm)
            if di % PPM or dm % PPM:
                raise MarketConfigError(
                    f"{where}: max_notional of the tier below times the rate step must be a whole "
                    f"number of quote units, so that the deduction is exact")
            imf_d = prev.imf_deduction + di // PPM
            mmf_d = prev.mmf_deduction + dm // PPM
        prev = TierSpec(t.max_notional, t.imf_ppm, t.mmf_ppm, imf_d, mmf_d)
        out.append(prev)
    return tuple(out)


def market_spec(cmd: CreateMarket) -> MarketSpec:
    """Validate a `create_market` and convert it. Raises MarketConfigError with a clear detail."""
    tick = _decimal("tick_size", cmd.tick_size)
    lot = _decimal("lot_size", cmd.lot_size)
    mult = tick * lot / QUOTE_UNIT
    if mult != mult.to_integral_value() or mult < 1:
        raise MarketConfigError(
            f"tick_size * lot_size / 0.000001 must be a positive whole number (the multiplier), "
            f"got {tick} * {lot} / 0.000001 = {mult.normalize()}")
    if mult > MAX_MULTIPLIER:
        raise MarketConfigError(f"multiplier {int(mult)} is too large (at most 10^12)")
    max_price, max_qty = _limits(cmd, int(mult))
    if not 1 <= cmd.min_qty <= max_qty:
        raise MarketConfigError(
            f"min_qty must be a positive number of lots up to max_qty {max_qty}, got {cmd.min_qty}")
    imf = _ppm("imf_ppm", cmd.imf_ppm, 1, PPM)
    mmf = _ppm("mmf_ppm", cmd.mmf_ppm, 1, PPM)
    if mmf > imf:
        raise MarketConfigError(f"mmf_ppm {mmf} is above imf_ppm {imf}")
    taker = _ppm("taker_fee_ppm", cmd.taker_fee_ppm, 0, 100_000)
    maker = _ppm("maker_fee_ppm", cmd.maker_fee_ppm, -100_000, 100_000)
    if maker + taker < 0:
        raise MarketConfigError(
            f"maker rebate {-maker} ppm exceeds the taker fee {taker} ppm: the venue would pay out "
            f"money it did not receive")
    liq = _ppm("liquidation_fee_ppm", cmd.liquidation_fee_ppm, 0, PPM)
    band = _ppm("price_band_ppm", cmd.price_band_ppm, 1, PPM)
    if not 0 < cmd.funding_interval_s <= MAX_INTERVAL_S:
        raise MarketConfigError(f"funding_interval_s must be between 1 and {MAX_INTERVAL_S} (a "
                                f"year), got {cmd.funding_interval_s}")
    cap = _ppm("funding_cap_ppm", cmd.funding_cap_ppm, 0, PPM)
    interest = _ppm("interest_ppm", cmd.interest_ppm, -PPM, PPM)
    if not 0 <= cmd.oracle_max_age_s <= MAX_INTERVAL_S:
        raise MarketConfigError(f"oracle_max_age_s must be 0 (no limit) or up to {MAX_INTERVAL_S} "
                                f"(a year), got {cmd.oracle_max_age_s}")
    if not 1 <= cmd.max_orders_per_account <= 1_000_000:
        raise MarketConfigError(
            f"max_orders_per_account must be between 1 and 1000000, got {cmd.max_orders_per_account}")
    if not 1 <= cmd.max_liquidations_per_update <= 1_000_000:
        raise MarketConfigError(f"max_liquidations_per_update must be between 1 and 1000000, "
                                f"got {cmd.max_liquidations_per_update}")
    return MarketSpec(
        name=cmd.market, tick_size=tick, lot_size=lot, multiplier=int(mult), min_qty=cmd.min_qty,
        imf_ppm=imf, mmf_ppm=mmf, maker_fee_ppm=maker, taker_fee_ppm=taker,
        liquidation_fee_ppm=liq, price_band_ppm=band, funding_interval_s=cmd.funding_interval_s,
        funding_cap_ppm=cap, interest_ppm=interest, oracle_max_age_s=cmd.oracle_max_age_s,
        max_orders_per_account=cmd.max_orders_per_account,
        max_liquidations_per_update=cmd.max_liquidations_per_update, tiers=_tiers(cmd),
        max_price=max_price, max_qty=max_qty, limits_set=bool(cmd.max_price or cmd.max_qty),
        mark_ema_updates=_mark_window(cmd.mark_ema_updates), **_sources(cmd),
        **_velocity(cmd),
    )


def _velocity(cmd: CreateMarket) -> dict:
    """The price velocity guard's settings, checked: both 0 (off), or a move of 1 ppm to 10x
    and a pause of 1 s to a day."""
    if cmd.velocity_max_ppm == 0 and cmd.velocity_pause_s == 0:
        return {}
    _ppm("velocity_max_ppm", cmd.velocity_max_ppm, 1, 10 * PPM)
    if not 1 <= cmd.velocity_pause_s <= 86_400:
        raise MarketConfigError(f"velocity_pause_s must be between 1 and 86400 seconds with "
                                f"velocity_max_ppm set, got {cmd.velocity_pause_s}")
    return {"velocity_max_ppm": cmd.velocity_max_ppm, "velocity_pause_s": cmd.velocity_pause_s}


def _mark_window(n: int) -> int:
    if not 0 <= n <= 100_000:
        raise MarketConfigError(f"mark_ema_updates must be 0 (the contract's mark) or up to "
                                f"100000 oracles, got {n}")
    return n


def _sources(cmd: CreateMarket) -> dict:
    """The multi-source index's settings, checked (docs/contract.md, "A multi-source index")."""
    names = [s.name for s in cmd.oracle_sources or ()]
    if not names:
        if cmd.oracle_min_sources != 1 or cmd.oracle_max_deviation_ppm:
            raise MarketConfigError("oracle_min_sources and oracle_max_deviation_ppm need "
                                    "oracle_sources")
        return {}
    if len(set(names)) != len(names):
        raise MarketConfigError(f"oracle_sources names must differ, got {names}")
    if len(names) > 64:
        raise MarketConfigError(f"at most 64 oracle_sources, got {len(names)}")
    if not 1 <= cmd.oracle_min_sources <= len(names):
        raise MarketConfigError(f"oracle_min_sources must be between 1 and the {len(names)} "
                                f"sources, got {cmd.oracle_min_sources}")
    _ppm("oracle_max_deviation_ppm", cmd.oracle_max_deviation_ppm, 0, PPM)
    return {"sources": tuple((s.name, s.weight) for s in cmd.oracle_sources),
            "min_sources": cmd.oracle_min_sources,
            "max_deviation_ppm": cmd.oracle_max_deviation_ppm}


def _limits(cmd: CreateMarket, mult: int) -> tuple[int, int]:
    """The market's largest price and quantity: as configured, or by default the geometric
    split of NOTIONAL_LIMIT (max_price = max_qty = sqrt(NOTIONAL_LIMIT / multiplier), within
    MAX_PRICE and MAX_QTY). Their product times the multiplier must stay within NOTIONAL_LIMIT."""
    split = min(isqrt(NOTIONAL_LIMIT // mult), MAX_PRICE)
    price = cmd.max_price or split
    if not 1 <= price <= MAX_PRICE:
        raise MarketConfigError(f"max_price must be between 1 and {MAX_PRICE} ticks, got {price}")
    qty = cmd.max_qty or min(MAX_QTY, NOTIONAL_LIMIT // (price * mult))
    if not 1 <= qty <= MAX_QTY:
        raise MarketConfigError(f"max_qty must be between 1 and {MAX_QTY} lots, got {qty}")
    if price * qty * mult > NOTIONAL_LIMIT:
        raise MarketConfigError(
            f"max_price {price} x max_qty {qty} x multiplier {mult} is above the notional limit "
            f"{NOTIONAL_LIMIT} quote units")
    return price, qty


UPDATABLE = ("min_qty", "imf_ppm", "mmf_ppm", "tiers", "maker_fee_ppm", "taker_fee_ppm",
             "liquidation_fee_ppm", "price_band_ppm", "funding_cap_ppm", "interest_ppm",
             "oracle_max_age_s", "max_orders_per_account", "max_liquidations_per_update",
             "oracle_min_sources", "oracle_max_deviation_ppm", "velocity_max_ppm",
             "velocity_pause_s")
_SPEC_NAME = {"oracle_min_sources": "min_sources",
              "oracle_max_deviation_ppm": "max_deviation_ppm"}


def updated_spec(spec: MarketSpec, cmd) -> MarketSpec:
    """An `update_market`'s new spec: the fields it names over the market's own, checked as
    `create_market` checks them (MarketConfigError). The tick and lot sizes, the largest price
    and quantity and the funding interval never change."""
    fields = {k: getattr(spec, _SPEC_NAME.get(k, k)) for k in UPDATABLE if k != "tiers"}
    fields["oracle_sources"] = [OracleSource(n, w) for n, w in spec.sources] or None
    fields["tiers"] = [Tier(t.max_notional, t.imf_ppm, t.mmf_ppm) for t in spec.tiers] or None
    for k in UPDATABLE:
        v = getattr(cmd, k)
        if v is not None:
            fields[k] = (v or None) if k == "tiers" else v
    return market_spec(CreateMarket(
        market=spec.name, tick_size=str(spec.tick_size), lot_size=str(spec.lot_size),
        funding_interval_s=spec.funding_interval_s,
        max_price=spec.max_price if spec.limits_set else 0,
        max_qty=spec.max_qty if spec.limits_set else 0,
        mark_ema_updates=spec.mark_ema_updates, **fields))
