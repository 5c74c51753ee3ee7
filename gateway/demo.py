"""`perpdex demo --in-process`: the engine alone, in this process, through its per-command API.

Two markets (BTC-PERP, ETH-PERP), two market makers that keep three post-only levels a side
around the oracle price and re-quote every step from what their events tell them (fills,
cancels), takers crossing the spread with market and IOC orders, two leveraged longs (one with a
stop-loss) and an oracle crash of about 12 % that the makers chase down. It prints the tape as it
goes and a summary at the end. `perpdex demo` (gateway/exchange_demo.py) runs the exchange
itself: the server and its clients as processes over ZeroMQ.
"""
from __future__ import annotations

import random
import sys
import time
from collections import Counter
from decimal import Decimal

from perpdex.engine import Engine, messages as M

SECOND = 1_000_000_000
MARKETS = {
    # name: (tick, lot, start index in ticks)
    "BTC-PERP": ("0.1", "0.001", 650_000),
    "ETH-PERP": ("0.01", "0.01", 300_000),
}
MAKERS = {"mm-alpha": 6, "mm-beta": 11}          # half-spread in ticks per level
DEEP = "mm-deep"
TAKERS = ("taker-1", "taker-2", "whale")
# Leveraged longs that buy before the crash: one protects itself with a stop-loss, one does not.
LEVERAGED = {"lev-careful": (10, 1_000), "lev-bold": (10, 700)}   # leverage, lots of BTC
DEPOSITS = {"mm-alpha": 20_000_000, "mm-beta": 20_000_000, "mm-deep": 5_000_000, "taker-1": 500_000,
            "taker-2": 500_000, "whale": 3_000_000, "lev-careful": 7_000, "lev-bold": 5_000,
            "insurance": 250_000}        # the insurance fund is seeded like any account
STEPS = 300
CRASH = range(150, 210)                           # steps during which the index falls


def create_markets() -> list[M.Command]:
    return [M.CreateMarket(
        market=name, tick_size=tick, lot_size=lot, min_qty=1, imf_ppm=100_000, mmf_ppm=50_000,
        maker_fee_ppm=-100, taker_fee_ppm=500, liquidation_fee_ppm=10_000, price_band_ppm=50_000,
        funding_interval_s=3600, funding_cap_ppm=7500, interest_ppm=100)
        for name, (tick, lot, _) in MARKETS.items()]


class Demo:
    def __init__(self, seed: int = 7, out=sys.stdout):
        self.rng = random.Random(seed)
        self.eng = Engine()
        self.out = out
        self.ts = SECOND
        self.cid = 0
        self.live: dict[tuple[str, str], set] = {}      # (maker, market) -> cids resting
        self.counts: Counter = Counter()
        self.volume: Counter = Counter()
        self.marks: dict[str, list[int]] = {m: [] for m in MARKETS}
        self.last_hash = ""

    def send(self, cmd: M.Command) -> list:
        events = self.eng.execute(cmd)
        for ev in events:
            t = type(ev)
            self.counts[ev.__struct_config__.tag] += 1
            if t is M.OrderAccepted and (ev.account in MAKERS or ev.account == DEEP):
                self.live.setdefault((ev.account, ev.market), set()).add(ev.cid)
            elif t is M.Fill:
                self.volume[ev.market] += ev.qty
                if ev.maker_remaining == 0:
                    self.live.get((ev.maker_account, ev.market), set()).discard(ev.maker_cid)
            elif t is M.OrderCancelled:
                self.counts["cancel:" + ev.reason] += 1
                self.live.get((ev.account, ev.market), set()).discard(ev.cid)
            elif t is M.Rejected:
                self.counts["reject:" + ev.reason] += 1
            elif t is M.Mark:
                self.marks[ev.market].append(ev.mark)
            elif t is M.StateHashEvent:
                self.last_hash = ev.hash
            elif t is M.MarginCall:
                self.out.write(f"        margin call: {ev.account} equity "
                               f"{ev.equity / 1e6:,.0f} USD, maintenance "
                               f"{ev.maintenance_margin / 1e6:,.0f} USD\n")
            elif t is M.LiquidationEvent:
                self.counts["liquidation:" + ev.kind] += 1
                tick, lot, _ = (Decimal(x) for x in MARKETS[ev.market])
                notional = ev.qty * lot * ev.price * tick
                self.out.write(f"        LIQUIDATED ({ev.kind}): {ev.account} {ev.side}s "
                               f"{ev.qty * lot:f} {ev.market[:3]} at {ev.price * tick:,f} USD "
                               f"({notional:,.2f} USD; mark {ev.mark * tick:,f} USD), "
                               f"liquidation fee {ev.fee / 1e6:,.2f} USD\n")
            elif t is M.OrderTriggered:
                tick = Decimal(MARKETS[ev.market][0])
                self.out.write(f"        {ev.account}'s stop-loss fired at mark "
                               f"{ev.mark * tick:,f} USD (trigger {ev.trigger_price * tick:,f})\n")
        return events

    def next_cid(self) -> int:
        self.cid += 1
        return self.cid

    def quote(self, market: str, index: int) -> None:
        for maker in MAKERS:                          # pull every stale quote first
            for cid in sorted(self.live.get((maker, market), ())):
                self.send(M.Cancel(account=maker, market=market, cid=cid, ts=self.ts))
        for maker, half in MAKERS.items():
            for level in range(1, 4):
                for side, sign in (("buy", -1), ("sell", 1)):
                    self.send(M.NewOrder(
                        account=maker, market=market, cid=self.next_cid(), side=side,
                        kind="limit", tif="alo", qty=self.rng.randint(20, 200),
                        price=index + sign * half * level, ts=self.ts))

    def deep_bids(self, market: str, index: int) -> None:
        """A patient buyer keeps large bids 3, 5 and 7 % under the index (the liquidity a
        liquidation finds when the quotes near the mark have been swept)."""
        key = ("mm-deep", market)
        for cid in sorted(self.live.get(key, ())):
            self.send(M.Cancel(account="mm-deep", market=market, cid=cid, ts=self.ts))
        for pct in (97, 95, 93):
            self.send(M.NewOrder(account="mm-deep", market=market, cid=self.next_cid(),
                                 side="buy", kind="limit", tif="alo", qty=300,
                                 price=index * pct // 100, ts=self.ts))

    def take(self, market: str, index: int, crash: bool) -> None:
        for taker in TAKERS:
            if self.rng.random() > (0.7 if crash else 0.35):
                continue
            side = "sell" if crash and self.rng.random() < 0.85 else self.rng.choice(("buy", "sell"))
            qty = self.rng.randint(150, 600) if taker == "whale" else self.rng.randint(5, 120)
            if self.rng.random() < 0.5:
                cmd = M.NewOrder(account=taker, market=market, cid=self.next_cid(), side=side,
                                 kind="market", qty=qty, ts=self.ts)
            else:
                edge = 25 if side == "buy" else -25
                cmd = M.NewOrder(account=taker, market=market, cid=self.next_cid(), side=side,
                                 kind="limit", tif="ioc", qty=qty, price=index + edge, ts=self.ts)
            self.send(cmd)

    def lever_up(self, acct: str, index: int) -> None:
        """A trader goes long BTC at 10x; the careful one also places a reduce-only stop-loss
        4 % below, which fires as the crash goes through it; the bold one rides it down."""
        leverage, qty = LEVERAGED[acct]
        self.send(M.SetLeverage(account=acct, market="BTC-PERP", leverage=leverage, ts=self.ts))
        self.send(M.NewOrder(account=acct, market="BTC-PERP", cid=self.next_cid(),
                             side="buy", kind="market", qty=qty, ts=self.ts))
        if acct == "lev-careful":
            self.send(M.NewOrder(account=acct, market="BTC-PERP", cid=self.next_cid(),
                                 side="sell", kind="stop_market", qty=1_000,
                                 trigger_price=index * 96 // 100, reduce_only=True, ts=self.ts))

    def run(self) -> int:
        w = self.out.write
        w("perpdex demo: 2 perpetual markets, 2 market makers, 3 takers, 2 leveraged longs, "
          "an oracle crash\n")
        w("(in-process, through the engine's per-command API; `perpdex demo` runs the exchange "
          "with its client processes over ZeroMQ)\n\n")
        t0 = time.perf_counter()
        for cmd in create_markets():
            self.send(cmd)
        for acct, usd in DEPOSITS.items():
            self.send(M.Deposit(account=acct, amount=usd * 1_000_000, ts=self.ts))
        index = {name: spec[2] for name, spec in MARKETS.items()}
        w(f"{'step':>5}  {'BTC-PERP mark':>14} {'ETH-PERP mark':>14} {'fills':>7} "
          f"{'BTC lots':>9} {'ETH lots':>9}\n")
        for step in range(STEPS):
            self.ts += SECOND
            crash = step in CRASH
            for name in MARKETS:
                drift = -0.0021 if crash else self.rng.gauss(0, 0.0004)
                index[name] = max(1, round(index[name] * (1 + drift)))
                self.send(M.Oracle(market=name, price=index[name], ts=self.ts))
                self.quote(name, index[name])
                if step % 5 == 0:
                    self.deep_bids(name, index[name])
                self.take(name, index[name], crash)
            if step in (CRASH.start - 20, CRASH.start - 19):
                self.lever_up("lev-careful" if step == CRASH.start - 20 else "lev-bold",
                              index["BTC-PERP"])
            if step % 25 == 24 or step == CRASH.start:
                tag = "  <- crash starts" if step == CRASH.start else ""
                w(f"{step + 1:>5}  {self.marks['BTC-PERP'][-1] / 10:>14,.1f} "
                  f"{self.marks['ETH-PERP'][-1] / 100:>14,.2f} {self.counts['fill']:>7,} "
                  f"{self.volume['BTC-PERP']:>9,} {self.volume['ETH-PERP']:>9,}{tag}\n")
        self.send(M.StateHash(ts=self.ts))
        seconds = time.perf_counter() - t0
        self.eng.check_integrity()
        return self.summary(seconds)

    def summary(self, seconds: float) -> int:
        w = self.out.write
        eng = self.eng
        w(f"\n{eng.n_commands:,} commands -> {eng.seq:,} events ({eng.n_fills:,} fills) "
          f"in {seconds:.2f} s, in-process through the per-command API\n")
        for name in MARKETS:
            marks = self.marks[name]
            w(f"  {name}: mark {marks[0]:,} -> low {min(marks):,} -> {marks[-1]:,} ticks "
              f"({100 * (min(marks) / marks[0] - 1):+.1f} % at the low)\n")
        cancels = {k[7:]: v for k, v in self.counts.items() if k.startswith("cancel:")}
        rejects = {k[7:]: v for k, v in self.counts.items() if k.startswith("reject:")}
        w("  cancelled by reason: " + ", ".join(f"{k} {v:,}" for k, v in sorted(cancels.items()))
          + "\n")
        liqs = {k[12:]: v for k, v in self.counts.items() if k.startswith("liquidation:")}
        w("  liquidations: " + (", ".join(f"{k} {v}" for k, v in sorted(liqs.items()))
                                or "none") + "\n")
        w("  rejected by reason: " + (", ".join(f"{k} {v:,}" for k, v in sorted(rejects.items()))
                                      or "none") + "\n")
        w("  positions, lots (BTC-PERP / ETH-PERP):\n")
        for acct in (*MAKERS, DEEP, *TAKERS, *LEVERAGED, "insurance"):
            sizes = [eng.position(acct, name)[0] for name in MARKETS]
            w(f"    {acct:<10} " + " / ".join(f"{s:>+8,}" for s in sizes) + "\n")
        net = [sum(eng.position(a, n)[0]
                   for a in (*MAKERS, DEEP, *TAKERS, *LEVERAGED, "insurance"))
               for n in MARKETS]
        for acct in LEVERAGED:
            rep = self.send(M.QueryAccount(account=acct, ts=self.ts))[0]
            w(f"  {acct}: equity {rep.equity / 1e6:,.0f} USD against maintenance "
              f"{rep.maintenance_margin / 1e6:,.0f} USD\n")
        w(f"  open interest long == short in every market: {net == [0] * len(MARKETS)}\n")
        audit = self.send(M.Audit(ts=self.ts))[0]
        lhs = audit.deposits - audit.withdrawals
        rhs = audit.collateral + audit.unrealised_pnl + audit.insurance_fund + audit.fees
        w(f"  insurance fund: {audit.insurance_fund / 1e6:,.2f} USD\n")
        w(f"  audit: deposits - withdrawals = {lhs / 1e6:,.2f} USD = collateral "
          f"{audit.collateral / 1e6:,.2f} + unrealised {audit.unrealised_pnl / 1e6:,.2f} + "
          f"insurance {audit.insurance_fund / 1e6:,.2f} + fees {audit.fees / 1e6:,.2f}: "
          f"{'balanced' if lhs == rhs else 'NOT BALANCED'}\n")
        w(f"  book integrity checked; state hash {self.last_hash}\n")
        return 0


def run(out=sys.stdout) -> int:
    return Demo(out=out).run()
