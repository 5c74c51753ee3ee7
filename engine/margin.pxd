# cython: language_level=3
"""Margin: markets' risk parameters, accounts, positions, and the integer arithmetic of equity and
requirements (../shared/spec/orderflow.md, "Margin"). Inline C functions only: the core calls them
on every fill, so none of them makes a Python object or a call through Python.

Money is in quote units (int64, products in int128), rates in ppm. Rounding: requirements round up
(the venue never under-asks); a position's cost basis is an exact integer, so realised plus
unrealised PnL never gains or loses a unit.
"""
cimport cython
from libc.stdint cimport int64_t, int32_t, uint8_t

cdef extern from *:
    ctypedef long long int128 "__int128"

cdef enum:
    PPM = 1000000

# ---- state -------------------------------------------------------------------------------------

ctypedef struct TierC:
    int64_t max_notional        # quote units
    int64_t imf_ppm
    int64_t mmf_ppm
    int64_t imf_deduction       # quote units, so that requirements are continuous
    int64_t mmf_deduction

ctypedef struct MarketC:
    int64_t multiplier          # quote units per tick per lot
    int64_t min_qty
    int64_t maker_fee_ppm
    int64_t taker_fee_ppm
    int64_t band_ppm
    int64_t max_orders          # open orders per account
    int64_t oracle_max_age_ns   # 0: no limit
    int64_t index               # last oracle price (ticks)
    int64_t mark
    int64_t last_oracle_ts
    int64_t max_leverage        # floor(1e6 / the first tier's imf)
    int64_t liq_fee_ppm
    int64_t max_liquidations    # scopes liquidated per mark update
    int64_t mmf_max             # the highest maintenance rate of any tier (the risk index)
    uint8_t liq_pending         # the bound was hit: more to do at the next tick
    int64_t funding_interval_ns
    int64_t funding_cap_ppm
    int64_t interest_ppm
    int64_t next_funding        # the next interval boundary (ns); 0 until the first oracle
    int64_t premium_sum         # premium samples (ppm) since the last boundary
    int64_t premium_n
    int128 cum_funding          # cumulative funding per lot, in 1e-6 quote units
    TierC* tiers                # at least one (the market's own imf/mmf when it has no tiers)
    int32_t n_tiers
    int32_t name_tok            # the market's name, pre-encoded in the writer
    uint8_t has_mark

ctypedef struct PosC:
    int64_t size                # signed lots: long > 0
    int64_t cost                # signed quote units paid for the open size (exact, never rounded)
    int64_t open_buy            # resting buy qty
    int64_t open_sell           # resting sell qty
    int32_t n_orders            # open orders in this market
    int32_t n_ro                # resting reduce-only orders in this market
    int32_t account
    int32_t market
    int32_t next                # the account's next position (list head: AccountC.positions)
    int32_t leverage            # 0: none set
    uint8_t isolated
    uint8_t margin_call         # an isolated position's warning state
    int64_t iso_margin          # quote units held by an isolated position
    int64_t realised            # PnL realised by this position so far (fees and funding apart)
    int128 funding_last         # the market's cum_funding when this position last settled
    int64_t rkey                # its key in the risk index (see Engine._rekey)
    uint8_t rlist               # where it is indexed: 0 nowhere, 1 longs, 2 shorts, 3 multi

ctypedef struct AccountC:
    int64_t collateral          # quote units of cash
    int32_t name_tok            # the account's key, pre-encoded in the writer
    int32_t positions           # first position slot, -1 if none
    uint8_t margin_call         # equity < 1.5 x maintenance when last looked at
    uint8_t dirty               # its money or positions changed since the risk index saw it


# ---- arithmetic ----------------------------------------------------------------------------------

@cython.cdivision(True)
cdef inline int128 ceil_div(int128 a, int128 b) noexcept nogil:
    """ceil(a / b) for b > 0 (C division truncates toward zero)."""
    cdef int128 q = a / b
    if a % b != 0 and a > 0:
        q += 1
    return q


@cython.cdivision(True)
cdef inline int128 floor_div(int128 a, int128 b) noexcept nogil:
    """floor(a / b) for b > 0."""
    cdef int128 q = a / b
    if a % b != 0 and a < 0:
        q -= 1
    return q


cdef inline int64_t iabs(int64_t x) noexcept nogil:
    return -x if x < 0 else x


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


cdef inline int128 initial_requirement(MarketC* mk, int64_t size, int64_t buys, int64_t sells,
                                       int32_t leverage) noexcept nogil:
    """max(|s + B|, |s - S|) * mark * multiplier at the initial rate, rounded up."""
    cdef int64_t a = iabs(size + buys), b = iabs(size - sells)
    cdef int128 n = <int128>(a if a > b else b) * mk.mark * mk.multiplier
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
