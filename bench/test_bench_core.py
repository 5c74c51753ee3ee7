"""pytest-benchmark microbenchmarks of the primitives (`make bench` runs them after the suite).

Run alone: .venv/bin/python -m pytest bench/ --benchmark-only
           (BENCH_QUICK=1 for small books and 2,000 positions: tests/bench/test_bench_micro.py does)

Each order primitive is timed on perpdex's per-command API (`Engine.execute(Struct)`, margin on)
and on the plain book (bench/plain_book.py) over the same book, so the two medians can be read
side by side: add, cancel, amend, match one level, sweep ten levels. The book is the standard
deep workload's (20,000 resting orders). Then the margin check (the same add with margin on
and off), a quiet mark update and a funding boundary, on an engine whose accounts hold
positions (bench/liquidation.py builds it: 10,000 and 100,000 positions).
The per-round setup (placing the order a cancel will take, re-building the ten levels a sweep
will take) is done by pytest-benchmark's `setup`, untimed.
"""
import itertools
import os

import msgspec
import pytest

from bench import liquidation
from bench.workload import MARKET, generate
from bench.workloads import BUYERS, MID, deep
from perpdex.engine import Engine, messages as M
from bench.reference import ReferenceEngine

QUICK = os.environ.get("BENCH_QUICK") == "1"
ROUNDS = 20 if QUICK else 2000
WL = generate(seed=1, n=1024 if QUICK else 8192, depth=1000 if QUICK else 20_000)
FLOW_MP = [msgspec.msgpack.encode(c) for c in WL.flow]
CHUNK = b"".join(FLOW_MP[:4096])
BOOK = deep(seed=1, n=1, depth=1000 if QUICK else 20_000)     # the deep mix's book
EMPTY = deep(seed=1, n=1, depth=0)                             # the market, the deposits
SELLER = BUYERS                                                # accounts >= BUYERS sell
ASK = BOOK.fresh_plain().bids.peekitem(-1)[0] + 20             # a sell there rests
cids = itertools.count(10**9)


def fresh(factory=Engine):
    eng = factory()
    for c in WL.setup:
        eng.execute(c)
    return eng


# ---- the existing three ----------------------------------------------------------------------

@pytest.mark.parametrize("factory", [Engine, ReferenceEngine], ids=["core", "python"])
def test_place_and_cancel_a_passive_order(benchmark, factory):
    eng = fresh(factory)

    def place_and_cancel():
        cid = next(cids)
        eng.execute(M.NewOrder(account=7, market=MARKET, cid=cid, side="buy", kind="limit",
                               qty=10, price=649_990))
        eng.execute(M.Cancel(account=7, market=MARKET, cid=cid))

    benchmark(place_and_cancel)


def test_batch_of_4096_workload_commands(benchmark):
    def setup():
        return (fresh(),), {}

    def run(eng):
        eng.execute_batch(CHUNK, "msgpack")

    benchmark.pedantic(run, setup=setup, rounds=3 if QUICK else 15)


def test_single_command_request_through_the_batch_entry_point(benchmark):
    eng = fresh()

    def request():
        cid = next(cids)
        eng.execute_batch(msgspec.msgpack.encode(M.NewOrder(
            account=7, market=MARKET, cid=cid, side="sell", kind="limit", qty=10,
            price=650_010)), "msgpack")

    benchmark(request)


# ---- the order primitives, perpdex and the plain book ----------------------------------------

def sell(cid, price, qty=10, **kw):
    return M.NewOrder(account=SELLER, market=MARKET, cid=cid, side="sell", kind="limit",
                      qty=qty, price=price, **kw)


def buy(cid, price, qty=10, **kw):
    return M.NewOrder(account=0, market=MARKET, cid=cid, side="buy", kind="limit", qty=qty,
                      price=price, **kw)


class Perpdex:
    """The primitives on Engine.execute, on the deep book."""
    name = "perpdex"

    def __init__(self, wl=BOOK, margin=True):
        self.eng = wl.fresh_engine(margin)
        self.ex = self.eng.execute

    def add(self, cid, price):
        self.ex(sell(cid, price))

    def cancel(self, cid):
        self.ex(M.Cancel(account=SELLER, market=MARKET, cid=cid))

    def amend(self, cid, price):
        self.ex(M.Amend(account=SELLER, market=MARKET, cid=cid, price=price, qty=10))

    def take(self, cid, price, qty):
        self.ex(buy(cid, price, qty, tif="ioc"))


class Plain:
    """The same on the plain book."""
    name = "plain"

    def __init__(self, wl=BOOK):
        self.book = wl.fresh_plain()

    def add(self, cid, price):
        self.book.limit(cid, False, price, 10)

    def cancel(self, cid):
        self.book.cancel(cid)

    def amend(self, cid, price):
        self.book.amend(cid, price, 10)

    def take(self, cid, price, qty):
        self.book.limit(cid, True, price, qty, True)


BOOKS = [Perpdex, Plain]
IDS = ["perpdex", "plain"]


def _pedantic(benchmark, fn, setup):
    benchmark.pedantic(fn, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("make", BOOKS, ids=IDS)
def test_add_a_resting_order(benchmark, make):
    b = make()
    _pedantic(benchmark, b.add, lambda: ((next(cids), ASK), {}))


@pytest.mark.parametrize("make", BOOKS, ids=IDS)
def test_cancel_a_resting_order(benchmark, make):
    b = make()

    def setup():
        cid = next(cids)
        b.add(cid, ASK)
        return (cid,), {}
    _pedantic(benchmark, b.cancel, setup)


@pytest.mark.parametrize("make", BOOKS, ids=IDS)
def test_amend_a_resting_order_to_a_new_price(benchmark, make):
    b = make()

    def setup():
        cid = next(cids)
        b.add(cid, ASK)
        return (cid, ASK + 1), {}
    _pedantic(benchmark, b.amend, setup)


@pytest.mark.parametrize("make", BOOKS, ids=IDS)
def test_match_one_level(benchmark, make):
    """An IOC buy takes the one order at the one ask level, which the setup put there (on an
    empty book, so that every round starts alike)."""
    b = make(EMPTY)

    def setup():
        b.add(next(cids), MID + 1)
        return (next(cids), MID + 1, 10), {}
    _pedantic(benchmark, b.take, setup)


@pytest.mark.parametrize("make", BOOKS, ids=IDS)
def test_sweep_ten_levels(benchmark, make):
    """An IOC buy takes ten orders at ten prices, which the setup put there (on an empty book)."""
    b = make(EMPTY)

    def setup():
        for i in range(1, 11):
            b.add(next(cids), MID + i)
        return (next(cids), MID + 10, 100), {}
    _pedantic(benchmark, b.take, setup)


# ---- margin, marks, funding ------------------------------------------------------------------

@pytest.mark.parametrize("margin", [True, False], ids=["margin on", "margin off"])
def test_the_margin_check_on_adding_an_order(benchmark, margin):
    """The add of test_add_a_resting_order with margin on and off: the difference is the
    margin check (and its bookkeeping of the open order's requirement)."""
    b = Perpdex(BOOK, margin)
    _pedantic(benchmark, b.add, lambda: ((next(cids), ASK), {}))


POSITIONS = [2_000] if QUICK else [10_000, 100_000]


@pytest.fixture(scope="module", params=POSITIONS, ids=lambda n: f"{n} positions")
def held(request):
    eng, _ = liquidation.build(request.param)
    return eng


def test_a_quiet_mark_update(benchmark, held):
    """An oracle of +-1 tick that liquidates nobody, on an engine with that many positions."""
    k = itertools.count(100)

    def update():
        i = next(k)
        held.execute_batch(msgspec.msgpack.encode(M.Oracle(
            market=liquidation.MARKET, price=liquidation.MID + (1 if i % 2 else -1), ts=i)))
    benchmark.pedantic(update, rounds=50 if QUICK else 500, iterations=1, warmup_rounds=1)


def test_a_funding_boundary(benchmark, held):
    """A clock that passes one funding boundary (hourly): every position pays or is paid (the
    rate is what the premium samples give; a boundary may liquidate the 9.5x accounts)."""
    hour = 3600 * 10**9
    k = itertools.count(1)

    def boundary():
        held.execute_batch(msgspec.msgpack.encode(M.Clock(ts=next(k) * hour + 1)))
    benchmark.pedantic(boundary, rounds=3 if QUICK else 10, iterations=1)
