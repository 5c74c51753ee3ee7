"""The plain book (bench/plain_book.py) matches by price and time, and every perpdex path in the
suite makes exactly its fills (price, qty, maker id, taker id, in order) on the shared workloads,
with margin off and with margin on and ample collateral: the suite compares the same work."""
import pytest

from bench import paths as P
from bench import workloads as W
from bench.plain_book import PlainBook

SMALL = {"deep": {"n": 2500, "depth": 800}, "thin": {"n": 2500}, "mm": {"n": 2500, "depth": 400}}
SEED = 9


# ---- the plain book, by the rules ------------------------------------------------------------

def test_a_taker_trades_at_the_makers_price_best_price_first_then_oldest_first():
    b = PlainBook()
    b.limit(1, False, 101, 5)
    b.limit(2, False, 100, 5)
    b.limit(3, False, 100, 5)
    b.limit(4, True, 101, 12)
    assert b.fills == [(100, 5, 2, 4), (100, 5, 3, 4), (101, 2, 1, 4)]
    assert b.depth() == ([], [(101, 3)])


def test_an_ioc_limit_drops_what_does_not_trade_and_a_gtc_limit_rests_it():
    b = PlainBook()
    b.limit(1, False, 100, 5)
    b.limit(2, True, 100, 8, ioc=True)
    b.limit(3, True, 99, 4)
    assert b.fills == [(100, 5, 1, 2)] and b.depth() == ([(99, 4)], [])


def test_a_market_order_sweeps_until_filled_or_the_side_is_empty():
    b = PlainBook()
    b.limit(1, True, 99, 5)
    b.limit(2, True, 98, 5)
    b.market(3, False, 20)
    assert b.fills == [(99, 5, 1, 3), (98, 5, 2, 3)] and b.depth() == ([], [])


def test_a_cancelled_order_never_trades_and_a_second_cancel_says_no():
    b = PlainBook()
    b.limit(1, False, 100, 5)
    b.limit(2, False, 100, 5)
    assert b.cancel(1) and not b.cancel(1) and not b.cancel(99)
    b.limit(3, True, 100, 10)
    assert b.fills == [(100, 5, 2, 3)] and not b.asks


def test_an_amend_that_only_shrinks_keeps_its_place_and_any_other_goes_to_the_back():
    b = PlainBook()
    for oid in (1, 2, 3):
        b.limit(oid, False, 100, 5)
    assert b.amend(1, 100, 3)             # smaller, same price: still first
    assert b.amend(2, 100, 6)             # larger: behind 3
    b.market(9, True, 100)
    assert b.fills == [(100, 3, 1, 9), (100, 5, 3, 9), (100, 6, 2, 9)]
    assert not b.amend(1, 100, 1)


def test_an_amend_to_a_crossing_price_trades_on_re_entry():
    b = PlainBook()
    b.limit(1, True, 99, 5)
    b.limit(2, False, 101, 5)
    b.amend(2, 99, 4)
    assert b.fills == [(99, 4, 1, 2)] and b.depth() == ([(99, 1)], [])


# ---- every perpdex path makes the plain book's fills ------------------------------------------

@pytest.fixture(scope="module", params=sorted(SMALL))
def workload(request):
    wl = W.GENERATORS[request.param](seed=SEED, **SMALL[request.param])
    run = P.PLAIN.build(wl)
    run.run()
    return wl, run.fills()


def _fills(path, wl):
    run = path.build(wl)
    run.run()
    return run.fills()


@pytest.mark.parametrize("path", [p for p in P.CORE + P.REPLAY if not p.baseline],
                         ids=lambda p: p.name)
def test_every_path_makes_the_plain_books_fills(workload, path):
    wl, plain = workload
    assert plain, f"{wl.name} seed {SEED}: the workload made no fills"
    assert _fills(path, wl) == plain, f"{path.name} on {wl.name}, seed {SEED}"


@pytest.mark.parametrize("margin", [False, True], ids=["margin off", "margin on"])
def test_perpdex_execute_agrees_with_the_plain_book_with_margin_off_and_on(workload, margin):
    wl, plain = workload
    run = P._execute_build(wl, margin=margin)
    run.run()
    assert run.fills() == plain, f"{wl.name}, seed {SEED}, margin {margin}"


@pytest.mark.parametrize("path", [p for p in P.CORE + P.REPLAY if p.single is not None],
                         ids=lambda p: p.name)
def test_the_latency_pass_runs_one_operation_a_call(path):
    wl = W.deep(seed=SEED, n=200, depth=100)
    step, items = path.single(wl)
    assert len(items) == len(wl.ops)
    for x in items:
        step(x)
