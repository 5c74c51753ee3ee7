"""The standard workload: a seeded order flow around a random-walk mid over a deep book.

Mix after the book is built: 60 % passive limits 1-50 ticks from mid, 30 % cancels of random
live orders, 8 % crossing limits, 2 % market orders, plus an oracle update (the walk of the mid)
every 500 commands. The book is first filled with `depth` passive orders (20,000 by default).
Cancels pick a live order: the generator tracks fills by running the flow through the engine as
it writes it, so cancels of already-filled orders are rare, as they are for a real market maker.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .workloads import MARKET_FIELDS
from perpdex.engine import Engine, messages as M

MARKET = "BTC-PERP"
MID = 650_000                 # ticks (65,000.0 USD at tick 0.1)
ACCOUNTS = 200
DEPOSIT = 10**13              # quote units (10 million USD) each: margin checks run, and pass

MARKET_CMD = M.CreateMarket(**MARKET_FIELDS)


@dataclass
class Workload:
    seed: int
    setup: list            # market, first oracle, and the book build-up
    flow: list             # the measured commands

    def kinds(self) -> list[str]:
        return [kind_of(c) for c in self.flow]


def kind_of(cmd) -> str:
    t = type(cmd)
    if t is M.NewOrder:
        if cmd.kind == "market":
            return "market"
        return "cross" if cmd.tif == "ioc" else "passive"
    if t is M.Cancel:
        return "cancel"
    return "oracle"


def generate(seed: int = 1, n: int = 200_000, depth: int = 20_000) -> Workload:
    r = random.Random(seed)
    eng = Engine()
    live: list[tuple[int, int]] = []          # (account, cid) of resting orders
    where: dict[tuple[int, int], int] = {}    # position in `live`, for O(1) removal
    mid = MID
    cid = 0
    ts = 1_000_000_000

    def track(cmd):
        for ev in eng.execute(cmd):
            t = type(ev)
            if t is M.OrderAccepted and ev.tif == "gtc":
                key = (ev.account, ev.cid)
                where[key] = len(live)
                live.append(key)
            elif (t is M.Fill and ev.maker_remaining == 0) or t is M.OrderCancelled:
                key = (ev.maker_account, ev.maker_cid) if t is M.Fill else (ev.account, ev.cid)
                i = where.pop(key, None)
                if i is not None:
                    last = live.pop()
                    if i < len(live):
                        live[i] = last
                        where[last] = i

    def passive():
        nonlocal cid
        cid += 1
        side = r.choice(("buy", "sell"))
        off = r.randint(1, 50)
        return M.NewOrder(account=r.randrange(ACCOUNTS), market=MARKET, cid=cid, side=side,
                          kind="limit", qty=r.randint(1, 100),
                          price=mid - off if side == "buy" else mid + off, ts=ts)

    setup = [MARKET_CMD, M.Oracle(market=MARKET, price=mid, ts=ts)]
    setup += [M.Deposit(account=a, amount=DEPOSIT, ts=ts) for a in range(ACCOUNTS)]
    for c in setup:
        track(c)
    while len(live) < depth:
        c = passive()
        setup.append(c)
        track(c)

    flow = []
    for i in range(n):
        ts += 1000
        x = r.random()
        if i % 500 == 499:
            mid += r.choice((-2, -1, 0, 1, 2))
            c = M.Oracle(market=MARKET, price=mid, ts=ts)
        elif x < 0.60 or (x < 0.90 and not live):
            c = passive()
        elif x < 0.90:
            acct, ocid = live[r.randrange(len(live))]
            c = M.Cancel(account=acct, market=MARKET, cid=ocid, ts=ts)
        elif x < 0.98:
            cid += 1
            side = r.choice(("buy", "sell"))
            off = r.randint(0, 5)
            c = M.NewOrder(account=r.randrange(ACCOUNTS), market=MARKET, cid=cid, side=side,
                           kind="limit", qty=r.randint(1, 300), tif="ioc",
                           price=mid + off if side == "buy" else mid - off, ts=ts)
        else:
            cid += 1
            c = M.NewOrder(account=r.randrange(ACCOUNTS), market=MARKET, cid=cid,
                           side=r.choice(("buy", "sell")), kind="market",
                           qty=r.randint(1, 300), ts=ts)
        flow.append(c)
        track(c)
    return Workload(seed, setup, flow)
