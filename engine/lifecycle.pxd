# cython: language_level=3
"""A market's lifecycle (docs/contract.md, "Market lifecycle", an extension): its status
(active, post_only, reduce_only, halted, settled), `update_market` (now or at a scheduled
clock time) and `settle_market` (delisting at a final price). Rare commands: Python objects
are fine here; the hot path reads only `MarketC.status`."""
from libc.stdint cimport int32_t, int64_t

from .state cimport State, MarketC

cdef int set_market_status(State s, object cmd) except -1
cdef int settle_market(State s, object cmd) except -1
cdef int update_market(State s, object cmd) except -1
cdef int due_updates(State s) except -1            # from the clock: scheduled updates now due
cdef bint too_fast(MarketC* mk, int64_t idx) noexcept  # the velocity guard's test of an index
cdef int pause(State s, int32_t m) except -1       # ... and what it does when it trips
cdef int end_pause(State s, int32_t m) except -1   # from the clock: the pause is over
