# cython: language_level=3
"""The risk index (contract: "Liquidation", bounded work per mark update): per market, the
positions that a mark update must look at, so that a quiet update costs O(log n), not
O(accounts).

A position that is its scope's only one (isolated, or a cross account's single position) is
keyed by the mark at which its equity could meet 1.5x its maintenance requirement; a long is
looked at when the mark is at or below its key, a short at or above. Positions of cross
accounts holding several positions, and scopes currently warned, are looked at on every pass.
"""
from libc.stdint cimport int64_t, int32_t

from .state cimport State

cdef int rekey_dirty(State s) except -1          # O(accounts changed x log n)
cdef list candidates(State s, int32_t m)         # O(log n + k), slots in slot order
cdef int mark_called(State s, int32_t a, int32_t iso) except -1
cdef int rekey_exact(State s, int32_t p) except -1
cdef int index_restored(State s, int32_t p) except -1   # a snapshot's position, O(log n)
