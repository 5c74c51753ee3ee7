# cython: language_level=3
"""The event writer: events straight from C fields to JSON Lines or msgpack bytes.

The core calls these `cdef` methods while it matches; no Python object is made per event.
Every string the writer can emit is a token encoded once, at start-up, in both formats.
"""
cimport cython
from libc.stdint cimport int64_t, int32_t, uint8_t, uint32_t, uint64_t

# ---- output formats -----------------------------------------------------------------------
cdef enum Fmt:
    FMT_MSGPACK = 0
    FMT_JSON = 1

# ---- tokens: event types, keys and string values (order = TOKENS in wire.pyx) --------------
cdef enum Tok:
    # event types
    T_ORDER_ACCEPTED = 0
    T_REJECTED
    T_FILL
    T_ORDER_CANCELLED
    T_ORDER_AMENDED
    T_MARK
    T_STATE_HASH
    # keys
    K_ACCOUNT
    K_MARKET
    K_CID
    K_OID
    K_SIDE
    K_KIND
    K_PRICE
    K_QTY
    K_TIF
    K_REDUCE_ONLY
    K_COMMAND
    K_REASON
    K_DETAIL
    K_TAKER_SIDE
    K_TAKER_ACCOUNT
    K_TAKER_CID
    K_TAKER_OID
    K_TAKER_REMAINING
    K_MAKER_ACCOUNT
    K_MAKER_CID
    K_MAKER_OID
    K_MAKER_REMAINING
    K_TAKER_FEE
    K_MAKER_FEE
    K_LIQUIDATION
    K_REMAINING
    K_PRIORITY_KEPT
    K_INDEX
    K_MARK
    K_HASH
    # values: sides
    V_BUY
    V_SELL
    # values: order kinds
    V_LIMIT
    V_MARKET
    V_STOP_MARKET
    V_STOP_LIMIT
    V_TAKE_PROFIT_MARKET
    V_TAKE_PROFIT_LIMIT
    # values: time in force
    V_GTC
    V_IOC
    V_FOK
    V_ALO
    # values: cancel reasons
    V_USER
    V_IOC_REMAINDER
    V_FOK_UNFILLED
    V_SELF_TRADE
    V_MARGIN
    V_LIQUIDATION
    V_REDUCE_ONLY
    V_PRICE_OUT_OF_BAND
    V_POST_ONLY_WOULD_CROSS
    N_TOKENS


@cython.final
cdef class EventWriter:
    # ---- fields --------------------------------------------------------------------------
    cdef char* buf
    cdef Py_ssize_t length
    cdef Py_ssize_t cap
    cdef readonly int fmt
    cdef const char* tok_ptr[N_TOKENS]
    cdef Py_ssize_t tok_len[N_TOKENS]
    cdef list _tok_bytes        # keeps the token bytes alive: [fmt][tok]
    cdef list _names            # registered names: (msgpack bytes, json bytes)
    cdef const char** name_ptr
    cdef Py_ssize_t* name_len
    cdef Py_ssize_t n_names
    cdef Py_ssize_t names_cap

    # ---- Python-facing API -----------------------------------------------------------------
    cpdef void set_format(self, int fmt)
    cpdef int register_name(self, object name) except -1
    cpdef bytes take(self)
    cpdef void clear(self)

    # ---- the core's API (all O(1) amortised, no Python objects) ------------------------------
    cdef int reserve(self, Py_ssize_t n) except -1
    cdef int begin(self, int etype, int nfields, int64_t seq, int64_t ts) except -1
    cdef int end(self) except -1
    cdef int key(self, int k) except -1
    cdef int tok(self, int t) except -1
    cdef int name(self, int32_t name_id) except -1
    cdef int int64(self, int64_t v) except -1
    cdef int boolean(self, bint v) except -1
    cdef int null(self) except -1
    cdef int utf8(self, const char* s, Py_ssize_t n) except -1
    cdef int pystr(self, str s) except -1
    cdef int pyobj(self, object o) except -1
    cdef int struct_event(self, object ev) except -1
    cdef int array_header(self, uint32_t n) except -1
    cdef void _raw(self, const char* p, Py_ssize_t n) noexcept
    cdef void _byte(self, char c) noexcept
    cdef void _be(self, uint64_t v, int nbytes) noexcept


# Index just past the msgpack object at `i` in p[0:n]; -1 if the data ends inside it; raises
# ValueError for a byte that starts no object. O(size of the object).
cdef Py_ssize_t skip_object(const unsigned char* p, Py_ssize_t i, Py_ssize_t n, int depth) except -2
