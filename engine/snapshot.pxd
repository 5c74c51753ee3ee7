# cython: language_level=3
"""Snapshots: the whole engine state as bytes, and an engine built again from them (the
durability of a venue that restarts: docs/operations.md). Same build only: the C structs are
written as they are in memory, behind a layout fingerprint; the journal is the portable record."""
from .state cimport State

cdef bytes dump(State s)
cdef int load(State s, bytes data) except -1      # into a State made with the same margin flag
