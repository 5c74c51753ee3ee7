# cython: language_level=3
"""Margin (see margin.pxd): the equity and requirements of a scope, the placement check and the
pre-fill check."""
from libc.stdint cimport int64_t, int32_t

from .book cimport BID
from .state cimport State, PosC, HeadroomC, scope_of


cdef int128 equity(State s, int32_t a, int32_t iso):
    """Equity of a margin scope: the account's cross pool (iso = -1: collateral plus the
    cross positions' unrealised PnL) or one isolated position (its margin plus its PnL);
    unsettled funding counts. O(positions of the account)."""
    cdef int128 e
    cdef int32_t p
    cdef PosC* q
    if iso >= 0:
        q = &s.pos[iso]
        return (q.iso_margin + unrealised(&s.mk[q.market], q.size, q.cost)
                - unsettled_funding(&s.mk[q.market], q.size, q.funding_last))
    e = s.ac[a].collateral
    if a == s.insurance:
        e += fund_receivable(s)
    p = s.ac[a].positions
    while p >= 0:
        q = &s.pos[p]
        if q.size and not q.isolated:
            e += unrealised(&s.mk[q.market], q.size, q.cost)
            e -= unsettled_funding(&s.mk[q.market], q.size, q.funding_last)
        p = q.next
    return e


cdef int128 fund_receivable(State s):
    """What lazy settlement will still bring the insurance fund, net: the funding the other
    positions owe (or are owed), floored (a lower bound: every settlement rounds in the fund's
    favour), plus its own positions' unsettled funding, which `equity` took off as for any
    account, though the fund settles it with itself (cash to cash, a no-op). It counts in the
    fund's equity (docs/contract.md, "Solvency"). O(markets)."""
    cdef int128 r = 0, own
    cdef int32_t m, fp
    cdef MarketC* mk
    for m in range(s.n_markets):
        mk = &s.mk[m]
        own = 0
        fp = s.pos_of[m][s.insurance]
        if fp >= 0:
            own = <int128>s.pos[fp].size * (mk.cum_funding - s.pos[fp].funding_last)
            r += unsettled_funding(mk, s.pos[fp].size, s.pos[fp].funding_last)
        r += floor_div(mk.unsettled - own, PPM)
    return r


cdef int128 initial_margin(State s, int32_t a, int32_t iso, int32_t m, int64_t size,
                           int64_t buys, int64_t sells):
    """A scope's initial requirement, market `m` taken as (size, buys, sells) (m = -1: every
    market as it is). O(positions of the account)."""
    cdef int128 r = 0
    cdef int32_t p
    cdef PosC* q
    if iso >= 0:
        q = &s.pos[iso]
        if q.market == m:
            return initial_requirement(&s.mk[m], size, buys, sells, q.leverage)
        return initial_requirement(&s.mk[q.market], q.size, q.open_buy, q.open_sell, q.leverage)
    p = s.ac[a].positions
    while p >= 0:
        q = &s.pos[p]
        if q.isolated:
            pass
        elif q.market == m:
            r += initial_requirement(&s.mk[m], size, buys, sells, q.leverage)
        elif q.size or q.open_buy or q.open_sell:
            r += initial_requirement(&s.mk[q.market], q.size, q.open_buy, q.open_sell,
                                     q.leverage)
        p = q.next
    return r


cdef int128 maintenance_margin(State s, int32_t a, int32_t iso):
    """A scope's maintenance requirement. O(positions of the account)."""
    cdef int128 r = 0
    cdef int32_t p
    if iso >= 0:
        return maintenance_requirement(&s.mk[s.pos[iso].market], s.pos[iso].size)
    p = s.ac[a].positions
    while p >= 0:
        if s.pos[p].size and not s.pos[p].isolated:
            r += maintenance_requirement(&s.mk[s.pos[p].market], s.pos[p].size)
        p = s.pos[p].next
    return r


cdef bint order_fits(State s, int32_t p, int64_t buys, int64_t sells, int128* after,
                     int128* eq):
    """The placement check: may position `p`'s open quantities become (buys, sells)? An order
    that raises its scope's initial requirement above its equity may not. Only market `m`'s
    term of the requirement changes, so its rise alone is computed first: none, and the order
    fits; a cross scope whose headroom is known (state.pxd, HeadroomC) and covers the rise
    fits too, and the rise comes off what is known; else the scope's whole requirement and
    equity are summed, and its headroom is known from there, the order in when it fits. An
    order that then does not rest leaves what is known below the truth, never above it.
    `after` and `eq` are set for the rejection's sentence. O(1), or O(positions of the
    account) when the requirement rises past what is known."""
    cdef PosC* q = &s.pos[p]
    cdef int32_t a = q.account, m = q.market, iso = scope_of(s, p)
    cdef MarketC* mk = &s.mk[m]
    cdef HeadroomC* h = NULL
    cdef int128 rise
    cdef bint fits
    if (max_exposure(q.size, buys, sells)
            <= max_exposure(q.size, q.open_buy, q.open_sell)):
        return True                         # the requirement is monotone in the exposure
    rise = (initial_requirement(mk, q.size, buys, sells, q.leverage)
            - initial_requirement(mk, q.size, q.open_buy, q.open_sell, q.leverage))
    if rise <= 0:
        return True
    if iso < 0 and a != s.insurance:        # the fund's equity moves with every settlement
        h = &s.hr[a]
        if h.epoch == s.margin_epoch and h.headroom >= rise:
            h.headroom -= rise
            return True
    after[0] = initial_margin(s, a, iso, m, q.size, buys, sells)
    eq[0] = equity(s, a, iso)
    fits = after[0] <= eq[0]
    if h != NULL:
        h.headroom = eq[0] - after[0] + (0 if fits else rise)
        h.epoch = s.margin_epoch
    return fits


cdef bint allowed_after(State s, int32_t a, int32_t m, int side, int64_t before, int64_t q,
                        int64_t pnl, int64_t fees, bint maker, bint liquidated):
    """The pre-fill check for a fill of `q` after `before` lots already traded in this walk,
    `pnl` (at the mark) and `fees` being the walk's so far, this fill included. A fill that
    grows the position must leave the scope's equity >= its initial requirement, looked at as
    the fill would leave it (a maker's order no longer open for what it traded). A fill that
    only shrinks it passes the margin rule, and then meets the solvency rule alone: the
    scope's equity after it stays >= 0 (docs/contract.md, "Solvency": no fill is past the
    scope's bankruptcy price). `liquidated`: the scope's own liquidation order, which the
    liquidation machinery covers in the same command (fund, then ADL)."""
    cdef int32_t pi = s.pos_of[m][a]
    cdef PosC* p = &s.pos[pi]
    cdef int32_t iso = pi if p.isolated else -1
    cdef int64_t d = 1 if side == BID else -1
    cdef int64_t s1 = p.size + d * before, s2 = s1 + d * q
    cdef int64_t buys = p.open_buy, sells = p.open_sell
    if iabs(s2) <= iabs(s1):
        return liquidated or equity(s, a, iso) - fees + pnl >= 0
    if maker:
        if side == BID:
            buys -= before + q
        else:
            sells -= before + q
    return (equity(s, a, iso) - fees + pnl
            >= initial_margin(s, a, iso, m, s2, buys, sells))
