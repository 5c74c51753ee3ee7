# cython: language_level=3
"""The order book. See book.pxd for the data layout and the cost of each operation."""
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcmp, memmove, memset
from libc.stdint cimport int64_t, uint64_t, int32_t

from .units cimport fnv1a, grow_zeroed


cdef class OrderPool:
    """Every open order, in one array of C structs, with the cid index and account lists."""

    def __cinit__(self, int32_t capacity=1024):
        cdef int32_t i
        self.cap = capacity if capacity > 16 else 16
        self.o = <Order*>calloc(self.cap, sizeof(Order))        # zeroed: a snapshot holds
        self.cid_text = <char*>calloc(<size_t>self.cap, CID_BYTES)  # no stray bytes
        self.mask = 1023
        self.n_tombs = 0
        self.cids = <CidEntry*>calloc(self.mask + 1, sizeof(CidEntry))
        self.acct_cap = 0
        self.acct_head = NULL
        self.acct_tail = NULL
        if self.o == NULL or self.cid_text == NULL or self.cids == NULL:
            raise MemoryError()
        for i in range(<int32_t>(self.mask + 1)):
            self.cids[i].slot = -1
        for i in range(self.cap):
            self.o[i].next = i + 1
            self.o[i].live = 0
        self.o[self.cap - 1].next = -1
        self.free_head = 0
        self.n_live = 0

    def __dealloc__(self):
        free(self.o)
        free(self.cid_text)
        free(self.cids)
        free(self.acct_head)
        free(self.acct_tail)

    cdef int32_t alloc(self) except -1:
        """A free slot, O(1) amortised (the array doubles when full)."""
        cdef int32_t i, old = self.cap
        cdef Order* no
        cdef char* nt
        if self.free_head < 0:
            if self.cap >= (1 << 30):
                raise MemoryError("order pool is full")
            no = <Order*>realloc(self.o, 2 * <size_t>old * sizeof(Order))
            if no == NULL:
                raise MemoryError()
            self.o = no
            # Not zeroed: most slots never hold a string cid, and their text never becomes
            # resident; a snapshot writes only the live orders' string cids (engine.snapshot).
            nt = <char*>realloc(self.cid_text, 2 * <size_t>old * CID_BYTES)
            if nt == NULL:
                raise MemoryError()
            self.cid_text = nt
            self.cap = 2 * old
            for i in range(old, self.cap):     # zeroed as they join the free list (a snapshot
                memset(&self.o[i], 0, sizeof(Order))    # holds no leftover byte)
                self.o[i].next = i + 1
                self.o[i].live = 0
            self.o[self.cap - 1].next = -1
            self.free_head = old
        i = self.free_head
        self.free_head = self.o[i].next
        self.o[i].live = 1
        self.o[i].armed = 0
        self.o[i].level = -1
        self.o[i].prev = -1
        self.o[i].next = -1
        self.o[i].aprev = -1
        self.o[i].anext = -1
        self.n_live += 1
        return i

    cdef void release(self, int32_t i) noexcept:
        """Return a slot (already out of its level, the cid index and its account list). O(1)."""
        self.o[i].live = 0
        self.o[i].next = self.free_head
        self.free_head = i
        self.n_live -= 1

    cdef int ensure_accounts(self, int32_t n) except -1:
        """Room for `n` accounts' order lists; on failure nothing is lost (the old arrays stay)."""
        cdef int32_t i, c = self.acct_cap
        cdef int32_t* nh
        if n <= c:
            return 0
        if c == 0:
            c = 256
        while c < n:
            c *= 2
        nh = <int32_t*>realloc(self.acct_head, c * sizeof(int32_t))
        if nh == NULL:
            raise MemoryError()
        self.acct_head = nh
        nh = <int32_t*>realloc(self.acct_tail, c * sizeof(int32_t))
        if nh == NULL:
            raise MemoryError()
        self.acct_tail = nh
        for i in range(self.acct_cap, c):
            self.acct_head[i] = -1
            self.acct_tail[i] = -1
        self.acct_cap = c
        return 0

    # ---- cid index: O(1) expected ----------------------------------------------------------

    cdef int32_t cid_find(self, int32_t account, bint is_str, int64_t cid_int,
                          const char* text, Py_ssize_t n, uint64_t h) noexcept:
        """The slot of the live order with this cid (`h` its hash), or -1. Only an entry whose
        tag matches makes the probe read an order."""
        cdef uint32_t tag = <uint32_t>(h >> 32)
        cdef uint64_t b = tag & self.mask
        cdef CidEntry* e
        cdef Order* o
        while True:
            e = &self.cids[b]
            if e.slot == -1:
                return -1
            if e.tag == tag and e.slot >= 0:
                o = &self.o[e.slot]
                if o.account == account and o.cid_is_str == is_str:
                    if is_str:
                        if o.cid_len == n and memcmp(self.cid_text + <size_t>e.slot * CID_BYTES,
                                                     text, n) == 0:
                            return e.slot
                    elif o.cid_int == cid_int:
                        return e.slot
            b = (b + 1) & self.mask

    cdef uint64_t _hash(self, int32_t i) noexcept:
        """The hash of slot `i`'s cid, made again from the order (an order keeps no hash: 8
        bytes a resting order); a string cid reads its text. O(len(cid))."""
        cdef Order* o = &self.o[i]
        if o.cid_is_str:
            return cid_hash_str(o.account, self.cid_text + <size_t>i * CID_BYTES, o.cid_len)
        return cid_hash_int(o.account, o.cid_int)

    cdef int cid_insert(self, int32_t i) except -1:
        """Index slot `i` by its cid (not already indexed). O(1) expected; the table doubles
        (or is rebuilt without tombstones) before it would be more than half full."""
        cdef uint32_t tag = <uint32_t>(self._hash(i) >> 32)
        cdef uint64_t b
        if 2 * (<uint64_t>self.n_live + self.n_tombs + 1) > self.mask + 1:
            self._rehash(2 * self.mask + 1 if 4 * <uint64_t>self.n_live > self.mask + 1
                         else self.mask)
        b = tag & self.mask
        while self.cids[b].slot >= 0:
            b = (b + 1) & self.mask
        if self.cids[b].slot == -2:
            self.n_tombs -= 1
        self.cids[b].tag = tag
        self.cids[b].slot = i
        return 0

    cdef void cid_remove(self, int32_t i) noexcept:
        """Take slot `i` out of the index. The entries after it in its run that may move back
        (their home bucket, their tag's low bits, not after the hole) move back, so that no
        tombstone is left and the table never needs rebuilding for them; reading the entries
        alone, no order. O(1) expected."""
        cdef uint64_t mask = self.mask
        cdef uint64_t b = (self._hash(i) >> 32) & mask, j, home
        while self.cids[b].slot != i:
            if self.cids[b].slot == -1:
                return
            b = (b + 1) & mask
        if self.n_tombs:                        # a table that has tombstones keeps to them
            self.cids[b].slot = -2
            self.n_tombs += 1
            return
        j = b
        while True:
            j = (j + 1) & mask
            if self.cids[j].slot == -1:
                break
            home = self.cids[j].tag & mask
            if ((j - home) & mask) >= ((j - b) & mask):
                self.cids[b] = self.cids[j]
                b = j
        self.cids[b].slot = -1

    cdef int _rehash(self, uint64_t nmask) except -1:
        """A table of nmask + 1 entries holding every indexed order, without tombstones.
        O(table)."""
        cdef CidEntry* nt = <CidEntry*>calloc(nmask + 1, sizeof(CidEntry))
        cdef uint64_t i, b
        cdef int32_t j
        if nt == NULL:
            raise MemoryError()
        for i in range(nmask + 1):
            nt[i].slot = -1
        for i in range(self.mask + 1):
            j = self.cids[i].slot
            if j >= 0:
                b = self.cids[i].tag & nmask
                while nt[b].slot >= 0:
                    b = (b + 1) & nmask
                nt[b] = self.cids[i]
        free(self.cids)
        self.cids = nt
        self.mask = nmask
        self.n_tombs = 0
        return 0

    # ---- the account's open orders, in acceptance order ----------------------------------

    cdef void account_link(self, int32_t i) noexcept:
        cdef int32_t a = self.o[i].account
        cdef int32_t t = self.acct_tail[a]
        self.o[i].aprev = t
        self.o[i].anext = -1
        if t >= 0:
            self.o[t].anext = i
        else:
            self.acct_head[a] = i
        self.acct_tail[a] = i

    cdef void account_unlink(self, int32_t i) noexcept:
        cdef int32_t a = self.o[i].account
        cdef int32_t p = self.o[i].aprev, q = self.o[i].anext
        if p >= 0:
            self.o[p].anext = q
        else:
            self.acct_head[a] = q
        if q >= 0:
            self.o[q].aprev = p
        else:
            self.acct_tail[a] = p
        self.o[i].aprev = -1
        self.o[i].anext = -1


cdef class Book:
    """One market's two sides: levels sorted best-last, each a FIFO queue of pool slots."""

    def __cinit__(self):
        cdef int s, i
        self.lv_cap = 64
        self.lv = <Level*>calloc(self.lv_cap, sizeof(Level))
        if self.lv == NULL:
            raise MemoryError()
        for i in range(self.lv_cap):
            self.lv[i].head = i + 1
        self.lv[self.lv_cap - 1].head = -1
        self.lv_free = 0
        for s in range(2):
            self.side_cap[s] = 64
            self.n[s] = 0
            self.slots[s] = <int32_t*>calloc(64, sizeof(int32_t))     # zeroed, as every array
            self.keys[s] = <int64_t*>calloc(64, sizeof(int64_t))      # a snapshot copies
            if self.slots[s] == NULL or self.keys[s] == NULL:
                raise MemoryError()

    def __dealloc__(self):
        free(self.lv)
        free(self.slots[0])
        free(self.slots[1])
        free(self.keys[0])
        free(self.keys[1])

    cdef int32_t best(self, int side) noexcept:
        if self.n[side] == 0:
            return -1
        return self.slots[side][self.n[side] - 1]

    cdef int32_t _lower_bound(self, int side, int64_t key) noexcept:
        """The first position on `side` whose key is >= `key`. O(log n)."""
        cdef int32_t lo = 0, hi = self.n[side], mid
        cdef int64_t* k = self.keys[side]
        while lo < hi:
            mid = (lo + hi) >> 1
            if k[mid] < key:
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef int32_t find(self, int side, int64_t price) noexcept:
        cdef int64_t key = price if side == BID else -price
        cdef int32_t j = self._lower_bound(side, key)
        if j < self.n[side] and self.keys[side][j] == key:
            return self.slots[side][j]
        return -1

    cdef int32_t _new_level(self, int side, int64_t price) except -1:
        cdef int64_t key = price if side == BID else -price
        cdef int32_t slot, i, lo, n = self.n[side]
        cdef int64_t* k
        cdef Level* nl
        cdef int32_t* ns
        cdef int64_t* nk
        if self.lv_free < 0:
            nl = <Level*>realloc(self.lv, 2 * <size_t>self.lv_cap * sizeof(Level))
            if nl == NULL:
                raise MemoryError()
            self.lv = nl
            for i in range(self.lv_cap, 2 * self.lv_cap):     # zeroed as they join the free
                memset(&self.lv[i], 0, sizeof(Level))        # list
                self.lv[i].head = i + 1
            self.lv[2 * self.lv_cap - 1].head = -1
            self.lv_free = self.lv_cap
            self.lv_cap *= 2
        slot = self.lv_free
        self.lv_free = self.lv[slot].head
        self.lv[slot].price = price
        self.lv[slot].qty = 0
        self.lv[slot].head = -1
        self.lv[slot].tail = -1
        self.lv[slot].count = 0
        if n == self.side_cap[side]:
            ns = <int32_t*>grow_zeroed(self.slots[side], <size_t>n * sizeof(int32_t),
                                       2 * <size_t>n * sizeof(int32_t))
            if ns == NULL:
                raise MemoryError()
            self.slots[side] = ns
            nk = <int64_t*>grow_zeroed(self.keys[side], <size_t>n * sizeof(int64_t),
                                       2 * <size_t>n * sizeof(int64_t))
            if nk == NULL:
                raise MemoryError()
            self.keys[side] = nk
            self.side_cap[side] = 2 * n
        k = self.keys[side]
        lo = self._lower_bound(side, key)
        if lo < n:     # orders arrive near the best, at the end: the move is short
            memmove(&k[lo + 1], &k[lo], (n - lo) * sizeof(int64_t))
            memmove(&self.slots[side][lo + 1], &self.slots[side][lo], (n - lo) * sizeof(int32_t))
        k[lo] = key
        self.slots[side][lo] = slot
        self.n[side] = n + 1
        return slot

    cdef void _remove_level(self, int side, int32_t slot) noexcept:
        cdef int32_t n = self.n[side], j
        cdef int64_t* k = self.keys[side]
        if n > 0 and self.slots[side][n - 1] == slot:
            j = n - 1                      # the common case: the best level emptied
        else:
            j = 0
            while self.slots[side][j] != slot:
                j += 1
            memmove(&k[j], &k[j + 1], (n - j - 1) * sizeof(int64_t))
            memmove(&self.slots[side][j], &self.slots[side][j + 1], (n - j - 1) * sizeof(int32_t))
        self.n[side] = n - 1
        self.lv[slot].head = self.lv_free
        self.lv_free = slot

    cdef int push_back(self, OrderPool pool, int32_t i) except -1:
        """Rest order `i` at the back of its price level (made if new)."""
        cdef Order* o = &pool.o[i]
        cdef int32_t slot = self.find(o.side, o.price)
        cdef Level* l
        if slot < 0:
            slot = self._new_level(o.side, o.price)
        l = &self.lv[slot]
        o.level = slot
        o.next = -1
        o.prev = l.tail
        if l.tail >= 0:
            pool.o[l.tail].next = i
        else:
            l.head = i
        l.tail = i
        l.count += 1
        l.qty += o.qty
        return 0

    cdef void unlink(self, OrderPool pool, int32_t i) noexcept:
        """Take order `i` out of its level (the level goes when it empties)."""
        cdef Order* o = &pool.o[i]
        cdef int32_t slot = o.level
        cdef Level* l = &self.lv[slot]
        if o.prev >= 0:
            pool.o[o.prev].next = o.next
        else:
            l.head = o.next
        if o.next >= 0:
            pool.o[o.next].prev = o.prev
        else:
            l.tail = o.prev
        l.count -= 1
        l.qty -= o.qty
        o.level = -1
        o.prev = -1
        o.next = -1
        if l.count == 0:
            self._remove_level(o.side, slot)


cdef class KeyHeap:
    """See book.pxd. The hits of `collect` are in `hit_keys` / `hit_slots` until the next
    call; `keep(k)` rebuilds the heap from its first `k` hits (the owner's current entries,
    gathered with `collect` at the lowest key and filtered in place)."""

    def __cinit__(self):
        self.cap = 16
        self.hit_cap = 16
        self.keys = <int64_t*>malloc(self.cap * sizeof(int64_t))
        self.slots = <int32_t*>malloc(self.cap * sizeof(int32_t))
        self.hit_keys = <int64_t*>malloc(self.hit_cap * sizeof(int64_t))
        self.hit_slots = <int32_t*>malloc(self.hit_cap * sizeof(int32_t))
        if self.keys == NULL or self.slots == NULL or self.hit_keys == NULL \
                or self.hit_slots == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.keys)
        free(self.slots)
        free(self.hit_keys)
        free(self.hit_slots)

    cdef int push(self, int64_t key, int32_t slot) except -1:
        cdef int32_t i, up
        if self.n == self.cap:
            _grow_pair(&self.keys, &self.slots, &self.cap)
        i = self.n
        self.n += 1
        while i > 0:
            up = (i - 1) >> 1
            if self.keys[up] >= key:
                break
            self.keys[i] = self.keys[up]
            self.slots[i] = self.slots[up]
            i = up
        self.keys[i] = key
        self.slots[i] = slot
        return 0

    cdef int collect(self, int64_t t) except -1:
        """Every entry whose key is at least `t`, into the hits (heap order): a walk down the
        heap that stops below `t`. O(entries >= t)."""
        self.n_hits = 0
        if self.n and self.keys[0] >= t:
            self._hit(0)
            self._walk(t)
        return 0

    cdef int _walk(self, int64_t t) except -1:
        cdef int32_t h = 0, i, c
        while h < self.n_hits:                   # the hits double as the walk's queue
            i = self.hit_slots[h]
            h += 1
            for c in range(2 * i + 1, min(2 * i + 3, self.n)):
                if self.keys[c] >= t:
                    self._hit(c)
        for h in range(self.n_hits):             # heap positions -> the entries' slots
            i = self.hit_slots[h]
            self.hit_slots[h] = self.slots[i]
        return 0

    cdef int _hit(self, int32_t i) except -1:
        if self.n_hits == self.hit_cap:
            _grow_pair(&self.hit_keys, &self.hit_slots, &self.hit_cap)
        self.hit_keys[self.n_hits] = self.keys[i]
        self.hit_slots[self.n_hits] = i
        self.n_hits += 1
        return 0

    cdef int keep(self, int32_t n_keep) except -1:
        """The heap becomes the first `n_keep` hits. O(n log n)."""
        cdef int32_t i
        self.n = 0
        for i in range(n_keep):
            self.push(self.hit_keys[i], self.hit_slots[i])
        self.n_current = n_keep
        return 0


cdef int _grow_pair(int64_t** keys, int32_t** slots, int32_t* cap) except -1:
    cdef int64_t* k = <int64_t*>realloc(keys[0], 2 * <size_t>cap[0] * sizeof(int64_t))
    cdef int32_t* v
    if k == NULL:
        raise MemoryError()
    keys[0] = k
    v = <int32_t*>realloc(slots[0], 2 * <size_t>cap[0] * sizeof(int32_t))
    if v == NULL:
        raise MemoryError()
    slots[0] = v
    cap[0] *= 2
    return 0
