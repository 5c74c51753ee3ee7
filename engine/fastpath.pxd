# cython: language_level=3
"""The msgpack fast path: plain new_order, cancel and amend commands read from their bytes
(see fastpath.pyx)."""
from libc.stdint cimport int64_t, int32_t

from .state cimport State, OrderCmd

cdef enum:
    FAST_NONE = 0           # not a plain command: decode it with msgspec
    FAST_NEW_ORDER          # out.order is ready for engine.entry.place
    FAST_CANCEL             # out.slot is the open order to cancel (its oid in out.oid)
    FAST_AMEND              # out.slot is the open order to amend: out.price, out.qty (0: as is)

ctypedef struct FastCmd:
    Py_ssize_t end              # where the command's object ends in the bytes read
    OrderCmd order
    int32_t slot
    int64_t oid
    int64_t ts
    int64_t price               # amend: the new price, 0 for unchanged (null)
    int64_t qty                 # amend: the new qty, 0 for unchanged (null)

# p[0:n] starts with the command (more may follow it: out.end says where it ends).
cdef int read(State s, const unsigned char* p, Py_ssize_t n, FastCmd* out) except -1   # O(n)
