# cython: language_level=3
"""Reports: query_account, audit and state_hash as events; the canonical state (its digest is the
state hash), the book's best levels, positions, and the integrity checks, as Python functions
(`state`, `book`, `position`, `check_integrity`, `risk_violations`) that change nothing."""
from .state cimport State

cdef int query_account(State st, object key) except -1     # O(positions + orders of it)
cdef int audit(State st) except -1                         # O(accounts + positions)
cdef int state_hash(State st) except -1                    # O(orders + positions)
