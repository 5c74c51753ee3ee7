"""The liquidity model of a `perpdex stress` run (docs/stress.md, "The liquidity model"): market
makers (bots) that requote around the fair price at every step, widen and thin out as the
volatility rises and withdraw after a large move; and the book's depth within the band, what it
can absorb.
"""
from __future__ import annotations

import math
from collections import Counter

from perpdex.engine import Engine, messages as M

from .stress_inputs import USD, MakersSection
from .stress_paths import MarketRun


class Makers:
    """The makers of every market: `count` accounts a market (`mm:MARKET:K`), quoting through
    the per-command API with `record_events` off (post-only, their quotes never trade on
    entry). A refused quote is counted in `counts` (`maker_rejected:REASON`), and so is each
    step a market's makers sit out (`withdrawn_steps:MARKET`)."""

    def __init__(self, eng: Engine, cfg: MakersSection, counts: Counter):
        self.eng, self.cfg, self.counts = eng, cfg, counts
        self.alpha = 1 - 0.5 ** (1 / cfg.vol_halflife_steps)

    def open(self, mr: MarketRun, setup, ts: int) -> None:
        """The market's makers deposit (through `setup`, which runs a command) and quote."""
        for k in range(self.cfg.count):
            acct = f"mm:{mr.name}:{k + 1}"
            mr.makers.append({"account": acct, "cids": [], "next": 0})
            setup(M.Deposit(account=acct, amount=int(self.cfg.deposit_usd * USD), ts=ts))
        self.quote(mr, 0)

    def move(self, mr: MarketRun, step: int) -> None:
        """The volatility after `step`'s move: an EWMA of |log return|, never below the move."""
        r = abs(math.log(mr.fair[step] / mr.fair[step - 1]))
        mr.vol = max(r, (1 - self.alpha) * mr.vol + self.alpha * r)

    def withdrawn(self, mr: MarketRun) -> bool:
        return mr.vol * 100 >= self.cfg.withdraw_move_pct

    def quote(self, mr: MarketRun, step: int, around: int | None = None) -> None:
        """Each maker pulls its quotes and quotes again around the fair price: `levels` a side,
        the half spread widened and the depth thinned by the volatility; none after a move
        larger than `withdraw_move_pct` (until the volatility has decayed below it)."""
        cfg = self.cfg
        eng = self.eng
        fair = mr.fair[step] if around is None else around
        vol_pct = mr.vol * 100
        withdrawn = self.withdrawn(mr)
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


def depth(eng: Engine, mr: MarketRun, step: int) -> tuple[int, int]:
    """The bids and asks within the price band around the fair price, in quote units."""
    book = eng.book(mr.name, 200)
    fair = mr.fair[step]
    lo = fair * (1_000_000 - mr.band) // 1_000_000
    hi = fair * (1_000_000 + mr.band) // 1_000_000
    bid = sum(p * q for p, q in book["bids"] if p >= lo) * mr.mult
    ask = sum(p * q for p, q in book["asks"] if p <= hi) * mr.mult
    return bid, ask
