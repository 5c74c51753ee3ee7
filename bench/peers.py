"""Adapters for order books from PyPI, in the suite's harness (the optional extra `peers`:
`pip install -e '.[peers]'`). Each is skipped, and the suite says so, when its package is not
installed. Where a peer cannot express an operation, the adapter says how it stands in for it
(`notes`), and where it reports no fills, its fills are None and the table says so.

  liquibook         liquibook 2.0.1 (C++ via SWIG): limit, IOC (oc_immediate_or_cancel), market
                    (price 0, IOC), cancel; amend as cancel + limit; fills through a Python OrderListener callback
  limit-order-book  limit-order-book 2.0.0 (C++ via ctypes): limit, market, cancel; no IOC (a
                    limit, then a cancel of what rests), no amend (a cancel and a new limit, so a
                    shrink loses its place), and no fill reports at all
"""
from __future__ import annotations

from bench.paths import Path, Prepared


def available() -> dict:
    """name -> Path for every peer that imports here; name -> reason for the others."""
    out = {}
    for name, make in (("liquibook", _liquibook), ("limit-order-book", _lob)):
        try:
            out[name] = make()
        except ImportError as e:
            out[name] = f"not installed ({e.name or e})"
    return out


def _harness(build_book, calls, fills):
    """build and single (bench/paths.py) for a peer: `build_book(wl)` makes the book with the
    setup applied, `calls(wl, book)` the [(function, args)] of the operations, `fills(book)`
    what it reports (None: nothing). The timed loop is the plain book's."""
    def build(wl):
        b = build_book(wl)
        c = calls(wl, b)

        def run():
            for f, a in c:
                f(*a)
        run.book = b
        return Prepared(run, lambda: fills(b))

    def single(wl):
        b = build_book(wl)

        def step(fa):
            fa[0](*fa[1])
        return step, calls(wl, b)
    return build, single


# ---- liquibook -------------------------------------------------------------------------------

def _liquibook() -> Path:
    import liquibook as L
    from importlib.metadata import version

    class Listener(L.OrderListener):
        """Records fills as (price, qty, maker oid, taker oid); liquibook calls on_fill with the
        incoming order first and the price as `fill_cost`."""

        def __init__(self, ids, fills):
            L.OrderListener.__init__(self)
            self.ids, self.fills = ids, fills

        def on_fill(self, taker, maker, qty, price):
            ids = self.ids
            self.fills.append((price, qty, ids[maker.order_id_], ids[taker.order_id_]))

        def on_accept(self, order): pass
        def on_reject(self, order, reason): pass
        def on_cancel(self, order): pass
        def on_cancel_reject(self, order, reason): pass
        def on_replace(self, order, delta, price): pass
        def on_replace_reject(self, order, reason): pass
        def on_trigger_stop(self, order): pass

    SimpleOrder, IOC = L.SimpleOrder, L.oc_immediate_or_cancel

    class Book:
        def __init__(self):
            self.book = L.liquibook_book_OrderBook()
            self.ids = {}                 # liquibook order id -> our oid
            self.orders = {}              # our oid -> (SimpleOrder, remaining as we last set it)
            self.fills = []
            self.listener = Listener(self.ids, self.fills)
            self.book.set_order_listener(self.listener)

        def limit(self, oid, buy, price, qty, ioc=False):
            o = SimpleOrder(buy, price, qty)
            self.ids[o.order_id_] = oid
            if ioc:
                self.book.add(o, IOC)
            else:
                self.orders[oid] = o
                self.book.add(o)

        def market(self, oid, buy, qty):
            o = SimpleOrder(buy, 0, qty)            # price 0: a market order, which
            self.ids[o.order_id_] = oid             # rests unless it is IOC too
            self.book.add(o, IOC)

        def cancel(self, oid):
            o = self.orders.pop(oid, None)
            if o is not None:
                self.book.cancel(o)

        def amend(self, oid, buy, price, qty):
            # liquibook's replace takes a size delta on the open qty, which SimpleOrder knows
            # only if the listener calls fill() on both orders of every fill: a cancel and a new
            # order instead (so a shrink loses its place, as noted)
            self.cancel(oid)
            self.limit(oid, buy, price, qty)

    def build_book(wl):
        b = Book()
        for kind, oid, _a, buy, price, qty in wl.setup:
            b.limit(oid, buy, price, qty)
        b.fills.clear()
        return b

    def calls(wl, b):
        out = []
        for kind, oid, _a, buy, price, qty in wl.ops:
            if kind in ("passive", "sweep"):
                out.append((b.limit, (oid, buy, price, qty)))
            elif kind == "cross":
                out.append((b.limit, (oid, buy, price, qty, True)))
            elif kind == "market":
                out.append((b.market, (oid, buy, qty)))
            elif kind == "cancel":
                out.append((b.cancel, (oid,)))
            else:
                out.append((b.amend, (oid, buy, price, qty)))
        return out

    build, single = _harness(build_book, calls, lambda b: list(b.fills))

    v = version("liquibook")
    return Path(f"liquibook {v}", "C++ via SWIG; fills from a Python OrderListener callback",
                build, single, notes={"amend": "as a cancel and a new limit (a shrink loses its place, "
                                      "so the mm fills differ)"})


# ---- limit-order-book ------------------------------------------------------------------------

def _lob() -> Path:
    from importlib.metadata import version

    from limit_order_book import LimitOrderBook

    def build_book(wl):
        b = LimitOrderBook()
        for kind, oid, _a, buy, price, qty in wl.setup:
            b.limit(buy, oid, qty, price)
        return b

    def calls(wl, b):
        limit, market, cancel, has = b.limit, b.market, b.cancel, b.has

        def ioc(buy, oid, qty, price):
            limit(buy, oid, qty, price)
            if has(oid):
                cancel(oid)

        def amend(buy, oid, qty, price):
            if has(oid):
                cancel(oid)
            limit(buy, oid, qty, price)

        def cancel_if_there(oid):             # a cancel of an unknown id aborts the process
            if has(oid):                      # (std::out_of_range), and where the emulated
                cancel(oid)                   # amends change priority the books part ways

        out = []
        for kind, oid, _a, buy, price, qty in wl.ops:
            if kind in ("passive", "sweep"):
                out.append((limit, (buy, oid, qty, price)))
            elif kind == "cross":
                out.append((ioc, (buy, oid, qty, price)))
            elif kind == "market":
                out.append((market, (buy, oid, qty)))
            elif kind == "cancel":
                out.append((cancel_if_there, (oid,)))
            else:
                out.append((amend, (buy, oid, qty, price)))
        return out

    build, single = _harness(build_book, calls, lambda b: None)

    v = version("limit-order-book")
    return Path(f"limit-order-book {v}", "C++ via ctypes; reports no fills",
                build, single, notes={
                    "fills": "reports no fills (checked on the book it leaves instead: "
                             "tests/test_bench_peers.py)",
                    "cross": "no IOC: a limit, then a cancel of what rests",
                    "cancel": "checks `has` first: a cancel of an unknown id aborts the process",
                    "amend": "no amend: a cancel and a new limit (a shrink loses its place)"})
