"""A plain pure-Python reference of the matching rules, for differential tests and benchmarks.

Written for clarity, straight from the contract, docs/contract.md: a SortedDict of price levels per
side, each a deque of orders, and a dict of orders. It knows nothing of the Cython core and shares
only the contract (engine.messages), the market config conversion and the state digest, so that
the core's `state_hash` can be checked against it. Events are plain dicts, keyed as the contract.
"""
from __future__ import annotations

from collections import deque

from sortedcontainers import SortedDict

from perpdex.engine import messages as M
from perpdex.engine.markets import MAX_PRICE, MAX_QTY, MarketConfigError, market_spec
from perpdex.engine.statehash import digest

PPM = 1_000_000
NS = 1_000_000_000
IMPACT_NOTIONAL = 10_000_000_000
PRICE_FIELDS = {
    "limit": ("price",), "market": (), "stop_market": ("trigger_price",),
    "stop_limit": ("price", "trigger_price"), "take_profit_market": ("trigger_price",),
    "take_profit_limit": ("price", "trigger_price"),
}


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def positive_int(v, limit):
    return v if type(v) is int and 0 < v <= limit else None


class Order:
    __slots__ = ("oid", "account", "market", "cid", "side", "kind", "price", "qty", "tif", "stp",
                 "reduce_only", "resting", "trigger_price", "armed")

    def __init__(self, **kw):
        self.trigger_price = None
        for k, v in kw.items():
            setattr(self, k, v)
        self.resting = False
        self.armed = False

    def fires_up(self):
        """Does it fire when the mark rises to its trigger (a buy stop, a sell take-profit)?"""
        return self.kind.startswith("stop") == (self.side == "buy")


class Market:
    def __init__(self, spec):
        self.spec = spec
        self.index = self.mark = None
        self.last_oracle_ts = 0
        self.next_funding = self.premium_sum = self.premium_n = 0
        self.bids = SortedDict()      # price -> deque[Order]; best = last key
        self.asks = SortedDict()      # price -> deque[Order]; best = first key

    def side_book(self, side):
        return self.bids if side == "buy" else self.asks

    def best(self, side):
        """Best price on a side, or None."""
        book = self.side_book(side)
        if not book:
            return None
        return book.peekitem(-1)[0] if side == "buy" else book.peekitem(0)[0]

    def band_high(self, ref=None):
        return (self.mark if ref is None else ref) * (PPM + self.spec.price_band_ppm) // PPM

    def band_low(self, ref=None):
        return ceil_div((self.mark if ref is None else ref) * (PPM - self.spec.price_band_ppm), PPM)

    def out_of_band(self, side, price, ref=None):
        return price > self.band_high(ref) if side == "buy" else price < self.band_low(ref)


class Rejection(Exception):
    def __init__(self, reason):
        self.reason = reason


class ReferenceEngine:
    def __init__(self):
        self.markets: dict[str, Market] = {}
        self.orders: dict[tuple, Order] = {}          # (account, cid) -> open order
        self.by_account: dict = {}                    # account -> {cid: order}, acceptance order
        self.counts: dict[tuple, int] = {}            # (account, market) -> open orders
        self.armed: dict = {}                         # oid -> trigger order waiting for its mark
        self.positions: dict[tuple, list] = {}        # (account, market) -> [size, cost, realised]
        self.collateral: dict = {}                    # account -> cash
        self.deposits = self.fees = 0
        self.clock = 0
        self.seq = 0
        self.next_oid = 1
        self.out: list[dict] = []

    # ---- plumbing --------------------------------------------------------------------------

    def execute(self, cmd) -> list[dict]:
        self.out = []
        if cmd.ts > self.clock:
            self.clock = cmd.ts
        tag = type(cmd).__struct_config__.tag
        handler = getattr(self, "_cancel_cmd" if tag == "cancel" else "_" + tag, None)
        if handler is None:       # margin commands: the reference models matching and money
            raise NotImplementedError(f"the reference engine does not model {tag}")
        try:
            handler(cmd)
        except Rejection as r:
            self._reject(cmd, tag, r.reason)
        return self.out

    def _emit(self, type_, **fields):
        self.seq += 1
        ev = {"type": type_, "seq": self.seq, "ts": self.clock}
        ev.update(fields)
        self.out.append(ev)

    def _reject(self, cmd, tag, reason):
        fields = {"command": tag}
        for k in ("account", "market", "cid"):
            v = getattr(cmd, k, None)
            if v is not None:
                fields[k] = v
        fields["reason"] = reason
        fields["detail"] = "-"
        self._emit("rejected", **fields)

    def position(self, account, market):
        return self.positions.setdefault((account, market), [0, 0, 0])

    def reducible(self, account, market, side):
        s = self.position(account, market)[0]
        if side == "buy":
            return -s if s < 0 else 0
        return s if s > 0 else 0

    def open_orders(self, account, market):
        return self.counts.get((account, market), 0)

    # ---- commands ----------------------------------------------------------------------------

    def _create_market(self, cmd):
        if cmd.market in self.markets:
            raise Rejection("market_exists")
        try:
            self.markets[cmd.market] = Market(market_spec(cmd))
        except MarketConfigError:
            raise Rejection("invalid_market")

    def _clock(self, cmd):
        pass

    def _oracle(self, cmd):
        mk = self.markets.get(cmd.market)
        if mk is None:
            raise Rejection("unknown_market")
        price = positive_int(cmd.price, MAX_PRICE)
        if price is None:
            raise Rejection("invalid_price")
        bid, ask = mk.best("buy"), mk.best("sell")
        mk.index = price
        mk.mark = sorted([price, price if bid is None else bid, price if ask is None else ask])[1]
        mk.last_oracle_ts = self.clock
        interval = mk.spec.funding_interval_s * NS
        if mk.next_funding == 0:
            mk.next_funding = (self.clock // interval + 1) * interval
        self._emit("mark", market=cmd.market, index=price, mark=mk.mark)
        bid = self._impact(mk, reversed(mk.bids.items()))
        ask = self._impact(mk, mk.asks.items())
        num, den = (bid + ask - 2 * price) * PPM, 2 * price
        mk.premium_sum += num // den if num >= 0 else -(-num // den)
        mk.premium_n += 1
        self._fire(mk, cmd.market)

    def _impact(self, mk, levels):
        """Average price of trading IMPACT_NOTIONAL into these levels (the index if too thin)."""
        mult = mk.spec.multiplier
        notional = lots = 0
        for price, orders in levels:
            qty = sum(o.qty for o in orders)
            if notional + qty * price * mult >= IMPACT_NOTIONAL:
                take = (IMPACT_NOTIONAL - notional) // (price * mult)
                lots += take
                notional += take * price * mult
                return price if lots == 0 else notional // (lots * mult)
            notional += qty * price * mult
            lots += qty
        return mk.index

    def _new_order(self, cmd):
        mk = self.markets.get(cmd.market)
        if mk is None:
            raise Rejection("unknown_market")
        qty = positive_int(cmd.qty, MAX_QTY)
        if qty is None:
            raise Rejection("invalid_qty")
        if qty < mk.spec.min_qty:
            raise Rejection("below_min_qty")
        for field in PRICE_FIELDS[cmd.kind]:
            if positive_int(getattr(cmd, field), MAX_PRICE) is None:
                raise Rejection("invalid_price")
        trigger = cmd.kind not in ("limit", "market")
        if (cmd.account, cmd.cid) in self.orders:
            raise Rejection("duplicate_cid")
        if mk.mark is None:
            raise Rejection("no_mark_price")
        market_order = cmd.kind.endswith("market")
        tif = "ioc" if market_order else cmd.tif
        price = limit = None if market_order else cmd.price
        if cmd.kind == "market":
            limit = mk.band_high() if cmd.side == "buy" else mk.band_low()
        elif cmd.kind == "limit" and mk.out_of_band(cmd.side, price):
            raise Rejection("price_out_of_band")
        elif trigger and not market_order and mk.out_of_band(cmd.side, price, cmd.trigger_price):
            raise Rejection("price_out_of_band")
        size = self.position(cmd.account, cmd.market)[0]
        if cmd.reduce_only and self.reducible(cmd.account, cmd.market, cmd.side) == 0:
            raise Rejection("reduce_only_would_increase")
        max_age = mk.spec.oracle_max_age_s * NS
        grows = size == 0 or (size > 0) == (cmd.side == "buy") or qty > abs(size)
        if max_age and self.clock - mk.last_oracle_ts > max_age and not cmd.reduce_only and grows:
            raise Rejection("oracle_stale")
        if (tif in ("gtc", "alo") or trigger) and \
                self.open_orders(cmd.account, cmd.market) >= mk.spec.max_orders_per_account:
            raise Rejection("too_many_orders")
        if tif == "alo" and not trigger and self._crosses(mk, cmd.side, price):
            raise Rejection("post_only_would_cross")

        o = Order(oid=self.next_oid, account=cmd.account, market=cmd.market, cid=cmd.cid,
                  side=cmd.side, kind=cmd.kind, price=price, qty=qty, tif=tif, stp=cmd.stp,
                  reduce_only=cmd.reduce_only, trigger_price=cmd.trigger_price if trigger else None)
        self.next_oid += 1
        self.orders[(o.account, o.cid)] = o
        self.by_account.setdefault(o.account, {})[o.cid] = o
        self.counts[(o.account, o.market)] = self.counts.get((o.account, o.market), 0) + 1
        self._emit("order_accepted", account=o.account, market=o.market, cid=o.cid, oid=o.oid,
                   side=o.side, kind=o.kind, price=price, qty=qty, tif=tif,
                   reduce_only=o.reduce_only)
        if trigger:
            o.armed = True
            self.armed[o.oid] = o
            return
        if tif == "fok" and not self._fok_fillable(mk, o, limit):
            self._cancel(o, "fok_unfilled")
            return
        self._finish(mk, o, self._match(mk, o, limit))

    def _fire(self, mk, name):
        mark = mk.mark
        fired = sorted((o for o in self.armed.values() if o.market == name and (
            o.trigger_price <= mark if o.fires_up() else o.trigger_price >= mark)),
            key=lambda o: o.oid)
        for o in fired:
            o.armed = False
            del self.armed[o.oid]
            self._emit("order_triggered", account=o.account, market=name, cid=o.cid, oid=o.oid,
                       trigger_price=o.trigger_price, mark=mark)
            self._enter(mk, o)

    def _enter(self, mk, o):
        """A triggered order enters as a market or limit order, checked at this mark."""
        if o.kind.endswith("market"):
            limit = mk.band_high() if o.side == "buy" else mk.band_low()
        else:
            limit = o.price
            if mk.out_of_band(o.side, o.price):
                return self._cancel(o, "price_out_of_band")
        if o.reduce_only and self.reducible(o.account, o.market, o.side) == 0:
            return self._cancel(o, "reduce_only")
        if o.tif == "alo" and self._crosses(mk, o.side, o.price):
            return self._cancel(o, "post_only_would_cross")
        if o.tif == "fok" and not self._fok_fillable(mk, o, limit):
            return self._cancel(o, "fok_unfilled")
        self._finish(mk, o, self._match(mk, o, limit))

    def _crosses(self, mk, side, price):
        best = mk.best("sell" if side == "buy" else "buy")
        if best is None:
            return False
        return price >= best if side == "buy" else price <= best

    def _levels(self, mk, side, limit):
        """The opposite side's levels that `side` at `limit` can reach, best first."""
        if side == "buy":
            book = mk.asks
            prices = [p for p in book.irange(maximum=limit)]
        else:
            book = mk.bids
            prices = [p for p in book.irange(minimum=limit, reverse=True)]
        return book, prices

    def _fok_fillable(self, mk, o, limit):
        book, prices = self._levels(mk, o.side, limit)
        need = o.qty
        taker_cap = self.reducible(o.account, o.market, o.side) if o.reduce_only else None
        used = {}
        opp = "sell" if o.side == "buy" else "buy"
        for p in prices:
            for m in book[p]:
                if m.account == o.account:
                    if o.stp != "cancel_maker":
                        return False
                    continue
                q = m.qty
                if m.reduce_only:
                    cap = self.reducible(m.account, m.market, opp) - used.get(m.account, 0)
                    q = min(q, max(cap, 0))
                if taker_cap is not None:
                    q = min(q, taker_cap)
                if q > 0:
                    used[m.account] = used.get(m.account, 0) + q
                    need -= q
                    if taker_cap is not None:
                        taker_cap -= q
                    if need <= 0:
                        return True
        return False

    def _match(self, mk, o, limit):
        """Returns None, "self_trade" or "reduce_only" (why the walk stopped early)."""
        opp = "sell" if o.side == "buy" else "buy"
        book = mk.side_book(opp)
        while o.qty > 0:
            best = mk.best(opp)
            if best is None or (o.side == "buy" and best > limit) or \
                    (o.side == "sell" and best < limit):
                return None
            m = book[best][0]
            if m.account == o.account:
                if o.stp == "cancel_taker":
                    return "self_trade"
                self._cancel(m, "self_trade")
                if o.stp == "cancel_both":
                    return "self_trade"
                continue
            q = min(o.qty, m.qty)
            if o.reduce_only:
                cap = self.reducible(o.account, o.market, o.side)
                if cap == 0:
                    return "reduce_only"
                q = min(q, cap)
            if m.reduce_only:
                cap = self.reducible(m.account, m.market, opp)
                if cap == 0:
                    self._cancel(m, "reduce_only")
                    continue
                q = min(q, cap)
            self._fill(mk, o, m, q)
        return None

    def _trade(self, account, market, side, q, price, fee):
        """Position accounting: the closed part takes its (floored) share of the cost basis and
        realises PnL into cash; the rest opens at cost; the fee goes to the venue."""
        pos = self.position(account, market)
        mult = self.markets[market].spec.multiplier
        d = 1 if side == "buy" else -1
        size, cost = pos[0], pos[1]
        realised = 0
        if size and (size > 0) != (d > 0):
            close = min(q, abs(size))
            removed = cost * close // abs(size)
            realised = -d * close * price * mult - removed
            cost -= removed
            size += d * close
            q -= close
        size += d * q
        cost += d * q * price * mult
        pos[0], pos[1] = size, cost
        pos[2] += realised
        self.collateral[account] = self.collateral.get(account, 0) + realised - fee
        self.fees += fee

    def _deposit(self, cmd):
        if cmd.amount <= 0:
            raise Rejection("invalid_amount")
        self.collateral[cmd.account] = self.collateral.get(cmd.account, 0) + cmd.amount
        self.deposits += cmd.amount
        self._emit("balance", account=cmd.account, collateral=self.collateral[cmd.account],
                   reason="deposit")

    def _fill(self, mk, o, m, q):
        spec = mk.spec
        price = m.price
        notional = price * q * spec.multiplier
        o.qty -= q
        m.qty -= q
        tp = self.position(o.account, o.market)
        mp = self.position(m.account, m.market)
        t_before, m_before = tp[0], mp[0]
        taker_fee = ceil_div(notional * spec.taker_fee_ppm, PPM)
        maker_fee = ceil_div(notional * spec.maker_fee_ppm, PPM)
        self._trade(o.account, o.market, o.side, q, price, taker_fee)
        self._trade(m.account, m.market, m.side, q, price, maker_fee)
        self._emit("fill", market=o.market, price=price, qty=q, taker_side=o.side,
                   taker_account=o.account, taker_cid=o.cid, taker_oid=o.oid,
                   taker_remaining=o.qty, maker_account=m.account, maker_cid=m.cid,
                   maker_oid=m.oid, maker_remaining=m.qty,
                   taker_fee=taker_fee, maker_fee=maker_fee, liquidation=False)
        if m.qty == 0:
            self._remove(m)
        for acct, before, pos in ((m.account, m_before, mp), (o.account, t_before, tp)):
            if pos[0] == 0 or (pos[0] > 0) != (before > 0):
                self._sweep_reduce_only(acct, o.market)

    def _sweep_reduce_only(self, account, market):
        for r in [x for x in self.by_account[account].values() if x.market == market
                  and x.reduce_only and x.resting]:
            if self.reducible(account, market, r.side) == 0:
                self._cancel(r, "reduce_only")

    def _finish(self, mk, o, stop):
        if o.qty == 0:
            self._remove(o)
        elif stop is not None:
            self._cancel(o, stop)
        elif o.tif in ("ioc", "fok"):
            self._cancel(o, "ioc_remainder")
        elif o.reduce_only and self.reducible(o.account, o.market, o.side) == 0:
            self._cancel(o, "reduce_only")
        else:
            mk.side_book(o.side).setdefault(o.price, deque()).append(o)
            o.resting = True

    def _remove(self, o):
        if o.resting:
            book = self.markets[o.market].side_book(o.side)
            level = book[o.price]
            level.remove(o)
            if not level:
                del book[o.price]
            o.resting = False
        # Orders are keyed by (account, cid); dict order is acceptance order, as in the core.
        del self.orders[(o.account, o.cid)]
        self.armed.pop(o.oid, None)
        del self.by_account[o.account][o.cid]
        self.counts[(o.account, o.market)] -= 1

    def _cancel(self, o, reason):
        self._emit("order_cancelled", account=o.account, market=o.market, cid=o.cid, oid=o.oid,
                   remaining=o.qty, reason=reason)
        self._remove(o)

    def _find(self, cmd):
        mk = self.markets.get(cmd.market)
        if mk is None:
            raise Rejection("unknown_market")
        o = self.orders.get((cmd.account, cmd.cid))
        if o is None or o.market != cmd.market or not (o.resting or o.armed):
            raise Rejection("unknown_order")
        return mk, o

    def _cancel_cmd(self, cmd):
        mk, o = self._find(cmd)
        self._cancel(o, "user")

    def _cancel_all(self, cmd):
        if cmd.market is not None and cmd.market not in self.markets:
            raise Rejection("unknown_market")
        for o in [x for x in self.by_account.get(cmd.account, {}).values()
                  if cmd.market is None or x.market == cmd.market]:
            self._cancel(o, "user")

    def _amend(self, cmd):
        mk, o = self._find(cmd)
        qty, price = o.qty, o.price
        if cmd.qty is not None:
            qty = positive_int(cmd.qty, MAX_QTY)
            if qty is None:
                raise Rejection("invalid_qty")
            if qty < mk.spec.min_qty:
                raise Rejection("below_min_qty")
        if cmd.price is not None and not o.kind.endswith("market"):
            price = positive_int(cmd.price, MAX_PRICE)
            if price is None:
                raise Rejection("invalid_price")
        if o.armed:
            if price != o.price and mk.out_of_band(o.side, price, o.trigger_price):
                raise Rejection("price_out_of_band")
            o.price, o.qty = price, qty
            self._emit("order_amended", account=o.account, market=o.market, cid=o.cid,
                       oid=o.oid, price=price, qty=qty, priority_kept=True)
            return
        if price != o.price:
            if o.side == "buy" and price > mk.band_high():
                raise Rejection("price_out_of_band")
            if o.side == "sell" and price < mk.band_low():
                raise Rejection("price_out_of_band")
        max_age = mk.spec.oracle_max_age_s * NS
        if max_age and self.clock - mk.last_oracle_ts > max_age and not o.reduce_only \
                and qty > o.qty:
            raise Rejection("oracle_stale")
        if o.tif == "alo" and self._crosses(mk, o.side, price):
            raise Rejection("post_only_would_cross")
        if price == o.price and qty <= o.qty:
            o.qty = qty
            self._emit("order_amended", account=o.account, market=o.market, cid=o.cid,
                       oid=o.oid, price=price, qty=qty, priority_kept=True)
            return
        book = mk.side_book(o.side)
        book[o.price].remove(o)
        if not book[o.price]:
            del book[o.price]
        o.resting = False
        o.price, o.qty = price, qty
        self._emit("order_amended", account=o.account, market=o.market, cid=o.cid, oid=o.oid,
                   price=price, qty=qty, priority_kept=False)
        self._finish(mk, o, self._match(mk, o, price))

    def _state_hash(self, cmd):
        self._emit("state_hash", hash=digest(self.state()))

    def state(self):
        markets = []
        for name in sorted(self.markets):
            mk = self.markets[name]
            sides = []
            for book, rev in ((mk.bids, True), (mk.asks, False)):
                orders = []
                for p in (reversed(book.keys()) if rev else book.keys()):
                    for o in book[p]:
                        orders.append([o.oid, o.account, o.cid, o.price, o.qty, o.kind, o.tif,
                                       o.stp, o.reduce_only])
                sides.append(orders)
            armed = [[o.oid, o.account, o.cid, o.kind, o.side, o.trigger_price, o.price, o.qty,
                      o.tif, o.stp, o.reduce_only]
                     for o in sorted(self.armed.values(), key=lambda o: o.oid)
                     if o.market == name]
            markets.append([mk.spec.hash_record(), mk.index, mk.mark, mk.last_oracle_ts,
                            sides[0], sides[1],
                            [mk.next_funding, mk.premium_sum, mk.premium_n, 0], armed])
        def order(k):
            return (1, k) if type(k) is str else (0, k)

        positions = []
        for (acct, name) in sorted(self.positions, key=lambda k: (order(k[0]), k[1])):
            size, cost, realised = self.positions[(acct, name)]
            if size or cost or realised:
                positions.append([acct, name, size, cost, 0, False, 0, 0, False, realised])
        accounts = [[a, c, False] for a, c in sorted(self.collateral.items(),
                                                     key=lambda x: order(x[0])) if c]
        return {"clock": self.clock, "next_oid": self.next_oid, "markets": markets,
                "accounts": accounts, "positions": positions,
                "totals": [self.deposits, 0, self.fees]}

