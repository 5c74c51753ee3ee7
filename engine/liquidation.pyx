# cython: language_level=3
"""Liquidation (see liquidation.pxd)."""
from libc.stdint cimport int64_t, int32_t, INT64_MIN

from .units cimport int128, PPM, ceil_div, floor_div, iabs, py128, narrow
from .book cimport BID, ASK
from .state cimport (State, PosC, MarketC, Traded, position, insurance_fund, scope_of,
                     wake_by, HALTED)
from .wire cimport V_LIQUIDATION
from .margin cimport (equity, maintenance_margin, maintenance_requirement, unrealised,
                            below_call, unsettled_funding)
from .ledger cimport book_trade, pay_fund
from .matching cimport cancel_orders
from .entry cimport liquidation_order
from .risk cimport rekey_dirty, candidates, mark_called, rekey_exact
from . cimport events

from .state import account_order


cdef int run(State s, int32_t m, bint calls) except -1:
    """After a mark update (`calls`: with margin calls) or funding in market `m`: look at the
    scopes the risk index says may be below 1.5x maintenance, warn those that first fell
    below it, and queue those below maintenance, most under-margined first (equity /
    maintenance, compared exactly; ties by account); then liquidate the first
    `max_liquidations_per_update` of them (`_drain`); the rest wait, in that order, for the
    next clock tick (`resume`), or are looked at afresh by the next mark update or funding.

    Cost: O(accounts changed since the last pass x log n) to re-key them, plus O(k log k)
    for the k scopes near their line, plus the cross accounts holding several positions;
    not the accounts that exist. A halted market's pass waits (lifecycle: it runs when the
    halt lifts)."""
    if s.mk[m].status == HALTED:
        return 0
    found = _look(s, m, calls)
    found.sort(reverse=True)                    # the most under-margined last: pop() takes it
    s.liq_queue[m] = [(a, iso) for _, _, a, iso in found]
    return _drain(s, m)


cdef int warn(State s, int32_t m) except -1:
    """Margin calls only, no liquidation (after `update_market` raised the requirements:
    the liquidations wait for the next mark update or funding boundary). Same cost as `run`."""
    _look(s, m, True)
    return 0


cdef list _look(State s, int32_t m, bint calls):
    """The scopes near their line in market `m`: warned where they first fell below 1.5x
    maintenance (`calls`), and returned as sort keys where they are below maintenance."""
    cdef int32_t p, a, iso
    cdef int128 eq, mm
    cdef bint below
    cdef PosC* q
    rekey_dirty(s)
    found = []
    seen = set()
    for p in candidates(s, m):
        q = &s.pos[p]
        if q.size == 0 or q.account == s.insurance:
            s.risk_called[m].discard(p)
            continue
        a = q.account
        iso = scope_of(s, p)
        if (a, iso) in seen:
            continue
        seen.add((a, iso))
        s.n_looked += 1
        eq = equity(s, a, iso)
        mm = maintenance_margin(s, a, iso)
        if calls:
            below = below_call(eq, mm)
            if below and not (q.margin_call if iso >= 0 else s.ac[a].margin_call):
                events.margin_call(s, a, eq, mm)
            if iso >= 0:
                q.margin_call = below
            else:
                s.ac[a].margin_call = below
            if below:
                mark_called(s, a, iso)
            else:
                s.risk_called[m].discard(p)
        if eq < mm:
            found.append((_ratio(eq, mm), account_order(s.account_keys[a]), a, iso))
        elif (q.rlist == 1 or q.rlist == 2) and not below_call(eq, mm):
            rekey_exact(s, p)                                   # it was looked at early
    return found


cdef int resume(State s, int32_t m) except -1:
    """A clock tick after a pass that hit its bound: the next scopes of the waiting queue, in
    the order the pass found them, each looked at again (one that has recovered is passed
    over). O(max_liquidations_per_update) scopes, not the queue's length."""
    if s.mk[m].status == HALTED:
        return 0
    rekey_dirty(s)
    return _drain(s, m)


cdef int _drain(State s, int32_t m) except -1:
    """Liquidate up to `max_liquidations_per_update` scopes still below maintenance from the
    market's queue; then the fund's floor. The ADL queues are ranked once a pass."""
    cdef MarketC* mk = &s.mk[m]
    cdef int32_t a, iso, k = 0
    cdef bint below
    queue = s.liq_queue[m]
    if s.deleveraged:               # emptied, not remade: a quiet mark update allocates nothing
        s.deleveraged.clear()
    if s.adl_queues:
        s.adl_queues.clear()
    while queue and k < mk.max_liquidations:
        a, iso = queue.pop()
        s.n_looked += 1
        if iso >= 0 and (s.pos[iso].size == 0 or not s.pos[iso].isolated):
            continue                # closed, or no longer an isolated scope, since queued
        if equity(s, a, iso) >= maintenance_margin(s, a, iso):
            continue
        _liquidate_scope(s, a, iso)
        k += 1
        _rewarn(s, a, iso)
    mk.liq_pending = 1 if queue else 0
    if queue:
        wake_by(s, INT64_MIN)                     # the next move of the clock goes on with it
    _fund_floor(s, m)
    if s.deleveraged:                             # their positions moved in this pass too
        for a, iso in dict.fromkeys(s.deleveraged):
            _rewarn(s, a, iso)
    if s.adl_queues:
        s.adl_queues.clear()
    return 0


cdef int _rewarn(State s, int32_t a, int32_t iso) except -1:
    """The warning now describes the scope as the pass left it (no new event): a liquidated,
    deleveraged or socialised scope. A warned scope is looked at by the next passes, so that
    its recovery clears it."""
    cdef bint below = below_call(equity(s, a, iso), maintenance_margin(s, a, iso))
    if iso >= 0:
        s.pos[iso].margin_call = below
    else:
        s.ac[a].margin_call = below
    if below:
        mark_called(s, a, iso)
    return 0


cdef object _ratio(int128 num, int128 den):
    """An exact sort key of num / den (den > 0, both below 2^127): floor(num * 2^256 / den).
    Two different fractions differ by at least 1 / (den1 x den2) > 2^-254, so their keys
    differ in the same direction, and equal fractions have equal keys: the order is that of
    the fractions, with no Fraction (and no gcd) made."""
    if den <= 0:
        return py128(num) << 256
    return (py128(num) << 256) // py128(den)


cdef int _fund_floor(State s, int32_t m) except -1:
    """The insurance fund is an account with limits: after a pass in market `m`, if its equity
    (cash, positions at the mark, what it is owed through lazy settlement) is below zero, its
    position in `m` is deleveraged like a bankrupt scope's (the ADL queues at the fund's
    bankruptcy price, each position bounded by its own equity), and whatever deficit is left
    is socialised (`_socialise`). O(positions of the market), and only when the fund is below
    zero; O(markets) otherwise."""
    cdef int32_t fund = s.insurance, fp
    cdef int128 eq
    cdef int side = -1
    if fund < 0:
        return 0
    eq = equity(s, fund, -1)
    if eq >= 0:
        return 0
    fp = s.pos_of[m][fund]
    if fp >= 0 and s.pos[fp].size:
        side = ASK if s.pos[fp].size > 0 else BID
        _deleverage(s, fund, fp, side, iabs(s.pos[fp].size),
                    _bankruptcy_price(s, fund, -1, fp))
        eq = equity(s, fund, -1)
        if eq >= 0:
            return 0
    _socialise(s, m, side, -eq)
    return 0


cdef int _socialise(State s, int32_t m, int side, int128 deficit) except -1:
    """Raise `deficit` for the insurance fund from the cash of the scopes with positive equity,
    in rounds until it is raised: first the scopes deleveraged in this pass (they took the
    bankrupt side's gain, and a bankruptcy price floored at one tick, or carrying a cross
    account's other deficits, may have taken back less than that), then those holding a
    position in market `m` against `side` (the fund's closing trade: the side that gained what
    the fund lost; `side` -1: every position of `m`), then every scope holding a position
    anywhere. Within a round each pays pro rata to its equity, floored, and the units left
    over go one each to the largest equities first (ties by account); nobody pays more than
    its equity, so nobody goes below zero. Each payment is a `balance` event with reason
    `socialised_loss` (an extension). What the whole venue cannot pay stays with the fund.
    The rare path: Python integers, O(positions of `m`), O(positions) for the last round."""
    cdef int32_t c, k, iso
    cdef PosC* q
    owed = py128(deficit)
    for markets in (None, [(m, side)], [(k, -1) for k in range(s.n_markets)]):
        if owed <= 0:
            return 0
        payers = []
        seen = set()
        for a, iso in (s.deleveraged if markets is None else ()):
            if (a, iso) in seen or a == s.insurance:
                continue
            seen.add((a, iso))
            eq = py128(equity(s, a, iso))
            if eq > 0:
                payers.append((-eq, account_order(s.account_keys[a]), iso, a))
        for k, against in markets or ():
            for c in s.market_pos[k]:
                q = &s.pos[c]
                if q.size == 0 or q.account == s.insurance:
                    continue
                if against >= 0 and (q.size > 0) == (against == ASK):
                    continue
                iso = scope_of(s, c)
                if (q.account, iso) in seen:
                    continue
                seen.add((q.account, iso))
                eq = py128(equity(s, q.account, iso))
                if eq > 0:
                    payers.append((-eq, account_order(s.account_keys[q.account]), iso,
                                   q.account))
        if not payers:
            continue
        payers.sort()
        total = -sum(p[0] for p in payers)
        if owed >= total:
            shares = [-p[0] for p in payers]
        else:
            shares = [owed * -p[0] // total for p in payers]
            for k in range(owed - sum(shares)):     # fewer than len(payers); each fits
                shares[k] += 1
        for (_, _, iso, a), share in zip(payers, shares):
            if share:
                pay_fund(s, a, iso, share)          # share <= its equity < 2^62
                events.balance(s, a, "socialised_loss")
                _rewarn(s, a, iso)
                owed -= share
    return 0


cdef int cover_settled(State s, int32_t m, list scopes, list gainers) except -1:
    """After `settle_market` closed market `m`'s positions at one price: a scope in `scopes`
    left with no position and below zero is made whole by the fund (`_cover_deficit`); a
    cross account left below maintenance with positions in other markets is liquidated
    there, after the fund's floor has taken back what it paid, the scopes that gained in the
    settlement (`gainers`) paying first."""
    cdef int32_t a, iso, p
    others = set()
    for a, iso in scopes:
        _cover_deficit(s, a, iso)
        if iso < 0 and equity(s, a, -1) < maintenance_margin(s, a, -1):
            p = s.ac[a].positions
            while p >= 0:
                if s.pos[p].size and not s.pos[p].isolated:
                    others.add(s.pos[p].market)
                p = s.pos[p].next
    s.deleveraged = list(gainers)
    s.adl_queues = {}
    _fund_floor(s, m)
    s.adl_queues = {}
    for p in sorted(others):
        run(s, p, False)
    return 0


cdef int _liquidate_scope(State s, int32_t a, int32_t iso) except -1:
    """Cancel the scope's open orders (reason liquidation); while it is still liquidatable,
    close its positions, the largest maintenance requirement first. A position in a halted
    market waits for the halt to lift (nothing trades there, the venue's orders neither)."""
    cdef int32_t p, best
    cdef int64_t req, best_req
    cdef int guard = 0
    cdef int32_t m_iso = s.pos[iso].market if iso >= 0 else -1
    cancel_orders(s, a, m_iso, V_LIQUIDATION)
    while equity(s, a, iso) < maintenance_margin(s, a, iso) and guard < 64:
        guard += 1
        if iso >= 0:
            best = iso if s.pos[iso].size and s.mk[s.pos[iso].market].status != HALTED else -1
        else:
            best = -1
            best_req = -1
            p = s.ac[a].positions
            while p >= 0:
                if (s.pos[p].size and not s.pos[p].isolated
                        and s.mk[s.pos[p].market].status != HALTED):
                    req = <int64_t>maintenance_requirement(&s.mk[s.pos[p].market],
                                                           s.pos[p].size)
                    if req > best_req:
                        best, best_req = p, req
                p = s.pos[p].next
        if best < 0:
            break
        _liquidate_position(s, a, iso, best)
    _cover_deficit(s, a, iso)
    return 0


cdef int _cover_deficit(State s, int32_t a, int32_t iso) except -1:
    """No account is left with negative equity that nobody pays for: a scope left with no
    position and equity below zero is made whole by the insurance fund (a `balance` event,
    reason `insurance`, an extension)."""
    cdef int32_t p
    cdef int128 eq
    if iso >= 0:
        if s.pos[iso].size:
            return 0
    else:
        p = s.ac[a].positions
        while p >= 0:
            if s.pos[p].size and not s.pos[p].isolated:
                return 0
            p = s.pos[p].next
    eq = equity(s, a, iso)
    if eq >= 0:
        return 0
    pay_fund(s, a, iso, narrow(eq))          # a negative payment: from the fund; |eq| < 2^61
    return events.balance(s, a, "insurance")


cdef int _liquidate_position(State s, int32_t a, int32_t iso, int32_t p) except -1:
    """Reduce position `p` with an IOC into the book, no worse than the bankruptcy price,
    only as much as should restore maintenance margin with a 10 % buffer; what the book
    cannot take at that price, the insurance fund takes over at it."""
    cdef PosC* q = &s.pos[p]
    cdef int32_t m = q.market, fund, fp
    cdef MarketC* mk = &s.mk[m]
    cdef int64_t size = q.size, n = iabs(size), bp, qty, filled, fee, per_lot
    cdef int side = ASK if size > 0 else BID          # the closing trade
    cdef int128 num, takeover, eq, mm, deficit
    cdef Traded traded
    eq = equity(s, a, iso)
    mm = maintenance_margin(s, a, iso)
    bp = _bankruptcy_price(s, a, iso, p)
    # Sizing: each lot closed near the mark frees its maintenance and costs its fee.
    per_lot = narrow(floor_div(
        maintenance_requirement(mk, size)
        - ceil_div(<int128>n * mk.mark * mk.multiplier * mk.liq_fee_ppm, PPM), n))
    deficit = mm + floor_div(mm, 10) - eq
    if per_lot <= 0:
        qty = n
    else:
        qty = narrow(ceil_div(deficit, per_lot))
        qty = n if qty > n or qty <= 0 else qty
    filled = liquidation_order(s, a, p, side, qty, bp, &traded)
    if filled:
        num = traded.notional
        fee = narrow(ceil_div(num * mk.liq_fee_ppm, PPM))
        eq = equity(s, a, iso)
        if fee > eq:
            fee = narrow(eq) if eq > 0 else 0      # eq < fee: it fits
        if fee:
            pay_fund(s, a, iso, fee)
        events.liquidation(s, a, m, side, filled,
                           narrow(floor_div(num, <int128>filled * mk.multiplier)), "book", fee)
    q = &s.pos[p]
    if filled < qty and q.size and equity(s, a, iso) < maintenance_margin(s, a, iso):
        # The book is exhausted down to the bankruptcy price: the fund takes the rest there.
        bp = _bankruptcy_price(s, a, iso, p)
        n = iabs(q.size)
        fund = insurance_fund(s)
        # The fund takes it over at the bankruptcy price if its equity stays >= 0 after;
        # else the profitable opposite positions are deleveraged at that price.
        takeover = <int128>(1 if side == ASK else -1) * n * (mk.mark - bp) * mk.multiplier
        fp = position(s, m, fund)
        if (equity(s, fund, -1) + takeover < 0
                or iabs(s.pos[fp].size + (n if side == ASK else -n)) > mk.max_qty):
            n = _deleverage(s, a, p, side, n, bp)
        if n:
            # What no one could take, the fund takes over: at the bankruptcy price when its
            # equity pays for that, else at the price its equity pays for (the mark when it
            # has none). The scope keeps the rest of its loss, which its other positions'
            # bankruptcy prices then carry, and the fund covers and socialises what is left.
            bp = _affordable(mk, side, n, bp, equity(s, fund, -1))
            fp = position(s, m, fund)
            q = &s.pos[p]
            book_trade(s, q, side, n, bp, 0)
            book_trade(s, &s.pos[fp], 1 - side, n, bp, 0)
            events.liquidation(s, a, m, side, n, bp, "backstop", 0)
    return 0


cdef int64_t _affordable(MarketC* mk, int side, int64_t n, int64_t bp, int128 fund_eq):
    """The price at which the fund may take `n` lots over (it buys them when `side` is ASK):
    `bp`, or, where `bp` is worse than the mark for the fund by more than its equity pays for,
    the price between the mark and `bp` that its equity pays for, rounded in its favour."""
    cdef int128 room = (fund_eq if fund_eq > 0 else 0) // (<int128>n * mk.multiplier)
    if side == ASK:                         # the fund buys: a loss above the mark
        return bp if bp <= mk.mark + room else <int64_t>(mk.mark + room)
    return bp if bp >= mk.mark - room else <int64_t>(mk.mark - room)


cdef int64_t _deleverage(State s, int32_t a, int32_t p, int side, int64_t n,
                         int64_t bp) except -1:
    """Auto-deleverage: close `n` of position `p` against the profitable positions on the
    other side, at the bankruptcy price `bp`, highest (PnL / |cost|) x (notional / equity)
    first (ties by account). Each match gives a `liquidation` event (kind adl) to both
    accounts. Returns what no one could take (the fund takes it).

    PnL is the price PnL at the mark. After every such position, and only then, come the
    positions whose profit is the funding they are owed (price PnL plus unsettled funding
    received above zero), ranked the same way by that sum (an extension): when funding alone
    has made the bankrupt one bankrupt, the positions that funding paid are on the other side,
    and without them the fund would take over far from the mark and pay out money that nobody
    deposited. Every position takes no more than its scope's equity can pay for at that price
    (a bankruptcy price far from the mark can carry a cross account's deficit from its other
    markets), so deleveraging never leaves it below zero.

    The two queues of a market and side are ranked once a pass, when the pass first needs
    them, and shared by every bankrupt scope after; at its turn a position is taken only if
    it is still open on that side and still qualifies for its queue (an extension: the
    contract does not say when the ranking is made). O(P log P) once, then O(1) a match."""
    cdef int32_t m = s.pos[p].market, c, k
    cdef MarketC* mk = &s.mk[m]
    cdef PosC* q
    cdef int128 pnl
    queues = s.adl_queues.get((m, side))
    if queues is None:                      # ranked once a pass, at the pass's marks
        ranked = []
        owed = []
        for c in s.market_pos[m]:
            q = &s.pos[c]
            if (q.size == 0 or q.account == s.insurance
                    or (q.size > 0) == (side == ASK)):
                continue                              # must point against the bankrupt one
            pnl = unrealised(mk, q.size, q.cost)
            if pnl > 0:
                ranked.append(_adl_rank(s, mk, c, pnl))
                continue
            pnl -= unsettled_funding(mk, q.size, q.funding_last)
            if pnl > 0:
                owed.append(_adl_rank(s, mk, c, pnl))
        ranked.sort()
        owed.sort()
        queues = ([r[3] for r in ranked], [r[3] for r in owed])
        s.adl_queues[(m, side)] = queues
    for k in range(2):
        for c in queues[k]:
            if n == 0:
                return 0
            q = &s.pos[c]
            if q.size == 0 or q.account == a or (q.size > 0) == (side == ASK):
                continue                              # closed (or turned) since it was ranked
            pnl = unrealised(mk, q.size, q.cost)
            if k == 1:
                pnl -= unsettled_funding(mk, q.size, q.funding_last)
            if pnl <= 0:
                continue                              # no longer in profit: out of the queue
            n -= _adl_match(s, a, p, c, side, n, bp)
    return n


cdef int64_t _adl_match(State s, int32_t a, int32_t p, int32_t c, int side, int64_t n,
                        int64_t bp) except -1:
    """Close up to `n` of bankrupt `p` against opposite position `c` at `bp`, no more than
    `c`'s scope equity pays for at what `bp` is worse than the mark for `c`, so deleveraging
    never leaves it below zero. Returns the quantity matched."""
    cdef PosC* q = &s.pos[c]
    cdef MarketC* mk = &s.mk[q.market]
    cdef int32_t ca = q.account
    cdef int64_t take = n if n < iabs(q.size) else iabs(q.size)
    cdef int128 worse, eq
    worse = <int128>((bp - mk.mark) if q.size < 0 else (mk.mark - bp)) * mk.multiplier
    if worse > 0:
        eq = equity(s, ca, scope_of(s, c))
        if eq <= 0:
            return 0
        if eq // worse < take:
            take = narrow(eq // worse)
    if take <= 0:
        return 0
    s.deleveraged.append((ca, scope_of(s, c)))
    book_trade(s, &s.pos[p], side, take, bp, 0)
    book_trade(s, q, 1 - side, take, bp, 0)
    events.liquidation(s, a, q.market, side, take, bp, "adl", 0)
    events.liquidation(s, ca, q.market, 1 - side, take, bp, "adl", 0)
    return take


cdef tuple _adl_rank(State s, MarketC* mk, int32_t c, int128 pnl):
    """The sort key of position `c` in the ADL queue: the highest (PnL / |cost|) x (notional /
    equity) first, compared exactly, then the account; a scope with no equity left ranks
    first. The slot is last."""
    cdef PosC* q = &s.pos[c]
    cdef int128 eq = equity(s, q.account, scope_of(s, c))
    cdef int128 notional = <int128>iabs(q.size) * mk.mark * mk.multiplier
    s.n_ranked += 1
    order = account_order(s.account_keys[q.account])
    if eq <= 0 or q.cost == 0:
        return (0, 0, order, c)
    # PnL x notional < 2^123 and |cost| x equity < 2^124: the Python products are exact, and
    # two different scores differ by more than 2^-256 of a unit (see _ratio).
    return (1, -((py128(pnl) * py128(notional) << 256) // (py128(iabs(q.cost)) * py128(eq))),
            order, c)


cdef int64_t _bankruptcy_price(State s, int32_t a, int32_t iso, int32_t p) except -1:
    """The price at which closing all of `p` leaves the scope's equity at zero, the other
    marks held: mark - equity / (size * multiplier), rounded so the closing trade is never
    worse for the account (up for a long's sale, down for a short's purchase); at least 1."""
    cdef PosC* q = &s.pos[p]
    cdef MarketC* mk = &s.mk[q.market]
    cdef int128 num = <int128>mk.mark * q.size * mk.multiplier - equity(s, a, iso)
    cdef int128 den = <int128>q.size * mk.multiplier
    cdef int128 bp
    if den > 0:
        bp = ceil_div(num, den)
    else:
        bp = floor_div(-num, -den)
    return narrow(bp if bp > 0 else 1)
