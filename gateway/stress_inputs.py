"""The inputs of `perpdex stress` (docs/stress.md): the scenario TOML (venue, population, market
makers, price paths) and the command line's options over it, price paths from a CSV file or
synthetic, the oracle's lag, and overrides of the venue's parameters. Every bad input is a
StressError: one sentence naming the file and line (or the command-line option) and the field.
"""
from __future__ import annotations

import csv
import math
import random
import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Union

import msgspec
from msgspec import Meta, Struct

from perpdex.engine import messages as M
from perpdex.engine.markets import MarketConfigError, market_spec

from .config import key_line, validation_error

USD = 1_000_000                     # quote units per USD


class StressError(ValueError):
    """An input `perpdex stress` cannot run; the message says where and what."""


# ---- the scenario file -------------------------------------------------------------------------

Share = Annotated[float, Meta(ge=0, le=1)]
PositiveFloat = Annotated[float, Meta(gt=0, le=1e15)]


class Range(Struct, forbid_unknown_fields=True, kw_only=True):
    """A uniform draw between min and max."""
    min: Annotated[float, Meta(ge=0, le=1e15)]
    max: Annotated[float, Meta(ge=0, le=1e15)]


class LogNormal(Struct, forbid_unknown_fields=True, kw_only=True):
    """A log-normal draw around `median` (sigma in natural log units), clipped to min..max."""
    median: PositiveFloat
    sigma: Annotated[float, Meta(ge=0, le=5)] = 1.0
    min: PositiveFloat = 10.0
    max: PositiveFloat = 1e9


class PopulationSection(Struct, forbid_unknown_fields=True, kw_only=True):
    market: Annotated[str, Meta(min_length=1, max_length=32)]
    accounts: Annotated[int, Meta(ge=1, le=1_000_000)]
    long_share: Share = 0.5
    isolated_share: Share = 0.0
    leverage: Range = msgspec.field(default_factory=lambda: Range(min=2, max=10))
    notional_usd: LogNormal = msgspec.field(default_factory=lambda: LogNormal(median=10_000))
    stop_share: Share = 0.0
    stop_distance_pct: Range = msgspec.field(default_factory=lambda: Range(min=2, max=10))
    entry_spread_pct: Annotated[float, Meta(ge=0, le=20)] = 0.0


class MakersSection(Struct, forbid_unknown_fields=True, kw_only=True):
    count: Annotated[int, Meta(ge=0, le=100)] = 2
    depth_usd: Annotated[float, Meta(ge=0, le=1e12)] = 500_000.0
    levels: Annotated[int, Meta(ge=1, le=50)] = 5
    half_spread_bps: Annotated[float, Meta(gt=0, le=10_000)] = 5.0
    level_step_bps: Annotated[float, Meta(gt=0, le=10_000)] = 10.0
    widen: Annotated[float, Meta(ge=0, le=1000)] = 2.0
    thin: Annotated[float, Meta(ge=0, le=1000)] = 1.0
    withdraw_move_pct: Annotated[float, Meta(gt=0, le=100)] = 8.0
    vol_halflife_steps: Annotated[float, Meta(gt=0, le=10_000)] = 5.0
    deposit_usd: Annotated[float, Meta(gt=0, le=1e12)] = 50_000_000.0


SetValue = Union[int, list, dict]


class VenueSection(Struct, forbid_unknown_fields=True, kw_only=True):
    markets: str = "default"
    state: Union[str, None] = None
    insurance_usd: Annotated[float, Meta(ge=0, le=1e12)] = 1_000_000.0
    set: dict[str, SetValue] = msgspec.field(default_factory=dict)


class ScenarioFile(Struct, forbid_unknown_fields=True, kw_only=True):
    seed: Annotated[int, Meta(ge=0, le=2**63 - 1)] = 1
    steps: Annotated[int, Meta(ge=1, le=1_000_000)] = 240
    step_seconds: Annotated[int, Meta(ge=1, le=86_400)] = 60
    venue: VenueSection = msgspec.field(default_factory=VenueSection)
    population: list[PopulationSection] = msgspec.field(default_factory=list)
    makers: MakersSection = msgspec.field(default_factory=MakersSection)
    start_price: dict[str, Union[float, int, str]] = msgspec.field(default_factory=dict)
    paths: dict[str, str] = msgspec.field(default_factory=dict)
    oracle: dict[str, str] = msgspec.field(default_factory=dict)


@dataclass
class Scenario:
    """Everything a run needs, the file's and the command line's together."""
    file: ScenarioFile
    source: str                      # the scenario's path, or "(no scenario file)"
    base: Path                       # relative paths in the file are relative to this
    text: str = ""

    def where(self, keys: list) -> str:
        """`FILE:LINE` of a key of the scenario file (best effort)."""
        return f"{self.source}{key_line(self.text, keys) if self.text else ''}"


@dataclass
class Options:
    """What the command line adds to (or overrides in) the scenario file."""
    state: str | None = None
    paths: list[str] = field(default_factory=list)        # MARKET=SPEC
    oracle: list[str] = field(default_factory=list)       # MARKET=SPEC
    sets: list[str] = field(default_factory=list)         # [MARKET.]KEY=VALUE
    insurance_usd: float | None = None
    seed: int | None = None
    steps: int | None = None
    step_seconds: int | None = None
    events: str | None = None                             # every event read, JSON Lines
    progress: bool = False
    # a sweep's or a comparison's point: (where, [MARKET.]KEY=VALUE) after `sets`, and the
    # crash's scale per market, None for every market: (scale, where) (docs/stress.md, "Sweeps")
    point_sets: list[tuple[str, str]] = field(default_factory=list)
    crash_scale: dict = field(default_factory=dict)


def _read_text(path: Path, where: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise StressError(f"{where}: no such file")
    except (OSError, UnicodeDecodeError) as e:
        raise StressError(f"{where}: cannot be read as a text file ({e})")


def load_scenario(path: str | None) -> Scenario:
    if path is None:
        return Scenario(ScenarioFile(), "(no scenario file)", Path.cwd())
    p = Path(path)
    text = _read_text(p, f"{path}")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise StressError(f"{path}: not valid TOML: {e}")
    try:
        parsed = msgspec.convert(raw, ScenarioFile)
    except msgspec.ValidationError as e:
        raise StressError(str(validation_error(path, text, [], e)))
    sc = Scenario(parsed, str(path), p.resolve().parent, text)
    for i, pop in enumerate(parsed.population):
        for name in ("leverage", "stop_distance_pct"):
            r = getattr(pop, name)
            if r.min > r.max:
                raise StressError(f"{sc.where(['population', i, name])}: population[{i}].{name}: "
                                  f"min {r.min:g} is above max {r.max:g}")
        if pop.leverage.min < 1:
            raise StressError(f"{sc.where(['population', i, 'leverage'])}: population[{i}]."
                              f"leverage: min {pop.leverage.min:g} is below 1")
        if pop.notional_usd.min > pop.notional_usd.max:
            raise StressError(f"{sc.where(['population', i, 'notional_usd'])}: population[{i}]."
                              f"notional_usd: min {pop.notional_usd.min:g} is above max "
                              f"{pop.notional_usd.max:g}")
    return sc


# ---- the venue's parameters ----------------------------------------------------------------

SETTABLE = ("imf_ppm", "mmf_ppm", "maker_fee_ppm", "taker_fee_ppm", "liquidation_fee_ppm",
            "price_band_ppm", "funding_interval_s", "funding_cap_ppm", "interest_ppm",
            "oracle_max_age_s", "max_orders_per_account", "max_liquidations_per_update", "tiers")


def parse_set(option: str) -> tuple[str | None, str, str]:
    """`--set [MARKET.]KEY=VALUE` -> (market or None, key, value)."""
    if "=" not in option:
        raise StressError(f"--set {option}: expected [MARKET.]KEY=VALUE, e.g. mmf_ppm=30000 or "
                          f"BTC-PERP.liquidation_fee_ppm=5000")
    key, value = option.split("=", 1)
    market, _, name = key.rpartition(".")
    return market or None, name.strip(), value.strip()


def _tiers(value, where: str) -> list[M.Tier]:
    """`MAX_NOTIONAL_USD:IMF_PPM:MMF_PPM,...` (the command line) or a TOML list of tables
    {max_notional, imf_ppm, mmf_ppm} (max_notional in quote units, as create_market)."""
    try:
        if isinstance(value, str):
            out = []
            for part in value.split(","):
                n, imf, mmf = part.split(":")
                out.append(M.Tier(int(Decimal(n) * USD), int(imf), int(mmf)))
            return out
        return msgspec.convert(value, list[M.Tier])
    except (ValueError, InvalidOperation, msgspec.ValidationError) as e:
        raise StressError(f"{where}: tiers: expected MAX_NOTIONAL_USD:IMF_PPM:MMF_PPM,... "
                          f"(rising), got {value!r} ({e})")


def apply_overrides(markets: list[M.CreateMarket], settings: list[tuple[str, str | None, str,
                                                                          object]]
                    ) -> list[M.CreateMarket]:
    """The markets with `settings` applied, in order: (where, market or None for every market,
    key, value). Each result is checked as the engine checks create_market."""
    names = [m.market for m in markets]
    out = list(markets)
    for where, market, key, value in settings:
        if key not in SETTABLE:
            raise StressError(f"{where}: {key}: not a parameter stress can set (one of "
                              f"{', '.join(SETTABLE)}; the fund's seed is --insurance-usd)")
        if market is not None and market not in names:
            raise StressError(f"{where}: {market}: unknown market (the venue has "
                              f"{', '.join(names) or 'none'})")
        if key == "tiers":
            value = _tiers(value, where)
        else:
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise StressError(f"{where}: {key}: expected a whole number, got {value!r}")
        for i, mk in enumerate(out):
            if market is None or mk.market == market:
                out[i] = msgspec.structs.replace(mk, **{key: value})
    for mk in out:
        try:
            market_spec(mk)
        except MarketConfigError as e:
            raise StressError(f"{settings[-1][0] if settings else 'the venue'}: {mk.market}: "
                              f"the engine refuses these parameters: {e}")
    return out


# ---- price paths -------------------------------------------------------------------------------

@dataclass
class PricePath:
    market: str
    prices: list[Decimal]            # USD, step 0 is the start
    source: str
    step_seconds: int | None = None  # from a CSV's timestamps


_TS_NAMES = ("timestamp", "time", "date", "datetime", "ts", "open_time")
_PRICE_NAMES = ("price", "close", "index", "mid")


def _parse_ts(text: str) -> float:
    text = text.strip()
    try:
        v = float(text)
        return v / 1000 if v > 1e11 else v          # milliseconds since the epoch
    except ValueError:
        pass
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def load_csv(path: Path, market: str, where: str) -> PricePath:
    """A CSV of timestamp,price (a header naming the columns is optional; OHLC minute bars
    are read by their `close`). Timestamps: Unix seconds or milliseconds, or ISO 8601."""
    text = _read_text(path, f"{where}: {path}")
    rows = [(n, r) for n, r in enumerate(csv.reader(text.splitlines()), 1)
            if r and not r[0].lstrip().startswith("#")]
    if not rows:
        raise StressError(f"{path}: no rows (expected timestamp,price lines)")
    ti, pi = 0, 1
    head = [c.strip().lower() for c in rows[0][1]]
    if not _is_number(head[-1]):
        ti = next((i for i, c in enumerate(head) if c in _TS_NAMES), None)
        pi = next((i for i, c in enumerate(head) if c in _PRICE_NAMES), None)
        if ti is None or pi is None:
            raise StressError(f"{path}:{rows[0][0]}: the header names no "
                              f"{'timestamp' if ti is None else 'price'} column (expected one "
                              f"of {', '.join(_TS_NAMES if ti is None else _PRICE_NAMES)})")
        rows = rows[1:]
    prices, stamps = [], []
    for n, row in rows:
        if len(row) <= max(ti, pi):
            raise StressError(f"{path}:{n}: expected {max(ti, pi) + 1} columns, got {len(row)}")
        try:
            ts = _parse_ts(row[ti])
        except ValueError:
            raise StressError(f"{path}:{n}: timestamp: {row[ti].strip()!r} is neither Unix "
                              f"seconds nor an ISO 8601 time")
        try:
            price = Decimal(row[pi].strip())
        except InvalidOperation:
            raise StressError(f"{path}:{n}: price: {row[pi].strip()!r} is not a number")
        if not price.is_finite() or price <= 0:
            raise StressError(f"{path}:{n}: price: {row[pi].strip()!r} is not a positive number")
        if stamps and ts <= stamps[-1]:
            raise StressError(f"{path}:{n}: timestamp: {row[ti].strip()!r} is not after the "
                              f"row before (timestamps must rise)")
        stamps.append(ts)
        prices.append(price)
    if len(prices) < 2:
        raise StressError(f"{path}: one price only: a path needs at least two rows")
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    step = max(1, round(gaps[len(gaps) // 2]))
    return PricePath(market, prices, str(path), step)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


_COMPONENT = re.compile(r"^(flat|gap|slide|walk|spike)((?::[-+0-9.eE]+)*)(?:@([0-9]+))?$")
SYNTHETIC_HELP = ("flat | gap:PCT[@STEP] | slide:PCT:STEPS[@STEP] | walk:VOL_PCT[:JUMP_PROB:"
                  "JUMP_PCT] | spike:PCT:STEPS[@STEP], joined with '+'")


def synthetic(spec: str, market: str, start: Decimal, steps: int, rng: random.Random,
              where: str) -> PricePath:
    """A synthetic path of `steps` moves from `start`: the components' log returns added."""
    logret = [0.0] * (steps + 1)
    for part in spec.split("+"):
        m = _COMPONENT.match(part.strip())
        if not m:
            raise StressError(f"{where}: {part.strip()!r} is not a path component (expected "
                              f"a CSV file or {SYNTHETIC_HELP})")
        kind, args, at = m.group(1), [a for a in m.group(2).split(":") if a], m.group(3)
        try:
            nums = [float(a) for a in args]
        except ValueError:
            raise StressError(f"{where}: {part.strip()!r}: its numbers do not read")
        want = {"flat": (0,), "gap": (1,), "slide": (2,), "walk": (1, 3), "spike": (2,)}[kind]
        if len(nums) not in want:
            raise StressError(f"{where}: {part.strip()!r}: {kind} takes "
                              f"{' or '.join(map(str, want))} numbers ({SYNTHETIC_HELP})")
        start_step = int(at) if at is not None else max(1, steps // 4)
        if not 1 <= start_step <= steps:
            raise StressError(f"{where}: {part.strip()!r}: @{start_step} is outside the path's "
                              f"steps 1..{steps}")
        if kind in ("gap", "slide", "spike") and not -99 <= nums[0] <= 1000:
            raise StressError(f"{where}: {part.strip()!r}: a move of {nums[0]:g} % is outside "
                              f"-99..1000 %")
        if kind == "gap":
            logret[start_step] += math.log1p(nums[0] / 100)
        elif kind in ("slide", "spike"):
            n = int(nums[1])
            if n < 1:
                raise StressError(f"{where}: {part.strip()!r}: the number of steps must be at "
                                  f"least 1")
            total = math.log1p(nums[0] / 100)
            if kind == "spike":
                logret[start_step] += total
                first = start_step + 1
                total = -total
            else:
                first = start_step
            for k in range(first, min(steps, first + n - 1) + 1):
                logret[k] += total / n
        elif kind == "walk":
            vol = nums[0] / 100
            prob, jump = (nums[1], nums[2] / 100) if len(nums) == 3 else (0.0, 0.0)
            if not 0 <= vol <= 0.5 or not 0 <= prob <= 1 or not -0.99 <= jump <= 10:
                raise StressError(f"{where}: {part.strip()!r}: walk:VOL_PCT (0..50) :JUMP_PROB "
                                  f"(0..1) :JUMP_PCT (-99..1000)")
            for k in range(1, steps + 1):
                logret[k] += rng.gauss(0.0, vol)
                if prob and rng.random() < prob:
                    logret[k] += math.log1p(jump)
    prices, level = [], 0.0
    for r in logret:
        level += r
        prices.append(start * Decimal(repr(math.exp(level))))
    return PricePath(market, prices, spec)


_ORACLE = re.compile(r"^(?:lag:([0-9]+)|stuck:([0-9]+):([0-9]+)|live)$")


def oracle_view(fair: list[int], spec: str, where: str) -> list[int]:
    """What the oracle shows, step by step, of the fair price: `live` (the same), `lag:N` (the
    price N steps before), `stuck:FROM:TO` (held from step FROM until step TO, then live)."""
    m = _ORACLE.match(spec.strip())
    if not m:
        raise StressError(f"{where}: {spec!r} is not an oracle model (expected live, lag:N or "
                          f"stuck:FROM:TO)")
    if m.group(1) is not None:
        n = int(m.group(1))
        return [fair[max(0, i - n)] for i in range(len(fair))]
    if m.group(2) is not None:
        a, b = int(m.group(2)), int(m.group(3))
        if not 0 <= a < b:
            raise StressError(f"{where}: {spec!r}: stuck:FROM:TO needs FROM < TO")
        return [fair[a] if a <= i < b else p for i, p in enumerate(fair)]
    return list(fair)
