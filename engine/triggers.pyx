# cython: language_level=3
"""Trigger orders (see triggers.pxd): two sorted lists per market, (trigger, oid, slot)."""
from libc.stdint cimport int64_t, int32_t

from .book cimport Order, BID, STOP_MARKET, STOP_LIMIT
from .state cimport State

INT64_MAX_PY = 2**63 - 1


def _by_oid(key):
    return key[1]


cdef int arm(State s, int32_t i) except -1:
    """Rest a trigger order off-book, in its market's sorted list."""
    cdef Order* o = &s.pool.o[i]
    o.armed = 1
    if (o.kind == STOP_MARKET or o.kind == STOP_LIMIT) == (o.side == BID):
        (<object>s.trig_up[o.market]).add((s.trigger_of[i], o.oid, i))
    else:
        (<object>s.trig_down[o.market]).add((s.trigger_of[i], o.oid, i))
    return 0


cdef int disarm(State s, int32_t i) except -1:
    cdef Order* o = &s.pool.o[i]
    key = (s.trigger_of[i], o.oid, i)
    o.armed = 0
    (<object>s.trig_up[o.market]).discard(key)
    (<object>s.trig_down[o.market]).discard(key)
    return 0


cdef list due(State s, int32_t m):
    """Take out every trigger order of market `m` that the mark has reached; their slots in
    placement (oid) order. An order cancelled while an earlier one enters is skipped by the
    caller (its slot is no longer live with that oid)."""
    cdef int64_t mark = s.mk[m].mark
    up = s.trig_up[m]
    down = s.trig_down[m]
    fired = list(up.irange(maximum=(mark, INT64_MAX_PY, INT64_MAX_PY)))
    fired.extend(down.irange(minimum=(mark, -1, -1)))
    if not fired:
        return fired
    fired.sort(key=_by_oid)
    for key in fired:
        up.discard(key)
        down.discard(key)
    return fired
