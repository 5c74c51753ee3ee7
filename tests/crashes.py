"""Crashes sized to the positions a flow left, for the property tests named for liquidations.

`crash_after(cmds)` is what such a test appends to a leveraged flow (tests.flows): in each market
with an index, a trader long and one short at 5x to 9x enter at the index against a maker (so
that every case holds leveraged positions, whatever the flow did), then the book is emptied (so
that the mark follows the index) and the index goes 2 % past the lowest liquidation price of the
market's longs, then past the highest of its shorts: the flow's own positions and these, each
only where a price liquidates it (a long with collateral for any price has none). Most cases
liquidate by design, not by filtering; each test counts it (tests.conftest.Reached)."""
from __future__ import annotations

import random

from perpdex.engine import Engine, messages as M
from tests.flows import ACCOUNTS, MARKETS

PAST = 0.02            # how far past the furthest liquidation price the index goes
LEVERED = ["lev-long", "lev-short"]
MAKER = "crash-maker"


def _index(cmds) -> dict:
    """The last index of each market that `cmds` set (a refused price is not an index)."""
    out: dict = {}
    for c in cmds:
        if type(c) is M.Oracle and c.market in MARKETS and type(c.price) is int and c.price > 0:
            out[c.market] = c.price
    return out


def crash_after(cmds, seed: int = 0, ts: int = 10**15) -> list[M.Command]:
    r = random.Random(seed)
    eng = Engine()
    for cmd in cmds:
        eng.execute(cmd)
    mult = {s.name: s.multiplier for s in eng.specs}
    out: list[M.Command] = [M.Deposit(account=MAKER, amount=10**13, ts=ts)]
    for market, index in _index(cmds).items():
        out += [M.CancelAll(account=a, market=market, ts=ts) for a in ACCOUNTS + [MAKER]]
        out.append(M.Oracle(market=market, price=index, ts=ts))       # the mark: the index
        qty = r.randint(50, 400)
        for acct, side in zip(LEVERED, ("buy", "sell")):
            lev = r.uniform(5, 9)
            out.append(M.Deposit(account=acct, amount=int(qty * index * mult[market] / lev),
                                 ts=ts))
            out.append(M.NewOrder(account=MAKER, market=market, cid=f"crash-{acct}",
                                  side="sell" if side == "buy" else "buy", kind="limit",
                                  qty=qty, price=index, ts=ts))
            out.append(M.NewOrder(account=acct, market=market, cid="crash", side=side,
                                  kind="market", qty=qty, ts=ts))
    for cmd in out:
        eng.execute(cmd)
    down: dict = {}
    up: dict = {}
    for acct in ACCOUNTS + LEVERED:
        for p in eng.execute(M.QueryAccount(account=acct))[0].positions:
            if p.liquidation_price is None:
                continue
            if p.size > 0:
                down[p.market] = min(down.get(p.market, p.liquidation_price), p.liquidation_price)
            else:
                up[p.market] = max(up.get(p.market, p.liquidation_price), p.liquidation_price)
    for market in MARKETS:
        if market not in down and market not in up:
            continue
        out += [M.CancelAll(account=a, market=market, ts=ts + 1) for a in ACCOUNTS + [MAKER]]
        if market in down:
            out.append(M.Oracle(market=market, price=max(1, int(down[market] * (1 - PAST))),
                                ts=ts + 1))
        if market in up:
            out.append(M.Oracle(market=market, price=int(up[market] * (1 + PAST)) + 1,
                                ts=ts + 1))
    return out


def liquidations(events) -> int:
    return sum(type(e) is M.LiquidationEvent for e in events)
