"""The simulated oracle (`perpdex serve --oracle-sim`): a random walk of every market's price,
sent as the server's own `oracle` commands, 4 a second. Its last prices are records of the
venue (gateway/records.py), so a restart walks on from them."""
from __future__ import annotations

import random

from perpdex.engine import messages as M

SIM_START = {"BTC-PERP": 650_000, "ETH-PERP": 300_000}    # the first prices
SIM_EVERY = 250_000_000                                   # ns between prices


class SimOracle:
    """The walk: seeded, so that two runs of one configuration walk alike."""

    def __init__(self, index: dict):
        self.rng = random.Random(1)
        self.index = index                  # market -> last price (the records')
        self.next = 0

    def commands(self, now: int, markets) -> list:
        """The oracle commands due at `now` (none before the next step). O(markets)."""
        if now < self.next:
            return []
        self.next = now + SIM_EVERY
        out = []
        for market in markets:
            idx = self.index.get(market) or SIM_START.get(market, 100_000)
            idx = max(1, round(idx * (1 + self.rng.gauss(0, 0.0005))))
            self.index[market] = idx
            out.append(M.Oracle(market=market, price=idx, ts=now))
        return out
