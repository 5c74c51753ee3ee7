# cython: language_level=3
"""The event writer: events straight from C fields to JSON Lines or msgpack bytes.

The core calls these `cdef` methods while it matches; no Python object is made per event.
Every string the writer can emit is a token encoded once, at start-up, in both formats.
"""
cimport cython
from libc.stdint cimport int64_t, int32_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

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
    V_GTD
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
    V_MARKET_STATUS
    V_EXPIRED
    N_TOKENS


@cython.final
cdef class EventWriter:
    # ---- fields --------------------------------------------------------------------------
    cdef char* buf
    cdef Py_ssize_t length
    cdef Py_ssize_t cap
    cdef readonly int fmt
    cdef const char* tok_ptr[N_TOKENS]    # each padded with zeros to a multiple of PAD bytes
    cdef Py_ssize_t tok_len[N_TOKENS]
    cdef list _tok_bytes        # keeps the (padded) token bytes alive: [fmt][tok]
    cdef list _tok_lens         # their lengths: [fmt][tok]
    cdef list _names            # registered names: (msgpack, json (both padded), their lengths)
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


# ---- the hot writes, inline in the rooms that call them: a bounds check and a copy ------------

cdef enum:
    PAD = 32            # tokens and names are stored padded to a multiple of PAD bytes, so an
                        # unchecked write copies whole PAD-byte blocks (fixed-size copies)
    EVENT_ROOM = 4096   # begin() makes this much room: an order, fill or mark event, its names
                        # included (accounts <= 64, markets <= 32 characters), needs < 2,100
                        # bytes, and at least PAD more stay free for the block copies


cdef inline void u_padded(EventWriter w, const char* p, Py_ssize_t n) noexcept:
    """Unchecked: `n` bytes of a padded token or name, copied in whole PAD-byte blocks (the
    room begin() made covers the overshoot)."""
    cdef Py_ssize_t off = 0
    cdef char* d = w.buf + w.length
    while off < n:
        memcpy(d + off, p + off, PAD)
        off += PAD
    w.length += n


cdef inline void u_key(EventWriter w, int k) noexcept:
    """Unchecked (inside an event opened by begin()): a key, type or value token."""
    u_padded(w, w.tok_ptr[k], w.tok_len[k])


cdef inline void u_name(EventWriter w, int32_t name_id) noexcept:
    """Unchecked (inside an event opened by begin()): a registered account or market name."""
    u_padded(w, w.name_ptr[name_id], w.name_len[name_id])


cdef inline void u_be(char* d, uint64_t v, int nbytes) noexcept:
    cdef int i
    for i in range(nbytes - 1, -1, -1):
        d[i] = <char>(v & 0xff)
        v >>= 8


cdef inline int u_int64(EventWriter w, int64_t v) except -1:
    """Inside an event opened by begin(): an integer; msgpack's non-negative ones inline."""
    cdef char* d
    if w.fmt != FMT_MSGPACK or v < 0:
        return w.int64(v)
    d = w.buf + w.length
    if v < 128:
        d[0] = <char>v
        w.length += 1
    elif v < 0x10000:
        if v < 0x100:
            d[0] = <char>0xcc
            d[1] = <char>v
            w.length += 2
        else:
            d[0] = <char>0xcd
            u_be(d + 1, v, 2)
            w.length += 3
    elif v < <int64_t>0x100000000:
        d[0] = <char>0xce
        u_be(d + 1, v, 4)
        w.length += 5
    else:
        d[0] = <char>0xcf
        u_be(d + 1, v, 8)
        w.length += 9
    return 0


cdef inline int w_raw(EventWriter w, const char* p, Py_ssize_t n) except -1:
    if w.length + n > w.cap:
        w.reserve(n)
    memcpy(w.buf + w.length, p, n)
    w.length += n
    return 0


cdef inline int w_key(EventWriter w, int k) except -1:
    """A key token (or any token: a type, a side, a reason)."""
    return w_raw(w, w.tok_ptr[k], w.tok_len[k])


cdef inline int w_name(EventWriter w, int32_t name_id) except -1:
    return w_raw(w, w.name_ptr[name_id], w.name_len[name_id])


cdef inline int w_int64(EventWriter w, int64_t v) except -1:
    """An integer: a positive fixint inline, anything else through EventWriter.int64."""
    if w.fmt == FMT_MSGPACK and 0 <= v < 128 and w.length < w.cap:
        w.buf[w.length] = <char>v
        w.length += 1
        return 0
    return w.int64(v)


cdef inline int w_end(EventWriter w) except -1:
    """Close an event (a newline in JSON Lines; nothing to do in msgpack)."""
    if w.fmt == FMT_JSON:
        return w.end()
    return 0


cdef inline int w_bool(EventWriter w, bint v) except -1:
    if w.fmt == FMT_MSGPACK and w.length < w.cap:
        w.buf[w.length] = <char>(0xc3 if v else 0xc2)
        w.length += 1
        return 0
    return w.boolean(v)


# Index just past the msgpack object at `i` in p[0:n]; -1 if the data ends inside it; raises
# ValueError for a byte that starts no object. O(size of the object).
cdef Py_ssize_t skip_object(const unsigned char* p, Py_ssize_t i, Py_ssize_t n, int depth) except -2
