# cython: language_level=3
"""The msgpack fast path: a plain new_order, cancel or amend read straight from its bytes, with
no Python object (contract: "Encoding"; the same commands the msgspec path decodes).

A new_order, cancel or amend as msgspec (or any canonical encoder) writes it is read here; anything
unusual (another type, an unknown or repeated key, a value of another type or out of range, a
non-ASCII string, an account or market not seen before, a cancel or amend of an order that is
not open) is left to the msgspec path, which has the exact rejection for it. So the fast path changes
speed, never behaviour: tests/engine/test_fast_path.py holds the two equal.

How it reads: a key's length picks the few keys it can be, and fixed-size loads compare its
bytes (no string compare chain); integers take one branch for a fixint and one switch on the
width otherwise; the account is found by its canonical msgpack bytes (state.find_account_bytes),
the market by its UTF-8 bytes (state.find_market_bytes).
"""
from libc.string cimport memcpy
from libc.stdint cimport int64_t, int32_t, uint64_t

from .book cimport (cid_hash_int, cid_hash_str, LIMIT, MARKET, GTC, IOC, CANCEL_MAKER)
from .state cimport State, MarketC, OrderCmd, find_account_bytes, find_market_bytes
from .entry cimport order_cmd

from .markets import MAX_PRICE, MAX_QTY
from . import messages as M
from .messages import MAX_TS

cdef int64_t C_MAX_PRICE = MAX_PRICE
cdef int64_t C_MAX_QTY = MAX_QTY
cdef int64_t C_MAX_TS = MAX_TS


cdef extern from *:
    """
    #include <string.h>
    #include <stdint.h>
    static inline __attribute__((always_inline)) uint16_t pdx_ld16(const void* p) {
        uint16_t v; memcpy(&v, p, 2); return v; }
    static inline __attribute__((always_inline)) uint32_t pdx_ld32(const void* p) {
        uint32_t v; memcpy(&v, p, 4); return v; }
    static inline __attribute__((always_inline)) uint64_t pdx_ld64(const void* p) {
        uint64_t v; memcpy(&v, p, 8); return v; }
    /* a[0:n] == b[0:n] for n <= 16, in at most two loads a side (overlapping when n is not a
       power of two); with a constant n it is two compares. */
    static inline __attribute__((always_inline)) int pdx_eqn(const void* a, const void* b,
                                                             Py_ssize_t n) {
        const unsigned char* x = (const unsigned char*)a;
        const unsigned char* y = (const unsigned char*)b;
        if (n >= 8)
            return pdx_ld64(x) == pdx_ld64(y) && pdx_ld64(x + n - 8) == pdx_ld64(y + n - 8);
        if (n >= 4)
            return pdx_ld32(x) == pdx_ld32(y) && pdx_ld32(x + n - 4) == pdx_ld32(y + n - 4);
        if (n >= 2)
            return pdx_ld16(x) == pdx_ld16(y) && pdx_ld16(x + n - 2) == pdx_ld16(y + n - 2);
        return n == 0 || x[0] == y[0];
    }
    /* The constant run s[0:L] (L <= 16, a compile-time constant) at p[*at]: *at moves past
       it. */
    static inline __attribute__((always_inline)) int pdx_lit(const unsigned char* p,
            Py_ssize_t* at, Py_ssize_t n, const char* s, Py_ssize_t L) {
        if (L > n - *at || !pdx_eqn(p + *at, s, L)) return 0;
        *at += L;
        return 1;
    }
    /* The big-endian unsigned integer of w (1, 2, 4 or 8) bytes at p. */
    static inline __attribute__((always_inline)) uint64_t pdx_be(const unsigned char* p, int w) {
    #if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        switch (w) {
        case 1: return p[0];
        case 2: return __builtin_bswap16(pdx_ld16(p));
        case 4: return __builtin_bswap32(pdx_ld32(p));
        default: return __builtin_bswap64(pdx_ld64(p));
        }
    #else
        uint64_t u = 0; int k;
        for (k = 0; k < w; k++) u = (u << 8) | p[k];
        return u;
    #endif
    }
    """
    bint pdx_eqn(const void* a, const void* b, Py_ssize_t n) noexcept nogil
    uint64_t pdx_be(const unsigned char* p, int w) noexcept nogil
    bint _lit "pdx_lit" (const unsigned char* p, Py_ssize_t* at, Py_ssize_t n, const char* s,
                         Py_ssize_t L) noexcept nogil


cdef enum:
    F_TYPE = 1
    F_TS = 2
    F_ACCOUNT = 4
    F_MARKET = 8
    F_CID = 16
    F_SIDE = 32
    F_KIND = 64
    F_QTY = 128
    F_PRICE = 256
    F_TRIGGER = 512
    F_TIF = 1024
    F_RO = 2048
    F_STP = 4096
    F_EXPIRE = 8192

cdef enum:
    TY_NEW_ORDER = 1
    TY_CANCEL = 2
    TY_AMEND = 3


# The enum strings the fast path knows, from engine.messages in code order (sides, the two
# kinds without a trigger, the times in force but gtd, stp modes); a length of -1 ends each
# table. The bytes live in _FAST_NAMES for the tables' pointers.
ctypedef struct Names:
    const char* s[6]
    Py_ssize_t n[6]

cdef Names _SIDES, _KINDS, _TIFS, _STPS
_FAST_NAMES = tuple(tuple(n.encode() for n in names) for names in
                    (M.SIDES, M.ORDER_KINDS[:2], M.TIFS[:4], M.STP_MODES))


cdef void _table(Names* t, tuple names):
    cdef Py_ssize_t i
    assert len(names) < 6 and all(0 < len(b) <= 16 for b in names)
    for i in range(len(names)):
        t.s[i] = <bytes>names[i]
        t.n[i] = len(<bytes>names[i])
    t.n[len(names)] = -1


_table(&_SIDES, _FAST_NAMES[0])
_table(&_KINDS, _FAST_NAMES[1])
_table(&_TIFS, _FAST_NAMES[2])
_table(&_STPS, _FAST_NAMES[3])

# The codes of the values most orders carry, tried first as constant runs (canonical layout)
cdef int _C_BUY = M.SIDES.index("buy"), _C_SELL = M.SIDES.index("sell")
cdef int _C_LIMIT = M.ORDER_KINDS.index("limit"), _C_MARKET = M.ORDER_KINDS.index("market")
cdef int _C_GTC = M.TIFS.index("gtc"), _C_IOC = M.TIFS.index("ioc")
cdef int _C_CANCEL_MAKER = M.STP_MODES.index("cancel_maker")


cdef inline Py_ssize_t _rd_str(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                               const unsigned char** s, Py_ssize_t* ln) noexcept nogil:
    """A string at p[i]; the index after it, or -1."""
    cdef unsigned char c
    cdef Py_ssize_t L
    if i >= n:
        return -1
    c = p[i]
    if (c & 0xe0) == 0xa0:
        L = c & 0x1f
        i += 1
    elif c == 0xd9 and i + 1 < n:
        L = p[i + 1]
        i += 2
    elif c == 0xda and i + 2 < n:
        L = (p[i + 1] << 8) | p[i + 2]
        i += 3
    else:
        return -1
    if L > n - i:
        return -1
    s[0] = p + i
    ln[0] = L
    return i + L


cdef inline Py_ssize_t _rd_choice(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                                  Names* t, int* out) noexcept nogil:
    """A string at p[i] that is one of the names of `t`: its index into `out`; the index
    after, or -1."""
    cdef const unsigned char* s
    cdef Py_ssize_t ln
    cdef int k = 0
    i = _rd_str(p, i, n, &s, &ln)
    if i < 0:
        return -1
    while t.n[k] >= 0:
        if t.n[k] == ln and pdx_eqn(s, t.s[k], ln):
            out[0] = k
            return i
        k += 1
    return -1


cdef inline Py_ssize_t _rd_int(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                               int64_t* out) noexcept nogil:
    """An integer that fits int64 at p[i]; the index after it, or -1."""
    cdef unsigned char c
    cdef uint64_t u
    cdef int w, sh
    if i >= n:
        return -1
    c = p[i]
    if c <= 0x7f:
        out[0] = c
        return i + 1
    if c >= 0xe0:
        out[0] = <int64_t>c - 256
        return i + 1
    if c < 0xcc or c > 0xd3:
        return -1
    w = 1 << ((c - 0xcc) & 3)                       # cc/d0 1, cd/d1 2, ce/d2 4, cf/d3 8 bytes
    if w >= n - i:
        return -1
    u = pdx_be(p + i + 1, w)
    if c >= 0xd0:                                   # signed: sign-extend
        sh = 64 - 8 * w
        out[0] = (<int64_t>(u << sh)) >> sh
    else:
        if u > <uint64_t>0x7fffffffffffffff:
            return -1
        out[0] = <int64_t>u
    return i + 1 + w


cdef inline Py_ssize_t _rd_positive(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                                    int64_t most, int64_t* out) noexcept nogil:
    """An integer 1 .. `most`, or null (0 in `out`: a market order's price, an amend's
    "unchanged"); the index after it, or -1."""
    if i < n and p[i] == 0xc0:
        out[0] = 0
        return i + 1
    i = _rd_int(p, i, n, out)
    if i < 0 or out[0] <= 0 or out[0] > most:
        return -1
    return i


cdef inline bint _is_int(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    return i < n and (p[i] <= 0x7f or p[i] >= 0xe0 or 0xcc <= p[i] <= 0xd3)


cdef inline bint _ascii(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        if s[j] >= 0x80:
            return False
    return True


cdef Py_ssize_t _canonical_int(int64_t v, unsigned char* out) noexcept nogil:
    """The canonical (smallest) msgpack encoding of an integer, as msgspec writes it."""
    cdef int w = 0, j
    cdef unsigned char tag = 0
    cdef uint64_t u
    if 0 <= v < 128:
        out[0] = <unsigned char>v
        return 1
    if -32 <= v < 0:
        out[0] = <unsigned char>(v & 0xff)
        return 1
    if v > 0:
        if v < 0x100:
            tag = 0xcc; w = 1
        elif v < 0x10000:
            tag = 0xcd; w = 2
        elif v < <int64_t>0x100000000:
            tag = 0xce; w = 4
        else:
            tag = 0xcf; w = 8
    else:
        if v >= -128:
            tag = 0xd0; w = 1
        elif v >= -32768:
            tag = 0xd1; w = 2
        elif v >= <int64_t>-2147483648:
            tag = 0xd2; w = 4
        else:
            tag = 0xd3; w = 8
    out[0] = tag
    u = <uint64_t>v
    for j in range(w):
        out[w - j] = <unsigned char>(u & 0xff)
        u >>= 8
    return 1 + w


cdef inline int32_t _account(State s, const unsigned char* p, Py_ssize_t* at, Py_ssize_t n):
    """The account named at p[at[0]] (an integer or a string of 1 to 64 ASCII characters), by
    its canonical msgpack bytes; -1 (with at[0] = -1 if unreadable) when not known. at[0]
    moves past the value."""
    cdef Py_ssize_t i = at[0], start = at[0], sl
    cdef const unsigned char* sv
    cdef unsigned char keybuf[80]
    cdef int64_t v
    if _is_int(p, i, n):
        i = _rd_int(p, i, n, &v)
        at[0] = i
        if i < 0:
            return -1
        if p[start] <= 0x7f:                       # a fixint is its own canonical key
            return find_account_bytes(s, p + start, 1)
        return find_account_bytes(s, keybuf, _canonical_int(v, keybuf))
    i = _rd_str(p, i, n, &sv, &sl)
    at[0] = i
    if i < 0 or sl < 1 or sl > 64 or not _ascii(sv, sl):
        at[0] = -1
        return -1
    if sl < 32 and (p[start] & 0xe0) == 0xa0:      # a fixstr is its own canonical key
        return find_account_bytes(s, p + start, 1 + sl)
    if sl < 32:
        keybuf[0] = <unsigned char>(0xa0 | sl)
        memcpy(keybuf + 1, sv, sl)
        return find_account_bytes(s, keybuf, 1 + sl)
    keybuf[0] = 0xd9
    keybuf[1] = <unsigned char>sl
    memcpy(keybuf + 2, sv, sl)
    return find_account_bytes(s, keybuf, 2 + sl)



ctypedef struct Parsed:
    Py_ssize_t end
    int seen, ty, side, kind, tif, stp
    bint ro, cid_str
    int64_t ts, qty, price, cid_i
    int32_t a, m
    const unsigned char* cid_s
    Py_ssize_t cid_n


cdef inline Py_ssize_t _rd_cid(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                               Parsed* r) noexcept nogil:
    """A cid: an integer, or a string of 1 to 36 ASCII characters; the index after, or -1."""
    if _is_int(p, i, n):
        r.cid_str = False
        return _rd_int(p, i, n, &r.cid_i)
    i = _rd_str(p, i, n, &r.cid_s, &r.cid_n)
    if i < 0 or r.cid_n < 1 or r.cid_n > 36 or not _ascii(r.cid_s, r.cid_n):
        return -1
    r.cid_str = True
    return i


cdef int _read_canonical(State s, const unsigned char* p, Py_ssize_t n, Parsed* r) except -1:
    """A new_order or cancel laid out as msgspec writes it (every key, in the Struct's order,
    the smallest headers): the same fields the key loop would read, with each key a constant
    run compared in one or two loads. 1 if read; 0 for anything else (the key loop decides)."""
    cdef Py_ssize_t i = 0, sl
    cdef const unsigned char* sv
    if _lit(p, &i, n, b"\x8e\xa4type\xa9new_order", 16):
        r.ty = TY_NEW_ORDER
    elif _lit(p, &i, n, b"\x85\xa4type\xa6cancel", 13):
        r.ty = TY_CANCEL
    else:
        return 0
    if not _lit(p, &i, n, b"\xa7account", 8):
        return 0
    r.a = _account(s, p, &i, n)
    if r.a < 0 or not _lit(p, &i, n, b"\xa6market", 7):
        return 0
    i = _rd_str(p, i, n, &sv, &sl)
    if i < 0:
        return 0
    r.m = find_market_bytes(s, sv, sl)
    if r.m < 0 or not _lit(p, &i, n, b"\xa3cid", 4):
        return 0
    i = _rd_cid(p, i, n, r)
    if i < 0:
        return 0
    if r.ty == TY_CANCEL:
        r.seen = F_TYPE | F_ACCOUNT | F_MARKET | F_CID | F_TS
    else:
        if not _lit(p, &i, n, b"\xa4side", 5):
            return 0
        if _lit(p, &i, n, b"\xa3buy", 4):
            r.side = _C_BUY
        elif _lit(p, &i, n, b"\xa4sell", 5):
            r.side = _C_SELL
        else:
            i = _rd_choice(p, i, n, &_SIDES, &r.side)
        if i < 0 or not _lit(p, &i, n, b"\xa4kind", 5):
            return 0
        if _lit(p, &i, n, b"\xa5limit", 6):
            r.kind = _C_LIMIT
        elif _lit(p, &i, n, b"\xa6market", 7):
            r.kind = _C_MARKET
        else:
            i = _rd_choice(p, i, n, &_KINDS, &r.kind)
        if i < 0 or not _lit(p, &i, n, b"\xa3qty", 4):
            return 0
        i = _rd_positive(p, i, n, C_MAX_QTY, &r.qty)
        if i < 0 or not _lit(p, &i, n, b"\xa5price", 6):
            return 0
        i = _rd_positive(p, i, n, C_MAX_PRICE, &r.price)
        if (i < 0 or not _lit(p, &i, n, b"\xadtrigger_price\xc0", 15)
                or not _lit(p, &i, n, b"\xa3tif", 4)):
            return 0
        if _lit(p, &i, n, b"\xa3gtc", 4):
            r.tif = _C_GTC
        elif _lit(p, &i, n, b"\xa3ioc", 4):
            r.tif = _C_IOC
        else:
            i = _rd_choice(p, i, n, &_TIFS, &r.tif)
        if i < 0 or not _lit(p, &i, n, b"\xabreduce_only", 12) or i >= n:
            return 0
        if p[i] == 0xc3:
            r.ro = True
        elif p[i] != 0xc2:
            return 0
        i += 1
        if not _lit(p, &i, n, b"\xa3stp", 4):
            return 0
        if _lit(p, &i, n, b"\xaccancel_maker", 13):
            r.stp = _C_CANCEL_MAKER
        else:
            i = _rd_choice(p, i, n, &_STPS, &r.stp)
        if i < 0 or not _lit(p, &i, n, b"\xa9expire_ts\xc0", 11):
            return 0
        r.seen = (F_TYPE | F_ACCOUNT | F_MARKET | F_CID | F_SIDE | F_KIND | F_QTY | F_PRICE
                  | F_TRIGGER | F_TIF | F_RO | F_STP | F_EXPIRE | F_TS)
    if not _lit(p, &i, n, b"\xa2ts", 3):
        return 0
    i = _rd_int(p, i, n, &r.ts)
    if i < 0 or r.ts < 0 or r.ts > C_MAX_TS:
        return 0
    r.end = i
    return 1


cdef int read(State s, const unsigned char* p, Py_ssize_t n, FastCmd* out) except -1:
    """Read a plain new_order, cancel or amend from its msgpack bytes into `out`:
    FAST_NEW_ORDER, FAST_CANCEL or FAST_AMEND, or FAST_NONE for anything the msgspec path must
    decode. Changes nothing. O(n)."""
    cdef Py_ssize_t i = 0, count, kl, sl, j
    cdef const unsigned char* ks
    cdef const unsigned char* sv
    cdef unsigned char c
    cdef int seen = 0, bit, ty = 0
    cdef int64_t ts = 0, qty = 0, price = 0
    cdef int32_t a = -1, m = -1, oi
    cdef int side = 0, kind = 0, tif = GTC, stp = CANCEL_MAKER
    cdef bint ro = False, cid_str = False
    cdef int64_t cid_i = 0
    cdef const unsigned char* cid_s = NULL
    cdef Py_ssize_t cid_n = 0
    cdef OrderCmd* oc = &out.order
    cdef MarketC* mk
    cdef Parsed r
    r.side = 0; r.kind = 0; r.tif = GTC; r.stp = CANCEL_MAKER; r.ro = False
    r.qty = 0; r.price = 0; r.cid_i = 0; r.cid_s = NULL; r.cid_n = 0
    if _read_canonical(s, p, n, &r):
        i = r.end; seen = r.seen; ty = r.ty; ts = r.ts; qty = r.qty; price = r.price
        a = r.a; m = r.m; side = r.side; kind = r.kind; tif = r.tif; stp = r.stp; ro = r.ro
        cid_str = r.cid_str; cid_i = r.cid_i; cid_s = r.cid_s; cid_n = r.cid_n
        return _finish(s, out, i, seen, ty, ts, qty, price, a, m, side, kind, tif, stp, ro,
                       cid_str, cid_i, cid_s, cid_n)
    if n < 1:
        return FAST_NONE
    c = p[0]
    if 0x80 <= c <= 0x8f:
        count = c & 0x0f
        i = 1
    elif c == 0xde and n >= 3:
        count = (p[1] << 8) | p[2]
        i = 3
    else:
        return FAST_NONE
    for j in range(count):
        # the key: a fixstr inline, any other string header through _rd_str
        if i >= n:
            return FAST_NONE
        c = p[i]
        if (c & 0xe0) == 0xa0:
            kl = c & 0x1f
            ks = p + i + 1
            i += 1 + kl
            if i > n:
                return FAST_NONE
        else:
            i = _rd_str(p, i, n, &ks, &kl)
            if i < 0:
                return FAST_NONE
        # the key's length picks the keys it can be; fixed-size loads tell them apart
        if kl == 3:
            if pdx_eqn(ks, b"cid", 3):
                bit = F_CID
                if _is_int(p, i, n):
                    i = _rd_int(p, i, n, &cid_i)
                    cid_str = False
                else:
                    i = _rd_str(p, i, n, &cid_s, &cid_n)
                    if i < 0 or cid_n < 1 or cid_n > 36 or not _ascii(cid_s, cid_n):
                        return FAST_NONE
                    cid_str = True
            elif pdx_eqn(ks, b"qty", 3):
                bit = F_QTY
                i = _rd_positive(p, i, n, C_MAX_QTY, &qty)
            elif pdx_eqn(ks, b"tif", 3):
                bit = F_TIF
                i = _rd_choice(p, i, n, &_TIFS, &tif)
            elif pdx_eqn(ks, b"stp", 3):
                bit = F_STP
                i = _rd_choice(p, i, n, &_STPS, &stp)
            else:
                return FAST_NONE
        elif kl == 4:
            if pdx_eqn(ks, b"type", 4):
                bit = F_TYPE
                i = _rd_str(p, i, n, &sv, &sl)
                if i < 0:
                    return FAST_NONE
                if sl == 9 and pdx_eqn(sv, b"new_order", 9):
                    ty = TY_NEW_ORDER
                elif sl == 6 and pdx_eqn(sv, b"cancel", 6):
                    ty = TY_CANCEL
                elif sl == 5 and pdx_eqn(sv, b"amend", 5):
                    ty = TY_AMEND
                else:
                    return FAST_NONE
            elif pdx_eqn(ks, b"side", 4):
                bit = F_SIDE
                i = _rd_choice(p, i, n, &_SIDES, &side)
            elif pdx_eqn(ks, b"kind", 4):
                bit = F_KIND
                i = _rd_choice(p, i, n, &_KINDS, &kind)
            else:
                return FAST_NONE
        elif kl == 7:
            if not pdx_eqn(ks, b"account", 7):
                return FAST_NONE
            bit = F_ACCOUNT
            a = _account(s, p, &i, n)
            if a < 0:
                return FAST_NONE
        elif kl == 6:
            if not pdx_eqn(ks, b"market", 6):
                return FAST_NONE
            bit = F_MARKET
            i = _rd_str(p, i, n, &sv, &sl)
            if i < 0:
                return FAST_NONE
            m = find_market_bytes(s, sv, sl)
            if m < 0:
                return FAST_NONE
        elif kl == 5:
            if not pdx_eqn(ks, b"price", 5):
                return FAST_NONE
            bit = F_PRICE
            i = _rd_positive(p, i, n, C_MAX_PRICE, &price)
        elif kl == 2:
            if not pdx_eqn(ks, b"ts", 2):
                return FAST_NONE
            bit = F_TS
            i = _rd_int(p, i, n, &ts)
            if ts < 0 or ts > C_MAX_TS:            # the msgspec path refuses it, saying why
                return FAST_NONE
        elif kl == 13:
            if not pdx_eqn(ks, b"trigger_price", 13):
                return FAST_NONE
            bit = F_TRIGGER
            if i >= n or p[i] != 0xc0:
                return FAST_NONE
            i += 1
        elif kl == 11:
            if not pdx_eqn(ks, b"reduce_only", 11):
                return FAST_NONE
            bit = F_RO
            if i >= n or (p[i] != 0xc2 and p[i] != 0xc3):
                return FAST_NONE
            ro = p[i] == 0xc3
            i += 1
        elif kl == 9:
            if not pdx_eqn(ks, b"expire_ts", 9):
                return FAST_NONE
            bit = F_EXPIRE                        # null only: a gtd order takes the Struct path
            if i >= n or p[i] != 0xc0:
                return FAST_NONE
            i += 1
        else:
            return FAST_NONE
        if i < 0 or seen & bit:
            return FAST_NONE
        seen |= bit
    if ty == 0:
        return FAST_NONE
    return _finish(s, out, i, seen, ty, ts, qty, price, a, m, side, kind, tif, stp, ro,
                   cid_str, cid_i, cid_s, cid_n)


cdef inline int _finish(State s, FastCmd* out, Py_ssize_t i, int seen, int ty, int64_t ts,
                        int64_t qty, int64_t price, int32_t a, int32_t m, int side, int kind,
                        int tif, int stp, bint ro, bint cid_str, int64_t cid_i,
                        const unsigned char* cid_s, Py_ssize_t cid_n) except -1:
    """The command read (its keys in `seen`), checked and resolved into `out`."""
    cdef OrderCmd* oc = &out.order
    cdef MarketC* mk
    cdef int32_t oi
    out.end = i                                   # the object ends here (n: the data's end)
    if ty == TY_NEW_ORDER:
        if (seen & (F_ACCOUNT | F_MARKET | F_CID | F_SIDE | F_KIND | F_QTY)) != \
                (F_ACCOUNT | F_MARKET | F_CID | F_SIDE | F_KIND | F_QTY):
            return FAST_NONE
        mk = &s.mk[m]
        if (qty < mk.min_qty or qty > mk.max_qty or price > mk.max_price
                or (kind == LIMIT and price == 0)):
            return FAST_NONE
        if kind == MARKET:
            tif = IOC
            price = 0
        order_cmd(oc, a, m, side, kind, tif, stp, ro, qty, price, 0)
        oc.cid.is_str = cid_str
        if cid_str:
            oc.cid.i = 0
            oc.cid.text = <const char*>cid_s
            oc.cid.n = cid_n
            oc.cid.h = cid_hash_str(a, oc.cid.text, cid_n)
        else:
            oc.cid.i = cid_i
            oc.cid.text = NULL
            oc.cid.n = 0
            oc.cid.h = cid_hash_int(a, cid_i)
        out.ts = ts
        return FAST_NEW_ORDER
    if ty == TY_CANCEL:
        if seen & ~F_TS != (F_TYPE | F_ACCOUNT | F_MARKET | F_CID):
            return FAST_NONE
    else:
        if seen & ~(F_TS | F_PRICE | F_QTY) != (F_TYPE | F_ACCOUNT | F_MARKET | F_CID):
            return FAST_NONE
        mk = &s.mk[m]
        if (qty and (qty < mk.min_qty or qty > mk.max_qty)) or price > mk.max_price:
            return FAST_NONE                      # the msgspec path says why
        out.price = price
        out.qty = qty
    if cid_str:
        oi = s.pool.cid_find(a, True, 0, <const char*>cid_s, cid_n,
                                cid_hash_str(a, <const char*>cid_s, cid_n))
    else:
        oi = s.pool.cid_find(a, False, cid_i, NULL, 0, cid_hash_int(a, cid_i))
    if oi < 0 or s.pool.o[oi].market != m:
        return FAST_NONE                          # unknown_order: the msgspec path says so
    out.slot = oi
    out.oid = s.pool.o[oi].oid
    out.ts = ts
    return FAST_CANCEL if ty == TY_CANCEL else FAST_AMEND
