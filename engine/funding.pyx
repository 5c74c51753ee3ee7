# cython: language_level=3
"""Funding (see funding.pxd)."""
from libc.stdint cimport int64_t, int32_t

from .units cimport int128, PPM, floor_div, iabs, narrow
from .book cimport Book, BID, ASK
from .state cimport State, MarketC, touch, margin_moved, wake_by, jump_by
from . cimport events

# The notional (quote units) whose average fill price is the impact bid / ask of funding's
# premium: 10,000 USD, as dYdX and Binance size theirs for a retail-scale order.
cdef int64_t IMPACT_NOTIONAL = 10_000_000_000

from .markets import MAX_MONEY
cdef int128 OWED_LIMIT = <int128>MAX_MONEY * PPM   # 2^61 quote units, in the index's 1e-6 units


cdef int start(State s, int32_t m) except -1:
    """Funding runs from the first oracle, on multiples of the interval."""
    cdef MarketC* mk = &s.mk[m]
    if mk.next_funding == 0:
        mk.next_funding = (s.clock // mk.funding_interval_ns + 1) * mk.funding_interval_ns
        wake_by(s, mk.next_funding)
        jump_by(s, mk.next_funding + mk.funding_interval_ns)
    return 0


cdef int sample_premium(State s, int32_t m) except -1:
    """premium = (impact mid - index) / index, in ppm (toward zero), where the impact bid and
    ask are the average prices of selling and buying IMPACT_NOTIONAL (a missing or too thin
    side counts as the index)."""
    cdef MarketC* mk = &s.mk[m]
    cdef int128 bid = _impact_price(s, m, BID), ask = _impact_price(s, m, ASK)
    cdef int128 mid2 = bid + ask                      # twice the impact mid
    cdef int128 num = (mid2 - 2 * <int128>mk.index) * PPM
    cdef int128 den = 2 * <int128>mk.index
    mk.premium_sum += narrow(floor_div(num, den) if num >= 0 else -floor_div(-num, den))
    mk.premium_n += 1
    return 0


cdef int64_t _impact_price(State s, int32_t m, int side):
    """The average price (ticks, floor) at which IMPACT_NOTIONAL trades against `side`."""
    cdef Book b = s.books[m]
    cdef MarketC* mk = &s.mk[m]
    cdef int32_t j, lvl
    cdef int128 want = IMPACT_NOTIONAL, notional = 0, lots = 0, take, lvl_notional
    cdef int64_t price
    for j in range(b.n[side] - 1, -1, -1):
        lvl = b.slots[side][j]
        price = b.lv[lvl].price
        lvl_notional = <int128>b.lv[lvl].qty * price * mk.multiplier
        if notional + lvl_notional >= want:
            take = floor_div(want - notional, <int128>price * mk.multiplier)
            lots += take
            notional += take * price * mk.multiplier
            if lots == 0:
                return price
            return narrow(floor_div(notional, lots * mk.multiplier))
        notional += lvl_notional
        lots += b.lv[lvl].qty
    return mk.index


cdef bint due(State s, int32_t m) noexcept:
    return s.mk[m].next_funding and s.clock >= s.mk[m].next_funding


cdef int apply_boundary(State s, int32_t m) except -1:
    """The oldest boundary the clock has passed: rate = clamp(mean premium + clamp(interest -
    mean, -500, 500), -cap, cap); the cumulative index moves by index * multiplier * rate, and
    every position of the market owes its share (settled lazily). O(positions of the market).

    Boundaries with no premium sample since the last one all have the same rate (a mean of 0)
    and the same index: the clock jumping over k of them applies them at once, k x the move,
    in one `funding` event with `intervals: k` (an extension), so a long jump is O(positions)
    too, not O(k x positions). Sizes: index x multiplier <= 2^61 and k <= 2^62 / 1e9, so the
    move is below 2^114 and fits the int128 index."""
    cdef MarketC* mk = &s.mk[m]
    cdef int64_t mean, rate, adj, k = 1
    cdef int32_t p
    if mk.premium_n == 0:
        k = (s.clock - mk.next_funding) // mk.funding_interval_ns + 1
    mean = mk.premium_sum // mk.premium_n if mk.premium_n else 0
    if mean < 0 and mk.premium_n and mk.premium_sum % mk.premium_n:
        mean += 1                                 # toward zero
    adj = mk.interest_ppm - mean
    adj = 500 if adj > 500 else (-500 if adj < -500 else adj)
    rate = mean + adj
    rate = (mk.funding_cap_ppm if rate > mk.funding_cap_ppm else
            (-mk.funding_cap_ppm if rate < -mk.funding_cap_ppm else rate))
    mk.cum_funding += <int128>k * mk.index * mk.multiplier * rate
    margin_moved(s)
    mk.premium_sum = 0
    mk.premium_n = 0
    events.funding(s, m, rate, k)
    mk.next_funding += k * mk.funding_interval_ns
    if mk.funding_next_set:             # an update_market's funding parameters, from here on
        mk.funding_cap_ppm = mk.funding_cap_next
        mk.interest_ppm = mk.interest_next
        mk.funding_next_set = 0
    if s.margin:
        # funding moved the equity of every position here: their risk keys are stale
        for p in s.market_pos[m]:
            if s.pos[p].size:
                touch(s, s.pos[p].account)
    return 0


cdef int skip_boundaries(State s, int32_t m) except -1:
    """A halted market passes its boundaries with no payment and no event: funding pauses
    while trading does (docs/contract.md, "Market lifecycle"); the samples start again."""
    cdef MarketC* mk = &s.mk[m]
    mk.next_funding += ((s.clock - mk.next_funding) // mk.funding_interval_ns + 1) \
        * mk.funding_interval_ns
    mk.premium_sum = 0
    mk.premium_n = 0
    if mk.funding_next_set:
        mk.funding_cap_ppm = mk.funding_cap_next
        mk.interest_ppm = mk.interest_next
        mk.funding_next_set = 0
    return 0


cdef bint look_jump(State s, int64_t ts) except -1:
    """May the clock move to `ts` in one command? Not if what some position could owe (or be
    owed) in funding afterwards, its unsettled funding plus `k` boundaries at the capped rate,
    could pass 2^61 quote units (MAX_MONEY): funding owed stays an exact int64 by construction.
    Only a jump over two or more boundaries of a market is looked at, in O(positions of that
    market); one boundary moves the index by at most index x multiplier x cap. Sizes: k < 2^33,
    index x multiplier <= 2^61, cap <= 2^20: the move is below 2^114."""
    cdef int32_t m, p
    cdef int64_t k
    cdef int128 move, behind
    cdef MarketC* mk
    for m in range(s.n_markets):
        mk = &s.mk[m]
        if not mk.next_funding or ts < mk.next_funding + mk.funding_interval_ns:
            continue
        k = (ts - mk.next_funding) // mk.funding_interval_ns + 1
        move = <int128>k * mk.index * mk.multiplier * mk.funding_cap_ppm
        for p in s.market_pos[m]:
            if s.pos[p].size == 0:
                continue
            behind = mk.cum_funding - s.pos[p].funding_last
            if behind < 0:
                behind = -behind
            if behind + move > OWED_LIMIT // iabs(s.pos[p].size):
                return False
    return True
