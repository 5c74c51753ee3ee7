"""Random order flows for differential tests and benchmarks: hypothesis strategies and a seeded
generator over a small universe (few accounts, few cids, prices near the mark) so that flows hit
every rule: crossing, self-trade, duplicate cids, reduce-only, amend, bad values."""
from __future__ import annotations

import random

from hypothesis import strategies as st

from perpdex.engine import messages as M

MARKET_FIELDS = dict(
    tick_size="0.1", lot_size="0.001", min_qty=2, imf_ppm=100_000, mmf_ppm=50_000,
    maker_fee_ppm=-150, taker_fee_ppm=450, liquidation_fee_ppm=10_000, price_band_ppm=20_000,
    funding_interval_s=3600, funding_cap_ppm=7500, interest_ppm=100,
)
MID = 10_000


def create_markets(names=("BTC-PERP", "ETH-PERP"), **over) -> list[M.Command]:
    fields = dict(MARKET_FIELDS, **over)
    return [M.CreateMarket(market=n, **fields) for n in names]


ACCOUNTS = ["a", "b", 3]
CIDS = [1, 2, 3, "x", "é-ñ", 'q"\\']
MARKETS = ["BTC-PERP", "ETH-PERP"]
KINDS = ["limit"] * 12 + ["market"] * 3 + ["stop_market", "stop_limit", "take_profit_market",
                                           "take_profit_limit"]
TIFS = ["gtc"] * 5 + ["ioc", "fok", "alo", "alo"]
STPS = ["cancel_maker", "cancel_taker", "cancel_both"]


def _qty(r: random.Random):
    x = r.random()
    if x < 0.03:
        return r.choice([0, -3, 1.5, "7", None])
    if x < 0.06:
        return 1                       # below min_qty
    return r.randint(2, 30)


def _price(r: random.Random, mid: int):
    x = r.random()
    if x < 0.03:
        return r.choice([0, -1, 2.5, None])
    if x < 0.05:
        return mid * 2                 # out of the band
    return mid + r.randint(-12, 12)


def random_command(r: random.Random, ts: int, mids: dict) -> M.Command:
    """One command of the mix; `mids` is the walk of each market's price (updated here)."""
    x = r.random()
    market = r.choice(MARKETS) if r.random() > 0.02 else "NOPE-PERP"
    mid = mids.get(market, MID)
    acct, cid = r.choice(ACCOUNTS), r.choice(CIDS)
    if x < 0.55:
        kind = r.choice(KINDS)
        trigger = kind not in ("limit", "market")
        return M.NewOrder(
            account=acct, market=market, cid=cid, side=r.choice(["buy", "sell"]), kind=kind,
            qty=_qty(r), price=_price(r, mid) if not kind.endswith("market") else None,
            trigger_price=(mid + r.randint(-12, 12) if r.random() > 0.03 else None)
            if trigger else None,
            tif=r.choice(TIFS), reduce_only=r.random() < 0.15, stp=r.choice(STPS), ts=ts)
    if x < 0.72:
        return M.Cancel(account=acct, market=market, cid=cid, ts=ts)
    if x < 0.85:
        return M.Amend(account=acct, market=market, cid=cid,
                       price=_price(r, mid) if r.random() < 0.6 else None,
                       qty=_qty(r) if r.random() < 0.7 else None, ts=ts)
    if x < 0.93:
        if market in mids:
            mids[market] = max(50, mid + r.randint(-15, 15))
        return M.Oracle(market=market, price=mids.get(market, mid), ts=ts)
    if x < 0.96:
        return M.CancelAll(account=acct, market=market if r.random() < 0.7 else None, ts=ts)
    if x < 0.975:
        return M.Clock(ts=ts)
    if x < 0.985:
        return M.Deposit(account=acct, amount=r.choice([0, -5, 10**9, 12_345_678]), ts=ts)
    return M.StateHash(ts=ts)


def random_flow(seed: int, n: int) -> list[M.Command]:
    r = random.Random(seed)
    mids = {m: MID for m in MARKETS}
    cmds = create_markets(MARKETS)
    cmds += [M.Oracle(market=m, price=MID, ts=1) for m in MARKETS if r.random() < 0.9]
    ts = 1
    for _ in range(n):
        ts += r.randint(0, 3)
        cmds.append(random_command(r, ts, mids))
    return cmds


@st.composite
def flows(draw, max_size=120):
    """A hypothesis flow: a seed per command keeps shrinking meaningful (fewer, simpler steps)."""
    seeds = draw(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=max_size))
    mids = {m: MID for m in MARKETS}
    cmds = create_markets(MARKETS)
    cmds += [M.Oracle(market=m, price=MID, ts=1) for m in MARKETS]
    for i, s in enumerate(seeds):
        cmds.append(random_command(random.Random(s), 1 + i, mids))
    return cmds


HOUR = 3600 * 1_000_000_000


def account_command(r: random.Random, ts: int) -> M.Command:
    """Money and margin commands for leveraged flows."""
    acct, market = r.choice(ACCOUNTS), r.choice(MARKETS)
    x = r.random()
    if x < 0.3:
        return M.Withdraw(account=acct, amount=r.choice([1, 10**5, 10**6, 10**9]), ts=ts)
    if x < 0.5:
        return M.SetLeverage(account=acct, market=market, leverage=r.randint(1, 12), ts=ts)
    if x < 0.7:
        return M.SetMarginMode(account=acct, market=market,
                               mode=r.choice(["cross", "isolated"]), ts=ts)
    if x < 0.9:
        return M.TransferMargin(account=acct, market=market,
                                amount=r.choice([-(10**6), -1000, 1000, 10**6]), ts=ts)
    return M.QueryAccount(account=acct, ts=ts)


@st.composite
def leveraged_flows(draw, min_size=30, max_size=150):
    """Orders, money and margin commands, and clock jumps over funding boundaries."""
    seeds = draw(st.lists(st.integers(0, 2**32 - 1), min_size=min_size, max_size=max_size))
    mids = {m: MID for m in MARKETS}
    cmds = create_markets(MARKETS, interest_ppm=draw(st.sampled_from([-300, 0, 100, 2000])))
    cmds += [M.Deposit(account=a, amount=draw(st.sampled_from([10**6, 10**8, 10**9, 10**10])), ts=0)
             for a in ACCOUNTS]
    cmds += [M.Oracle(market=m, price=MID, ts=1) for m in MARKETS]
    hour = 0
    for i, s in enumerate(seeds):
        r = random.Random(s)
        if r.random() < 0.03:
            hour += 1
            cmds.append(M.Clock(ts=hour * HOUR))
        ts = hour * HOUR + 1 + i
        cmds.append(account_command(r, ts) if r.random() < 0.15 else random_command(r, ts, mids))
    return cmds
