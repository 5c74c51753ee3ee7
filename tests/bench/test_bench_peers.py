"""The peers from PyPI (the optional extra `peers`, bench/peers.py) agree with the plain book,
and so with perpdex, where they can express the orders: nautilus-trader's book (with the
adapter's Python matching walk) on the fills of all three workloads; liquibook on the fills of
the deep and thin ones; limit-order-book, which reports no fills, on the book it leaves there.
liquibook and limit-order-book do not run mm here: their amends are a cancel and a new limit, so
a shrunk order loses its place. Skipped when not installed."""
import pytest

from bench import paths as P
from bench import peers
from bench import workloads as W

SEED = 13
AVAILABLE = peers.available()


def peer(name):
    p = AVAILABLE[name]
    if isinstance(p, str):
        pytest.skip(f"{name}: {p}")
    return p


def small(name):
    return W.GENERATORS[name](seed=SEED, **({"n": 2500} if name == "thin" else
                                            {"n": 2500, "depth": 600}))


def fills(path, wl):
    run = path.build(wl)
    run.run()
    return run.fills()


@pytest.mark.parametrize("name", ["deep", "thin"])
def test_liquibook_makes_the_plain_books_fills(name):
    wl = small(name)
    plain = fills(P.PLAIN, wl)
    assert plain and fills(peer("liquibook"), wl) == plain, f"{name}, seed {SEED}"


@pytest.mark.parametrize("name", ["deep", "thin", "mm"])
def test_nautilus_trader_with_a_python_matching_walk_makes_the_plain_books_fills(name):
    wl = small(name)
    plain = fills(P.PLAIN, wl)
    assert plain and fills(peer("nautilus-trader"), wl) == plain, f"{name}, seed {SEED}"


@pytest.mark.parametrize("name", ["deep", "thin"])
def test_limit_order_book_leaves_the_plain_books_book(name):
    lob = peer("limit-order-book")
    wl = small(name)
    run = lob.build(wl)
    run.run()
    b = run.run.book
    bids, asks = _depth(wl)
    for price, qty in bids:
        assert b.volume_buy(price) == qty, (name, SEED, "bid", price)
    for price, qty in asks:
        assert b.volume_sell(price) == qty, (name, SEED, "ask", price)
    assert b.volume_buy() == sum(q for _, q in bids) and b.volume_sell() == sum(q for _, q in asks)
    assert (b.best_buy(), b.best_sell()) == (bids[0][0], asks[0][0]), (name, SEED)


def _depth(wl):
    book = wl.fresh_plain()
    for f, a in wl.plain_calls(book):
        f(*a)
    return book.depth()


def test_a_peer_that_is_not_installed_is_named_with_the_reason():
    for name, p in AVAILABLE.items():
        assert isinstance(p, P.Path) or p.startswith(("not installed", "unusable here")), (name, p)
