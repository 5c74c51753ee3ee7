# cython: language_level=3
"""The ledger (see ledger.pxd)."""
from libc.stdint cimport int64_t, int32_t

from .units cimport int128, floor_div, iabs, narrow, py128, CHECKS
from .book cimport BID
from .state cimport State, PosC, MarketC, touch, insurance_fund
from .margin cimport unsettled_funding
from . cimport events


cdef int book_trade(State s, PosC* p, int side, int64_t q, int64_t price, int64_t fee) except -1:
    """`q` lots traded on `side` at `price` into position `p`. The part that closes the
    position takes its share of the cost basis (floor; the remainder stays in the basis, so
    nothing is lost) and realises PnL into collateral; the rest opens at cost. The fee moves
    from the scope's cash to the venue. O(1)."""
    cdef MarketC* mk = &s.mk[p.market]
    cdef int64_t d = 1 if side == BID else -1
    cdef int64_t size, close, removed, realised = 0
    cdef int128 before = 0
    settle(s, p)
    if CHECKS:
        before = _value_at(s, p, price)
    size = p.size
    if size != 0 and (size > 0) != (d > 0):
        close = q if q < iabs(size) else iabs(size)
        removed = narrow(floor_div(<int128>p.cost * close, iabs(size)))
        realised = narrow(<int128>(-d) * close * price * mk.multiplier - removed)
        p.cost -= removed
        p.size += d * close
        q -= close
    if q:
        p.cost += narrow(<int128>d * q * price * mk.multiplier)
        p.size += d * q
    p.realised += realised
    touch(s, p.account)
    if p.isolated:
        p.iso_margin += realised - fee
    else:
        s.ac[p.account].collateral += realised - fee
    s.fees += fee
    if CHECKS and _value_at(s, p, price) - before != -fee:
        raise AssertionError(f"a fill at {price} changed the scope's value at that price by "
                             f"{py128(_value_at(s, p, price) - before)}, not by its fee -{fee}")
    return 0


cdef int128 _value_at(State s, PosC* p, int64_t price):
    """The scope's cash and the position's value at `price` (the debug build's check that a
    fill moves only its fee): cash + size x price x multiplier - cost."""
    return ((p.iso_margin if p.isolated else s.ac[p.account].collateral)
            + <int128>p.size * price * s.mk[p.market].multiplier - p.cost)


cdef int settle(State s, PosC* p) except -1:
    """Settle a position's funding against the insurance fund (lazily: before it changes)."""
    cdef MarketC* mk = &s.mk[p.market]
    cdef int64_t amount
    cdef int32_t fund
    if p.funding_last == mk.cum_funding:
        return 0
    amount = unsettled_funding(mk, p.size, p.funding_last)
    mk.unsettled -= <int128>p.size * (mk.cum_funding - p.funding_last)
    p.funding_last = mk.cum_funding
    if amount == 0:
        return 0
    fund = insurance_fund(s)
    touch(s, p.account)
    if p.isolated:
        p.iso_margin -= amount
    else:
        s.ac[p.account].collateral -= amount
    s.ac[fund].collateral += amount
    return events.balance(s, p.account, "funding")


cdef int deposit_cash(State s, int32_t a, int64_t amount) except -1:
    """Money in from outside the venue: the account's cash and the venue's deposits."""
    s.ac[a].collateral += amount
    s.deposits += amount
    return touch(s, a)


cdef int withdraw_cash(State s, int32_t a, int64_t amount) except -1:
    """Money out of the venue: the account's cash and the venue's withdrawals."""
    s.ac[a].collateral -= amount
    s.withdrawals += amount
    return touch(s, a)


cdef int move_margin(State s, PosC* p, int64_t amount) except -1:
    """Move `amount` of the account's cash into isolated position `p`'s margin (negative: back
    out of it)."""
    s.ac[p.account].collateral -= amount
    p.iso_margin += amount
    return touch(s, p.account)


cdef int pay_fund(State s, int32_t a, int32_t iso, int64_t amount) except -1:
    """Move `amount` from a scope's cash (the account's, or isolated position `iso`'s) to the
    insurance fund (a liquidation fee)."""
    cdef int32_t fund = insurance_fund(s)
    touch(s, a)
    if iso >= 0:
        s.pos[iso].iso_margin -= amount
    else:
        s.ac[a].collateral -= amount
    s.ac[fund].collateral += amount
    return 0
