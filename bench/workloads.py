"""Seeded, deterministic workloads for the benchmark suite: the same seed gives the same
operations, hence the same command bytes (tests/bench/test_bench_workloads.py checks it across
processes).

A workload is a list of neutral operations, one tuple each,

    (kind, oid, account, buy, price, qty)

kind being "passive" (a GTC limit meant to rest), "sweep" (a GTC limit priced through several
levels), "cross" (an IOC limit), "market", "cancel" or "amend" (price and qty: the new ones). The
`setup` operations (passive limits building the book) are applied untimed; `ops` are measured.
Every adapter turns them into its own calls: `plain_calls` for bench/plain_book.py, `commands`
for perpdex's Structs, `msgpack` / `jsonl` for its byte paths.

Built so that the plain book and perpdex make the same fills: buyers are accounts 0-99 and
sellers 100-199 (no self-trade can happen), every price stays well inside the 5 % band around the
one mark (set once, before the book is built), each account deposits 10 million USD (margin on,
the checks run and pass), and no funding boundary is crossed. The generators track which orders
rest by running the flow through a PlainBook as they write it, so cancels and amends name live
orders.

Mixes (shares of `ops`):
  deep  20,000 resting first; 60 % passive limits 1-50 ticks from a random-walk mid, 30 % cancels
        of live orders, 8 % crossing IOC limits (0-5 ticks through, 1-300 lots), 2 % market orders
        (passives outnumber cancels and fills: the book grows, to about 53,000 after 200,000)
  thin  a book kept between 50 and 300 resting orders (only passive limits below 80, none at
        300); else 35 % passive limits 1-20 ticks from mid, 15 % cancels, 30 % sweeps (GTC limits
        5-30 ticks through, 50-400 lots), 12 % IOC limits 0-10 through, 8 % market orders. A sweep
        takes several orders, so the floor forces passives: over a run, about 67 % passive, 15 %
        sweeps, 8 % cancels, 6 % IOC, 4 % market, and 66-180 orders resting
  mm    2,000 resting first; 40 % amends (a new passive price, or a smaller qty in place), 26 %
        cancels, 26 % passive limits, 6 % crossing IOC limits, 2 % market orders, and only passive
        limits while fewer than half of `depth` rest: the mix drains the book, which sits at
        1,000-1,100 of 2,000 for most of a run (about 32 % passive, 37 % amends, 24 % cancels)
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

import msgspec

from .plain_book import PlainBook

MARKET = "BTC-PERP"
MID = 650_000                 # ticks (65,000.0 USD at tick 0.1)
BUYERS = 100                  # accounts 0-99 buy, 100-199 sell: no self-trade, ever
ACCOUNTS = 2 * BUYERS
DEPOSIT = 10**13              # quote units (10 million USD) each: margin checks run, and pass
TS0 = 1_000_000_000
TS_STEP = 1000                # ns per operation: no funding boundary in any workload
KINDS = ("passive", "cancel", "cross", "market", "sweep", "amend")

# The market of the standard workload (bench/workload.py builds its CreateMarket from this too).
MARKET_FIELDS = dict(
    market=MARKET, tick_size="0.1", lot_size="0.001", min_qty=1, imf_ppm=50_000,
    mmf_ppm=25_000, maker_fee_ppm=-100, taker_fee_ppm=400, liquidation_fee_ppm=10_000,
    price_band_ppm=50_000, funding_interval_s=3600, funding_cap_ppm=7500, interest_ppm=100,
    max_orders_per_account=100_000,
)


@dataclass
class Workload:
    name: str
    seed: int
    params: dict
    setup: list                       # operations applied before timing
    ops: list                         # the measured operations
    marks: list = field(default_factory=list)   # (index in ops, mid): the walk, for oracles
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ---- descriptions ----------------------------------------------------------------------

    def kinds(self) -> list[str]:
        return [op[0] for op in self.ops]

    def mix(self) -> dict:
        k = self.kinds()
        return {name: k.count(name) for name in KINDS if name in k}

    def digest(self) -> str:
        """sha256 of the msgpack bytes of every command, setup included."""
        h = hashlib.sha256()
        for b in self.msgpack_setup() + self.msgpack():
            h.update(b)
        return h.hexdigest()

    def describe(self) -> dict:
        return {"name": self.name, "seed": self.seed, **self.params, "setup_ops": len(self.setup),
                "resting": len(self.fresh_plain().orders),
                "ops": len(self.ops), "mix": self.mix(), "sha256": self.digest()}

    # ---- the plain book --------------------------------------------------------------------

    def plain_calls(self, book: PlainBook, which: str = "ops") -> list:
        """[(bound method, args)] for `book`: run them as `for f, a in calls: f(*a)`."""
        out = []
        limit, market, cancel, amend = book.limit, book.market, book.cancel, book.amend
        for kind, oid, _acct, buy, price, qty in getattr(self, which):
            if kind == "passive" or kind == "sweep":
                out.append((limit, (oid, buy, price, qty)))
            elif kind == "cross":
                out.append((limit, (oid, buy, price, qty, True)))
            elif kind == "market":
                out.append((market, (oid, buy, qty)))
            elif kind == "cancel":
                out.append((cancel, (oid,)))
            else:
                out.append((amend, (oid, price, qty)))
        return out

    # ---- perpdex ---------------------------------------------------------------------------

    def setup_commands(self) -> list:
        from perpdex.engine import messages as M
        if "setup" not in self._cache:
            head = [M.CreateMarket(**MARKET_FIELDS), M.Oracle(market=MARKET, price=MID, ts=TS0)]
            head += [M.Deposit(account=a, amount=DEPOSIT, ts=TS0) for a in range(ACCOUNTS)]
            self._cache["setup"] = head + _structs(self.setup, TS0)
        return self._cache["setup"]

    def commands(self) -> list:
        if "flow" not in self._cache:
            self._cache["flow"] = _structs(self.ops, TS0 + TS_STEP)
        return self._cache["flow"]

    def msgpack_setup(self) -> list[bytes]:
        enc = msgspec.msgpack.encode
        return [enc(c) for c in self.setup_commands()]

    def msgpack(self) -> list[bytes]:
        if "mp" not in self._cache:
            enc = msgspec.msgpack.encode
            self._cache["mp"] = [enc(c) for c in self.commands()]
        return self._cache["mp"]

    def jsonl(self) -> list[bytes]:
        if "js" not in self._cache:
            enc = msgspec.json.encode
            self._cache["js"] = [enc(c) + b"\n" for c in self.commands()]
        return self._cache["js"]

    def commands_with_marks(self) -> tuple[list, list]:
        """The commands with an `oracle` at the walked mid after every 500th operation (the
        mark moves, nothing else: no fill changes), and the kind of each."""
        from perpdex.engine import messages as M
        cmds, kinds = [], []
        marks = dict(self.marks)
        for i, (c, k) in enumerate(zip(self.commands(), self.kinds()), 1):
            cmds.append(c)
            kinds.append(k)
            if i in marks:
                cmds.append(M.Oracle(market=MARKET, price=marks[i], ts=c.ts))
                kinds.append("oracle")
        return cmds, kinds

    def fresh_engine(self, margin: bool = True):
        """An Engine with the market, the deposits and the book of `setup` (not timed)."""
        from perpdex.engine import Engine
        eng = Engine(margin=margin)
        eng.execute_batch(b"".join(self.msgpack_setup()), "msgpack")
        return eng

    def fresh_plain(self) -> PlainBook:
        book = PlainBook()
        for f, a in self.plain_calls(book, "setup"):
            f(*a)
        book.fills.clear()
        return book


def _structs(ops, ts0) -> list:
    from perpdex.engine import messages as M
    NewOrder, Cancel, Amend = M.NewOrder, M.Cancel, M.Amend
    out = []
    ts = ts0
    for kind, oid, acct, buy, price, qty in ops:
        side = "buy" if buy else "sell"
        if kind == "passive" or kind == "sweep":
            c = NewOrder(account=acct, market=MARKET, cid=oid, side=side, kind="limit", qty=qty,
                         price=price, ts=ts)
        elif kind == "cross":
            c = NewOrder(account=acct, market=MARKET, cid=oid, side=side, kind="limit", qty=qty,
                         price=price, tif="ioc", ts=ts)
        elif kind == "market":
            c = NewOrder(account=acct, market=MARKET, cid=oid, side=side, kind="market", qty=qty,
                         ts=ts)
        elif kind == "cancel":
            c = Cancel(account=acct, market=MARKET, cid=oid, ts=ts)
        else:
            c = Amend(account=acct, market=MARKET, cid=oid, price=price, qty=qty, ts=ts)
        out.append(c)
        ts += TS_STEP
    return out


class _Gen:
    """The generator's state: the random stream, the mid, the ids, and the live orders (kept by
    running every operation through a PlainBook)."""

    def __init__(self, seed):
        self.r = random.Random(seed)
        self.book = PlainBook()
        self.mid = MID
        self.oid = 0
        self.live: list[int] = []             # resting oids, for O(1) random choice
        self.where: dict[int, int] = {}       # oid -> index in live
        self.account: dict[int, int] = {}     # oid -> account
        self.n = 0
        self.marks: list[tuple[int, int]] = []

    def _drop(self, oid):
        i = self.where.pop(oid, None)
        if i is not None:
            last = self.live.pop()
            if i < len(self.live):
                self.live[i] = last
                self.where[last] = i

    def apply(self, op) -> tuple:
        kind, oid, _acct, buy, price, qty = op
        b = self.book
        nfills = len(b.fills)
        if kind == "passive" or kind == "sweep":
            b.limit(oid, buy, price, qty)
        elif kind == "cross":
            b.limit(oid, buy, price, qty, True)
        elif kind == "market":
            b.market(oid, buy, qty)
        elif kind == "cancel":
            b.cancel(oid)
        else:
            b.amend(oid, price, qty)
        for f in b.fills[nfills:]:
            if f[2] not in b.orders:
                self._drop(f[2])
        del b.fills[:]
        if oid in b.orders:
            if oid not in self.where:
                self.where[oid] = len(self.live)
                self.live.append(oid)
        else:
            self._drop(oid)
        self.n += 1
        if self.n % 500 == 0:                 # the mid's random walk
            self.mid += self.r.choice((-2, -1, 0, 1, 2))
            self.marks.append((self.n, self.mid))
        return op

    def new(self, kind, buy, price, qty):
        self.oid += 1
        acct = self.r.randrange(BUYERS) + (0 if buy else BUYERS)
        self.account[self.oid] = acct
        return self.apply((kind, self.oid, acct, buy, price, qty))

    def passive(self, lo=1, hi=50):
        r = self.r
        buy = r.random() < 0.5
        off = r.randint(lo, hi)
        return self.new("passive", buy, self.mid - off if buy else self.mid + off,
                        r.randint(1, 100))

    def through(self, kind, lo, hi, qlo, qhi):
        r = self.r
        buy = r.random() < 0.5
        off = r.randint(lo, hi)
        return self.new(kind, buy, self.mid + off if buy else self.mid - off, r.randint(qlo, qhi))

    def market(self, qlo=1, qhi=300):
        r = self.r
        return self.new("market", r.random() < 0.5, None, r.randint(qlo, qhi))

    def cancel(self):
        oid = self.live[self.r.randrange(len(self.live))]
        return self.apply(("cancel", oid, self.account[oid], None, None, None))

    def amend(self):
        r = self.r
        oid = self.live[r.randrange(len(self.live))]
        o = self.book.orders[oid]
        if o.qty > 1 and r.random() < 0.4:                      # smaller, in place
            price, qty = o.price, r.randint(1, o.qty - 1)
        else:                                                    # a new passive price
            off = r.randint(1, 50)
            price, qty = (self.mid - off if o.buy else self.mid + off), r.randint(1, 100)
        return self.apply(("amend", oid, self.account[oid], o.buy, price, qty))


def _start(seed, depth, lo=1, hi=50):
    """The generator, and the setup: passive limits until `depth` rest."""
    g = _Gen(seed)
    setup = []
    while len(g.live) < depth:
        setup.append(g.passive(lo, hi))
    g.n = 0
    g.marks.clear()
    return g, setup, [], g.r


def deep(seed: int = 1, n: int = 200_000, depth: int = 20_000) -> Workload:
    g, setup, ops, r = _start(seed, depth)
    for _ in range(n):
        x = r.random()
        if x < 0.60 or (x < 0.90 and not g.live):
            ops.append(g.passive())
        elif x < 0.90:
            ops.append(g.cancel())
        elif x < 0.98:
            ops.append(g.through("cross", 0, 5, 1, 300))
        else:
            ops.append(g.market())
    return Workload("deep", seed, {"n": n, "depth": depth}, setup, ops, g.marks)


def thin(seed: int = 1, n: int = 100_000, low: int = 50, high: int = 300) -> Workload:
    g, setup, ops, r = _start(seed, (low + high) // 2, 1, 20)
    for _ in range(n):
        x = r.random()
        resting = len(g.live)
        if resting < low + 30 or (x < 0.35 and resting < high):     # a sweep takes < 30
            ops.append(g.passive(1, 20))
        elif x < 0.50:
            ops.append(g.cancel())
        elif x < 0.80:
            ops.append(g.through("sweep", 5, 30, 50, 400))
        elif x < 0.92:
            ops.append(g.through("cross", 0, 10, 20, 300))
        else:
            ops.append(g.market(20, 300))
    return Workload("thin", seed, {"n": n, "low": low, "high": high}, setup, ops, g.marks)


def mm(seed: int = 1, n: int = 200_000, depth: int = 2_000) -> Workload:
    g, setup, ops, r = _start(seed, depth)
    for _ in range(n):
        x = r.random()
        if x < 0.26 or len(g.live) < depth // 2:
            ops.append(g.passive())
        elif x < 0.66:
            ops.append(g.amend())
        elif x < 0.92:
            ops.append(g.cancel())
        elif x < 0.98:
            ops.append(g.through("cross", 0, 5, 1, 300))
        else:
            ops.append(g.market())
    return Workload("mm", seed, {"n": n, "depth": depth}, setup, ops, g.marks)


GENERATORS = {"deep": deep, "thin": thin, "mm": mm}
