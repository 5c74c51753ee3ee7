# cython: language_level=3
"""Events: the only owner of `seq` and of the event buffer (contract: "Events").

Every event the engine emits is written here, numbered by `_next` (the one place `seq` moves),
stamped with the engine clock, and encoded by engine.wire's writer straight from C fields to
msgpack or JSON Lines. The rare events (account, audit, balance, funding, ...) are msgspec Structs
encoded whole. For `Engine.execute` the order events are made as Structs straight from the C
fields (begin_structs), and only the rare ones written in a call are decoded back.
"""
from libc.stdint cimport int64_t, int32_t

from .units cimport int128
from .state cimport State, OrderCmd, Output

# ---- a call's output modes (state.pxd's Output: written here only) -------------------------
cdef inline int open_call(State s, bint quiet, bint log_fills) except -1:
    """Open a call (or the next command of a records batch): its modes, no reason yet, no
    fill kept. O(1)."""
    cdef Output o = s.out
    o.quiet = quiet
    o.log_fills = log_fills
    o.last_reason = None
    o.n_logged = 0
    if o.log_strs:
        o.log_strs.clear()
    return 0


cdef inline void close_call(State s) noexcept:
    """The call is over: its modes off (what it collected stays, for the caller). O(1)."""
    s.out.quiet = False
    s.out.log_fills = False


cdef int log_rejections(State s, list into) except -1               # None: off
cdef int drop_structs(State s) except -1                            # an execute that failed
cdef int log_fill(State s, int32_t t, int32_t mi, int64_t price, int64_t q) except -1

# ---- the output buffer ----------------------------------------------------------------------
cdef int begin_output(State s, int fmt, bint counted) except -1   # counted: a msgpack array
cdef bytes take_output(State s, int64_t first_seq, bint counted)
cdef int begin_structs(State s) except -1                         # Engine.execute
cdef list take_structs(State s, int64_t first_seq)
cdef int begin_route(State s) except -1                           # Engine.route
cdef tuple take_route(State s)
cdef int drop_rows(State s) except -1

cdef enum:
    R_RARE = -1         # a routed row's kind for an event written from a Struct (the row
                        # carries it); the others' kinds are their wire.pxd T_ tokens

# ---- order lifecycle (O(1), no Python object) -------------------------------------------------
cdef int accepted(State s, int32_t i, int64_t qty) except -1
cdef int cancelled(State s, int32_t i, int reason) except -1
cdef int amended(State s, int32_t i, bint kept) except -1
cdef int fill(State s, int32_t t, int32_t mi, int64_t price, int64_t q, int64_t tfee,
              int64_t mfee) except -1
cdef int mark(State s, int32_t m) except -1

# ---- rejections ------------------------------------------------------------------------------
cdef int reject(State s, str command, str reason, str detail, object account=*,
                object market=*, object cid=*) except -1
cdef int reject_order(State s, OrderCmd* c, str reason, str detail) except -1

# ---- the rare events, as Structs -------------------------------------------------------------
cdef int triggered(State s, int32_t i, int64_t mark) except -1
cdef int funding(State s, int32_t m, int64_t rate, int64_t intervals) except -1
cdef int liquidation(State s, int32_t a, int32_t m, int side, int64_t qty, int64_t price,
                     str kind, int64_t fee) except -1
cdef int margin_call(State s, int32_t a, int128 equity, int128 mm) except -1
cdef int balance(State s, int32_t a, str reason) except -1
cdef int state_hash(State s, str digest) except -1
cdef int report(State s, object cls, dict fields) except -1
