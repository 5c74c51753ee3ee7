"""`perpdex stress`: a risk lab. A crash is replayed through the real engine
(perpdex.engine.Engine), deterministically from a seed, and the report says what the venue's
parameters did: accounts below maintenance, liquidations by kind, what the book absorbed, the
insurance fund's path, who was auto-deleveraged, socialised losses, bad debt, and the audit at
every step. docs/stress.md has every option, the scenario's schema and the report's fields.

A run: the venue (the embedded default's markets, a server configuration's, or a data folder /
snapshot of `perpdex serve`, read only), the parameters overridden, the fund seeded; market makers
(bots) and a generated population built at the start prices; then, per step, a `clock` command,
and per market the makers' requotes around the fair price (widening and thinning with volatility,
withdrawing after a large move) and an `oracle` with the oracle's view of the path. Every event
of the `clock`, `oracle` and setup commands is read; the makers quote through the per-command API
with `record_events` off (their post-only quotes never trade on entry).
"""
from __future__ import annotations

import math
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import msgspec
from sortedcontainers import SortedList

from perpdex.engine import Engine, messages as M

from .stress_inputs import (USD, PricePath, Scenario, StressError, apply_overrides, load_csv,
                            oracle_view, synthetic)

SECOND = 1_000_000_000
FUND = "insurance"
BIG = 1 << 200


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


# ---- the venue ---------------------------------------------------------------------------------

def _market_commands(sc: Scenario) -> list[M.CreateMarket]:
    from .config import ConfigError, default_config, load_config
    name = sc.file.venue.markets
    if name == "default":
        return list(default_config().markets)
    path = Path(name)
    if not path.is_absolute():
        path = sc.base / path
    try:
        return list(load_config(path).markets)
    except ConfigError as e:
        raise StressError(f"{sc.where(['venue', 'markets'])}: venue.markets: {e}")


def _settings(sc: Scenario, opts: Options) -> list[tuple]:
    from .stress_inputs import parse_set
    out = []
    for key, value in sc.file.venue.set.items():
        where = f"{sc.where(['venue', 'set', key])}: venue.set"
        if isinstance(value, dict):             # [venue.set."BTC-PERP"] table
            for k, v in value.items():
                out.append((f"{sc.where(['venue', 'set', key, k])}: venue.set.{key}", key, k, v))
        else:
            out.append((where, None, key, value))
    for where, option in [(f"--set {o}", o) for o in opts.sets] + opts.point_sets:
        market, key, value = parse_set(option)
        out.append((where, market, key, value))
    return out


def scale_crash(prices: list[Decimal], scale: float) -> list[Decimal]:
    """The path with every move from its start scaled: log(p / p0) times `scale` (0 is flat,
    1 the path as given, 2 a crash twice as deep in log terms)."""
    p0 = prices[0]
    return [p0 * Decimal(repr(math.exp(scale * math.log(p / p0)))) for p in prices]


def _load_state(state: str, settings: list, rewrite) -> tuple[Engine, str]:
    """An engine in the state of a data folder (the newest snapshot, then the journal after it)
    or of a snapshot file; read only. With `settings`, the journal is replayed from its first
    command with the markets' parameters rewritten (needs a whole journal)."""
    from . import journal as J
    path = Path(state)
    if not path.exists():
        raise StressError(f"--state {state}: no such file or folder")
    if path.is_file():
        if settings:
            raise StressError(f"{settings[0][0]}: a snapshot fixes its markets' parameters (the "
                              f"engine has no command that changes them); give the data folder "
                              f"with its whole journal to replay it with other parameters")
        try:
            return J.engine_from_snapshot(J.read_snapshot(path).engine), f"snapshot {path}"
        except (J.JournalError, ValueError) as e:
            raise StressError(f"--state {state}: not a readable snapshot: {e}")
    jdir, sdir = path / "journal", path / "snapshots"
    if not jdir.is_dir():
        raise StressError(f"--state {state}: neither a snapshot file nor a data folder (no "
                          f"journal/ in it)")
    try:
        recs, scan = J.read_all(jdir)
    except J.JournalError as e:
        raise StressError(f"--state {state}: the journal cannot be read: {e}")
    cmds = [(seq, J.decode(k, p)) for seq, k, p in recs if k == J.COMMAND]
    if settings:
        if scan.first not in (0, 1):
            raise StressError(f"{settings[0][0]}: the journal of {state} starts at seq "
                              f"{scan.first} (covered segments deleted), so it cannot be replayed "
                              f"with other market parameters")
        eng = Engine()
        creates = [c for _, c in cmds if type(c) is M.CreateMarket]
        new = {c.market: c for c in rewrite(creates)}
        for _, c in cmds:
            eng.execute(new.get(c.market, c) if type(c) is M.CreateMarket else c)
        return eng, f"data folder {path} (its journal replayed with the parameters set)"
    eng, after, what = Engine(), 0, "its journal"
    for snap_path in reversed(J.snapshots(sdir)):
        try:
            snap = J.read_snapshot(snap_path)
            eng, after = J.engine_from_snapshot(snap.engine), snap.seq
            what = f"snapshot {snap_path.name} and the journal after it"
            break
        except (J.JournalError, ValueError):
            continue
    if after == 0 and scan.first not in (0, 1):
        raise StressError(f"--state {state}: the journal starts at seq {scan.first} and no "
                          f"snapshot reads")
    for seq, c in cmds:
        if seq > after:
            eng.execute(c)
    return eng, f"data folder {path} ({what})"


# ---- prices ------------------------------------------------------------------------------------

def _ticks(price: Decimal, tick: Decimal) -> int:
    return max(1, int((price / tick).to_integral_value()))


@dataclass
class MarketRun:
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


# ---- the run -----------------------------------------------------------------------------------

class Stress:
    def __init__(self, sc: Scenario, opts: Options, out=sys.stderr):
        self.sc, self.opts, self.out = sc, opts, out
        f = sc.file
        self.seed = f.seed if opts.seed is None else opts.seed
        self.steps = f.steps if opts.steps is None else opts.steps
        self.rng = random.Random(self.seed)
        self.events_out = open(opts.events, "wb") if opts.events else None
        self.counts: Counter = Counter()
        self.scopes: dict = {}                      # account -> its cached report
        self.long_l: dict[str, SortedList] = {}
        self.short_l: dict[str, SortedList] = {}
        self.multi: set = set()                     # cross accounts with several positions
        self.ids: dict = {}
        self.in_market: dict[str, set] = {}
        self.setup_rejects: Counter = Counter()

    # -- engine calls --------------------------------------------------------------------------
    def run_cmd(self, cmd) -> list:
        events = self.eng.execute(cmd)
        if self.events_out is not None:
            for ev in events:
                self.events_out.write(msgspec.json.encode(ev) + b"\n")
        return events

    def setup_cmd(self, cmd) -> list:
        events = self.run_cmd(cmd)
        for ev in events:
            if type(ev) is M.Rejected:
                self.setup_rejects[ev.reason] += 1
        return events

    # -- building ------------------------------------------------------------------------------
    def build(self) -> None:
        sc, opts, f = self.sc, self.opts, self.sc.file
        settings = _settings(sc, opts)
        state = opts.state or f.venue.state
        if state and opts.state is None and not Path(state).is_absolute():
            state = str(sc.base / state)
        if state:
            self.eng, self.venue = _load_state(state, settings,
                                               lambda cs: apply_overrides(cs, settings))
            self.markets_cmds = None
        else:
            self.eng = Engine()
            cmds = apply_overrides(_market_commands(sc), settings)
            for c in cmds:
                self.setup_cmd(c)
            self.venue = ("the embedded default's markets" if f.venue.markets == "default"
                          else f"the markets of {f.venue.markets}")
        self.specs = {s.name: s for s in self.eng.specs}
        known = set(self.specs)
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
        step_s = opts.step_seconds or f.step_seconds
        state_markets = {mk[0][0]: mk for mk in self.eng.state()["markets"]}
        self.mk: dict[str, MarketRun] = {}
        csv_steps = None
        raw: dict[str, PricePath] = {}
        for name in sorted(known):
            spec = self.specs[name]
            where = (f"--path {name}={paths[name]}" if any(p.startswith(name + "=")
                                                            for p in opts.paths)
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
                raw[name] = synthetic(spec_text or "flat", name, start, self.steps, self.rng,
                                      where)
            elif start is not None:
                raw[name] = synthetic("flat", name, start, self.steps, self.rng, where)
        if not raw:
            raise StressError(f"{sc.source}: no market has a price path or a start price: give "
                              f"[paths] or [start_price] (or --path MARKET=SPEC)")
        self.step_s = opts.step_seconds or (csv_steps if csv_steps and
                                            "step_seconds" not in sc.text else step_s)
        for m, (_, cwhere) in self.opts.crash_scale.items():
            if m is not None and m not in known:
                raise StressError(f"{cwhere}: {m}.crash_scale: {m!r} is an unknown market (the "
                                  f"venue has {', '.join(sorted(known))})")
        for name, p in raw.items():
            scale, _ = self.opts.crash_scale.get(name, self.opts.crash_scale.get(None, (1, "")))
            if scale != 1:
                p.prices = scale_crash(p.prices, scale)
                p.source = f"{p.source} (moves x{scale:g})"
        self.n = max(len(p.prices) for p in raw.values()) - 1
        for name, p in raw.items():
            spec = self.specs[name]
            fair = [_ticks(x, spec.tick_size) for x in p.prices]
            fair += [fair[-1]] * (self.n + 1 - len(fair))
            model = oracles.get(name, "live")
            owhere = (f"--oracle {name}={model}" if name in {o.partition('=')[0]
                                                             for o in opts.oracle}
                      else f"{sc.where(['oracle', name])}: oracle.{name}")
            orc = oracle_view(fair, model, owhere)
            bad = next((i for i, x in enumerate(fair) if x > spec.max_price), None)
            if bad is not None:
                raise StressError(f"{where}: the price at step {bad} is above {name}'s largest "
                                  f"price ({spec.max_price} ticks)")
            self.mk[name] = MarketRun(name, spec.tick_size, spec.lot_size, spec.multiplier,
                                      spec.imf_ppm, spec.price_band_ppm, fair, orc, p.source,
                                      model)
        self.ts = max(self.eng.clock, SECOND) + SECOND
        seed_usd = opts.insurance_usd if opts.insurance_usd is not None else (
            f.venue.insurance_usd if not state or "insurance_usd" in sc.text else 0.0)
        self.insurance_seed = int(Decimal(repr(seed_usd)) * USD)
        if self.insurance_seed:
            self.setup_cmd(M.Deposit(account=FUND, amount=self.insurance_seed, ts=self.ts))
        for name, mr in self.mk.items():
            self.setup_cmd(M.Oracle(market=name, price=mr.oracle[0], ts=self.ts))
        mcfg = f.makers
        for name, mr in self.mk.items():
            for k in range(mcfg.count):
                acct = f"mm:{name}:{k + 1}"
                mr.makers.append({"account": acct, "cids": [], "next": 0})
                self.setup_cmd(M.Deposit(account=acct, amount=int(mcfg.deposit_usd * USD),
                                         ts=self.ts))
            self.quote(mr, 0)
        self.population()
        self.ts0 = self.ts
        self.refresh_all()

    def population(self) -> None:
        f = self.sc.file
        for i, pop in enumerate(f.population):
            mr = self.mk[pop.market]
            spec = self.specs[pop.market]
            max_lev = max(1, 1_000_000 // (spec.tiers[0].imf_ppm if spec.tiers else spec.imf_ppm))
            start = mr.fair[0]
            rounds = 5 if pop.entry_spread_pct > 0 else 1
            plan: list[list] = [[] for _ in range(rounds)]
            for j in range(pop.accounts):
                acct = f"{pop.market}:{i + 1}:{j + 1}"
                long = self.rng.random() < pop.long_share
                lev = min(max_lev, max(1, int(self.rng.uniform(pop.leverage.min,
                                                               pop.leverage.max))))
                d = pop.notional_usd
                notional = min(d.max, max(d.min, d.median * math.exp(self.rng.gauss(0, d.sigma))))
                iso = self.rng.random() < pop.isolated_share
                stop = self.rng.random() < pop.stop_share
                dist = self.rng.uniform(pop.stop_distance_pct.min, pop.stop_distance_pct.max)
                plan[self.rng.randrange(rounds)].append((acct, long, lev, notional, iso, stop,
                                                         dist))
            for r, accounts in enumerate(plan):
                if rounds > 1:
                    off = pop.entry_spread_pct / 100 * (2 * r / (rounds - 1) - 1)
                    price = max(1, round(start * (1 + off)))
                    self.quote(mr, 0, around=price)
                    self.setup_cmd(M.Oracle(market=pop.market, price=price, ts=self.ts))
                else:
                    price = start
                self.enter(pop.market, mr, price, accounts)
            if rounds > 1:
                self.quote(mr, 0)
                self.setup_cmd(M.Oracle(market=pop.market, price=start, ts=self.ts))

    def enter(self, market: str, mr: MarketRun, price: int, accounts: list) -> None:
        """The accounts open their positions at `price`: the larger side rests limit orders
        there, the smaller side takes them, and a house account takes what is left."""
        ts = self.ts
        unit = price * mr.mult
        orders = []
        for acct, long, lev, notional, iso, stop, dist in accounts:
            qty = max(self.specs[market].min_qty, int(notional * USD // unit))
            deposit = int(Decimal(qty * unit) / lev * Decimal("1.003")) + 1
            self.setup_cmd(M.Deposit(account=acct, amount=deposit, ts=ts))
            self.setup_cmd(M.SetLeverage(account=acct, market=market, leverage=lev, ts=ts))
            if iso:
                self.setup_cmd(M.SetMarginMode(account=acct, market=market, mode="isolated",
                                               ts=ts))
                self.setup_cmd(M.TransferMargin(account=acct, market=market, amount=deposit,
                                                ts=ts))
            orders.append((acct, long, qty, stop, dist))
        longs = sum(q for _, lg, q, _, _ in orders if lg)
        shorts = sum(q for _, lg, q, _, _ in orders if not lg)
        rest_long = longs >= shorts
        for acct, long, qty, _, _ in orders:
            if long == rest_long:
                self.setup_cmd(M.NewOrder(account=acct, market=market, cid="entry", ts=ts,
                                          side="buy" if long else "sell", kind="limit",
                                          qty=qty, price=price))
        for acct, long, qty, _, _ in orders:
            if long != rest_long:
                self.setup_cmd(M.NewOrder(account=acct, market=market, cid="entry", ts=ts,
                                          side="buy" if long else "sell", kind="limit",
                                          tif="ioc", qty=qty, price=price))
        left = abs(longs - shorts)
        if left:
            house = f"house:{market}"
            self.setup_cmd(M.Deposit(account=house, amount=left * unit, ts=ts))
            self.setup_cmd(M.NewOrder(account=house, market=market, cid=self.next_cid(),
                                      side="sell" if rest_long else "buy", kind="limit",
                                      tif="ioc", qty=left, price=price, ts=ts))
        for acct, long, qty, stop, dist in orders:
            self.eng.cancel(acct, market, "entry")      # a remainder never filled
            if stop:
                trig = max(1, round(price * (1 - dist / 100 if long else 1 + dist / 100)))
                self.setup_cmd(M.NewOrder(account=acct, market=market, cid="stop", ts=ts,
                                          side="sell" if long else "buy", kind="stop_market",
                                          qty=qty, trigger_price=trig, reduce_only=True))

    _cid = 0

    def next_cid(self) -> int:
        self._cid += 1
        return self._cid

    # -- the liquidity model -------------------------------------------------------------------
    def quote(self, mr: MarketRun, step: int, around: int | None = None) -> None:
        """Each maker pulls its quotes and quotes again around the fair price: `levels` a side,
        the half spread widened and the depth thinned by the volatility; none after a move
        larger than `withdraw_move_pct` (until the volatility has decayed below it)."""
        cfg = self.sc.file.makers
        eng = self.eng
        fair = mr.fair[step] if around is None else around
        vol_pct = mr.vol * 100
        withdrawn = vol_pct >= cfg.withdraw_move_pct
        half = cfg.half_spread_bps / 1e4 * (1 + cfg.widen * vol_pct)
        stepw = cfg.level_step_bps / 1e4 * (1 + cfg.widen * vol_pct)
        depth = cfg.depth_usd / (1 + cfg.thin * vol_pct)
        state = eng.record_events
        eng.record_events = False
        try:
            for mk in mr.makers:
                for cid in mk["cids"]:
                    eng.cancel(mk["account"], mr.name, cid)
                mk["cids"] = []
                if withdrawn or depth <= 0:
                    continue
                per_level = depth / cfg.levels
                for lvl in range(cfg.levels):
                    off = half + stepw * lvl
                    for side, sign in (("buy", -1), ("sell", 1)):
                        price = round(fair * (1 + sign * off))
                        if price < 1 or (side == "sell" and price <= fair) or (
                                side == "buy" and price >= fair):
                            price = fair + sign
                        qty = int(per_level * USD // (price * mr.mult))
                        if qty < 1 or price < 1:
                            continue
                        mk["next"] += 1
                        cid = mk["next"]
                        eng.new_order(mk["account"], mr.name, cid, side, qty, price, "limit",
                                      "alo")
                        if eng.last_reason is None:
                            mk["cids"].append(cid)
                        else:
                            self.counts["maker_rejected:" + eng.last_reason] += 1
        finally:
            eng.record_events = state
        self.counts["withdrawn_steps:" + mr.name] += withdrawn

    def depth(self, mr: MarketRun, step: int) -> tuple[int, int]:
        """The bids and asks within the price band around the fair price, in quote units."""
        book = self.eng.book(mr.name, 200)
        fair = mr.fair[step]
        lo = fair * (1_000_000 - mr.band) // 1_000_000
        hi = fair * (1_000_000 + mr.band) // 1_000_000
        bid = sum(p * q for p, q in book["bids"] if p >= lo) * mr.mult
        ask = sum(p * q for p, q in book["asks"] if p <= hi) * mr.mult
        return bid, ask

    # -- accounts below maintenance --------------------------------------------------------------
    def refresh(self, account) -> None:
        """Query the account and key its scopes by their liquidation prices (exact: a scope is
        below maintenance when the mark is past that price, until its money or position
        change, which an event names, or funding accrues, which a `funding` event says)."""
        if account == FUND:
            return
        rep = self.run_cmd(M.QueryAccount(account=account, ts=0))[0]
        old = self.scopes.get(account)
        if old is not None:
            for m, (_, key) in old["keys"].items():
                (self.long_l if key[2] else self.short_l)[m].discard(key[:2])
                self.in_market[m].discard(account)
        self.multi.discard(account)
        keys = {}
        cross = [p for p in rep.positions if p.size and p.mode == "cross"]
        for p in rep.positions:
            if not p.size:
                continue
            self.in_market.setdefault(p.market, set()).add(account)
            if p.mode == "cross" and len(cross) > 1:
                continue
            if p.liquidation_price is not None:
                sid = self.ids.setdefault((account, p.market), len(self.ids))
                key = (p.liquidation_price, sid, p.size > 0)
                (self.long_l if p.size > 0 else self.short_l).setdefault(
                    p.market, SortedList()).add(key[:2])
                keys[p.market] = (p.size, key)
        if len(cross) > 1:
            self.multi.add(account)
        self.scopes[account] = {"collateral": rep.collateral, "keys": keys,
                                "iso": {p.market: p.isolated_margin for p in rep.positions},
                                "below": rep.equity < rep.maintenance_margin}

    def refresh_all(self) -> None:
        accounts = [a for a, *_ in self.eng.state()["accounts"] if a != FUND]
        for a in accounts:
            self.refresh(a)

    def below(self, market: str, mark: int) -> int:
        longs = self.long_l.get(market)
        shorts = self.short_l.get(market)
        n = 0
        if longs:
            n += len(longs) - longs.bisect_left((mark + 1, -1))   # liquidation price > mark
        if shorts:
            n += shorts.bisect_left((mark, -1))                     # liquidation price < mark
        return n

    def below_multi(self) -> int:
        n = 0
        for a in list(self.multi):
            self.refresh(a)
            n += self.scopes[a]["below"]
        return n

    # -- reading events --------------------------------------------------------------------------
    def read(self, events: list, step: dict) -> None:
        touched: set = set()
        other: set = set()                  # accounts with a cash movement besides socialising
        social: list = []
        funded: set = set()
        pending_adl = None
        for ev in events:
            t = type(ev)
            if t is M.Fill:
                touched.update((ev.taker_account, ev.maker_account))
                other.update((ev.taker_account, ev.maker_account))
                if ev.liquidation:
                    step["liq_fills"] += 1
            elif t is M.LiquidationEvent:
                touched.add(ev.account)
                other.add(ev.account)
                mr = self.mk.get(ev.market)
                usd = ev.qty * ev.price * self.specs[ev.market].multiplier
                if ev.kind == "adl":
                    if pending_adl is None:
                        pending_adl = ev
                        continue
                    bankrupt, pending_adl = pending_adl, None
                    step["adl"] += 1
                    step["adl_usd"] += usd
                    self.adl.append({"step": step["step"], "market": ev.market,
                                     "account": ev.account, "bankrupt": bankrupt.account,
                                     "qty": ev.qty, "price": mr.usd(ev.price) if mr else None,
                                     "notional_usd": usd / USD})
                    self.adl_accounts.add(ev.account)
                    if bankrupt.account != FUND:
                        self.liquidated.add(bankrupt.account)
                else:
                    step[ev.kind] += 1
                    step[ev.kind + "_usd"] += usd
                    step["liq_fee"] += ev.fee
                    step.setdefault("book_usd_by_market", Counter())
                    if ev.kind == "book":
                        step["book_usd_by_market"][ev.market] += usd
                    self.liquidated.add(ev.account)
            elif t is M.Balance:
                touched.add(ev.account)
                if ev.reason == "socialised_loss":
                    social.append(ev)
                else:
                    other.add(ev.account)
                    if ev.reason == "insurance":
                        step["insurance_covers"] += 1
            elif t is M.MarginCall:
                step["margin_calls"] += 1
            elif t is M.FundingEvent:
                funded.add(ev.market)
                step["funding"] += 1
            elif t is M.OrderTriggered:
                step["triggered"] += 1
                touched.add(ev.account)
            elif t is M.Mark:
                step["marks"][ev.market] = ev.mark
            elif t is M.OrderCancelled and ev.reason == "liquidation":
                touched.add(ev.account)
        old = {a: self.scopes.get(a) for a in {e.account for e in social}}
        for m in funded:
            touched |= self.in_market.get(m, set())
        for a in sorted(touched, key=str):
            self.refresh(a)
        for a, before in old.items():
            step["socialised_events"] += sum(1 for e in social if e.account == a)
            self.socialised_accounts.add(a)
            after = self.scopes.get(a)
            if before is None or after is None or a in other:
                step["socialised_inexact"] += 1
                continue
            paid = before["collateral"] - after["collateral"] + sum(
                v - after["iso"].get(m, 0) for m, v in before["iso"].items())
            step["socialised"] += paid

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> dict:
        t0 = time.perf_counter()
        self.build()
        self.t_build = time.perf_counter() - t0
        self.adl: list = []
        self.adl_accounts: set = set()
        self.liquidated: set = set()
        self.socialised_accounts: set = set()
        names = list(self.mk)
        mcfg = self.sc.file.makers
        alpha = 1 - 0.5 ** (1 / mcfg.vol_halflife_steps)
        s = self.series = {k: [] for k in (
            "t_s", "below_before", "below_after", "book", "backstop", "adl", "book_usd",
            "backstop_usd", "adl_usd", "fund_cash_usd", "fund_equity_usd", "adl_accounts",
            "socialised_usd", "bad_debt_usd", "margin_calls", "audit_balanced")}
        per = self.per_market = {m: {k: [] for k in ("fair", "index", "mark", "bid_depth_usd",
                                                     "ask_depth_usd", "book_liq_usd", "oi",
                                                     "below_before", "below_after",
                                                     "makers_withdrawn")}
                                 for m in names}
        self.audits_failed = 0
        social_total = 0
        self.record(0, None, s, per, 0)
        last_print = time.perf_counter()
        for k in range(1, self.n + 1):
            self.ts += self.step_s * SECOND
            step = Counter(step=k)
            step["marks"] = {}
            self.read(self.run_cmd(M.Clock(ts=self.ts)), step)
            before = 0
            after_multi = 0
            for m in names:
                mr = self.mk[m]
                r = abs(math.log(mr.fair[k] / mr.fair[k - 1]))
                mr.vol = max(r, (1 - alpha) * mr.vol + alpha * r)
                self.quote(mr, k)
                bid, ask = self.depth(mr, k)
                per[m]["bid_depth_usd"].append(round(bid / USD, 2))
                per[m]["ask_depth_usd"].append(round(ask / USD, 2))
                per[m]["makers_withdrawn"].append(mr.vol * 100 >= mcfg.withdraw_move_pct)
                events = self.run_cmd(M.Oracle(market=m, price=mr.oracle[k], ts=self.ts))
                mark = next((e.mark for e in events if type(e) is M.Mark), None)
                n_before = self.below(m, mark) if mark is not None else 0
                per[m]["below_before"].append(n_before)
                before += n_before
                self.read(events, step)
                n_after = self.below(m, mark) if mark is not None else 0
                per[m]["below_after"].append(n_after)
                per[m]["book_liq_usd"].append(round(
                    step.get("book_usd_by_market", {}).get(m, 0) / USD, 2))
            if self.multi:
                after_multi = self.below_multi()
            social_total += step["socialised"]
            self.counts.update({kk: v for kk, v in step.items()
                                if isinstance(v, int) and kk != "step"})
            s["below_before"].append(before + after_multi)
            s["below_after"].append(sum(per[m]["below_after"][-1] for m in names) + after_multi)
            for kind in ("book", "backstop", "adl"):
                s[kind].append(step[kind])
                s[kind + "_usd"].append(round(step[kind + "_usd"] / USD, 2))
            s["margin_calls"].append(step["margin_calls"])
            self.record(k, step, s, per, social_total)
            if self.opts.progress and time.perf_counter() - last_print > 0.5:
                last_print = time.perf_counter()
                self.out.write(f"\rperpdex stress: step {k:,}/{self.n:,} "
                               f"({100 * k // self.n} %)")
                self.out.flush()
        if self.opts.progress:
            self.out.write(f"\rperpdex stress: step {self.n:,}/{self.n:,} (100 %)\n")
        self.elapsed = time.perf_counter() - t0
        if self.events_out is not None:
            self.events_out.close()
        return self.result()

    def record(self, k: int, step, s: dict, per: dict, social_total: int) -> None:
        audit = self.run_cmd(M.Audit(ts=0))[0]
        lhs = audit.deposits - audit.withdrawals
        rhs = audit.collateral + audit.unrealised_pnl + audit.insurance_fund + audit.fees
        ok = lhs == rhs
        self.audits_failed += not ok
        self.last_audit = audit
        fund = self.run_cmd(M.QueryAccount(account=FUND, ts=0))[0]
        s["t_s"].append((self.ts - getattr(self, "ts0", self.ts)) // SECOND)
        s["audit_balanced"].append(ok)
        s["fund_cash_usd"].append(round(audit.insurance_fund / USD, 2))
        s["fund_equity_usd"].append(round(fund.equity / USD, 2))
        s["adl_accounts"].append(len(self.adl_accounts))
        s["socialised_usd"].append(round(social_total / USD, 2))
        s["bad_debt_usd"].append(round((social_total + max(0, -fund.equity)) / USD, 2))
        if k == 0:
            for kk in ("below_before", "below_after", "book", "backstop", "adl", "book_usd",
                       "backstop_usd", "adl_usd", "margin_calls"):
                s[kk].append(0)
        state_marks = {}
        for m, p in per.items():
            mr = self.mk[m]
            mark = step["marks"].get(m) if step else None
            if mark is None:
                mark = state_marks.setdefault(m, self._mark(m))
            p["fair"].append(mr.usd(mr.fair[k]))
            p["index"].append(mr.usd(mr.oracle[k]))
            p["mark"].append(mr.usd(mark))
            p["oi"].append(audit.open_interest[m].long if m in audit.open_interest else 0)
            if k == 0:
                bid, ask = self.depth(mr, 0)
                p["bid_depth_usd"].append(round(bid / USD, 2))
                p["ask_depth_usd"].append(round(ask / USD, 2))
                for kk in ("below_before", "below_after", "book_liq_usd"):
                    p[kk].append(0)
                p["makers_withdrawn"].append(False)
        self.fund_equity = fund.equity

    def _mark(self, market: str) -> int:
        for mk in self.eng.state()["markets"]:
            if mk[0][0] == market:
                return mk[2] or mk[1] or 0
        return 0

    def result(self) -> dict:
        s, c = self.series, self.counts
        audit = self.last_audit
        social = s["socialised_usd"][-1]
        pops = self.sc.file.population
        summary = {
            "steps": self.n,
            "accounts": sum(p.accounts for p in pops),
            "accounts_liquidated": len(self.liquidated),
            "peak_below_maintenance": max(s["below_before"]),
            "liquidations": {"book": c["book"], "backstop": c["backstop"], "adl": c["adl"]},
            "liquidated_usd": {"book": round(sum(s["book_usd"]), 2),
                               "backstop": round(sum(s["backstop_usd"]), 2),
                               "adl": round(sum(s["adl_usd"]), 2)},
            "book_share": _share(sum(s["book_usd"]),
                                 sum(s["book_usd"]) + sum(s["backstop_usd"]) + sum(s["adl_usd"])),
            "liquidation_fees_usd": round(c["liq_fee"] / USD, 2),
            "margin_calls": c["margin_calls"],
            "stops_triggered": c["triggered"],
            "insurance_fund_usd": {"seeded": round(self.insurance_seed / USD, 2),
                                   "start": s["fund_equity_usd"][0],
                                   "low": min(s["fund_equity_usd"]),
                                   "end": s["fund_equity_usd"][-1]},
            "insurance_covers": c["insurance_covers"],
            "adl_accounts": len(self.adl_accounts),
            "socialised": {"events": c["socialised_events"],
                           "accounts": len(self.socialised_accounts),
                           "usd": social, "inexact_payers": c["socialised_inexact"]},
            "bad_debt_usd": s["bad_debt_usd"][-1],
            "insolvent": self.fund_equity < 0,
            "audit": {"steps_checked": len(s["audit_balanced"]),
                      "balanced_every_step": self.audits_failed == 0,
                      "deposits_usd": round(audit.deposits / USD, 2),
                      "withdrawals_usd": round(audit.withdrawals / USD, 2),
                      "collateral_usd": round(audit.collateral / USD, 2),
                      "unrealised_pnl_usd": round(audit.unrealised_pnl / USD, 2),
                      "insurance_fund_usd": round(audit.insurance_fund / USD, 2),
                      "fees_usd": round(audit.fees / USD, 2)},
            "setup_rejected": dict(sorted(self.setup_rejects.items())),
            "makers_rejected": {k.split(":", 1)[1]: v for k, v in sorted(c.items())
                                if k.startswith("maker_rejected:")},
        }
        markets = {}
        for name, mr in self.mk.items():
            spec = self.specs[name]
            markets[name] = {
                "path": mr.path_source, "oracle": mr.oracle_model,
                "start_usd": mr.usd(mr.fair[0]), "low_usd": mr.usd(min(mr.fair)),
                "end_usd": mr.usd(mr.fair[-1]),
                "parameters": {"imf_ppm": spec.imf_ppm, "mmf_ppm": spec.mmf_ppm,
                               "liquidation_fee_ppm": spec.liquidation_fee_ppm,
                               "price_band_ppm": spec.price_band_ppm,
                               "max_liquidations_per_update": spec.max_liquidations_per_update,
                               "funding_interval_s": spec.funding_interval_s,
                               "funding_cap_ppm": spec.funding_cap_ppm,
                               "interest_ppm": spec.interest_ppm,
                               "tiers": [[t.max_notional, t.imf_ppm, t.mmf_ppm]
                                         for t in spec.tiers]},
                "series": self.per_market[name],
            }
        victims = sorted(self.adl, key=lambda v: (-v["notional_usd"], v["step"], str(v["account"])))
        return {
            "perpdex_stress": 1,
            "inputs": {"scenario": self.sc.source, "venue": self.venue, "seed": self.seed,
                       "steps": self.n, "step_seconds": self.step_s,
                       "population": [msgspec.to_builtins(p) for p in pops],
                       "makers": msgspec.to_builtins(self.sc.file.makers),
                       "set": self.opts.sets, "insurance_usd": round(self.insurance_seed / USD,
                                                                     2)},
            "summary": summary,
            "markets": markets,
            "series": s,
            "adl_victims": victims[:200],
            "adl_victims_total": len(victims),
        }


def _share(part: float, whole: float) -> float | None:
    return None if not whole else round(part / whole, 4)


def run(sc: Scenario, opts: Options, out=sys.stderr) -> tuple[dict, float]:
    """Build and run the scenario; (the report, seconds it took)."""
    st = Stress(sc, opts, out)
    result = st.run()
    return result, st.elapsed


def to_json(result: dict) -> bytes:
    return msgspec.json.format(msgspec.json.encode(result), indent=1) + b"\n"
