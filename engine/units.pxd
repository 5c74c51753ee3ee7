# cython: language_level=3
"""Integer types, units and exact division: the leaf every room of the engine cimports.

Units (the contract's "Units"): prices in ticks, quantities in lots, money in quote units
(1 = 0.000001 USD), rates in ppm, time in nanoseconds. Products of two or three of them are taken
in 128 bits (`int128`); C division truncates toward zero, so rounding goes through `ceil_div` and
`floor_div`, whose direction the contract fixes case by case.
"""
cimport cython
from cpython.long cimport PyLong_AsLongLongAndOverflow
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

cdef extern from *:
    ctypedef long long int128 "__int128"

cdef enum:
    PPM = 1000000               # parts per million
    NS = 1000000000             # nanoseconds per second


# The debug build's checks (setup.py, PERPDEX_DEBUG=1 defines PERPDEX_CHECKS): `if CHECKS:`
# branches are compiled out of the normal build by the C compiler.
cdef extern from *:
    """
    #ifndef PERPDEX_CHECKS
    #define PERPDEX_CHECKS 0
    #endif
    """
    const bint CHECKS "PERPDEX_CHECKS"


cdef inline bint _fits64(int128 a, int128 b) noexcept nogil:
    return <int128><int64_t>a == a and 0 < b <= <int128>0x7FFFFFFFFFFFFFFF


@cython.cdivision(True)
cdef inline int128 floor_div(int128 a, int128 b) noexcept nogil:
    """floor(a / b) for b > 0 (C division truncates toward zero). Operands that fit int64 (the
    usual case) divide in 64 bits, by a multiply where `b` is a constant: the same result."""
    cdef int64_t a64, b64, q64
    cdef int128 q
    if _fits64(a, b):
        a64 = <int64_t>a
        b64 = <int64_t>b
        q64 = a64 / b64
        if a64 % b64 != 0 and a64 < 0:
            q64 -= 1
        return q64
    q = a / b
    if a % b != 0 and a < 0:
        q -= 1
    return q


cdef inline int128 ceil_div(int128 a, int128 b) noexcept nogil:
    """ceil(a / b) for b > 0: -floor(-a / b)."""
    return -floor_div(-a, b)


cdef inline int64_t iabs(int64_t x) noexcept nogil:
    return -x if x < 0 else x


cdef inline uint64_t fnv1a(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """FNV-1a over n bytes: deterministic (unlike Python's salted str hash)."""
    cdef uint64_t h = <uint64_t>0xcbf29ce484222325
    cdef Py_ssize_t j
    for j in range(n):
        h ^= s[j]
        h *= <uint64_t>0x100000001b3
    return h


cdef inline int64_t positive(object v, int64_t limit):
    """`v` as a positive integer no larger than `limit`, or 0 when it is not one (not an int,
    a bool, <= 0, or too large). Checking at the edge: what passes fits its bound."""
    cdef int overflow = 0
    cdef long long x
    if type(v) is not int:
        return 0
    x = PyLong_AsLongLongAndOverflow(v, &overflow)
    if overflow or x <= 0 or x > limit:
        return 0
    return x


cdef inline object py128(int128 x):
    """An int128 as a Python int, exactly (Cython sees the type as long long and would
    truncate above 2**63)."""
    return (<object><int64_t>(x >> 64)) * 18446744073709551616 + <object><uint64_t>(
        x & <int128>0xFFFFFFFFFFFFFFFF)


cdef inline int64_t narrow(int128 v) except? -1:
    """`v` as an int64: every narrowing of a 128-bit product goes through here. The bounds of
    docs/limits.md make it fit by construction; the debug build checks it (OverflowError)."""
    if CHECKS and <int128><int64_t>v != v:
        raise OverflowError(f"a 128-bit value does not fit int64 where the engine narrows it "
                            f"(docs/limits.md): {py128(v)}")
    return <int64_t>v


cdef inline void* grow_zeroed(void* p, size_t old, size_t new) noexcept nogil:
    """`p`'s first `old` bytes in a new block of `new` bytes, the rest zero, and `p` freed;
    NULL (`p` kept) when there is no memory. Every array the engine grows is zeroed, so that no
    leftover byte reaches a snapshot; calloc's zeros are fresh pages, never touched until used,
    where realloc and a memset would make the whole new capacity resident. O(old)."""
    cdef void* q = calloc(1, new)
    if q == NULL:
        return NULL
    if old:
        memcpy(q, p, old)
    free(p)
    return q
