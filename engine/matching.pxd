# cython: language_level=3
"""Matching (contract: "Orders and matching"): the price-time walk, time in force, self-trade
prevention, reduce-only, and the pre-fill margin check before every fill.

One walk: a real one trades; a dry one (FOK's "would it all fill?") takes the same steps and
changes nothing. The pre-fill check asks engine.margin, the money moves through engine.ledger.
"""
from libc.stdint cimport int64_t, int32_t

from .state cimport State, Traded

# Why the walk stopped early.
cdef enum Stop:
    STOP_NONE = 0           # the book or the limit ran out, or the taker filled
    STOP_SELF_TRADE
    STOP_REDUCE_ONLY
    STOP_MARGIN
    STOP_UNFILLED           # a dry walk that would leave some of the taker unfilled

cdef int walk(State s, int32_t t, int64_t limit, bint dry,
              Traded* traded) except -1            # O(levels + fills)
cdef int finish_taker(State s, int32_t t, int stop) except -1          # cancel or rest the rest
cdef int rest(State s, int32_t i) except -1                            # O(1), O(n) new level
cdef int unrest(State s, int32_t i) except -1                          # rest's inverse, O(1)
cdef int shrink(State s, int32_t i, int64_t qty) except -1             # in place, O(1)
cdef int opened(State s, int32_t i) except -1                          # a new open order, O(1)
cdef int drop(State s, int32_t i) except -1                            # O(1), no event
cdef int cancel_order(State s, int32_t i, int reason) except -1        # event, then drop
cdef int cancel_orders(State s, int32_t a, int32_t m, int reason) except -1   # m = -1: all
