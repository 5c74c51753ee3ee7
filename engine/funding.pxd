# cython: language_level=3
"""Funding (contract: "Funding"): premium samples of the impact mid on every oracle, the clamped
rate at each interval boundary, and the market's cumulative index that positions settle against
lazily (engine.ledger.settle).
"""
from libc.stdint cimport int64_t, int32_t

from .state cimport State

cdef int start(State s, int32_t m) except -1               # from the first oracle
cdef int sample_premium(State s, int32_t m) except -1      # O(levels within the impact notional)
cdef bint due(State s, int32_t m) noexcept                 # has the clock passed a boundary?
cdef int apply_boundary(State s, int32_t m) except -1      # the oldest boundary passed
cdef int skip_boundaries(State s, int32_t m) except -1    # a halted market's: no payment
cdef bint look_jump(State s, int64_t ts) except -1         # jump_fits' look at every market


cdef inline bint jump_fits(State s, int64_t ts) except -1:
    """May the clock move to `ts` in one command? (look_jump.) O(1) below every market's
    boundary after next (State.jump_quiet), where there is nothing to look at."""
    return ts < s.jump_quiet or look_jump(s, ts)
