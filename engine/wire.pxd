# cython: language_level=3
"""The event writer: events straight from C fields to JSON Lines or msgpack bytes.

The core calls these `cdef` methods while it matches; no Python object is made per event.
Every string the writer can emit is a token encoded once, at start-up, in both formats.
"""
cimport cython
from libc.stdint cimport int64_t, int32_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy
from cpython.object cimport PyObject

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
    cdef char* buf              # the bytes of `store` (take() hands large outputs over whole)
    cdef PyObject* store        # an owned bytes object of `cap` bytes
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


# ---- msgpack event templates: a whole order event from C fields -------------------------------
#
# One room check per event, then a cursor `d` moves through the constant key runs (copied with
# a compile-time length) and the values; w.length is written once at the end. For the msgpack
# format only (w.fmt == FMT_MSGPACK): the caller keeps the generic writes for JSON Lines.
# wire.pyx checks at import that each template writes what msgspec encodes for its Struct.

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    static inline __attribute__((always_inline)) void pdw_st16be(char* d, uint64_t v) {
        d[0] = (char)(v >> 8); d[1] = (char)v; }
    static inline __attribute__((always_inline)) void pdw_st32be(char* d, uint64_t v) {
    #if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        uint32_t x = __builtin_bswap32((uint32_t)v); memcpy(d, &x, 4);
    #else
        d[0] = (char)(v >> 24); d[1] = (char)(v >> 16); d[2] = (char)(v >> 8); d[3] = (char)v;
    #endif
    }
    static inline __attribute__((always_inline)) void pdw_st64be(char* d, uint64_t v) {
    #if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        uint64_t x = __builtin_bswap64(v); memcpy(d, &x, 8);
    #else
        int k; for (k = 7; k >= 0; k--) { d[k] = (char)v; v >>= 8; }
    #endif
    }
    """
    void pdw_st16be(char* d, uint64_t v) noexcept nogil
    void pdw_st32be(char* d, uint64_t v) noexcept nogil
    void pdw_st64be(char* d, uint64_t v) noexcept nogil


cdef inline char* mp_lit(char* d, const char* s, Py_ssize_t n) noexcept nogil:
    """A constant run of `n` bytes (n a compile-time constant: one or two stores)."""
    memcpy(d, s, n)
    return d + n


cdef inline char* mp_int(char* d, int64_t v) noexcept nogil:
    """Any int64 in its smallest msgpack encoding (as EventWriter.int64 writes it)."""
    if <uint64_t>v < 128:
        d[0] = <char>v
        return d + 1
    if v >= 0:
        if v < 0x100:
            d[0] = <char>0xcc
            d[1] = <char>v
            return d + 2
        if v < 0x10000:
            d[0] = <char>0xcd
            pdw_st16be(d + 1, <uint64_t>v)
            return d + 3
        if v < <int64_t>0x100000000:
            d[0] = <char>0xce
            pdw_st32be(d + 1, <uint64_t>v)
            return d + 5
        d[0] = <char>0xcf
        pdw_st64be(d + 1, <uint64_t>v)
        return d + 9
    if v >= -32:
        d[0] = <char>(v & 0xff)
        return d + 1
    if v >= -128:
        d[0] = <char>0xd0
        d[1] = <char>(v & 0xff)
        return d + 2
    if v >= -32768:
        d[0] = <char>0xd1
        pdw_st16be(d + 1, <uint64_t>v)
        return d + 3
    if v >= <int64_t>-2147483648:
        d[0] = <char>0xd2
        pdw_st32be(d + 1, <uint64_t>v)
        return d + 5
    d[0] = <char>0xd3
    pdw_st64be(d + 1, <uint64_t>v)
    return d + 9


cdef inline char* mp_bool(char* d, bint v) noexcept nogil:
    d[0] = <char>(0xc3 if v else 0xc2)
    return d + 1


cdef inline char* mp_padded(char* d, const char* p, Py_ssize_t n) noexcept nogil:
    """`n` bytes of a padded token or name, in whole PAD-byte blocks (the room covers it)."""
    cdef Py_ssize_t off = 0
    while off < n:
        memcpy(d + off, p + off, PAD)
        off += PAD
    return d + n


cdef inline char* mp_tok(EventWriter w, char* d, int t) noexcept:
    """A value token (a side, kind, tif or reason) known only at run time."""
    return mp_padded(d, w.tok_ptr[t], w.tok_len[t])


cdef inline char* mp_name(EventWriter w, char* d, int32_t name_id) noexcept:
    return mp_padded(d, w.name_ptr[name_id], w.name_len[name_id])


cdef inline char* mp_cid(char* d, bint is_str, int64_t i, const char* text,
                         Py_ssize_t n) noexcept nogil:
    """A cid: the integer, or the string (at most 144 bytes of UTF-8)."""
    if not is_str:
        return mp_int(d, i)
    if n < 32:
        d[0] = <char>(0xa0 | n)
        d += 1
    else:
        d[0] = <char>0xd9
        d[1] = <char>n
        d += 2
    memcpy(d, text, n)
    return d + n


cdef inline char* mp_open(EventWriter w) except NULL:
    """Room for one event (EVENT_ROOM bytes); the cursor where it starts."""
    if w.cap - w.length < EVENT_ROOM:
        w.reserve(EVENT_ROOM)
    return w.buf + w.length


cdef inline char* mp_order_head(EventWriter w, char* d, int64_t seq, int64_t ts, int32_t acct,
                                int32_t mkt, bint cid_str, int64_t cid_i, const char* cid_s,
                                Py_ssize_t cid_n, int64_t oid) noexcept:
    """seq, ts, account, market, cid, oid (after the map header and the type)."""
    d = mp_lit(d, b"\xa3seq", 4)
    d = mp_int(d, seq)
    d = mp_lit(d, b"\xa2ts", 3)
    d = mp_int(d, ts)
    d = mp_lit(d, b"\xa7account", 8)
    d = mp_name(w, d, acct)
    d = mp_lit(d, b"\xa6market", 7)
    d = mp_name(w, d, mkt)
    d = mp_lit(d, b"\xa3cid", 4)
    d = mp_cid(d, cid_str, cid_i, cid_s, cid_n)
    d = mp_lit(d, b"\xa3oid", 4)
    return mp_int(d, oid)


cdef inline int mp_accepted(EventWriter w, int64_t seq, int64_t ts, int32_t acct, int32_t mkt,
                            bint cid_str, int64_t cid_i, const char* cid_s, Py_ssize_t cid_n,
                            int64_t oid, int side_tok, int kind_tok, bint has_price,
                            int64_t price, int64_t qty, int tif_tok, bint ro) except -1:
    """order_accepted (13 keys); `has_price` False writes a null price."""
    cdef char* d = mp_open(w)
    d = mp_lit(d, b"\x8d\xa4type\xaeorder_accepted", 21)
    d = mp_order_head(w, d, seq, ts, acct, mkt, cid_str, cid_i, cid_s, cid_n, oid)
    d = mp_lit(d, b"\xa4side", 5)
    d = mp_tok(w, d, side_tok)
    d = mp_lit(d, b"\xa4kind", 5)
    d = mp_tok(w, d, kind_tok)
    d = mp_lit(d, b"\xa5price", 6)
    if has_price:
        d = mp_int(d, price)
    else:
        d[0] = <char>0xc0
        d += 1
    d = mp_lit(d, b"\xa3qty", 4)
    d = mp_int(d, qty)
    d = mp_lit(d, b"\xa3tif", 4)
    d = mp_tok(w, d, tif_tok)
    d = mp_lit(d, b"\xabreduce_only", 12)
    d = mp_bool(d, ro)
    w.length = d - w.buf
    return 0


cdef inline int mp_cancelled(EventWriter w, int64_t seq, int64_t ts, int32_t acct, int32_t mkt,
                             bint cid_str, int64_t cid_i, const char* cid_s, Py_ssize_t cid_n,
                             int64_t oid, int64_t remaining, int reason_tok) except -1:
    """order_cancelled (9 keys)."""
    cdef char* d = mp_open(w)
    d = mp_lit(d, b"\x89\xa4type\xaforder_cancelled", 22)
    d = mp_order_head(w, d, seq, ts, acct, mkt, cid_str, cid_i, cid_s, cid_n, oid)
    d = mp_lit(d, b"\xa9remaining", 10)
    d = mp_int(d, remaining)
    d = mp_lit(d, b"\xa6reason", 7)
    d = mp_tok(w, d, reason_tok)
    w.length = d - w.buf
    return 0


cdef inline int mp_amended(EventWriter w, int64_t seq, int64_t ts, int32_t acct, int32_t mkt,
                           bint cid_str, int64_t cid_i, const char* cid_s, Py_ssize_t cid_n,
                           int64_t oid, bint has_price, int64_t price, int64_t qty,
                           bint kept) except -1:
    """order_amended (10 keys); `has_price` False writes a null price."""
    cdef char* d = mp_open(w)
    d = mp_lit(d, b"\x8a\xa4type\xadorder_amended", 20)
    d = mp_order_head(w, d, seq, ts, acct, mkt, cid_str, cid_i, cid_s, cid_n, oid)
    d = mp_lit(d, b"\xa5price", 6)
    if has_price:
        d = mp_int(d, price)
    else:
        d[0] = <char>0xc0
        d += 1
    d = mp_lit(d, b"\xa3qty", 4)
    d = mp_int(d, qty)
    d = mp_lit(d, b"\xadpriority_kept", 14)
    d = mp_bool(d, kept)
    w.length = d - w.buf
    return 0


cdef inline int mp_fill(EventWriter w, int64_t seq, int64_t ts, int32_t mkt, int64_t price,
                        int64_t qty, int side_tok,
                        int32_t t_acct, bint t_str, int64_t t_cid, const char* t_s,
                        Py_ssize_t t_n, int64_t t_oid, int64_t t_rem,
                        int32_t m_acct, bint m_str, int64_t m_cid, const char* m_s,
                        Py_ssize_t m_n, int64_t m_oid, int64_t m_rem,
                        int64_t tfee, int64_t mfee, bint liq) except -1:
    """fill (18 keys)."""
    cdef char* d = mp_open(w)
    d = mp_lit(d, b"\xde\x00\x12\xa4type\xa4fill\xa3seq", 17)
    d = mp_int(d, seq)
    d = mp_lit(d, b"\xa2ts", 3)
    d = mp_int(d, ts)
    d = mp_lit(d, b"\xa6market", 7)
    d = mp_name(w, d, mkt)
    d = mp_lit(d, b"\xa5price", 6)
    d = mp_int(d, price)
    d = mp_lit(d, b"\xa3qty", 4)
    d = mp_int(d, qty)
    d = mp_lit(d, b"\xaataker_side", 11)
    d = mp_tok(w, d, side_tok)
    d = mp_lit(d, b"\xadtaker_account", 14)
    d = mp_name(w, d, t_acct)
    d = mp_lit(d, b"\xa9taker_cid", 10)
    d = mp_cid(d, t_str, t_cid, t_s, t_n)
    d = mp_lit(d, b"\xa9taker_oid", 10)
    d = mp_int(d, t_oid)
    d = mp_lit(d, b"\xaftaker_remaining", 16)
    d = mp_int(d, t_rem)
    d = mp_lit(d, b"\xadmaker_account", 14)
    d = mp_name(w, d, m_acct)
    d = mp_lit(d, b"\xa9maker_cid", 10)
    d = mp_cid(d, m_str, m_cid, m_s, m_n)
    d = mp_lit(d, b"\xa9maker_oid", 10)
    d = mp_int(d, m_oid)
    d = mp_lit(d, b"\xafmaker_remaining", 16)
    d = mp_int(d, m_rem)
    d = mp_lit(d, b"\xa9taker_fee", 10)
    d = mp_int(d, tfee)
    d = mp_lit(d, b"\xa9maker_fee", 10)
    d = mp_int(d, mfee)
    d = mp_lit(d, b"\xabliquidation", 12)
    d = mp_bool(d, liq)
    w.length = d - w.buf
    return 0
