"""The generated population of a `perpdex stress` run (docs/stress.md, "What a run does",
"Start"): the scenario's [[population]] drawn from the seed (side, leverage, notional,
cross or isolated, a resting stop), each account funded and given its position at the start
price, in five rounds around it with `entry_spread_pct`.
"""
from __future__ import annotations

import math
import random
from decimal import Decimal

from perpdex.engine import Engine, messages as M

from .stress_inputs import USD, PopulationSection
from .stress_makers import Makers
from .stress_paths import MarketRun


class Population:
    """Builds the populations through `setup` (which runs a command) at time `ts`; the makers
    requote around each round's entry price, and the oracle follows it."""

    def __init__(self, eng: Engine, specs: dict, rng: random.Random, setup, makers: Makers,
                 ts: int):
        self.eng, self.specs, self.rng, self.setup, self.makers, self.ts = (
            eng, specs, rng, setup, makers, ts)
        self.cid = 0                    # the house accounts' order ids

    def build(self, populations: list[PopulationSection], markets: dict[str, MarketRun]) -> None:
        for i, pop in enumerate(populations):
            mr = markets[pop.market]
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
                    self.makers.quote(mr, 0, around=price)
                    self.setup(M.Oracle(market=pop.market, price=price, ts=self.ts))
                else:
                    price = start
                self.enter(pop.market, mr, price, accounts)
            if rounds > 1:
                self.makers.quote(mr, 0)
                self.setup(M.Oracle(market=pop.market, price=start, ts=self.ts))

    def enter(self, market: str, mr: MarketRun, price: int, accounts: list) -> None:
        """The accounts open their positions at `price`: the larger side rests limit orders
        there, the smaller side takes them, and a house account takes what is left."""
        ts, setup = self.ts, self.setup
        unit = price * mr.mult
        orders = []
        for acct, long, lev, notional, iso, stop, dist in accounts:
            qty = max(self.specs[market].min_qty, int(notional * USD // unit))
            deposit = int(Decimal(qty * unit) / lev * Decimal("1.003")) + 1
            setup(M.Deposit(account=acct, amount=deposit, ts=ts))
            setup(M.SetLeverage(account=acct, market=market, leverage=lev, ts=ts))
            if iso:
                setup(M.SetMarginMode(account=acct, market=market, mode="isolated", ts=ts))
                setup(M.TransferMargin(account=acct, market=market, amount=deposit, ts=ts))
            orders.append((acct, long, qty, stop, dist))
        longs = sum(q for _, lg, q, _, _ in orders if lg)
        shorts = sum(q for _, lg, q, _, _ in orders if not lg)
        rest_long = longs >= shorts
        for acct, long, qty, _, _ in orders:
            if long == rest_long:
                setup(M.NewOrder(account=acct, market=market, cid="entry", ts=ts,
                                 side="buy" if long else "sell", kind="limit", qty=qty,
                                 price=price))
        for acct, long, qty, _, _ in orders:
            if long != rest_long:
                setup(M.NewOrder(account=acct, market=market, cid="entry", ts=ts,
                                 side="buy" if long else "sell", kind="limit", tif="ioc",
                                 qty=qty, price=price))
        left = abs(longs - shorts)
        if left:
            house = f"house:{market}"
            self.cid += 1
            setup(M.Deposit(account=house, amount=left * unit, ts=ts))
            setup(M.NewOrder(account=house, market=market, cid=self.cid,
                             side="sell" if rest_long else "buy", kind="limit",
                             tif="ioc", qty=left, price=price, ts=ts))
        for acct, long, qty, stop, dist in orders:
            self.eng.cancel(acct, market, "entry")      # a remainder never filled
            if stop:
                trig = max(1, round(price * (1 - dist / 100 if long else 1 + dist / 100)))
                setup(M.NewOrder(account=acct, market=market, cid="stop", ts=ts,
                                 side="sell" if long else "buy", kind="stop_market",
                                 qty=qty, trigger_price=trig, reduce_only=True))
