# cython: language_level=3
"""The msgpack fast path: a plain new_order, cancel or amend read straight from its bytes, with
no Python object (contract: "Encoding"; the same commands the msgspec path decodes).

A new_order, cancel or amend as msgspec (or any canonical encoder) writes it is read here; anything
unusual (another type, an unknown or repeated key, a value of another type or out of range, a
non-ASCII string, an account or market not seen before, a cancel or amend of an order that is
not open) is left to the msgspec path, which has the exact rejection for it. So the fast path changes
speed, never behaviour: tests/engine/test_fast_path.py holds the two equal.
"""
from libc.string cimport memcpy, memcmp, strlen
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


cdef inline bint _eq(const unsigned char* a, Py_ssize_t n, const char* lit, Py_ssize_t m) noexcept nogil:
    return n == m and memcmp(a, lit, n) == 0


# The enum strings the fast path knows, from engine.messages in code order (sides, the two
# kinds without a trigger, the times in force but gtd, stp modes); NULL ends each table. The
# bytes live in _FAST_NAMES for the tables' pointers.
cdef const char* _FAST_SIDES[3]
cdef const char* _FAST_KINDS[3]
cdef const char* _FAST_TIFS[5]
cdef const char* _FAST_STPS[4]
_FAST_NAMES = tuple(tuple(n.encode() for n in names) for names in
                    (M.SIDES, M.ORDER_KINDS[:2], M.TIFS[:4], M.STP_MODES))


cdef void _table(const char** table, tuple names):
    cdef Py_ssize_t i
    for i in range(len(names)):
        table[i] = <bytes>names[i]
    table[len(names)] = NULL


_table(_FAST_SIDES, _FAST_NAMES[0])
_table(_FAST_KINDS, _FAST_NAMES[1])
_table(_FAST_TIFS, _FAST_NAMES[2])
_table(_FAST_STPS, _FAST_NAMES[3])


cdef Py_ssize_t _rd_choice(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                           const char** names, int* out) noexcept:
    """A string at p[i] that is one of `names`: its index into `out`; the index after, or -1."""
    cdef const unsigned char* s
    cdef Py_ssize_t ln
    cdef int k = 0
    i = _rd_str(p, i, n, &s, &ln)
    if i < 0:
        return -1
    while names[k] != NULL:
        if names[k][0] == s[0] and _eq(s, ln, names[k], strlen(names[k])):
            out[0] = k
            return i
        k += 1
    return -1


cdef Py_ssize_t _rd_int(const unsigned char* p, Py_ssize_t i, Py_ssize_t n, int64_t* out) noexcept nogil:
    """An integer that fits int64 at p[i]; the index after it, or -1."""
    cdef unsigned char c
    cdef uint64_t u = 0
    cdef int w = 0, k
    if i >= n:
        return -1
    c = p[i]
    if c <= 0x7f:
        out[0] = c
        return i + 1
    if c >= 0xe0:
        out[0] = <int64_t>c - 256
        return i + 1
    if c == 0xcc or c == 0xd0:
        w = 1
    elif c == 0xcd or c == 0xd1:
        w = 2
    elif c == 0xce or c == 0xd2:
        w = 4
    elif c == 0xcf or c == 0xd3:
        w = 8
    else:
        return -1
    if i + 1 + w > n:
        return -1
    for k in range(w):
        u = (u << 8) | p[i + 1 + k]
    if c >= 0xd0:                                   # signed: sign-extend
        if w < 8 and (u >> (8 * w - 1)) & 1:
            u |= ~((<uint64_t>1 << (8 * w)) - 1)
        out[0] = <int64_t>u
    else:
        if u > <uint64_t>0x7fffffffffffffff:
            return -1
        out[0] = <int64_t>u
    return i + 1 + w


cdef Py_ssize_t _rd_positive(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
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


cdef Py_ssize_t _rd_str(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                        const unsigned char** s, Py_ssize_t* ln) noexcept nogil:
    """A string at p[i]; the index after it, or -1."""
    cdef unsigned char c
    cdef Py_ssize_t L
    if i >= n:
        return -1
    c = p[i]
    if 0xa0 <= c <= 0xbf:
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
    if i + L > n:
        return -1
    s[0] = p + i
    ln[0] = L
    return i + L


cdef inline bint _ascii(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        if s[j] >= 0x80:
            return False
    return True


cdef Py_ssize_t _canonical_key(int is_str, int64_t v, const unsigned char* s, Py_ssize_t n,
                               unsigned char* out) noexcept nogil:
    """The canonical (smallest) msgpack encoding of an account key, as msgspec writes it."""
    cdef Py_ssize_t k = 0, j
    cdef int w = 0
    cdef unsigned char tag = 0
    cdef uint64_t u
    if is_str:
        if n < 32:
            out[0] = 0xa0 | n
            k = 1
        else:
            out[0] = 0xd9
            out[1] = <unsigned char>n
            k = 2
        memcpy(out + k, s, n)
        return k + n
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
        elif v >= -2147483648:
            tag = 0xd2; w = 4
        else:
            tag = 0xd3; w = 8
    out[0] = tag
    u = <uint64_t>v
    for j in range(w):
        out[w - j] = <unsigned char>(u & 0xff)
        u >>= 8
    return 1 + w


cdef int read(State s, const unsigned char* p, Py_ssize_t n, FastCmd* out) except -1:
    """Read a plain new_order, cancel or amend from its msgpack bytes into `out`:
    FAST_NEW_ORDER, FAST_CANCEL or FAST_AMEND, or FAST_NONE for anything the msgspec path must
    decode. Changes nothing."""
    cdef Py_ssize_t i = 0, count, kl, sl, j
    cdef const unsigned char* ks
    cdef const unsigned char* sv
    cdef const unsigned char* ty = NULL
    cdef Py_ssize_t ty_n = 0
    cdef unsigned char c
    cdef unsigned char keybuf[80]
    cdef int seen = 0, bit, is_new
    cdef int64_t v, ts = 0, qty = 0, price = 0
    cdef int32_t a = -1, m = -1, oi
    cdef int side = 0, kind = 0, tif = GTC, stp = CANCEL_MAKER
    cdef bint ro = False, cid_str = False
    cdef int64_t cid_i = 0
    cdef const unsigned char* cid_s = NULL
    cdef Py_ssize_t cid_n = 0
    cdef OrderCmd* oc = &out.order
    cdef MarketC* mk
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
        i = _rd_str(p, i, n, &ks, &kl)
        if i < 0:
            return FAST_NONE
        bit = 0
        if kl == 4 and ks[0] == 116 and memcmp(ks, b"type", 4) == 0:
            bit = F_TYPE
            i = _rd_str(p, i, n, &ty, &ty_n)
        elif kl == 2 and ks[0] == 116 and memcmp(ks, b"ts", 2) == 0:
            bit = F_TS
            i = _rd_int(p, i, n, &ts)
            if ts < 0 or ts > C_MAX_TS:          # the msgspec path refuses it, saying why
                return FAST_NONE
        elif kl == 7 and ks[0] == 97 and memcmp(ks, b"account", 7) == 0:
            bit = F_ACCOUNT
            if i < n and (p[i] <= 0x7f or p[i] >= 0xe0 or 0xcc <= p[i] <= 0xd3):
                i = _rd_int(p, i, n, &v)
                if i < 0:
                    return FAST_NONE
                a = find_account_bytes(s, keybuf, _canonical_key(0, v, NULL, 0, keybuf))
            else:
                i = _rd_str(p, i, n, &sv, &sl)
                if i < 0 or sl < 1 or sl > 64 or not _ascii(sv, sl):
                    return FAST_NONE
                a = find_account_bytes(s, keybuf, _canonical_key(1, 0, sv, sl, keybuf))
            if a < 0:
                return FAST_NONE
        elif kl == 6 and ks[0] == 109 and memcmp(ks, b"market", 6) == 0:
            bit = F_MARKET
            i = _rd_str(p, i, n, &sv, &sl)
            if i < 0:
                return FAST_NONE
            m = find_market_bytes(s, sv, sl)
            if m < 0:
                return FAST_NONE
        elif kl == 3 and ks[0] == 99 and memcmp(ks, b"cid", 3) == 0:
            bit = F_CID
            if i < n and (p[i] <= 0x7f or p[i] >= 0xe0 or 0xcc <= p[i] <= 0xd3):
                i = _rd_int(p, i, n, &cid_i)
                cid_str = False
            else:
                i = _rd_str(p, i, n, &cid_s, &cid_n)
                if i < 0 or cid_n < 1 or cid_n > 36 or not _ascii(cid_s, cid_n):
                    return FAST_NONE
                cid_str = True
        elif kl == 4 and ks[0] == 115 and memcmp(ks, b"side", 4) == 0:
            bit = F_SIDE
            i = _rd_choice(p, i, n, _FAST_SIDES, &side)
        elif kl == 4 and ks[0] == 107 and memcmp(ks, b"kind", 4) == 0:
            bit = F_KIND
            i = _rd_choice(p, i, n, _FAST_KINDS, &kind)
        elif kl == 3 and ks[0] == 113 and memcmp(ks, b"qty", 3) == 0:
            bit = F_QTY
            i = _rd_positive(p, i, n, C_MAX_QTY, &qty)
        elif kl == 5 and ks[0] == 112 and memcmp(ks, b"price", 5) == 0:
            bit = F_PRICE
            i = _rd_positive(p, i, n, C_MAX_PRICE, &price)
        elif kl == 13 and ks[0] == 116 and memcmp(ks, b"trigger_price", 13) == 0:
            bit = F_TRIGGER
            if i >= n or p[i] != 0xc0:
                return FAST_NONE
            i += 1
        elif kl == 9 and ks[0] == 101 and memcmp(ks, b"expire_ts", 9) == 0:
            bit = F_EXPIRE                        # null only: a gtd order takes the Struct path
            if i >= n or p[i] != 0xc0:
                return FAST_NONE
            i += 1
        elif kl == 3 and ks[0] == 116 and memcmp(ks, b"tif", 3) == 0:
            bit = F_TIF
            i = _rd_choice(p, i, n, _FAST_TIFS, &tif)
        elif kl == 11 and ks[0] == 114 and memcmp(ks, b"reduce_only", 11) == 0:
            bit = F_RO
            if i >= n or (p[i] != 0xc2 and p[i] != 0xc3):
                return FAST_NONE
            ro = p[i] == 0xc3
            i += 1
        elif kl == 3 and ks[0] == 115 and memcmp(ks, b"stp", 3) == 0:
            bit = F_STP
            i = _rd_choice(p, i, n, _FAST_STPS, &stp)
        else:
            return FAST_NONE
        if i < 0 or seen & bit:
            return FAST_NONE
        seen |= bit
    if not (seen & F_TYPE):
        return FAST_NONE
    out.end = i                                   # the object ends here (n: the data's end)
    if _eq(ty, ty_n, b"new_order", 9):
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
        oc.cid.i = 0 if cid_str else cid_i
        oc.cid.text = <const char*>cid_s if cid_str else NULL
        oc.cid.n = cid_n if cid_str else 0
        oc.cid.h = cid_hash_str(a, oc.cid.text, cid_n) if cid_str else cid_hash_int(a, cid_i)
        out.ts = ts
        return FAST_NEW_ORDER
    if _eq(ty, ty_n, b"cancel", 6):
        if seen & ~F_TS != (F_TYPE | F_ACCOUNT | F_MARKET | F_CID):
            return FAST_NONE
    elif _eq(ty, ty_n, b"amend", 5):
        if seen & ~(F_TS | F_PRICE | F_QTY) != (F_TYPE | F_ACCOUNT | F_MARKET | F_CID):
            return FAST_NONE
        mk = &s.mk[m]
        if (qty and (qty < mk.min_qty or qty > mk.max_qty)) or price > mk.max_price:
            return FAST_NONE                      # the msgspec path says why
        out.price = price
        out.qty = qty
    else:
        return FAST_NONE
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
    return FAST_CANCEL if ty_n == 6 else FAST_AMEND
