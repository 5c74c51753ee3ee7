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

from .paths import Path, Prepared


def available() -> dict:
    """name -> Path for every peer that imports here; name -> reason for the others."""
    out = {}
    for name, make in (("liquibook", _liquibook), ("limit-order-book", _lob),
                       ("nautilus-trader", _nautilus)):
        try:
            out[name] = make()
        except ImportError as e:
            out[name] = f"not installed ({e.name or e})"
        except Exception as e:            # installed, but not the API the adapter knows
            out[name] = f"unusable here: {type(e).__name__}: {e}"
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
                             "tests/bench/test_bench_peers.py)",
                    "cross": "no IOC: a limit, then a cancel of what rests",
                    "cancel": "checks `has` first: a cancel of an unknown id aborts the process",
                    "amend": "no amend: a cancel and a new limit (a shrink loses its place)"})


# ---- nautilus-trader -------------------------------------------------------------------------

def _nautilus() -> Path:
    from importlib.metadata import version

    from nautilus_trader.core import nautilus_pyo3 as N

    BUY, SELL = N.OrderSide.BUY, N.OrderSide.SELL
    Price, Quantity, BookOrder = N.Price, N.Quantity, N.BookOrder
    ZERO = Quantity(0, 0)
    instrument = N.InstrumentId.from_str("BTC-PERP.BENCH")

    class Book:
        """The plain book's interface on nautilus's Rust L3 book (the pyo3 OrderBook); prices
        and sizes are integers (precision 0). `open` keeps oid -> [side, Price, qty] for
        cancels, amends and fills (so sizes are not read back from the book)."""

        def __init__(self):
            self.book = N.OrderBook(instrument, N.BookType.L3_MBO)
            self.open = {}
            self.fills = []

        def limit(self, oid, buy, price, qty, ioc=False):
            qty = self._take(oid, buy, price, qty)
            if qty and not ioc:
                side, px = (BUY if buy else SELL), Price(price, 0)
                self.book.add(BookOrder(side, px, Quantity(qty, 0), oid), 0, 0, 0)
                self.open[oid] = [side, px, qty]

        def market(self, oid, buy, qty):
            self._take(oid, buy, None, qty)

        def cancel(self, oid):
            o = self.open.pop(oid, None)
            if o is not None:
                self.book.delete(BookOrder(o[0], o[1], ZERO, oid), 0, 0, 0)

        def amend(self, oid, price, qty):
            o = self.open.get(oid)
            if o is None:
                return
            if price == int(o[1]) and qty <= o[2]:         # nautilus's update keeps the place
                self.book.update(BookOrder(o[0], o[1], Quantity(qty, 0), oid), 0, 0, 0)
                o[2] = qty
                return
            self.cancel(oid)
            self.limit(oid, o[0] == BUY, price, qty)

        def _take(self, oid, buy, limit, qty):
            """The matching walk, in Python: the best level (asks(1) / bids(1)), its orders in
            time order, `update` or `delete` for each maker."""
            book, open_, keep = self.book, self.open, self.fills.append
            top = book.asks if buy else book.bids
            while qty:
                levels = top(1)
                if not levels:
                    break
                level = levels[0]
                price = int(level.price)
                if limit is not None and (price > limit if buy else price < limit):
                    break
                for m in level.get_orders():
                    mid = m.order_id
                    mo = open_[mid]
                    q = qty if qty < mo[2] else mo[2]
                    keep((price, q, mid, oid))
                    qty -= q
                    mo[2] -= q
                    if mo[2]:
                        book.update(BookOrder(mo[0], mo[1], Quantity(mo[2], 0), mid), 0, 0, 0)
                    else:
                        book.delete(m, 0, 0, 0)
                        del open_[mid]
                    if not qty:
                        break
            return qty

    def build_book(wl):
        b = Book()
        for f, a in wl.plain_calls(b, "setup"):
            f(*a)
        b.fills.clear()
        return b

    build, single = _harness(build_book, lambda wl, b: wl.plain_calls(b), lambda b: list(b.fills))
    v = version("nautilus-trader")
    return Path(f"nautilus-trader {v}", "its Rust L3 OrderBook (pyo3) + the matching walk in "
                "Python (bench/peers.py)", build, single)
