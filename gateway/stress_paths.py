"""The price paths of a `perpdex stress` run (docs/stress.md, "Price paths"): one a market, from
a CSV file or synthetic, scaled for a sweep's crash size, in the market's ticks, with what the
oracle shows of it; and the markets the scenario names checked against the venue's.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from .stress_inputs import (Options, PricePath, Scenario, StressError, load_csv, oracle_view,
                            synthetic)


@dataclass
class MarketRun:
    """A market's path in ticks (step 0 is the start) and its makers' state along it."""
    name: str
    tick: Decimal
    lot: Decimal
    mult: int
    imf: int
    band: int
    fair: list[int]                  # ticks, step 0 = start
    oracle: list[int]
    path_source: str
    oracle_model: str
    vol: float = 0.0                 # EWMA of |log return| per step
    makers: list = field(default_factory=list)

    def usd(self, ticks: int) -> float:
        return float(ticks * self.tick)


@dataclass
class Paths:
    markets: dict[str, MarketRun]    # by name, in name order
    steps: int                       # the longest path's steps
    step_seconds: int


def scale_crash(prices: list[Decimal], scale: float) -> list[Decimal]:
    """The path with every move from its start scaled: log(p / p0) times `scale` (0 is flat,
    1 the path as given, 2 a crash twice as deep in log terms)."""
    p0 = prices[0]
    return [p0 * Decimal(repr(math.exp(scale * math.log(p / p0)))) for p in prices]


def _ticks(price: Decimal, tick: Decimal) -> int:
    return max(1, int((price / tick).to_integral_value()))


def price_paths(sc: Scenario, opts: Options, specs: dict, state_markets: dict, steps: int,
                rng: random.Random) -> Paths:
    """Every market's path: the scenario's [paths] and [oracle] with --path and --oracle over
    them, starting at [start_price] or at the venue state's index (`state_markets`, the
    engine's state's markets by name); a market with neither a path, a population nor a start
    price has none. A synthetic path draws from `rng`, in the markets' name order."""
    f = sc.file
    known = set(specs)
    for where, table in (("paths", f.paths), ("oracle", f.oracle),
                         ("start_price", f.start_price)):
        for m in table:
            if m not in known:
                raise StressError(f"{sc.where([where, m])}: {where}.{m}: unknown market (the "
                                  f"venue has {', '.join(sorted(known))})")
    for i, pop in enumerate(f.population):
        if pop.market not in known:
            raise StressError(f"{sc.where(['population', i, 'market'])}: population[{i}]."
                              f"market: {pop.market!r} is an unknown market (the venue has "
                              f"{', '.join(sorted(known))})")
    paths = dict(f.paths)
    oracles = dict(f.oracle)
    for opt, table in ((opts.paths, paths), (opts.oracle, oracles)):
        for item in opt:
            m, sep, spec = item.partition("=")
            name = "--path" if table is paths else "--oracle"
            if not sep or not spec:
                raise StressError(f"{name} {item}: expected MARKET=SPEC")
            if m not in known:
                raise StressError(f"{name} {item}: {m!r} is an unknown market (the venue has "
                                  f"{', '.join(sorted(known))})")
            table[m] = spec
    csv_steps = None
    raw: dict[str, PricePath] = {}
    wheres: dict[str, str] = {}
    for name in sorted(known):
        spec = specs[name]
        where = wheres[name] = (f"--path {name}={paths[name]}"
                                if any(p.startswith(name + "=") for p in opts.paths)
                                else sc.where(["paths", name]) + f": paths.{name}")
        start = None
        if name in f.start_price:
            try:
                start = Decimal(str(f.start_price[name]))
                assert start.is_finite() and start > 0
            except Exception:
                raise StressError(f"{sc.where(['start_price', name])}: start_price.{name}: "
                                  f"{f.start_price[name]!r} is not a positive price in USD")
        elif state_markets[name][1] is not None:
            start = state_markets[name][1] * spec.tick_size
        spec_text = paths.get(name)
        if spec_text is not None and spec_text.strip().lower().endswith(".csv"):
            p = Path(spec_text)
            if not p.is_absolute() and not any(x.startswith(name + "=") for x in opts.paths):
                p = sc.base / p
            raw[name] = load_csv(p, name, where)
            csv_steps = raw[name].step_seconds if csv_steps is None else csv_steps
        elif spec_text is not None or any(pop.market == name for pop in f.population):
            if start is None:
                raise StressError(f"{sc.where(['start_price'])}: start_price.{name}: "
                                  f"missing: a synthetic path (or a population) in {name} "
                                  f"needs a start price in USD")
            raw[name] = synthetic(spec_text or "flat", name, start, steps, rng, where)
        elif start is not None:
            raw[name] = synthetic("flat", name, start, steps, rng, where)
    if not raw:
        raise StressError(f"{sc.source}: no market has a price path or a start price: give "
                          f"[paths] or [start_price] (or --path MARKET=SPEC)")
    # a CSV's bars set the step unless the scenario file or the command line says
    step_s = opts.step_seconds or (csv_steps if csv_steps and "step_seconds" not in sc.text
                                   else f.step_seconds)
    for m, (_, cwhere) in opts.crash_scale.items():
        if m is not None and m not in known:
            raise StressError(f"{cwhere}: {m}.crash_scale: {m!r} is an unknown market (the "
                              f"venue has {', '.join(sorted(known))})")
    for name, p in raw.items():
        scale, _ = opts.crash_scale.get(name, opts.crash_scale.get(None, (1, "")))
        if scale != 1:
            p.prices = scale_crash(p.prices, scale)
            p.source = f"{p.source} (moves x{scale:g})"
    n = max(len(p.prices) for p in raw.values()) - 1
    markets: dict[str, MarketRun] = {}
    for name, p in raw.items():
        spec = specs[name]
        fair = [_ticks(x, spec.tick_size) for x in p.prices]
        fair += [fair[-1]] * (n + 1 - len(fair))
        model = oracles.get(name, "live")
        owhere = (f"--oracle {name}={model}" if name in {o.partition('=')[0]
                                                         for o in opts.oracle}
                  else f"{sc.where(['oracle', name])}: oracle.{name}")
        orc = oracle_view(fair, model, owhere)
        bad = next((i for i, x in enumerate(fair) if x > spec.max_price), None)
        if bad is not None:
            raise StressError(f"{wheres[name]}: the price at step {bad} is above {name}'s "
                              f"largest price ({spec.max_price} ticks)")
        markets[name] = MarketRun(name, spec.tick_size, spec.lot_size, spec.multiplier,
                                  spec.imf_ppm, spec.price_band_ppm, fair, orc, p.source, model)
    return Paths(markets, n, step_s)
