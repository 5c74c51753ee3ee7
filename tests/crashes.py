"""Crashes sized to the positions a flow left, for the property tests named for liquidations.

`crash_after(cmds)` is what such a test appends to a leveraged flow (tests.flows): in each market
with an index, a trader long and one short at 5x to 9x enter at the index against a maker (so
that every case holds leveraged positions, whatever the flow did), then the book is emptied (so
that the mark follows the index) and the index goes 2 % past the lowest liquidation price of the
market's longs, then past the highest of its shorts: the flow's own positions and these, each
only where a price liquidates it (a long with collateral for any price has none); in one jump,
or in steps with the maker's quotes ahead of it (`_move`). Most cases liquidate by design, not
by filtering; each test counts it (tests.conftest.Reached)."""
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
    out: list[M.Command] = [M.Deposit(account=MAKER, amount=10**15, ts=ts)]
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
    index = _index(cmds)
    for market in MARKETS:
        if market not in down and market not in up:
            continue
        out += [M.CancelAll(account=a, market=market, ts=ts + 1) for a in ACCOUNTS + [MAKER]]
        if market in down:
            out += _move(market, index[market], max(1, int(down[market] * (1 - PAST))), r,
                         ts + 1)
        if market in up:
            out += _move(market, index[market], int(up[market] * (1 + PAST)) + 1, r, ts + 1)
    return out


def _move(market: str, start: int, to: int, r: random.Random, ts: int) -> list[M.Command]:
    """The index from `start` to `to`: off a cliff (one update into the emptied book: the fund
    and ADL take what is liquidated), or down (up) a staircase of 1.5 % steps with the maker
    bidding (asking) just inside each next step, within the band, so that liquidations meet a
    book."""
    if r.random() < 0.5:
        return [M.Oracle(market=market, price=to, ts=ts)]
    out: list[M.Command] = []
    price, side = start, "buy" if to < start else "sell"
    while price != to:
        price = max(to, int(price * 0.985)) if side == "buy" else min(to, int(price * 1.015) + 1)
        quote = int(price * 0.995) if side == "buy" else int(price * 1.005) + 1
        out.append(M.NewOrder(account=MAKER, market=market, cid=f"{market}-{side}-{len(out)}",
                              side=side, kind="limit", qty=r.randint(20, 200),
                              price=max(1, quote), ts=ts))
        out.append(M.Oracle(market=market, price=price, ts=ts))
    return out


def liquidations(events) -> int:
    return sum(type(e) is M.LiquidationEvent for e in events)
