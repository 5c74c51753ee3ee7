"""The plain Python order book: the baseline column of every table (docs/performance.md).

This is the book people write first and put perpdex next to: a `SortedDict` of price -> `deque`
per side, a dict id -> order, price-time matching, limit (GTC or IOC) and market orders, cancels
and amends, and the fills counted as (price, qty, maker id, taker id) tuples. No accounts, no
events, no margin, no price band, no self-trade prevention: the workloads in bench/workloads.py
are built so that none of those change a fill (buyers and sellers are different accounts, every
price is well inside the band, the collateral is ample), so perpdex and this book make the same
fills and the comparison is of the same matching work.

Costs: `limit` that rests O(log L) (L price levels); a match O(levels crossed + fills); `cancel`
O(1), or O(log L) when it empties a level (the cancelled order stays in its deque, dead, until the
walk meets it or its level goes); `amend` as a cancel and a limit unless it only shrinks.
"""
from __future__ import annotations

from collections import deque

from sortedcontainers import SortedDict


class Order:
    __slots__ = ("oid", "buy", "price", "qty")

    def __init__(self, oid, buy, price, qty):
        self.oid, self.buy, self.price, self.qty = oid, buy, price, qty


class Level(deque):
    """The FIFO queue at one price; `live` counts the orders not cancelled."""
    __slots__ = ("live",)


class PlainBook:
    def __init__(self):
        self.bids = SortedDict()          # price -> Level; best = last key
        self.asks = SortedDict()          # price -> Level; best = first key
        self.orders = {}                  # oid -> resting Order
        self.fills = []                   # (price, qty, maker oid, taker oid), in order

    # ---- commands --------------------------------------------------------------------------

    def limit(self, oid, buy, price, qty, ioc=False):
        """A limit order: trades what crosses, rests the rest (GTC) or drops it (IOC)."""
        qty = self._take(oid, buy, price, qty)
        if qty and not ioc:
            self._rest(Order(oid, buy, price, qty))

    def market(self, oid, buy, qty):
        """A market order: sweeps the other side until filled or empty; the rest is dropped."""
        self._take(oid, buy, None, qty)

    def cancel(self, oid):
        """Cancel a resting order; False if it is not resting."""
        o = self.orders.pop(oid, None)
        if o is None:
            return False
        o.qty = 0                                       # dead: the walk skips it
        side = self.bids if o.buy else self.asks
        level = side[o.price]
        level.live -= 1
        if not level.live:
            del side[o.price]
        return True

    def amend(self, oid, price, qty):
        """New price and/or remaining qty (None: unchanged). Shrinking in place keeps the
        order's place; anything else re-enters it at the back, where it may trade."""
        o = self.orders.get(oid)
        if o is None:
            return False
        price = o.price if price is None else price
        qty = o.qty if qty is None else qty
        if price == o.price and qty <= o.qty:
            o.qty = qty
            return True
        self.cancel(oid)
        self.limit(oid, o.buy, price, qty)
        return True

    # ---- inside ----------------------------------------------------------------------------

    def _rest(self, o):
        side = self.bids if o.buy else self.asks
        level = side.get(o.price)
        if level is None:
            level = side[o.price] = Level()
            level.live = 0
        level.append(o)
        level.live += 1
        self.orders[o.oid] = o

    def _take(self, oid, buy, limit, qty):
        """Match an incoming order against the other side; return the qty left."""
        side = self.asks if buy else self.bids
        fills, orders = self.fills, self.orders
        while qty and side:
            price, level = side.peekitem(0 if buy else -1)
            if limit is not None and (price > limit if buy else price < limit):
                break
            while qty and level:
                m = level[0]
                if not m.qty:                            # cancelled earlier
                    level.popleft()
                    continue
                q = qty if qty < m.qty else m.qty
                fills.append((price, q, m.oid, oid))
                qty -= q
                m.qty -= q
                if not m.qty:
                    level.popleft()
                    del orders[m.oid]
                    level.live -= 1
            if not level.live:
                del side[price]
        return qty

    # ---- views (tests) ---------------------------------------------------------------------

    def depth(self):
        """(bids, asks) as [(price, total qty)], best first."""
        def agg(side, keys):
            return [(p, sum(o.qty for o in side[p])) for p in keys]
        return agg(self.bids, reversed(self.bids)), agg(self.asks, self.asks)
