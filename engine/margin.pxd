# cython: language_level=3
"""Margin (contract: "Margin"): requirements, tiers, leverage, equity, and the placement and
pre-fill checks.

The arithmetic is inline here, since every fill calls it: none of it makes a Python object.
Money is in quote units, rates in ppm, products in int128. Rounding: requirements round up (the
venue never under-asks); unsettled funding rounds in the venue's favour.
"""
from libc.stdint cimport int64_t, int32_t

from .units cimport int128, PPM, ceil_div, floor_div, iabs
from .state cimport State, MarketC, PosC, TierC


# ---- arithmetic (inline) ---------------------------------------------------------------------

cdef inline int128 tier_requirement(MarketC* mk, int128 notional, bint initial,
                                    int32_t leverage) noexcept nogil:
    """The continuous tiered requirement of a notional, rounded up:
    N * rate_k / 1e6 - deduction_k for the first tier k whose max_notional >= N (else the last).
    An initial requirement is at least ceil(N / leverage) where the account set a leverage."""
    cdef int32_t k = 0
    cdef TierC* t
    cdef int128 req
    while k < mk.n_tiers - 1 and mk.tiers[k].max_notional < notional:
        k += 1
    t = &mk.tiers[k]
    if initial:
        req = ceil_div(notional * t.imf_ppm, PPM) - t.imf_deduction
        if leverage > 0 and ceil_div(notional, leverage) > req:
            req = ceil_div(notional, leverage)
    else:
        req = ceil_div(notional * t.mmf_ppm, PPM) - t.mmf_deduction
    return req if req > 0 else 0


cdef inline int64_t max_exposure(int64_t size, int64_t buys, int64_t sells) noexcept nogil:
    """max(|s + B|, |s - S|): the lots the initial requirement is taken on."""
    cdef int64_t a = iabs(size + buys), b = iabs(size - sells)
    return a if a > b else b


cdef inline int128 initial_requirement(MarketC* mk, int64_t size, int64_t buys, int64_t sells,
                                       int32_t leverage) noexcept nogil:
    """max(|s + B|, |s - S|) * mark * multiplier at the initial rate, rounded up."""
    cdef int128 n = <int128>max_exposure(size, buys, sells) * mk.mark * mk.multiplier
    return tier_requirement(mk, n, True, leverage)


cdef inline int128 maintenance_requirement(MarketC* mk, int64_t size) noexcept nogil:
    """|s| * mark * multiplier at the maintenance rate, rounded up."""
    return tier_requirement(mk, <int128>iabs(size) * mk.mark * mk.multiplier, False, 0)


cdef inline int128 unrealised(MarketC* mk, int64_t size, int64_t cost) noexcept nogil:
    """size * mark * multiplier - cost: exact."""
    return <int128>size * mk.mark * mk.multiplier - cost


cdef inline int64_t unsettled_funding(MarketC* mk, int64_t size, int128 last) noexcept nogil:
    """What a position owes (> 0) or is owed (< 0) since it last settled, rounded in the venue's
    favour: a payment up, a receipt down. The rounding remainder goes to the insurance fund."""
    cdef int128 x = <int128>size * (mk.cum_funding - last)
    if x > 0:
        return <int64_t>ceil_div(x, PPM)
    return -<int64_t>floor_div(-x, PPM)


cdef inline bint below_call(int128 equity, int128 maintenance) noexcept nogil:
    """The margin-call line: equity below 1.5x the maintenance requirement."""
    return 2 * equity < 3 * maintenance


# ---- scopes: an account's cross pool (iso = -1) or one isolated position (iso = its slot) ----

# In 128 bits: each term fits int64 (docs/contract.md, "Limits"), their sums need not.
cdef int128 equity(State s, int32_t a, int32_t iso)
cdef int128 fund_receivable(State s)
cdef int128 initial_margin(State s, int32_t a, int32_t iso, int32_t m, int64_t size,
                           int64_t buys, int64_t sells)
cdef int128 maintenance_margin(State s, int32_t a, int32_t iso)

# ---- the checks ------------------------------------------------------------------------------
cdef bint order_fits(State s, int32_t p, int64_t buys, int64_t sells, int128* after,
                     int128* eq)
cdef bint allowed_after(State s, int32_t a, int32_t m, int side, int64_t before, int64_t q,
                        int64_t pnl, int64_t fees, bint maker, bint liquidated)
