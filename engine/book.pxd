# cython: language_level=3
"""The order book: an order pool, price levels with FIFO queues, and the per-account cid index.

Knows nothing of accounts' money, margin or events. Orders are C structs in one preallocated,
growable array, addressed by slot; every list (a level's queue, an account's open orders, a cid
hash chain, the free list) is intrusive, so adding, cancelling and filling an order allocate
nothing and cost O(1) however deep the level is.

Slots are stable, but the array may move when it grows: never hold an `Order*` across `alloc()`.
"""
cimport cython
from libc.stdint cimport int64_t, uint64_t, int32_t, uint32_t, uint8_t

from .units cimport fnv1a


cdef enum:
    CID_BYTES = 144          # 36 characters of UTF-8, at most 4 bytes each

# Order attributes; each enum follows the order of its tokens in engine.wire (V_BUY + side, ...).
cdef enum:
    BID = 0
    ASK = 1

cdef enum:
    LIMIT = 0
    MARKET
    STOP_MARKET
    STOP_LIMIT
    TAKE_PROFIT_MARKET
    TAKE_PROFIT_LIMIT

cdef enum:
    GTC = 0
    IOC
    FOK
    ALO
    GTD                         # an extension: good till `expire_ts` (engine.entry)

cdef enum:
    CANCEL_MAKER = 0
    CANCEL_TAKER
    CANCEL_BOTH

ctypedef struct Order:
    int64_t oid
    int64_t price            # ticks; 0 for a market order
    int64_t qty              # remaining lots
    int64_t cid_int          # the cid when it is an integer
    int32_t account
    int32_t market
    int32_t level            # level slot while resting, else -1
    int32_t prev             # FIFO neighbours in the level; `next` also links the free list
    int32_t next
    int32_t aprev            # the account's open orders, in acceptance order
    int32_t anext
    uint8_t side             # BID / ASK
    uint8_t kind
    uint8_t tif
    uint8_t stp
    uint8_t reduce_only
    uint8_t cid_is_str
    uint8_t cid_len          # bytes of the string cid, kept in OrderPool.cid_text
    uint8_t live
    uint8_t armed            # a trigger order waiting off-book for its mark

ctypedef struct Level:
    int64_t price
    int64_t qty              # sum of the remaining qty of its orders
    int32_t head             # oldest order (first to fill)
    int32_t tail
    int32_t count


# One entry of the cid index: the high 32 bits of the order's cid hash (its low bits the home
# bucket) and its pool slot (-1 empty; -2 a tombstone, which a removal no longer leaves: it
# moves the entries after it back instead). A probe compares tags in the table and reads an
# Order only when a tag matches, so looking up a cid that is not there touches no order.
ctypedef struct CidEntry:
    uint32_t tag
    int32_t slot


cdef inline uint64_t _mix(uint64_t x) noexcept nogil:
    """A multiply-xorshift: deterministic (unlike Python's salted str hash); the product's
    high half, every input bit in it, is the cid index entry's tag, whose low bits pick its
    bucket (so the table is rebuilt, and entries moved back, from the tags alone)."""
    x ^= x >> 32
    x *= <uint64_t>0xd6e8feb86659fd93
    return x ^ (x >> 32)


cdef inline uint64_t cid_hash_int(int32_t account, int64_t cid) noexcept nogil:
    return _mix(<uint64_t>cid ^ (<uint64_t>account << 40) ^ <uint64_t>0x9e3779b97f4a7c15)


cdef inline uint64_t cid_hash_str(int32_t account, const char* s, Py_ssize_t n) noexcept nogil:
    return _mix(fnv1a(<const unsigned char*>s, n) ^ (<uint64_t>account << 40))


@cython.final
cdef class OrderPool:
    # ---- fields --------------------------------------------------------------------------
    cdef Order* o
    cdef char* cid_text             # CID_BYTES per slot: cold, read only to compare and print
    cdef int32_t cap
    cdef int32_t free_head
    cdef readonly int32_t n_live
    cdef CidEntry* cids             # the cid index: open addressing, linear probing, at most
    cdef uint64_t mask              # half full (live entries and tombstones); mask + 1 entries
                                    # (below 2^32: a tag's low bits pick the bucket)
    cdef int32_t n_tombs
    cdef int32_t* acct_head         # each account's open orders
    cdef int32_t* acct_tail
    cdef int32_t acct_cap

    # ---- API -----------------------------------------------------------------------------
    cdef int32_t alloc(self) except -1
    cdef void release(self, int32_t i) noexcept
    cdef int ensure_accounts(self, int32_t n) except -1
    cdef int32_t cid_find(self, int32_t account, bint is_str, int64_t cid_int,
                          const char* text, Py_ssize_t n, uint64_t h) noexcept
    cdef int cid_insert(self, int32_t i) except -1
    cdef void cid_remove(self, int32_t i) noexcept
    cdef void account_link(self, int32_t i) noexcept
    cdef void account_unlink(self, int32_t i) noexcept
    cdef int _rehash(self, uint64_t nmask) except -1
    cdef uint64_t _hash(self, int32_t i) noexcept


@cython.final
cdef class Book:
    # ---- fields --------------------------------------------------------------------------
    cdef Level* lv
    cdef int32_t lv_cap
    cdef int32_t lv_free
    # Per side, the level slots sorted by key (bid: price, ask: -price), best at the end.
    cdef int32_t* slots[2]
    cdef int64_t* keys[2]
    cdef int32_t n[2]
    cdef int32_t side_cap[2]

    # ---- API (n = levels on that side) -------------------------------------------------------
    cdef int32_t best(self, int side) noexcept                         # O(1)
    cdef int32_t find(self, int side, int64_t price) noexcept          # O(log n)
    cdef int push_back(self, OrderPool pool, int32_t i) except -1      # O(1), O(n) for a new level
    cdef void unlink(self, OrderPool pool, int32_t i) noexcept         # O(1), O(n) if it empties
    cdef void _remove_level(self, int side, int32_t slot) noexcept
    cdef int32_t _lower_bound(self, int side, int64_t key) noexcept
    cdef int32_t _new_level(self, int side, int64_t price) except -1


@cython.final
cdef class KeyHeap:
    """A max-heap of (key, slot) pairs in C arrays (engine.risk's index of positions). Entries
    are never taken out one by one: the owner knows which are current, skips the others when
    it reads, and rebuilds the heap from the current ones (`keep`) once they are outnumbered."""
    cdef int64_t* keys
    cdef int32_t* slots
    cdef int32_t n
    cdef int32_t cap
    cdef int32_t n_current          # kept by the owner: entries it still counts as current
    cdef int64_t* hit_keys          # what the last `collect` found
    cdef int32_t* hit_slots
    cdef int32_t n_hits
    cdef int32_t hit_cap

    cdef int push(self, int64_t key, int32_t slot) except -1           # O(log n)
    cdef int collect(self, int64_t t) except -1                        # O(entries >= t)
    cdef int keep(self, int32_t n_keep) except -1                      # O(n log n)
    cdef int _walk(self, int64_t t) except -1
    cdef int _hit(self, int32_t i) except -1
