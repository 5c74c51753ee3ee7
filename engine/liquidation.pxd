# cython: language_level=3
"""Liquidation (contract: "Liquidation"): the pass after each mark update and funding
settlement, the book step into the book no worse than the bankruptcy price, the insurance fund's
backstop, and auto-deleveraging.

Scopes are taken most under-margined first (equity / maintenance; ties by account), at most the
market's `max_liquidations_per_update` per pass; the rest carry over to the next tick.
"""
from libc.stdint cimport int32_t

from .state cimport State

cdef int run(State s, int32_t m, bint calls) except -1
cdef int resume(State s, int32_t m) except -1
cdef int warn(State s, int32_t m) except -1
cdef int cover_settled(State s, int32_t m, list scopes, list gainers) except -1
