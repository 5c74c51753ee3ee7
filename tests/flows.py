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


def funded_market(margin=False):
    """An Engine with BTC-PERP marked at 10,000 and accounts "m" and "t" funded, and the
    handles the handle calls take: (engine, m, t, BTC-PERP)."""
    from perpdex.engine import Engine
    eng = Engine(margin=margin)
    for c in create_markets(["BTC-PERP"]):
        eng.execute(c)
    eng.execute(M.Oracle(market="BTC-PERP", price=10_000))
    for who in ("m", "t"):
        eng.execute(M.Deposit(account=who, amount=10**12))
    return eng, eng.account_handle("m"), eng.account_handle("t"), eng.market_handle("BTC-PERP")


def as_handles(eng, cmd):
    """`cmd` as the handle calls' arguments, ("place" | "cancel_order" | "amend_order", args),
    or None where they cannot say it: another command, a string cid, an account or market
    the engine has not seen, a value that is not an int64, an explicit 0 (0 means "not
    given" to them)."""
    if type(cmd) not in (M.NewOrder, M.Cancel, M.Amend) or type(cmd.cid) is not int:
        return None
    try:
        a, m = eng.account_handle(cmd.account), eng.market_handle(cmd.market)
    except KeyError:
        return None
    ints = [getattr(cmd, f, None) for f in ("qty", "price", "trigger_price", "expire_ts")]
    if any(v is not None and (type(v) is not int or v == 0 or abs(v) >= 2**63) for v in ints):
        return None
    qty, price, trigger, expire = (v or 0 for v in ints)
    if type(cmd) is M.NewOrder:
        if not qty:
            return None
        flags = int(cmd.reduce_only) | M.STP_MODES.index(cmd.stp) << 1
        return "place", (a, m, cmd.cid, M.SIDES.index(cmd.side), qty, price,
                         M.ORDER_KINDS.index(cmd.kind), M.TIFS.index(cmd.tif), cmd.ts, flags,
                         trigger, expire)
    if type(cmd) is M.Cancel:
        return "cancel_order", (a, m, cmd.cid, cmd.ts)
    return "amend_order", (a, m, cmd.cid, price, qty, cmd.ts)


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


# ---- margin flows: funded accounts trading with leverage through crashes -----------------------
#
# For the differential tests with margin on (tests/engine/test_differential.py). Shaped, not
# filtered, to reach the interesting states: makers with deep pockets quote around the index;
# traders funded for 1x to 20x trade near the mark with leverage, stops and take-profits; the oracle
# walks, and now and then gaps 5-40 % after the makers pulled some or all of their quotes (so the
# mark follows the index and the liquidation meets a thin book); the clock crosses funding
# boundaries and sometimes jumps hundreds of intervals at once; the fund is seeded small or not at
# all.

MARGIN_MARKETS = {
    # multiplier 10,000: 1 lot at 10,000 ticks is 10^8 quote units (100 USD); 10x, mmf 5 %
    "BTC-PERP": dict(MARKET_FIELDS, tick_size="1", lot_size="0.01", price_band_ppm=50_000),
    # multiplier 1,000, tiered up to 20x
    "ETH-PERP": dict(MARKET_FIELDS, tick_size="0.1", lot_size="0.01", imf_ppm=50_000,
                     mmf_ppm=25_000, price_band_ppm=50_000, maker_fee_ppm=-200,
                     tiers=[M.Tier(max_notional=100_000_000, imf_ppm=50_000, mmf_ppm=25_000),
                            M.Tier(max_notional=400_000_000, imf_ppm=100_000, mmf_ppm=50_000),
                            M.Tier(max_notional=10**15, imf_ppm=200_000, mmf_ppm=100_000)]),
}
MAKERS = ["mm1", 7]
TRADERS = ["a", "b", 3, "c"]
FUND = "insurance"


class _MarginFlow:
    """The state a margin flow's generator keeps: the index of each market, the clock, the
    cids each account has used."""

    def __init__(self, r: random.Random):
        self.r = r
        self.mid = {m: MID for m in MARGIN_MARKETS}
        self.ts = 1
        self.funds: dict = {}
        self.cmds: list[M.Command] = []

    def add(self, cmd):
        self.cmds.append(cmd)

    def tick(self, ns=None):
        self.ts += self.r.randint(1, 10**9) if ns is None else ns
        return self.ts

    def cid(self, pool=8):
        return self.r.randint(1, pool)

    def order(self, acct, market, side, qty, price=None, kind="limit", **kw):
        self.add(M.NewOrder(account=acct, market=market, cid=kw.pop("cid", None) or self.cid(),
                            side=side, kind=kind, qty=qty, price=price, ts=self.tick(), **kw))

    def quote(self, acct, market, spread_max=150):
        """A maker's resting order a little off the index."""
        r, mid = self.r, self.mid[market]
        side = r.choice(["buy", "sell"])
        off = r.randint(1, spread_max) * max(1, mid // 10_000)
        price = mid - off if side == "buy" else mid + off
        self.order(acct, market, side, r.randint(5, 120), max(1, price),
                   tif=r.choice(["gtc"] * 4 + ["alo"]), cid=100 + self.cid(20))

    def trade(self, acct, market):
        """A trader's order near the mark: mostly takers, some resting, some triggers."""
        r, mid = self.r, self.mid[market]
        side = r.choice(["buy", "sell"])
        qty = r.randint(2, 40)
        x = r.random()
        step = max(1, mid // 10_000)
        if x < 0.35:
            self.order(acct, market, side, qty, kind="market")
        elif x < 0.7:
            off = r.randint(-40, 120) * step
            price = max(1, mid + off if side == "buy" else mid - off)
            self.order(acct, market, side, qty, price, tif=r.choice(["gtc", "ioc", "ioc", "fok"]),
                       reduce_only=r.random() < 0.15, stp=r.choice(STPS))
        elif x < 0.9:
            kind = r.choice(["stop_market", "stop_limit", "take_profit_market",
                             "take_profit_limit"])
            pct = r.randint(1, 15)
            up = kind.startswith("stop") == (side == "buy")
            trig = max(1, mid * (100 + pct) // 100 if up else mid * (100 - pct) // 100)
            price = None
            if kind.endswith("limit"):
                price = max(1, trig + (1 if side == "buy" else -1) * r.randint(0, 300) * step)
            self.order(acct, market, side, qty, price, kind=kind, trigger_price=trig,
                       reduce_only=r.random() < 0.6)
        else:
            self.add(M.Amend(account=acct, market=market, cid=self.cid(),
                             price=max(1, mid + r.randint(-100, 100) * step)
                             if r.random() < 0.6 else None,
                             qty=r.randint(2, 40) if r.random() < 0.6 else None, ts=self.tick()))

    def lever_up(self, acct, market):
        """A trader takes a position worth most of what its deposit allows at 3x to 20x (what
        the market's tiers allow is for the margin check to say)."""
        r = self.r
        per_lot = self.mid[market] * (10_000 if market == "BTC-PERP" else 1_000)
        lev = r.randint(3, 20)
        qty = int(self.funds.get(acct, 0) * lev * r.uniform(0.5, 0.95)) // per_lot
        if qty >= 2:
            self.order(acct, market, r.choice(["buy", "sell"]), min(qty, 500), kind="market")

    def account_command(self, acct, market):
        r = self.r
        x = r.random()
        if x < 0.2:
            self.add(M.Withdraw(account=acct, amount=r.choice([10**6, 10**7, 10**8, 10**9]),
                                ts=self.tick()))
        elif x < 0.4:
            self.add(M.SetLeverage(account=acct, market=market, leverage=r.randint(1, 20),
                                   ts=self.tick()))
        elif x < 0.55:
            self.add(M.SetMarginMode(account=acct, market=market,
                                     mode=r.choice(["cross", "isolated"]), ts=self.tick()))
        elif x < 0.8:
            self.add(M.TransferMargin(account=acct, market=market,
                                      amount=r.choice([-(10**8), -(10**7), 10**7, 10**8, 3 * 10**8]),
                                      ts=self.tick()))
        elif x < 0.9:
            self.add(M.Deposit(account=acct, amount=r.choice([10**7, 10**8, 10**9]),
                               ts=self.tick()))
        else:
            self.add(M.CancelAll(account=acct, market=market if r.random() < 0.5 else None,
                                 ts=self.tick()))

    def oracle(self, market, pct=None):
        r = self.r
        if pct is None:
            pct = r.uniform(-0.6, 0.6)
        self.mid[market] = max(100, int(self.mid[market] * (100 + pct) / 100))
        self.add(M.Oracle(market=market, price=self.mid[market], ts=self.tick()))

    def crash(self, market):
        """The index gaps 5-40 %: off a cliff (the makers pull their quotes, one oracle: the
        mark follows the index into a thin book), or down a staircase (a few oracles, the makers
        quoting again around each new index, so liquidations meet a book)."""
        r = self.r
        gap = r.uniform(5, 40) * r.choice([-1, -1, 1])
        cliff = r.random() < 0.4
        for mm in MAKERS:
            if cliff or r.random() < 0.3:
                self.add(M.CancelAll(account=mm, market=market, ts=self.tick()))
        steps = 1 if cliff else r.randint(2, 6)
        for _ in range(steps):
            self.oracle(market, gap / steps)
            for _ in range(0 if cliff else r.randint(1, 4)):
                self.quote(r.choice(MAKERS), market, 60)

    def clock(self):
        r = self.r
        x = r.random()
        if x < 0.85:
            self.add(M.Clock(ts=self.tick(r.randint(0, 2 * HOUR))))
        else:                                   # a long jump: many boundaries at once
            self.add(M.Clock(ts=self.tick(r.randint(20, 3000) * HOUR)))


def margin_flow(r: random.Random, steps: int, config=None) -> list[M.Command]:
    """A margin flow of `steps` steps (a step is one to a dozen commands)."""
    f = _MarginFlow(r)
    config = config or {}
    interest = config.get("interest", r.choice([-300, 0, 100, 2000]))
    max_liq = config.get("max_liquidations", r.choice([100, 100, 100, 1]))
    for name, fields in MARGIN_MARKETS.items():
        f.add(M.CreateMarket(market=name, **dict(fields, interest_ppm=interest,
                                                 max_liquidations_per_update=max_liq)))
    seed = config.get("fund", r.choice([0, 10**6, 10**8, 10**10]))
    if seed:
        f.add(M.Deposit(account=FUND, amount=seed, ts=0))
    for mm in MAKERS:
        f.add(M.Deposit(account=mm, amount=r.choice([10**11, 10**12]), ts=0))
    for t in TRADERS:
        if r.random() < 0.3:
            f.add(M.SetMarginMode(account=t, market=r.choice(list(MARGIN_MARKETS)),
                                  mode="isolated", ts=0))
        f.funds[t] = r.choice([3 * 10**8, 10**9, 3 * 10**9, 10**10])
        f.add(M.Deposit(account=t, amount=f.funds[t], ts=0))
        if r.random() < 0.7:
            f.add(M.SetLeverage(account=t, market=r.choice(list(MARGIN_MARKETS)),
                                leverage=r.randint(1, 20), ts=0))
    for name in MARGIN_MARKETS:
        f.add(M.Oracle(market=name, price=MID, ts=1))
        for _ in range(6):
            f.quote(r.choice(MAKERS), name)
    for _ in range(steps):
        market = r.choice(list(MARGIN_MARKETS))
        x = r.random()
        if x < 0.22:
            f.quote(r.choice(MAKERS), market)
        elif x < 0.49:
            f.trade(r.choice(TRADERS), market)
        elif x < 0.55:
            f.lever_up(r.choice(TRADERS), market)
        elif x < 0.65:
            f.account_command(r.choice(TRADERS), market)
        elif x < 0.78:
            f.oracle(market)
        elif x < 0.86:
            f.crash(market)
        elif x < 0.94:
            f.clock()
        elif x < 0.97:
            f.add(M.CancelAll(account=r.choice(MAKERS), market=market, ts=f.tick()))
        else:
            f.add(M.QueryAccount(account=r.choice(TRADERS + [FUND]), ts=f.tick()))
    return f.cmds


@st.composite
def margin_flows(draw, min_steps=40, max_steps=160):
    """A hypothesis margin flow: one seed and a length (shrinking shortens it)."""
    seed = draw(st.integers(0, 2**32 - 1))
    steps = draw(st.integers(min_steps, max_steps))
    return margin_flow(random.Random(seed), steps)
