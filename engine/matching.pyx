# cython: language_level=3
"""Matching (see matching.pxd)."""
from libc.stdint cimport int64_t, int32_t

from .units cimport int128, iabs, CHECKS
from .book cimport (Book, OrderPool, Order, BID, ASK, IOC, FOK, GTD, CANCEL_TAKER, CANCEL_BOTH,
                    STOP_MARKET)

from .state cimport State, MarketC, PosC, Traded, reducible
from .wire cimport (V_IOC_REMAINDER, V_SELF_TRADE, V_REDUCE_ONLY, V_MARGIN)
from .ledger cimport fee, book_trade
from .margin cimport allowed_after
from .triggers cimport disarm
from . cimport events

from .markets import MAX_MONEY


cdef inline bint _within(State s, int32_t a, int32_t m, int side, int64_t before, int64_t q,
                         int64_t limit) noexcept:
    """Would a fill of `q` (after `before` already traded in this walk) leave the position within
    `limit` lots, or at least not larger? All terms are at most 2^40: the sums fit."""
    cdef int64_t d = 1 if side == BID else -1
    cdef int64_t s1 = s.pos[s.pos_of[m][a]].size + d * before, s2 = s1 + d * q
    return iabs(s2) <= iabs(s1) or iabs(s2) <= limit


cdef int64_t CASH_LIMIT = MAX_MONEY     # 2^61 quote units (docs/limits.md)


cdef inline bint _cash_bounded(State s, int32_t a, int32_t m) noexcept:
    """Is the cash of the scope a fill in market `m` would book into (the isolated margin, or
    the account's collateral) at most 2^61 in magnitude? A fill moves cash by its realised PnL
    and fee, each under 2^61 (docs/limits.md), so from there the cash stays inside int64. Margin
    checks keep every scope far inside this; without them (Engine(margin=False)) this is what
    stops a balance from wrapping."""
    cdef int32_t p = s.pos_of[m][a]
    cdef int64_t cash = s.pos[p].iso_margin if p >= 0 and s.pos[p].isolated else s.ac[a].collateral
    return -CASH_LIMIT <= cash <= CASH_LIMIT


cdef int walk(State s, int32_t t, int64_t limit, bint dry, Traded* traded) except -1:
    """Trade taker `t` against the opposite side down to `limit`, best price first, oldest
    first within a price. For each maker in turn: self-trade prevention, the reduce-only caps,
    the pre-fill check (maker first: a maker that fails is cancelled and the walk goes on; a
    taker that fails stops it), then the fill.

    `dry`: the same steps without changing anything (the makers a real walk would cancel are
    passed over, and what each account would have traded is carried along for the checks);
    STOP_NONE then means the whole taker would fill. `traded` (or NULL): the walk adds each
    fill's qty and price x qty x multiplier to it (a liquidation's order: its size and average
    price). O(levels touched + fills + cancels)."""
    cdef OrderPool pool = s.pool
    cdef int32_t m = pool.o[t].market, acct = pool.o[t].account
    cdef Book b = s.books[m]
    cdef MarketC* mk = &s.mk[m]
    cdef int side = pool.o[t].side, opp = 1 - side, stp = pool.o[t].stp
    cdef bint taker_ro = pool.o[t].reduce_only
    cdef int64_t d = 1 if side == BID else -1
    cdef int64_t start = pool.o[t].qty, need = start, q, lp, cap, mfee, tfee, mpnl, tpnl
    cdef int64_t m_before = 0, m_pnl = 0, m_fees = 0, t_before = 0, t_pnl = 0, t_fees = 0
    cdef int32_t j = b.n[opp] - 1, lvl, mi = -1, nxt
    cdef Order* mo
    cdef dict used = None, walked = None
    if dry:
        used = {}                        # maker account -> lots it would have traded
        walked = {}                      # maker account -> (lots, pnl, fees) so far
    while need > 0:
        if dry:
            if mi < 0:
                if j < 0:
                    break
                lvl = b.slots[opp][j]
                j -= 1
                lp = b.lv[lvl].price
                if (side == BID and lp > limit) or (side == ASK and lp < limit):
                    break
                mi = b.lv[lvl].head
        else:
            lvl = b.best(opp)
            if lvl < 0:
                break
            lp = b.lv[lvl].price
            if (side == BID and lp > limit) or (side == ASK and lp < limit):
                break
            mi = b.lv[lvl].head
        mo = &pool.o[mi]
        nxt = mo.next
        lp = mo.price
        if mo.account == acct:                          # self-trade prevention
            if stp == CANCEL_TAKER:
                return STOP_SELF_TRADE
            if not dry:
                cancel_order(s, mi, V_SELF_TRADE)
            if stp == CANCEL_BOTH:
                return STOP_SELF_TRADE
            mi = nxt
            continue
        q = need if need < mo.qty else mo.qty
        if taker_ro:
            cap = reducible(s, acct, m, side) - (start - need if dry else 0)
            if cap <= 0:
                return STOP_REDUCE_ONLY
            if cap < q:
                q = cap
        if mo.reduce_only:
            cap = reducible(s, mo.account, m, opp) - (used.get(mo.account, 0) if dry else 0)
            if cap <= 0:
                if not dry:
                    cancel_order(s, mi, V_REDUCE_ONLY)
                mi = nxt
                continue
            if cap < q:
                q = cap
        # The largest position (docs/contract.md, "Limits") is checked like margin is.
        if not _within(s, mo.account, m, opp, used.get(mo.account, 0) if dry else 0, q,
                       mk.max_qty):
            if not dry:
                cancel_order(s, mi, V_MARGIN)
            mi = nxt
            continue
        if not _within(s, acct, m, side, start - need if dry else 0, q, mk.max_qty):
            return STOP_MARGIN
        # So is the largest balance (a scope past it trades no more, like a failed check).
        if not _cash_bounded(s, mo.account, m):
            if not dry:
                cancel_order(s, mi, V_MARGIN)
            mi = nxt
            continue
        if not _cash_bounded(s, acct, m):
            return STOP_MARGIN
        mfee = fee(lp, q, mk.multiplier, mk.maker_fee_ppm)
        # A liquidation's own fills pay the liquidation fee only (engine.liquidation), so that
        # closing at the bankruptcy price leaves the account at zero, not below it.
        # Nor does its maker earn a rebate: no rebate without a fee behind it (fee income on
        # every fill >= 0).
        tfee = 0 if s.liquidating else fee(lp, q, mk.multiplier, mk.taker_fee_ppm)
        if s.liquidating and mfee < 0:
            mfee = 0
        if s.margin:                                    # the pre-fill check, maker first
            if dry:
                m_before, m_pnl, m_fees = walked.get(mo.account, (0, 0, 0))
                t_before = start - need
            tpnl = d * q * (mk.mark - lp) * mk.multiplier
            mpnl = -tpnl
            if not allowed_after(s, mo.account, m, opp, m_before, q, m_pnl + mpnl,
                                 m_fees + mfee, True, False):
                if not dry:
                    cancel_order(s, mi, V_MARGIN)
                mi = nxt
                continue
            if not allowed_after(s, acct, m, side, t_before, q, t_pnl + tpnl, t_fees + tfee,
                                 False, s.liquidating):
                return STOP_MARGIN
            if dry:
                walked[mo.account] = (m_before + q, m_pnl + mpnl, m_fees + mfee)
                t_pnl += tpnl
                t_fees += tfee
        if dry:
            used[mo.account] = used.get(mo.account, 0) + q
            need -= q
            mi = nxt
        else:
            _fill(s, t, mi, q, tfee, mfee, traded)
            if CHECKS and pool.o[t].qty != need - q:
                raise AssertionError(f"the walk's remaining qty went from {need} to "
                                     f"{pool.o[t].qty} on a fill of {q}")
            need = pool.o[t].qty
    if dry and need > 0:
        return STOP_UNFILLED
    return STOP_NONE


cdef int _fill(State s, int32_t t, int32_t mi, int64_t q, int64_t tfee, int64_t mfee,
               Traded* traded) except -1:
    """One trade at the maker's price: quantities, positions, the fees the walk computed, the
    `fill` event; then the maker goes if it is done, and the resting reduce-only orders that can
    no longer reduce go, on both sides of the trade."""
    cdef OrderPool pool = s.pool
    cdef Order* to = &pool.o[t]
    cdef Order* mo = &pool.o[mi]
    cdef int32_t m = to.market
    cdef MarketC* mk = &s.mk[m]
    cdef Book b = s.books[m]
    cdef int64_t price = mo.price
    cdef PosC* tp = &s.pos[s.pos_of[m][to.account]]
    cdef PosC* mp = &s.pos[s.pos_of[m][mo.account]]
    cdef int64_t t_before = tp.size, m_before = mp.size
    cdef int32_t t_acct = to.account, m_acct = mo.account
    to.qty -= q
    mo.qty -= q
    b.lv[mo.level].qty -= q
    if mo.side == BID:
        mp.open_buy -= q
    else:
        mp.open_sell -= q
    book_trade(s, tp, to.side, q, price, tfee)
    book_trade(s, mp, mo.side, q, price, mfee)
    s.n_fills += 1
    if s.out.log_fills:
        events.log_fill(s, t, mi, price, q)
    if traded != NULL:
        traded.qty += q
        traded.notional += <int128>price * q * mk.multiplier
    events.fill(s, t, mi, price, q, tfee, mfee)
    if mo.qty == 0:
        drop(s, mi)
    if mp.n_ro and (mp.size == 0 or (mp.size > 0) != (m_before > 0)):
        _sweep_reduce_only(s, m_acct, m)
    if tp.n_ro and (tp.size == 0 or (tp.size > 0) != (t_before > 0)):
        _sweep_reduce_only(s, t_acct, m)
    return 0


cdef int _sweep_reduce_only(State s, int32_t a, int32_t m) except -1:
    """Cancel `a`'s resting reduce-only orders in `m` that point the way of the position."""
    cdef int32_t i = s.pool.acct_head[a], nxt
    cdef Order* o
    while i >= 0:
        o = &s.pool.o[i]
        nxt = o.anext
        if (o.market == m and o.reduce_only and o.level >= 0
                and reducible(s, a, m, o.side) == 0):
            cancel_order(s, i, V_REDUCE_ONLY)
        i = nxt
    return 0


cdef int finish_taker(State s, int32_t t, int stop) except -1:
    """After the walk: cancel what must go, rest what may rest."""
    cdef Order* o = &s.pool.o[t]
    if o.qty == 0:
        return drop(s, t)
    if stop == STOP_SELF_TRADE:
        return cancel_order(s, t, V_SELF_TRADE)
    if stop == STOP_REDUCE_ONLY:
        return cancel_order(s, t, V_REDUCE_ONLY)
    if stop == STOP_MARGIN:
        return cancel_order(s, t, V_MARGIN)
    if o.tif == IOC or o.tif == FOK:
        return cancel_order(s, t, V_IOC_REMAINDER)
    if o.reduce_only and reducible(s, o.account, o.market, o.side) == 0:
        return cancel_order(s, t, V_REDUCE_ONLY)
    return rest(s, t)


cdef int opened(State s, int32_t i) except -1:
    """A new open order in slot `i` counts against its position's open orders. matching owns
    the open-order counters (n_orders, open_buy, open_sell, n_ro): tests/project/test_layout.py."""
    s.pos[s.pos_of[s.pool.o[i].market][s.pool.o[i].account]].n_orders += 1
    return 0


cdef int shrink(State s, int32_t i, int64_t qty) except -1:
    """A resting order's remaining qty falls to `qty` where it stands (its level and its
    position's open quantity with it)."""
    cdef Order* o = &s.pool.o[i]
    cdef PosC* p = &s.pos[s.pos_of[o.market][o.account]]
    (<Book>s.books[o.market]).lv[o.level].qty -= o.qty - qty
    if o.side == BID:
        p.open_buy -= o.qty - qty
    else:
        p.open_sell -= o.qty - qty
    o.qty = qty
    return 0


cdef int unrest(State s, int32_t i) except -1:
    """Take a resting order out of its level and its position's open quantities; it stays open
    (an amend that enters again)."""
    cdef Order* o = &s.pool.o[i]
    cdef PosC* p = &s.pos[s.pos_of[o.market][o.account]]
    (<Book>s.books[o.market]).unlink(s.pool, i)
    if o.side == BID:
        p.open_buy -= o.qty
    else:
        p.open_sell -= o.qty
    if o.reduce_only:
        p.n_ro -= 1
    return 0


cdef int rest(State s, int32_t i) except -1:
    cdef Order* o = &s.pool.o[i]
    cdef PosC* p = &s.pos[s.pos_of[o.market][o.account]]
    (<Book>s.books[o.market]).push_back(s.pool, i)
    if o.side == BID:
        p.open_buy += o.qty
    else:
        p.open_sell += o.qty
    if o.reduce_only:
        p.n_ro += 1
    return 0


cdef int drop(State s, int32_t i) except -1:
    """Remove an order from every index and free its slot (no event). O(1), O(log n) for an
    armed trigger order."""
    cdef Order* o = &s.pool.o[i]
    cdef PosC* p = &s.pos[s.pos_of[o.market][o.account]]
    if o.armed:
        disarm(s, i)
    if o.tif == GTD:
        s.gtd.remove((s.gtd_of.pop(i), o.oid, i))
    if o.kind >= STOP_MARKET:
        del s.trigger_of[i]
    if o.level >= 0:
        unrest(s, i)
    p.n_orders -= 1
    s.pool.cid_remove(i)
    s.pool.account_unlink(i)
    s.pool.release(i)
    return 0


cdef int cancel_order(State s, int32_t i, int reason) except -1:
    events.cancelled(s, i, reason)
    return drop(s, i)


cdef int cancel_orders(State s, int32_t a, int32_t m, int reason) except -1:
    """Cancel every open order of account `a` in market `m` (-1: in every market), oldest
    first. O(orders of the account)."""
    cdef int32_t i = s.pool.acct_head[a], nxt
    while i >= 0:
        nxt = s.pool.o[i].anext
        if m < 0 or s.pool.o[i].market == m:
            cancel_order(s, i, reason)
        i = nxt
    return 0
