# cython: language_level=3
"""The risk index (see risk.pxd)."""
from libc.stdint cimport int64_t, int32_t

from .units cimport int128, PPM, ceil_div, floor_div, iabs, narrow
from .book cimport KeyHeap
from .state cimport State, PosC, MarketC
from .margin cimport equity


cdef int rekey_dirty(State s) except -1:
    """Bring the accounts whose money or positions changed up to date in the index."""
    cdef int32_t a
    for a in s.dirty:
        s.ac[a].dirty = 0
        _rekey(s, a)
    s.dirty.clear()
    return 0


cdef list candidates(State s, int32_t m):
    """The position slots a pass over market `m` at its mark must look at, in slot order."""
    cdef int64_t mark = s.mk[m].mark
    cdef list slots = []
    _current(s, <KeyHeap>s.risk_long[m], 1, mark, slots)
    _current(s, <KeyHeap>s.risk_short[m], 2, -mark, slots)
    slots.extend(s.risk_multi[m])
    slots.extend(s.risk_called[m])
    return sorted(set(slots))


# The index keeps each market's longs and shorts in a KeyHeap (engine.book): a long under its
# key, a short under minus its key, so that both are "looked at when the heap key >= t". An
# entry is current while its position still says so (rlist, rkey); the others are skipped and
# dropped when the heap is rebuilt, once they outnumber the current ones.

cdef inline int64_t _heap_key(int want, int64_t key) noexcept:
    return key if want == 1 else -key


cdef inline bint _is_current(State s, int want, int64_t hkey, int32_t p) noexcept:
    return s.pos[p].rlist == want and _heap_key(want, s.pos[p].rkey) == hkey


cdef int _current(State s, KeyHeap h, int want, int64_t t, list out) except -1:
    """The slots of `h`'s current entries at or above `t`, appended to `out`."""
    cdef int32_t i
    h.collect(t)
    for i in range(h.n_hits):
        if _is_current(s, want, h.hit_keys[i], h.hit_slots[i]):
            out.append(h.hit_slots[i])
    return 0


cdef int _compact(State s, KeyHeap h, int want) except -1:
    """Rebuild `h` from its current entries, each once. O(entries)."""
    cdef int32_t i, p, k = 0
    h.collect(-(<int64_t>1 << 62) - 1)         # below every key (keys are within +-2^62)
    for i in range(h.n_hits):
        p = h.hit_slots[i]
        if _is_current(s, want, h.hit_keys[i], p):
            s.pos[p].rlist |= 0x80              # kept: a copy of it is not kept again
            h.hit_keys[k] = h.hit_keys[i]
            h.hit_slots[k] = p
            k += 1
    for i in range(k):
        s.pos[h.hit_slots[i]].rlist &= 0x7f
    return h.keep(k)


cdef int index_restored(State s, int32_t p) except -1:
    """Put position `p` in the index as its fields say (a snapshot being read)."""
    cdef PosC* q = &s.pos[p]
    cdef KeyHeap h
    if q.rlist == 1 or q.rlist == 2:
        h = <KeyHeap>(s.risk_long if q.rlist == 1 else s.risk_short)[q.market]
        h.push(_heap_key(q.rlist, q.rkey), p)
        h.n_current += 1
    elif q.rlist == 3:
        s.risk_multi[q.market].add(p)
    return 0


cdef int mark_called(State s, int32_t a, int32_t iso) except -1:
    """A warned scope is looked at by every pass of each market it holds, until its warning
    clears (a pass that finds it recovered drops it from that market's set)."""
    cdef int32_t p
    if iso >= 0:
        s.risk_called[s.pos[iso].market].add(iso)
        return 0
    p = s.ac[a].positions
    while p >= 0:
        if s.pos[p].size and not s.pos[p].isolated:
            s.risk_called[s.pos[p].market].add(p)
        p = s.pos[p].next
    return 0


cdef int rekey_exact(State s, int32_t p) except -1:
    """Re-key a single-position scope exactly (a look found its key early)."""
    cdef PosC* q = &s.pos[p]
    return _index_position(s, p, q.rlist, _risk_key(s, p), True)


cdef int _rekey(State s, int32_t a) except -1:
    """Bring the account's positions up to date in the index. A key that became less urgent is
    left as it is (it only makes a position looked at too early, and that look re-keys it
    exactly), so most re-keys are a few C operations. O(positions of the account), plus
    O(log n) for each key that moves."""
    cdef int32_t p, n_cross = 0
    cdef PosC* q
    cdef int want
    p = s.ac[a].positions
    while p >= 0:
        if s.pos[p].size and not s.pos[p].isolated:
            n_cross += 1
        p = s.pos[p].next
    p = s.ac[a].positions
    while p >= 0:
        q = &s.pos[p]
        if q.size == 0 or a == s.insurance:
            want = 0
        elif not q.isolated and n_cross > 1:
            want = 3
        else:
            want = 1 if q.size > 0 else 2
        _index_position(s, p, want, _risk_key(s, p) if want == 1 or want == 2 else 0, False)
        if want and (q.margin_call if q.isolated else s.ac[a].margin_call):
            s.risk_called[q.market].add(p)      # its warning is still to be cleared
        p = q.next
    return 0


cdef int _index_position(State s, int32_t p, int want, int64_t key, bint exact) except -1:
    cdef PosC* q = &s.pos[p]
    cdef int32_t m = q.market
    cdef KeyHeap h
    if q.rlist == want:
        if want == 0 or want == 3:
            return 0
        if not exact and ((want == 1 and key <= q.rkey) or (want == 2 and key >= q.rkey)):
            return 0                      # less urgent: the old key is still safe
        if key == q.rkey:
            return 0
    if q.rlist == 1 or q.rlist == 2:
        (<KeyHeap>(s.risk_long if q.rlist == 1 else s.risk_short)[m]).n_current -= 1
    elif q.rlist == 3:
        (<object>s.risk_multi[m]).discard(p)
    q.rlist = want
    q.rkey = key
    if want == 1 or want == 2:
        h = <KeyHeap>(s.risk_long if want == 1 else s.risk_short)[m]
        h.push(_heap_key(want, key), p)
        h.n_current += 1
        if h.n > 2 * h.n_current + 64:
            _compact(s, h, want)
    elif want == 3:
        (<object>s.risk_multi[m]).add(p)
    return 0


cdef int64_t _TOP = <int64_t>1 << 62     # the largest key: always looked at


cdef int64_t _risk_key(State s, int32_t p):
    """The mark at which a single-position scope's equity could meet 1.5x its maintenance,
    solved with the market's highest maintenance rate r and widened by two ticks:
    a long, E + n (M - M0) = 1.5 n M r  ->  M = 2 (n M0 - E) / (n (2 - 3r));
    a short, E - n (M - M0) = 1.5 n M r  ->  M = 2 (E + n M0) / (n (2 + 3r)),
    with n = |size| x multiplier and E the equity at the mark M0."""
    cdef PosC* q = &s.pos[p]
    cdef MarketC* mk = &s.mk[q.market]
    cdef int128 n = <int128>iabs(q.size) * mk.multiplier
    cdef int128 eq = equity(s, q.account, p if q.isolated else -1)
    cdef int128 num, den
    if q.size > 0:
        den = n * (2 * PPM - 3 * mk.mmf_max)
        num = 2 * PPM * (n * mk.mark - eq)
        if den <= 0:
            return _TOP                   # always at risk
        if num <= 0:
            return -1                     # no positive mark reaches it
        num = ceil_div(num, den) + 2
    else:
        num = 2 * PPM * (eq + n * mk.mark)
        den = n * (2 * PPM + 3 * mk.mmf_max)
        if num <= 0:
            return -1                     # always at risk
        num = floor_div(num, den) - 2
    return narrow(num) if num < _TOP else _TOP
