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

This module runs the loop; its rooms: stress_venue (the venue and the fund's seed), stress_paths
(the price paths), stress_makers (the liquidity model), stress_population (the generated
accounts), stress_scopes (accounts below maintenance) and stress_metrics (what is measured, and
the result).
"""
from __future__ import annotations

import random
import sys
import time
from collections import Counter

import msgspec

from perpdex.engine import messages as M

from .stress_inputs import USD, Options, Scenario
from .stress_makers import Makers, depth
from .stress_metrics import Metrics
from .stress_paths import price_paths
from .stress_population import Population
from .stress_scopes import Scopes
from .stress_venue import FUND, insurance_seed, open_venue

SECOND = 1_000_000_000


class Stress:
    def __init__(self, sc: Scenario, opts: Options, out=sys.stderr):
        self.sc, self.opts, self.out = sc, opts, out
        f = sc.file
        self.seed = f.seed if opts.seed is None else opts.seed
        self.steps = f.steps if opts.steps is None else opts.steps
        self.rng = random.Random(self.seed)
        self.events_out = open(opts.events, "wb") if opts.events else None
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

    def query(self, account):
        return self.run_cmd(M.QueryAccount(account=account, ts=0))[0]

    # -- building ------------------------------------------------------------------------------
    def build(self) -> None:
        sc, opts, f = self.sc, self.opts, self.sc.file
        venue = open_venue(sc, opts)
        self.eng, self.venue = venue.engine, venue.description
        for c in venue.creates:
            self.setup_cmd(c)
        self.specs = {s.name: s for s in self.eng.specs}
        state_markets = {mk[0][0]: mk for mk in self.eng.state()["markets"]}
        paths = price_paths(sc, opts, self.specs, state_markets, self.steps, self.rng)
        self.mk, self.n, self.step_s = paths.markets, paths.steps, paths.step_seconds
        self.scopes = Scopes(self.query)
        self.metrics = Metrics(self.mk, self.specs, self.scopes)
        self.makers = Makers(self.eng, f.makers, self.metrics.counts)
        self.ts = max(self.eng.clock, SECOND) + SECOND
        self.insurance_seed = insurance_seed(sc, opts, venue.state)
        if self.insurance_seed:
            self.setup_cmd(M.Deposit(account=FUND, amount=self.insurance_seed, ts=self.ts))
        for name, mr in self.mk.items():
            self.setup_cmd(M.Oracle(market=name, price=mr.oracle[0], ts=self.ts))
        for mr in self.mk.values():
            self.makers.open(mr, self.setup_cmd, self.ts)
        Population(self.eng, self.specs, self.rng, self.setup_cmd, self.makers,
                   self.ts).build(f.population, self.mk)
        self.ts0 = self.ts
        self.scopes.refresh_all(a for a, *_ in self.eng.state()["accounts"])

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> dict:
        t0 = time.perf_counter()
        self.build()
        self.t_build = time.perf_counter() - t0
        metrics, scopes = self.metrics, self.scopes
        self.record(0, None)
        last_print = time.perf_counter()
        for k in range(1, self.n + 1):
            self.ts += self.step_s * SECOND
            step = Counter(step=k)
            step["marks"] = {}
            metrics.read(self.run_cmd(M.Clock(ts=self.ts)), step)
            for m, mr in self.mk.items():
                self.makers.move(mr, k)
                self.makers.quote(mr, k)
                bid, ask = depth(self.eng, mr, k)
                events = self.run_cmd(M.Oracle(market=m, price=mr.oracle[k], ts=self.ts))
                mark = next((e.mark for e in events if type(e) is M.Mark), None)
                n_before = scopes.below(m, mark) if mark is not None else 0
                metrics.read(events, step)
                n_after = scopes.below(m, mark) if mark is not None else 0
                metrics.market_step(m, step, bid, ask, self.makers.withdrawn(mr), n_before,
                                    n_after)
            metrics.step_done(step, scopes.below_multi() if scopes.multi else 0)
            self.record(k, step)
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

    def record(self, k: int, step) -> None:
        """Step `k`'s audit, the fund's account and the marks (the step's `mark` events, else
        the engine's), into the metrics."""
        audit = self.run_cmd(M.Audit(ts=0))[0]
        fund = self.run_cmd(M.QueryAccount(account=FUND, ts=0))[0]
        marks = {}
        for m in self.mk:
            mark = step["marks"].get(m) if step else None
            marks[m] = self._mark(m) if mark is None else mark
        depths = {m: depth(self.eng, mr, 0) for m, mr in self.mk.items()} if k == 0 else None
        self.metrics.record(k, audit, fund, (self.ts - self.ts0) // SECOND, marks, depths)

    def _mark(self, market: str) -> int:
        for mk in self.eng.state()["markets"]:
            if mk[0][0] == market:
                return mk[2] or mk[1] or 0
        return 0

    def result(self) -> dict:
        pops = self.sc.file.population
        inputs = {"scenario": self.sc.source, "venue": self.venue, "seed": self.seed,
                  "steps": self.n, "step_seconds": self.step_s,
                  "population": [msgspec.to_builtins(p) for p in pops],
                  "makers": msgspec.to_builtins(self.sc.file.makers),
                  "set": self.opts.sets, "insurance_usd": round(self.insurance_seed / USD, 2)}
        return self.metrics.result(inputs, sum(p.accounts for p in pops), self.insurance_seed,
                                   self.setup_rejects)


def run(sc: Scenario, opts: Options, out=sys.stderr) -> tuple[dict, float]:
    """Build and run the scenario; (the report, seconds it took)."""
    st = Stress(sc, opts, out)
    result = st.run()
    return result, st.elapsed


def to_json(result: dict) -> bytes:
    return msgspec.json.format(msgspec.json.encode(result), indent=1) + b"\n"
