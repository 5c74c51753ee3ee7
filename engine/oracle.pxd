# cython: language_level=3
"""A multi-source index (docs/contract.md, "A multi-source index", an extension): each `oracle`
of a market with `oracle_sources` names its source; the index is the weighted median of the
sources fresher than `oracle_max_age_s` and within `oracle_max_deviation_ppm` of their median,
and with fewer than `oracle_min_sources` of them the index is stale. A market without sources
is untouched by all of this (the contract's single index)."""
from libc.stdint cimport int64_t, int32_t

from .state cimport State

cdef int64_t source_price(State s, int32_t m, object source, int64_t price) except -2
cdef bint sources_stale(State s, int32_t m) except -1
