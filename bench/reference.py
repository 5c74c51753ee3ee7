"""A plain pure-Python reference of the whole contract, for differential tests and benchmarks.

Written for clarity, straight from docs/contract.md: plain objects (markets, accounts,
positions, orders), a SortedDict of price levels per side, and full scans where the core keeps
indexes (every margin check sums the scope's positions; a liquidation pass looks at every
position of the market). It knows nothing of the Cython core and shares only the contract
(engine.messages), the market config conversion, the sentences of rejections (engine.details)
and the state digest, so that the core's events, `details` and `state_hash` can be checked
against it. Events are plain dicts, keyed as the contract.

What it models: matching (limit, market, trigger kinds, tif, STP, reduce-only, amend, the band),
accounts and money (deposit, withdraw, exact cost basis, fees and their rounding), margin
(cross and isolated scopes, tiers, leverage, the placement and pre-fill checks, transfers),
funding (premium samples at impact prices, boundaries, long clock jumps, lazy settlement),
margin calls, liquidation (who, in which order and how many per update, sizing, the book, the
backstop, both ADL queues, covering a deficit), the fund's own deficit, `query_account`, `audit`
and the canonical state.

Issue 19's rules (one check for every fill, no rebate on a liquidation's fills, ADL bounded in
every queue, the fund's own deficit deleveraged then socialised) are switches of `Rules`, on by
default, so a differential test can hold the reference to a core built before them.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from fractions import Fraction

from sortedcontainers import SortedDict

from perpdex.engine.details import bad_price, bad_qty, below_min, no_market, no_order, show
from perpdex.engine.markets import MAX_MONEY, MarketConfigError, market_spec
from perpdex.engine.statehash import digest

PPM = 1_000_000
NS = 1_000_000_000
IMPACT_NOTIONAL = 10_000_000_000
FUND = "insurance"
PRICE_FIELDS = {
    "limit": ("price",), "market": (), "stop_market": ("trigger_price",),
    "stop_limit": ("price", "trigger_price"), "take_profit_market": ("trigger_price",),
    "take_profit_limit": ("price", "trigger_price"),
}


@dataclass(frozen=True)
class Rules:
    """Issue 19's rules, each a switch (all on: the contract as it is being written)."""
    shrink_check: bool = True      # R1: a fill that shrinks a position must leave equity >= 0
    no_liq_rebate: bool = True     # R3: a liquidation's maker fee is max(its fee, 0)
    adl_bound_all: bool = True     # R4: every ADL queue bounded by the position's equity
    fund_receivable: bool = True   # the fund's equity counts the funding owed to it, net
    fund_deficit: bool = True      # R5: the fund's deficit deleveraged, then socialised


BEFORE_ISSUE_19 = Rules(False, False, False, False, False)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def trunc_div(a: int, b: int) -> int:
    """a / b toward zero (b > 0)."""
    return a // b if a >= 0 else -(-a // b)


def positive_int(v, limit):
    return v if type(v) is int and 0 < v <= limit else None


def account_order(key):
    """Accounts sort integers first, then strings."""
    return (1, key) if type(key) is str else (0, key)


def other(side):
    return "sell" if side == "buy" else "buy"


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


class Position:
    """One account's position in one market, with what margin needs of it."""
    __slots__ = ("account", "market", "size", "cost", "leverage", "isolated", "iso_margin",
                 "realised", "funding_last", "margin_call", "open_buy", "open_sell", "born")

    def __init__(self, account, market, funding_last, born):
        self.account, self.market, self.born = account, market, born
        self.size = self.cost = self.leverage = self.iso_margin = self.realised = 0
        self.open_buy = self.open_sell = 0          # resting quantities
        self.isolated = self.margin_call = False
        self.funding_last = funding_last


class Account:
    __slots__ = ("key", "cash", "margin_call", "positions")

    def __init__(self, key):
        self.key = key
        self.cash = 0
        self.margin_call = False
        self.positions: dict[str, Position] = {}     # by market, in creation order


class Scope:
    """A margin scope: an account's cross pool (pos None) or one isolated position."""
    __slots__ = ("account", "pos")

    def __init__(self, account: Account, pos: Position | None):
        self.account, self.pos = account, pos

    def positions(self):
        if self.pos is not None:
            return [self.pos]
        return [p for p in self.account.positions.values() if not p.isolated]

    def flag_holder(self):
        return self.pos if self.pos is not None else self.account

    def add_cash(self, amount):
        if self.pos is not None:
            self.pos.iso_margin += amount
        else:
            self.account.cash += amount


class Market:
    def __init__(self, spec):
        self.spec = spec
        self.name = spec.name
        self.tiers = spec.tiers or ((2**63 - 1, spec.imf_ppm, spec.mmf_ppm, 0, 0),)
        self.tiers = [(t if type(t) is tuple else
                       (t.max_notional, t.imf_ppm, t.mmf_ppm, t.imf_deduction, t.mmf_deduction))
                      for t in self.tiers]
        self.index = self.mark = None
        self.last_oracle_ts = 0
        self.next_funding = self.premium_sum = self.premium_n = self.cum_funding = 0
        self.liq_pending = False
        self.waiting = []                             # scopes queued by the last pass
        self.bids = SortedDict()      # price -> deque[Order]; best = last key
        self.asks = SortedDict()      # price -> deque[Order]; best = first key
        self.positions: list[Position] = []           # in creation order

    @property
    def mark0(self):
        return self.mark or 0

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

    def band_sentence(self, side, price, ref, what):
        if side == "buy":
            return (f"buy price {price} is above the band limit {self.band_high(ref)} "
                    f"({what} {ref})")
        return f"sell price {price} is below the band limit {self.band_low(ref)} ({what} {ref})"

    # ---- margin arithmetic (docs/contract.md, "Margin") -------------------------------------

    def requirement(self, notional, initial, leverage=0):
        """The continuous tiered requirement of a notional: ceil(N * rate_k / 1e6) - deduction_k
        in the first tier k whose max_notional >= N (else the last); an initial one at least
        ceil(N / leverage) where a leverage is set; never below zero."""
        tier = next((t for t in self.tiers if t[0] >= notional), self.tiers[-1])
        _, imf, mmf, imf_d, mmf_d = tier
        if initial:
            req = ceil_div(notional * imf, PPM) - imf_d
            if leverage:
                req = max(req, ceil_div(notional, leverage))
        else:
            req = ceil_div(notional * mmf, PPM) - mmf_d
        return max(req, 0)

    def initial(self, size, buys, sells, leverage):
        worst = max(abs(size + buys), abs(size - sells))
        return self.requirement(worst * self.mark0 * self.spec.multiplier, True, leverage)

    def maintenance(self, size):
        return self.requirement(abs(size) * self.mark0 * self.spec.multiplier, False)

    def unrealised(self, p: Position):
        return p.size * self.mark0 * self.spec.multiplier - p.cost

    def unsettled(self, p: Position):
        """Funding owed (> 0) or owed to it (< 0) since it last settled: a payment rounds up,
        a receipt down."""
        x = p.size * (self.cum_funding - p.funding_last)
        return ceil_div(x, PPM) if x > 0 else -((-x) // PPM)


class Rejection(Exception):
    def __init__(self, reason, detail="-", **fields):
        self.reason, self.detail, self.fields = reason, detail, fields


class ReferenceEngine:
    def __init__(self, margin: bool = True, rules: Rules = Rules()):
        self.margin = margin
        self.rules = rules
        self.markets: dict[str, Market] = {}
        self.accounts: dict = {}                      # key -> Account
        self.orders: dict[tuple, Order] = {}          # (account, cid) -> open order
        self.by_account: dict = {}                    # account -> {cid: order}, acceptance order
        self.counts: dict[tuple, int] = {}            # (account, market) -> open orders
        self.armed: dict = {}                         # oid -> trigger order waiting for its mark
        self.deposits = self.withdrawals = self.fees = 0
        self.clock = 0
        self.seq = 0
        self.next_oid = 1
        self.n_positions = 0
        self.liquidating = False
        self.liq_qty = self.liq_notional = 0
        self.deleveraged: list[Scope] = []
        self.adl_cache: dict = {}                     # (market, side) -> the pass's ADL queues
        self.reached: dict[str, int] = {}             # what happened, for tests to report
        self.out: list[dict] = []

    # ---- plumbing --------------------------------------------------------------------------

    def execute(self, cmd) -> list[dict]:
        self.out = []
        tag = type(cmd).__struct_config__.tag
        handler = getattr(self, "_cancel_cmd" if tag == "cancel" else "_" + tag)
        try:
            if not self._jump_fits(cmd.ts):
                raise Rejection("invalid_command", _too_far(cmd.ts), bare=True)
            self._advance(cmd.ts)
            handler(cmd)
        except Rejection as r:
            self._reject(cmd, tag, r)
        return self.out

    def _emit(self, type_, **fields):
        self.seq += 1
        ev = {"type": type_, "seq": self.seq, "ts": self.clock}
        ev.update(fields)
        self.out.append(ev)

    def _reject(self, cmd, tag, r):
        fields = {"command": tag}
        for k in ("account", "market", "cid"):
            v = getattr(cmd, k, None)
            if v is not None and not r.fields.get("bare") and k not in r.fields.get("omit", ()):
                fields[k] = v
        fields["reason"] = r.reason
        fields["detail"] = r.detail
        self._emit("rejected", **fields)

    def note(self, what):
        self.reached[what] = self.reached.get(what, 0) + 1

    def account(self, key) -> Account:
        a = self.accounts.get(key)
        if a is None:
            a = self.accounts[key] = Account(key)
        return a

    def position(self, key, market) -> Position:
        """The account's position in the market, made on first use (the core makes it at the
        same steps, and its funding mark is the market's index then)."""
        acct = self.account(key)
        p = acct.positions.get(market)
        if p is None:
            mk = self.markets[market]
            p = Position(key, market, mk.cum_funding, self.n_positions)
            self.n_positions += 1
            acct.positions[market] = p
            mk.positions.append(p)
        return p

    def peek(self, key, market) -> Position | None:
        a = self.accounts.get(key)
        return a.positions.get(market) if a is not None else None

    def size(self, key, market):
        p = self.peek(key, market)
        return p.size if p is not None else 0

    def reducible(self, account, market, side):
        s = self.size(account, market)
        if side == "buy":
            return -s if s < 0 else 0
        return s if s > 0 else 0

    def open_orders(self, account, market):
        return self.counts.get((account, market), 0)

    # ---- scopes: equity and requirements --------------------------------------------------------

    def scope(self, p: Position) -> Scope:
        return Scope(self.accounts[p.account], p if p.isolated else None)

    def cross(self, key) -> Scope:
        return Scope(self.account(key), None)

    def equity(self, sc: Scope):
        total = sc.pos.iso_margin if sc.pos is not None else sc.account.cash
        fund = sc.pos is None and sc.account.key == FUND and self.rules.fund_receivable
        if fund:
            total += self.fund_receivable()
        for p in sc.positions():
            if p.size:
                mk = self.markets[p.market]
                # the fund settles its own funding with itself (cash to cash): not a debt
                total += mk.unrealised(p) - (0 if fund else mk.unsettled(p))
        return total

    def fund_receivable(self):
        """What the positions owe the fund, net, through lazy settlement (the receivers may
        have taken their funding from its cash while the payers have not paid yet), floored per
        market: a lower bound, since each settlement rounds in the fund's favour."""
        total = 0
        for mk in self.markets.values():
            owed = sum(p.size * (mk.cum_funding - p.funding_last) for p in mk.positions
                       if p.account != FUND)
            total += owed // PPM
        return total

    def initial_margin(self, sc: Scope, override=None):
        """The scope's initial requirement; `override` = (market, size, buys, sells) takes that
        market's position as it would be."""
        total = 0
        for p in sc.positions():
            mk = self.markets[p.market]
            if override is not None and override[0] == p.market:
                total += mk.initial(*override[1:], p.leverage)
            elif p.size or p.open_buy or p.open_sell:
                total += mk.initial(p.size, p.open_buy, p.open_sell, p.leverage)
        return total

    def maintenance_margin(self, sc: Scope):
        return sum(self.markets[p.market].maintenance(p.size) for p in sc.positions() if p.size)

    # ---- commands ----------------------------------------------------------------------------

    def _create_market(self, cmd):
        if cmd.market in self.markets:
            raise Rejection("market_exists", f"market {cmd.market} already exists")
        try:
            self.markets[cmd.market] = Market(market_spec(cmd))
        except MarketConfigError as e:
            raise Rejection("invalid_market", str(e))

    def _clock(self, cmd):
        pass

    def _market(self, name):
        mk = self.markets.get(name)
        if mk is None:
            raise Rejection("unknown_market", no_market(name))
        return mk

    def _oracle(self, cmd):
        mk = self._market(cmd.market)
        price = positive_int(cmd.price, mk.spec.max_price)
        if price is None:
            raise Rejection("invalid_price", bad_price("price", cmd.price, mk.spec.max_price))
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
        mk.premium_sum += trunc_div((bid + ask - 2 * price) * PPM, 2 * price)
        mk.premium_n += 1
        self._fire(mk, cmd.market)
        if self.margin:
            self._liquidation_pass(mk, calls=True)

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

    # ---- time and funding (docs/contract.md, "Funding") ---------------------------------------

    def _jump_fits(self, ts):
        """Could some position owe more than MAX_MONEY in funding after a jump to `ts`?"""
        for mk in self.markets.values():
            interval = mk.spec.funding_interval_s * NS
            if not mk.next_funding or ts < mk.next_funding + interval:
                continue
            k = (ts - mk.next_funding) // interval + 1
            move = k * mk.index * mk.spec.multiplier * mk.spec.funding_cap_ppm
            for p in mk.positions:
                if p.size and abs(mk.cum_funding - p.funding_last) + move > \
                        MAX_MONEY * PPM // abs(p.size):
                    return False
        return True

    def _advance(self, ts):
        """The clock becomes max(clock, ts); every funding boundary passed is applied (markets
        in creation order, oldest first), each followed by a liquidation pass; a pass that hit
        its bound goes on."""
        if ts <= self.clock:
            return
        self.clock = ts
        for mk in self.markets.values():
            while mk.next_funding and self.clock >= mk.next_funding:
                self._boundary(mk)
                if self.margin:
                    self._liquidation_pass(mk, calls=False)
            if mk.liq_pending and self.margin:
                self._drain(mk)

    def _boundary(self, mk):
        spec = mk.spec
        interval = spec.funding_interval_s * NS
        k = 1 if mk.premium_n else (self.clock - mk.next_funding) // interval + 1
        mean = trunc_div(mk.premium_sum, mk.premium_n) if mk.premium_n else 0
        rate = mean + max(-500, min(500, spec.interest_ppm - mean))
        rate = max(-spec.funding_cap_ppm, min(spec.funding_cap_ppm, rate))
        mk.cum_funding += k * mk.index * spec.multiplier * rate
        mk.premium_sum = mk.premium_n = 0
        ev = dict(market=mk.name, rate_ppm=rate, index_price=mk.index)
        if k != 1:
            ev["intervals"] = k
            self.note("funding jump")
        self._emit("funding", **ev)
        self.note("funding")
        mk.next_funding += k * interval

    def _settle(self, p: Position):
        """Lazy settlement: the position's unsettled funding moves between its scope's cash and
        the insurance fund (a `balance` event), before the position changes."""
        mk = self.markets[p.market]
        if p.funding_last == mk.cum_funding:
            return
        amount = mk.unsettled(p)
        p.funding_last = mk.cum_funding
        if amount == 0:
            return
        fund = self.account(FUND)
        self.scope(p).add_cash(-amount)
        fund.cash += amount
        self._emit("balance", account=p.account, collateral=self.accounts[p.account].cash,
                   reason="funding")

    # ---- accounts and money ----------------------------------------------------------------

    @staticmethod
    def _amount(cmd):
        if not 0 < cmd.amount <= MAX_MONEY:
            raise Rejection("invalid_amount", f"amount must be a positive number of quote units "
                                              f"up to {MAX_MONEY}, got {cmd.amount}")
        return cmd.amount

    def _deposit(self, cmd):
        amount = self._amount(cmd)
        a = self.accounts.get(cmd.account)
        if self.deposits + amount > MAX_MONEY or (a is not None and a.cash + amount > MAX_MONEY):
            what = ("the venue's total deposits" if self.deposits + amount > MAX_MONEY
                    else "the account's balance")
            raise Rejection("invalid_amount", f"a deposit of {amount} would take {what} past the "
                                              f"largest amount, {MAX_MONEY} quote units")
        a = self.account(cmd.account)
        a.cash += amount
        self.deposits += amount
        self._emit("balance", account=cmd.account, collateral=a.cash, reason="deposit")

    def _withdraw(self, cmd):
        amount = self._amount(cmd)
        a = self.accounts.get(cmd.account)
        if a is None:
            raise Rejection("insufficient_collateral", "no collateral to withdraw")
        if cmd.account == FUND:
            raise Rejection("insufficient_collateral", "the insurance fund cannot be withdrawn")
        sc = self.cross(cmd.account)
        im, eq = self.initial_margin(sc), self.equity(sc)
        if amount > a.cash or eq - amount < im:
            raise Rejection("insufficient_collateral",
                            f"withdrawing {amount} would leave equity {eq - amount} against an "
                            f"initial margin of {im} (collateral {a.cash})")
        a.cash -= amount
        self.withdrawals += amount
        self._emit("balance", account=cmd.account, collateral=a.cash, reason="withdraw")

    def _set_leverage(self, cmd):
        mk = self._market(cmd.market)
        top = PPM // mk.tiers[0][1]
        if not 1 <= cmd.leverage <= top:
            raise Rejection("invalid_leverage", f"leverage must be between 1 and {top} in "
                                                f"{cmd.market}, got {cmd.leverage}")
        p = self.position(cmd.account, cmd.market)
        old = p.leverage
        p.leverage = cmd.leverage
        if self.margin and mk.mark is not None and (cmd.leverage < old or old == 0):
            sc = self.scope(p)
            im, eq = self.initial_margin(sc), self.equity(sc)
            if im > eq and (p.size or p.open_buy or p.open_sell):
                p.leverage = old
                raise Rejection("insufficient_margin", f"at {cmd.leverage}x the initial margin "
                                                       f"would be {im}, above the equity of {eq}")

    def _set_margin_mode(self, cmd):
        self._market(cmd.market)
        want = cmd.mode == "isolated"
        p = self.position(cmd.account, cmd.market)
        if p.isolated == want:
            return
        n = self.open_orders(cmd.account, cmd.market)
        if p.size or n:
            raise Rejection("margin_mode_locked",
                            f"the margin mode of {cmd.market} can change only with no position "
                            f"and no open orders there (position {p.size} lots, {n} open orders)")
        p.isolated = want
        if not want and p.iso_margin:
            a = self.accounts[cmd.account]
            a.cash += p.iso_margin
            p.iso_margin = 0
            self._emit("balance", account=cmd.account, collateral=a.cash,
                       reason="transfer_margin")

    def _transfer_margin(self, cmd):
        self._market(cmd.market)
        p = self.peek(cmd.account, cmd.market)
        if p is None or not p.isolated:
            raise Rejection("not_isolated", f"{cmd.market} is not in isolated mode for this "
                                            f"account (set_margin_mode first)")
        amount = cmd.amount
        if amount == 0 or not -MAX_MONEY <= amount <= MAX_MONEY:
            raise Rejection("invalid_amount",
                            f"amount must be a non-zero number of quote units between "
                            f"-{MAX_MONEY} and {MAX_MONEY} (positive moves collateral in, "
                            f"negative out), got {amount}")
        a = self.accounts[cmd.account]
        if amount > 0:
            sc = self.cross(cmd.account)
            eq, im = self.equity(sc), self.initial_margin(sc)
            if amount > a.cash or eq - amount < im:
                raise Rejection("insufficient_collateral",
                                f"moving {amount} in would leave the cross equity {eq - amount} "
                                f"against an initial margin of {im} (collateral {a.cash})")
        else:
            sc = self.scope(p)
            eq, im = self.equity(sc), self.initial_margin(sc)
            if -amount > p.iso_margin or eq + amount < im:
                raise Rejection("insufficient_collateral",
                                f"moving {-amount} out would leave the position's equity "
                                f"{eq + amount} against an initial margin of {im} (isolated "
                                f"margin {p.iso_margin})")
        a.cash -= amount
        p.iso_margin += amount
        self._emit("balance", account=cmd.account, collateral=a.cash, reason="transfer_margin")

    # ---- orders ------------------------------------------------------------------------------

    def _order_fits(self, p: Position, buys, sells):
        """The placement check: None if the order may stand, else (requirement, equity)."""
        mk = self.markets[p.market]
        if mk.initial(p.size, buys, sells, p.leverage) <= \
                mk.initial(p.size, p.open_buy, p.open_sell, p.leverage):
            return None
        sc = self.scope(p)
        after = self.initial_margin(sc, (p.market, p.size, buys, sells))
        eq = self.equity(sc)
        return None if after <= eq else (after, eq)

    @staticmethod
    def _margin_sentence(after, eq):
        return (f"the order would raise the initial margin to {after} quote units, above the "
                f"equity of {eq}")

    def _new_order(self, cmd):
        mk = self._market(cmd.market)
        spec = mk.spec
        qty = positive_int(cmd.qty, spec.max_qty)
        if qty is None:
            raise Rejection("invalid_qty", bad_qty(cmd.qty, spec.max_qty))
        if qty < spec.min_qty:
            raise Rejection("below_min_qty", below_min(qty, spec.min_qty))
        for field in PRICE_FIELDS[cmd.kind]:
            if positive_int(getattr(cmd, field), spec.max_price) is None:
                raise Rejection("invalid_price",
                                bad_price(field, getattr(cmd, field), spec.max_price))
        trigger = cmd.kind not in ("limit", "market")
        self.account(cmd.account)
        if (cmd.account, cmd.cid) in self.orders:
            raise Rejection("duplicate_cid", f"cid {show(cmd.cid)} is already used by an open "
                                             f"order of this account")
        if mk.mark is None:
            raise Rejection("no_mark_price", f"{cmd.market} has no oracle price yet")
        market_order = cmd.kind.endswith("market")
        tif = "ioc" if market_order else cmd.tif
        price = limit = None if market_order else cmd.price
        if cmd.kind == "market":
            limit = mk.band_high() if cmd.side == "buy" else mk.band_low()
        elif cmd.kind == "limit" and mk.out_of_band(cmd.side, price):
            raise Rejection("price_out_of_band",
                            mk.band_sentence(cmd.side, price, mk.mark, "mark"))
        elif trigger and not market_order and mk.out_of_band(cmd.side, price, cmd.trigger_price):
            raise Rejection("price_out_of_band",
                            mk.band_sentence(cmd.side, price, cmd.trigger_price, "trigger price"))
        p = self.position(cmd.account, cmd.market)
        size = p.size
        if cmd.reduce_only and self.reducible(cmd.account, cmd.market, cmd.side) == 0:
            raise Rejection("reduce_only_would_increase",
                            f"reduce-only {cmd.side} with a position of {size} lots would not "
                            f"reduce it")
        grows = size == 0 or (size > 0) == (cmd.side == "buy") or qty > abs(size)
        if not cmd.reduce_only and grows and self._stale(mk):
            raise Rejection("oracle_stale", self._stale_sentence(mk, False))
        n = self.open_orders(cmd.account, cmd.market)
        if (tif in ("gtc", "alo") or trigger) and n >= spec.max_orders_per_account:
            raise Rejection("too_many_orders",
                            f"the account already has {n} open orders in {cmd.market} (limit "
                            f"{spec.max_orders_per_account})")
        if not trigger and self.margin:
            buy = cmd.side == "buy"
            failed = self._order_fits(p, p.open_buy + (qty if buy else 0),
                                      p.open_sell + (0 if buy else qty))
            if failed:
                raise Rejection("insufficient_margin", self._margin_sentence(*failed))
        if tif == "alo" and not trigger and self._crosses(mk, cmd.side, price):
            raise Rejection("post_only_would_cross",
                            f"post-only {cmd.side} at {price} would trade against the best "
                            f"{'ask' if cmd.side == 'buy' else 'bid'}")

        o = Order(oid=self.next_oid, account=cmd.account, market=cmd.market, cid=cmd.cid,
                  side=cmd.side, kind=cmd.kind, price=price, qty=qty, tif=tif, stp=cmd.stp,
                  reduce_only=cmd.reduce_only, trigger_price=cmd.trigger_price if trigger else None)
        self._open(o)
        self._emit("order_accepted", account=o.account, market=o.market, cid=o.cid, oid=o.oid,
                   side=o.side, kind=o.kind, price=price, qty=qty, tif=tif,
                   reduce_only=o.reduce_only)
        if trigger:
            o.armed = True
            self.armed[o.oid] = o
            return
        if tif == "fok" and self._walk(mk, o, limit, dry=True) is not None:
            self._cancel(o, "fok_unfilled")
            return
        self._finish(mk, o, self._walk(mk, o, limit))

    def _open(self, o):
        self.next_oid += 1
        self.orders[(o.account, o.cid)] = o
        self.by_account.setdefault(o.account, {})[o.cid] = o
        self.counts[(o.account, o.market)] = self.counts.get((o.account, o.market), 0) + 1

    def _stale(self, mk):
        age = mk.spec.oracle_max_age_s * NS
        return age and self.clock - mk.last_oracle_ts > age

    def _stale_sentence(self, mk, amending):
        return (f"the last {mk.name} oracle price is {(self.clock - mk.last_oracle_ts) // NS} s "
                f"old (limit {mk.spec.oracle_max_age_s} s); "
                + ("an amend may not raise qty" if amending else "only reducing orders are taken"))

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
            self.note("trigger fired")
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
        if self.margin:
            p = self.peek(o.account, o.market)
            buy = o.side == "buy"
            if self._order_fits(p, p.open_buy + (o.qty if buy else 0),
                                p.open_sell + (0 if buy else o.qty)):
                return self._cancel(o, "margin")
        if o.tif == "alo" and self._crosses(mk, o.side, o.price):
            return self._cancel(o, "post_only_would_cross")
        if o.tif == "fok" and self._walk(mk, o, limit, dry=True) is not None:
            return self._cancel(o, "fok_unfilled")
        self._finish(mk, o, self._walk(mk, o, limit))

    def _crosses(self, mk, side, price):
        best = mk.best(other(side))
        if best is None:
            return False
        return price >= best if side == "buy" else price <= best

    # ---- matching (docs/contract.md, "Matching" and "The pre-fill check") ----------------------

    def _resting(self, mk, side, limit):
        """The resting orders a `side` order limited to `limit` can reach, in priority order."""
        if side == "buy":
            book, prices = mk.asks, mk.asks.irange(maximum=limit)
        else:
            book, prices = mk.bids, mk.bids.irange(minimum=limit, reverse=True)
        for p in list(prices):
            yield from list(book[p])

    def _fee(self, mk, price, q, rate):
        return ceil_div(price * q * mk.spec.multiplier * rate, PPM)

    def _allowed_after(self, mk, key, side, before, q, pnl, fees, maker):
        """The pre-fill check of one side of a fill of `q` after `before` lots this walk (dry
        runs carry the walk's PnL at the mark and fees so far, this fill's included). A fill
        that grows |size| must leave equity >= the initial requirement; one that shrinks it,
        (R1) equity >= 0."""
        p = self.peek(key, mk.name)
        d = 1 if side == "buy" else -1
        s1 = p.size + d * before
        s2 = s1 + d * q
        sc = self.scope(p)
        after = self.equity(sc) - fees + pnl
        if abs(s2) <= abs(s1):
            # R1, solvency: no shrinking fill past the scope's bankruptcy price, except the
            # liquidated scope's own order (the fund and ADL cover it in the same command)
            if not self.rules.shrink_check or (self.liquidating and not maker):
                return True
            if after < 0:
                self.note("R1: a shrinking fill refused")
            return after >= 0
        buys, sells = p.open_buy, p.open_sell
        if maker:
            if side == "buy":
                buys -= before + q
            else:
                sells -= before + q
        return after >= self.initial_margin(sc, (mk.name, s2, buys, sells))

    def _within(self, mk, key, side, before, q):
        """The largest position: a fill may not take |size| past max_qty (unless it shrinks)."""
        d = 1 if side == "buy" else -1
        s1 = self.size(key, mk.name) + d * before
        s2 = s1 + d * q
        return abs(s2) <= abs(s1) or abs(s2) <= mk.spec.max_qty

    def _cash_bounded(self, mk, key):
        p = self.peek(key, mk.name)
        cash = p.iso_margin if p is not None and p.isolated else self.accounts[key].cash
        return -MAX_MONEY <= cash <= MAX_MONEY

    def _walk(self, mk, o, limit, dry=False):
        """Trade taker `o` against the book down to `limit`. Returns None (walked to the end or
        filled), or why it stopped early: "self_trade", "reduce_only", "margin" ("unfilled":
        a dry run that would not fill it all). `dry`: decide an FOK without changing anything
        (makers a real walk would cancel are passed over; what each account would have traded,
        its PnL at the mark and its fees are carried along for the checks)."""
        opp = other(o.side)
        book = mk.side_book(opp)
        d = 1 if o.side == "buy" else -1
        start = need = o.qty
        used, walked = {}, {}
        t_pnl = t_fees = 0
        makers = self._resting(mk, o.side, limit) if dry else None
        while need > 0:
            if dry:
                m = next(makers, None)
                if m is None:
                    break
            else:
                best = mk.best(opp)
                if best is None or (o.side == "buy" and best > limit) or \
                        (o.side == "sell" and best < limit):
                    break
                m = book[best][0]
            if m.account == o.account:
                if o.stp == "cancel_taker":
                    return "self_trade"
                if not dry:
                    self._cancel(m, "self_trade")
                if o.stp == "cancel_both":
                    return "self_trade"
                continue
            q = min(need, m.qty)
            t_done = start - need if dry else 0
            m_done = used.get(m.account, 0) if dry else 0
            if o.reduce_only:
                cap = self.reducible(o.account, o.market, o.side) - t_done
                if cap <= 0:
                    return "reduce_only"
                q = min(q, cap)
            if m.reduce_only:
                cap = self.reducible(m.account, m.market, opp) - m_done
                if cap <= 0:
                    if not dry:
                        self._cancel(m, "reduce_only")
                    continue
                q = min(q, cap)
            # the largest position and the largest balance, checked like margin is
            if not self._within(mk, m.account, opp, m_done, q):
                if not dry:
                    self._cancel(m, "margin")
                continue
            if not self._within(mk, o.account, o.side, t_done, q):
                return "margin"
            if not self._cash_bounded(mk, m.account):
                if not dry:
                    self._cancel(m, "margin")
                continue
            if not self._cash_bounded(mk, o.account):
                return "margin"
            mfee = self._fee(mk, m.price, q, mk.spec.maker_fee_ppm)
            if self.liquidating and self.rules.no_liq_rebate and mfee < 0:
                mfee = 0
                if not dry:
                    self.note("R3: no rebate on a liquidation fill")
            tfee = 0 if self.liquidating else self._fee(mk, m.price, q, mk.spec.taker_fee_ppm)
            if self.margin:
                m_before, m_pnl, m_fees = walked.get(m.account, (0, 0, 0))
                tpnl = d * q * (mk.mark - m.price) * mk.spec.multiplier
                if not self._allowed_after(mk, m.account, opp, m_before, q, m_pnl - tpnl,
                                           m_fees + mfee, True):
                    if not dry:
                        self._cancel(m, "margin")
                        self.note("maker cancelled by the pre-fill check")
                    continue
                if not self._allowed_after(mk, o.account, o.side, t_done, q, t_pnl + tpnl,
                                           t_fees + tfee, False):
                    if not dry:
                        self.note("taker stopped by the pre-fill check")
                    return "margin"
                if dry:
                    walked[m.account] = (m_before + q, m_pnl - tpnl, m_fees + mfee)
                    t_pnl += tpnl
                    t_fees += tfee
            if dry:
                used[m.account] = m_done + q
                need -= q
            else:
                self._fill(mk, o, m, q, tfee, mfee)
                need = o.qty
        if dry and need > 0:
            return "unfilled"
        return None

    def _trade(self, p: Position, side, q, price, fee):
        """Position accounting: funding settles first; the closed part takes its (floored)
        share of the cost basis and realises PnL into the scope's cash; the rest opens at
        cost; the fee goes to the venue."""
        self._settle(p)
        mult = self.markets[p.market].spec.multiplier
        d = 1 if side == "buy" else -1
        realised = 0
        if p.size and (p.size > 0) != (d > 0):
            close = min(q, abs(p.size))
            removed = p.cost * close // abs(p.size)
            realised = -d * close * price * mult - removed
            p.cost -= removed
            p.size += d * close
            q -= close
        p.size += d * q
        p.cost += d * q * price * mult
        p.realised += realised
        self.scope(p).add_cash(realised - fee)
        self.fees += fee

    def _fill(self, mk, o, m, q, tfee, mfee):
        price = m.price
        o.qty -= q
        m.qty -= q
        tp = self.peek(o.account, o.market)
        mp = self.peek(m.account, m.market)
        if m.side == "buy":
            mp.open_buy -= q
        else:
            mp.open_sell -= q
        t_before, m_before = tp.size, mp.size
        self._trade(tp, o.side, q, price, tfee)
        self._trade(mp, m.side, q, price, mfee)
        if self.liquidating:
            self.liq_qty += q
            self.liq_notional += price * q * mk.spec.multiplier
        self._emit("fill", market=o.market, price=price, qty=q, taker_side=o.side,
                   taker_account=o.account, taker_cid=o.cid, taker_oid=o.oid,
                   taker_remaining=o.qty, maker_account=m.account, maker_cid=m.cid,
                   maker_oid=m.oid, maker_remaining=m.qty,
                   taker_fee=tfee, maker_fee=mfee, liquidation=self.liquidating)
        self.note("fill")
        if m.qty == 0:
            self._remove(m)
        for acct, before, pos in ((m.account, m_before, mp), (o.account, t_before, tp)):
            if pos.size == 0 or (pos.size > 0) != (before > 0):
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
            self._rest(mk, o)

    def _rest(self, mk, o):
        mk.side_book(o.side).setdefault(o.price, deque()).append(o)
        o.resting = True
        p = self.peek(o.account, o.market)
        if o.side == "buy":
            p.open_buy += o.qty
        else:
            p.open_sell += o.qty

    def _unrest(self, o):
        book = self.markets[o.market].side_book(o.side)
        level = book[o.price]
        level.remove(o)
        if not level:
            del book[o.price]
        o.resting = False
        p = self.peek(o.account, o.market)
        if o.side == "buy":
            p.open_buy -= o.qty
        else:
            p.open_sell -= o.qty

    def _remove(self, o):
        if o.resting:
            self._unrest(o)
        # Orders are keyed by (account, cid); dict order is acceptance order, as in the core.
        del self.orders[(o.account, o.cid)]
        self.armed.pop(o.oid, None)
        o.armed = False
        del self.by_account[o.account][o.cid]
        self.counts[(o.account, o.market)] -= 1

    def _cancel(self, o, reason):
        self._emit("order_cancelled", account=o.account, market=o.market, cid=o.cid, oid=o.oid,
                   remaining=o.qty, reason=reason)
        self._remove(o)

    def _find(self, cmd, command):
        mk = self._market(cmd.market)
        o = self.orders.get((cmd.account, cmd.cid))
        if o is None or o.market != cmd.market or not (o.resting or o.armed):
            raise Rejection("unknown_order", no_order(cmd.cid, cmd.market))
        return mk, o

    def _cancel_cmd(self, cmd):
        mk, o = self._find(cmd, "cancel")
        self._cancel(o, "user")

    def _cancel_orders(self, account, market, reason):
        for o in [x for x in self.by_account.get(account, {}).values()
                  if market is None or x.market == market]:
            self._cancel(o, reason)

    def _cancel_all(self, cmd):
        if cmd.market is not None and cmd.market not in self.markets:
            raise Rejection("unknown_market", no_market(cmd.market))
        self._cancel_orders(cmd.account, cmd.market, "user")

    def _amend(self, cmd):
        mk, o = self._find(cmd, "amend")
        spec = mk.spec
        qty, price = o.qty, o.price
        if cmd.qty is not None:
            qty = positive_int(cmd.qty, spec.max_qty)
            if qty is None:
                raise Rejection("invalid_qty", bad_qty(cmd.qty, spec.max_qty))
            if qty < spec.min_qty:
                raise Rejection("below_min_qty", below_min(qty, spec.min_qty))
        if cmd.price is not None and not o.kind.endswith("market"):
            price = positive_int(cmd.price, spec.max_price)
            if price is None:
                raise Rejection("invalid_price", bad_price("price", cmd.price, spec.max_price))
        if o.armed:
            if price != o.price and mk.out_of_band(o.side, price, o.trigger_price):
                raise Rejection("price_out_of_band", mk.band_sentence(
                    o.side, price, o.trigger_price, "trigger price"))
            o.price, o.qty = price, qty
            self._emit("order_amended", account=o.account, market=o.market, cid=o.cid,
                       oid=o.oid, price=price, qty=qty, priority_kept=True)
            return
        if price != o.price and mk.out_of_band(o.side, price):
            raise Rejection("price_out_of_band", mk.band_sentence(o.side, price, mk.mark, "mark"))
        if not o.reduce_only and qty > o.qty and self._stale(mk):
            raise Rejection("oracle_stale", self._stale_sentence(mk, True))
        if self.margin:
            p = self.peek(o.account, o.market)
            grow = qty - o.qty
            failed = self._order_fits(p, p.open_buy + (grow if o.side == "buy" else 0),
                                      p.open_sell + (grow if o.side == "sell" else 0))
            if failed:
                raise Rejection("insufficient_margin", self._margin_sentence(*failed))
        if o.tif == "alo" and self._crosses(mk, o.side, price):
            raise Rejection("post_only_would_cross",
                            f"post-only order at {price} would trade against the best "
                            f"{'ask' if o.side == 'buy' else 'bid'}")
        if price == o.price and qty <= o.qty:
            p = self.peek(o.account, o.market)
            if o.side == "buy":
                p.open_buy -= o.qty - qty
            else:
                p.open_sell -= o.qty - qty
            o.qty = qty
            self._emit("order_amended", account=o.account, market=o.market, cid=o.cid,
                       oid=o.oid, price=price, qty=qty, priority_kept=True)
            return
        self._unrest(o)
        o.price, o.qty = price, qty
        self._emit("order_amended", account=o.account, market=o.market, cid=o.cid, oid=o.oid,
                   price=price, qty=qty, priority_kept=False)
        self._finish(mk, o, self._walk(mk, o, price))

    # ---- margin calls and liquidation (docs/contract.md, "Liquidation") -----------------------

    def _liquidation_pass(self, mk, calls):
        """Every scope with a position in this market (the fund's apart): a margin call where it
        first falls below 1.5x maintenance (after an oracle), then the liquidation of those below
        maintenance, most under-margined first, at most max_liquidations_per_update."""
        found = []
        for p in mk.positions:                        # creation order
            if p.size == 0 or p.account == FUND:
                continue
            sc = self.scope(p)
            eq, mm = self.equity(sc), self.maintenance_margin(sc)
            if calls:
                below = 2 * eq < 3 * mm
                holder = sc.flag_holder()
                if below and not holder.margin_call:
                    self._emit("margin_call", account=p.account, equity=eq,
                               maintenance_margin=mm)
                    self.note("margin call")
                holder.margin_call = below
            if eq < mm:
                found.append((Fraction(eq, mm), account_order(p.account), sc))
        found.sort(key=lambda f: f[:2])
        mk.waiting = [sc for _, _, sc in found]
        self._drain(mk)

    def _drain(self, mk):
        """Liquidate the next max_liquidations_per_update scopes of the queue the last pass
        found, in its order, each still below maintenance (the rest wait for the next clock
        tick); the ADL queues are ranked once a pass."""
        self.deleveraged = []                         # the scopes ADL took from in this pass
        self.adl_cache = {}
        done = 0
        while mk.waiting and done < mk.spec.max_liquidations_per_update:
            sc = mk.waiting.pop(0)
            if sc.pos is not None and (not sc.pos.size or not sc.pos.isolated):
                continue                              # closed, or gone cross, since queued
            if self.equity(sc) >= self.maintenance_margin(sc):
                continue
            self._liquidate_scope(sc)
            done += 1
            sc.flag_holder().margin_call = \
                2 * self.equity(sc) < 3 * self.maintenance_margin(sc)
        mk.liq_pending = bool(mk.waiting)
        if mk.liq_pending:
            self.note("liquidations carried over")
        if self.rules.fund_deficit:
            self._fund_deficit(mk)
        seen = []
        for sc in self.deleveraged:                   # their positions moved in this pass too
            if (sc.account.key, sc.pos.market if sc.pos else None) not in seen:
                seen.append((sc.account.key, sc.pos.market if sc.pos else None))
                self._rewarn(sc)

    def _rewarn(self, sc: Scope):
        """A scope the pass changed (liquidated, deleveraged, socialised): its warning says
        how the pass left it (no new event)."""
        sc.flag_holder().margin_call = 2 * self.equity(sc) < 3 * self.maintenance_margin(sc)

    def _liquidate_scope(self, sc: Scope):
        self.note("liquidated scope")
        self._cancel_orders(sc.account.key, sc.pos.market if sc.pos else None, "liquidation")
        for _ in range(64):
            if self.equity(sc) >= self.maintenance_margin(sc):
                break
            held = [p for p in sc.positions() if p.size]
            if not held:
                break
            # the largest maintenance requirement; on a tie the newest position
            best = max(reversed(sorted(held, key=lambda p: p.born)),
                       key=lambda p: self.markets[p.market].maintenance(p.size))
            self._liquidate_position(sc, best)
        self._cover_deficit(sc)

    def _bankruptcy_price(self, sc: Scope, p: Position):
        """The price at which closing all of `p` leaves the scope's equity at zero, rounded
        for the account (up for a long's sale, down for a short's purchase), at least 1."""
        mk = self.markets[p.market]
        den = p.size * mk.spec.multiplier
        bp = Fraction(mk.mark * den - self.equity(sc), den)
        return max(1, math.ceil(bp) if p.size > 0 else math.floor(bp))

    def _liquidate_position(self, sc: Scope, p: Position):
        mk = self.markets[p.market]
        spec = mk.spec
        eq, mm = self.equity(sc), self.maintenance_margin(sc)
        bp = self._bankruptcy_price(sc, p)
        n = abs(p.size)
        side = "sell" if p.size > 0 else "buy"
        fee_all = ceil_div(n * mk.mark * spec.multiplier * spec.liquidation_fee_ppm, PPM)
        per_lot = (mk.maintenance(p.size) - fee_all) // n
        if per_lot <= 0:
            qty = n
        else:
            qty = ceil_div(mm + mm // 10 - eq, per_lot)
            qty = n if qty > n or qty <= 0 else qty
        filled, notional = self._liquidation_order(p, side, qty, bp)
        if filled:
            fee = ceil_div(notional * spec.liquidation_fee_ppm, PPM)
            eq = self.equity(sc)
            if fee > eq:
                fee = max(eq, 0)
            if fee:
                sc.add_cash(-fee)
                self.account(FUND).cash += fee
            self._emit("liquidation", account=p.account, market=mk.name, side=side, qty=filled,
                       price=notional // (filled * spec.multiplier), mark=mk.mark, kind="book",
                       fee=fee)
            self.note("liquidation book")
        if filled < qty and p.size and self.equity(sc) < self.maintenance_margin(sc):
            bp = self._bankruptcy_price(sc, p)
            n = abs(p.size)
            fund = self.position(FUND, mk.name)
            takeover = (n if side == "sell" else -n) * (mk.mark - bp) * spec.multiplier
            if self.equity(self.cross(FUND)) + takeover < 0 or \
                    abs(fund.size + (n if side == "sell" else -n)) > spec.max_qty:
                n = self._deleverage(p, side, n, bp)
                if n:
                    self.note("fund takes what ADL could not")
            if n:
                if self.rules.fund_deficit:
                    bp = self._affordable(mk, side, n, bp)
                self._trade(p, side, n, bp, 0)
                self._trade(fund, other(side), n, bp, 0)
                self._emit("liquidation", account=p.account, market=mk.name, side=side, qty=n,
                           price=bp, mark=mk.mark, kind="backstop", fee=0)
                self.note("liquidation backstop")

    def _affordable(self, mk, side, n, bp):
        """The price at which the fund may take `n` lots over: `bp`, or the price between the
        mark and `bp` its equity pays for (rounded in its favour; the mark with no equity)."""
        room = max(self.equity(self.cross(FUND)), 0) // (n * mk.spec.multiplier)
        if side == "sell":                                  # the fund buys
            return min(bp, mk.mark + room)
        return max(bp, mk.mark - room)

    def _liquidation_order(self, p: Position, side, qty, limit):
        """An IOC reduce-only order of the engine's (an oid, the cid "liquidation:<oid>", no
        order_accepted or order_cancelled), limited to `limit`. Returns (filled, notional)."""
        mk = self.markets[p.market]
        o = Order(oid=self.next_oid, account=p.account, market=p.market,
                  cid=f"liquidation:{self.next_oid}", side=side, kind="market", price=limit,
                  qty=qty, tif="ioc", stp="cancel_taker", reduce_only=True)
        self._open(o)
        self.liquidating = True
        self.liq_qty = self.liq_notional = 0
        try:
            self._walk(mk, o, limit)
        finally:
            self.liquidating = False
        if (o.account, o.cid) in self.orders:
            self._remove(o)
        return self.liq_qty, self.liq_notional

    def _adl_score(self, mk, c: Position, pnl):
        """(PnL / |cost|) x (notional / equity): highest first; no equity left ranks first."""
        eq = self.equity(self.scope(c))
        if eq > 0 and c.cost:
            return Fraction(pnl * abs(c.size) * mk.mark * mk.spec.multiplier, abs(c.cost) * eq)
        return Fraction(10**30)

    def _adl_queues(self, mk, bankrupt_account, side):
        """The positions against a closing trade on `side`: first those in price profit, then
        those whose profit is funding owed to them, each ranked, once a pass (the first time
        the pass needs them); at its turn a position must still be open on that side and still
        qualify for its queue (`_still_ranked`)."""
        key = (mk.name, side)
        if key not in self.adl_cache:
            self.adl_cache[key] = self._rank_adl(mk, side)
        return [(c, bounded, queue) for c, bounded, queue in self.adl_cache[key]
                if c.account != bankrupt_account]

    def _still_ranked(self, mk, c, side, queue):
        if c.size == 0 or (c.size > 0) == (side == "sell"):
            return False
        pnl = mk.unrealised(c)
        return (pnl if queue == 0 else pnl - mk.unsettled(c)) > 0

    def _rank_adl(self, mk, side):
        ranked, owed = [], []
        for c in mk.positions:
            if c.size == 0 or c.account == FUND or (c.size > 0) == (side == "sell"):
                continue
            pnl = mk.unrealised(c)
            if pnl > 0:
                ranked.append((-self._adl_score(mk, c, pnl), account_order(c.account), c))
                continue
            pnl -= mk.unsettled(c)
            if pnl > 0:
                owed.append((-self._adl_score(mk, c, pnl), account_order(c.account), c))
        ranked.sort(key=lambda r: r[:2])
        owed.sort(key=lambda r: r[:2])
        return [(c, self.rules.adl_bound_all, 0) for _, _, c in ranked] + \
            [(c, True, 1) for _, _, c in owed]

    def _deleverage(self, p: Position, side, n, bp):
        """Close up to `n` of `p` against the ADL queues at `bp`; returns what is left."""
        mk = self.markets[p.market]
        for c, bounded, queue in self._adl_queues(mk, p.account, side):
            if n == 0:
                break
            if not self._still_ranked(mk, c, side, queue):
                continue
            take = min(n, abs(c.size))
            if bounded:
                worse = ((bp - mk.mark) if c.size < 0 else (mk.mark - bp)) * mk.spec.multiplier
                if worse > 0:
                    eq = self.equity(self.scope(c))
                    bound = 0 if eq <= 0 else eq // worse
                    if bound < take:
                        self.note("R4: ADL bounded by equity" if self.rules.adl_bound_all or
                                  c.size * mk.unrealised(c) <= 0 else "ADL bounded")
                        take = bound
            if take <= 0:
                continue
            self.deleveraged.append(self.scope(c))
            self._trade(p, side, take, bp, 0)
            self._trade(c, other(side), take, bp, 0)
            self._emit("liquidation", account=p.account, market=mk.name, side=side, qty=take,
                       price=bp, mark=mk.mark, kind="adl", fee=0)
            self._emit("liquidation", account=c.account, market=mk.name, side=other(side),
                       qty=take, price=bp, mark=mk.mark, kind="adl", fee=0)
            self.note("adl")
            n -= take
        return n

    def _cover_deficit(self, sc: Scope):
        """A scope left with no position and equity below zero is made whole by the fund."""
        if any(p.size for p in sc.positions()):
            return
        eq = self.equity(sc)
        if eq >= 0:
            return
        sc.add_cash(-eq)
        self.account(FUND).cash += eq
        self._emit("balance", account=sc.account.key, collateral=sc.account.cash,
                   reason="insurance")
        self.note("deficit covered by the fund")

    # ---- R5: the fund's own deficit -----------------------------------------------------------

    def _fund_deficit(self, mk):
        """After a market's liquidation pass, a fund below zero equity: its position in the
        market is deleveraged like a bankrupt scope's (bounded ADL at its bankruptcy price),
        then what is left is socialised (docs/contract.md, "Solvency", rules 4 and 5)."""
        fund = self.accounts.get(FUND)
        if fund is None:
            return
        sc = self.cross(FUND)
        if self.equity(sc) >= 0:
            return
        self.note("fund below zero")
        p = fund.positions.get(mk.name)
        against = None                                # the fund's closing side
        if p is not None and p.size:
            against = "sell" if p.size > 0 else "buy"
            self._deleverage(p, against, abs(p.size), self._bankruptcy_price(sc, p))
            if self.equity(sc) >= 0:
                return
        self._socialise(mk, against, -self.equity(sc))

    def _payers(self, scopes):
        """Distinct scopes with positive equity: (equity, scope)."""
        out, seen = [], set()
        for sc in scopes:
            key = (sc.account.key, id(sc.pos))
            if sc.account.key == FUND or key in seen:
                continue
            seen.add(key)
            eq = self.equity(sc)
            if eq > 0:
                out.append((eq, sc))
        return out

    def _socialise(self, mk, against, deficit):
        """Raise `deficit` from the cash of scopes with positive equity, in rounds until it is
        raised: those deleveraged in this pass; those holding a position in this market against
        the fund's (every one when the fund holds none); every scope holding a position. In a
        round each pays floor(deficit x equity / total) (all its equity when the round has no
        more than the deficit), the units left one each to the largest equities first, ties by
        account; each payment is a `balance` (socialised_loss)."""
        fund = self.account(FUND)
        rounds = (
            lambda: self.deleveraged,
            lambda: [self.scope(c) for c in mk.positions if c.size and (
                against is None or (c.size > 0) != (against == "sell"))],
            lambda: [self.scope(c) for m in self.markets.values() for c in m.positions
                     if c.size],
        )
        for scopes in rounds:
            if deficit <= 0:
                return
            payers = self._payers(scopes())
            if not payers:
                continue
            # the largest equity first, ties by account (then isolated positions by age)
            payers.sort(key=lambda x: (-x[0], account_order(x[1].account.key),
                                       -1 if x[1].pos is None else x[1].pos.born))
            total = sum(eq for eq, _ in payers)
            if deficit >= total:
                shares = [eq for eq, _ in payers]
            else:
                shares = [deficit * eq // total for eq, _ in payers]
                for k in range(deficit - sum(shares)):
                    shares[k] += 1
            for (_, sc), share in zip(payers, shares):
                if share:
                    sc.add_cash(-share)
                    fund.cash += share
                    deficit -= share
                    self._emit("balance", account=sc.account.key, collateral=sc.account.cash,
                               reason="socialised_loss")
                    self._rewarn(sc)
                    self.note("socialised loss")

    # ---- reports ------------------------------------------------------------------------------

    def _query_account(self, cmd):
        self._emit("account", **self.account_report(cmd.account))

    def account_report(self, key):
        a = self.accounts.get(key)
        if a is None:
            return dict(account=key, collateral=0, equity=0, initial_margin=0,
                        maintenance_margin=0, positions=[], open_orders=[])
        positions = []
        for name in sorted(a.positions):
            p = a.positions[name]
            if not (p.size or p.iso_margin):
                continue
            mk = self.markets[name]
            den = p.size * mk.spec.multiplier
            positions.append(dict(
                market=name, size=p.size,
                entry_price=None if den == 0 else _nearest(Fraction(p.cost, den)),
                unrealised_pnl=mk.unrealised(p), unsettled_funding=mk.unsettled(p),
                mode="isolated" if p.isolated else "cross", isolated_margin=p.iso_margin,
                liquidation_price=self._liquidation_price(p), realised_pnl=p.realised))
        orders = [dict(market=o.market, cid=o.cid, oid=o.oid, side=o.side, kind=o.kind,
                       price=o.price, qty=o.qty, tif=o.tif, reduce_only=o.reduce_only)
                  for o in self.by_account.get(key, {}).values()]
        sc = self.cross(key)
        return dict(account=key, collateral=a.cash, equity=self.equity(sc),
                    initial_margin=self.initial_margin(sc),
                    maintenance_margin=self.maintenance_margin(sc), positions=positions,
                    open_orders=orders)

    def _liquidation_price(self, p: Position):
        """The mark at which the position's scope meets its maintenance, the other marks held,
        solved exactly tier by tier; the first safe tick (up for a long, down for a short)."""
        if p.size == 0:
            return None
        mk = self.markets[p.market]
        sc = self.scope(p)
        mult = mk.spec.multiplier
        rest = self.equity(sc) - p.size * mk.mark0 * mult        # equity(M) = rest + s M mult
        others = self.maintenance_margin(sc) - mk.maintenance(p.size)
        lo = 0
        for k, (max_notional, _, mmf, _, mmf_d) in enumerate(mk.tiers):
            slope = Fraction(p.size * mult) - Fraction(abs(p.size) * mult * mmf, PPM)
            if slope:
                root = Fraction(others - mmf_d - rest) / slope
                notional = abs(p.size) * root * mult
                last = k == len(mk.tiers) - 1
                if root > 0 and notional >= lo and (last or notional <= max_notional):
                    return math.ceil(root) if p.size > 0 else math.floor(root)
            lo = max_notional
        return None

    def _audit(self, cmd):
        self._emit("audit", **self.audit())

    def audit(self):
        collateral = upnl = 0
        oi = {}
        for key, a in self.accounts.items():
            if key != FUND:
                collateral += a.cash
            for p in a.positions.values():
                collateral += p.iso_margin
                if p.size:
                    upnl += self.markets[p.market].unrealised(p)
        for name in sorted(self.markets):
            sizes = [p.size for p in self.markets[name].positions]
            oi[name] = {"long": sum(s for s in sizes if s > 0),
                        "short": -sum(s for s in sizes if s < 0)}
        fund = self.accounts.get(FUND)
        return dict(deposits=self.deposits, withdrawals=self.withdrawals, collateral=collateral,
                    unrealised_pnl=upnl, insurance_fund=fund.cash if fund else 0,
                    fees=self.fees, open_interest=oi)

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
                            [mk.next_funding, mk.premium_sum, mk.premium_n, mk.cum_funding],
                            armed]
                           + ([["waiting", [[sc.account.key, sc.pos.market if sc.pos else None]
                                            for sc in mk.waiting]]] if mk.waiting else []))
        accounts, positions = [], []
        for key in sorted(self.accounts, key=account_order):
            a = self.accounts[key]
            if a.cash or a.margin_call:
                accounts.append([key, a.cash, a.margin_call])
            for name in sorted(a.positions):
                p = a.positions[name]
                if p.size or p.cost or p.leverage or p.isolated or p.iso_margin or p.realised:
                    positions.append([key, name, p.size, p.cost, p.leverage, p.isolated,
                                      p.iso_margin, p.funding_last, p.margin_call, p.realised])
        return {"clock": self.clock, "next_oid": self.next_oid, "markets": markets,
                "accounts": accounts, "positions": positions,
                "totals": [self.deposits, self.withdrawals, self.fees]}


def _nearest(x: Fraction):
    """Rounded to the nearest integer, halves away from zero."""
    q = math.floor(abs(x) + Fraction(1, 2))
    return q if x >= 0 else -q


def _too_far(ts):
    return (f"ts {ts} jumps over so many funding intervals at once that what a position could "
            f"owe would pass the largest amount, {MAX_MONEY} quote units: move the clock in "
            f"smaller steps")
