# cython: language_level=3
"""Order entry (contract: "Orders and matching", validation and amend): ONE admission path for
new orders, trigger orders entering the book, amends and the liquidation's orders, and the order
commands (new_order, cancel, cancel_all, amend).

`admit` runs the state checks in the contract's order (duplicate_cid, no_mark_price,
price_out_of_band, reduce_only_would_increase, oracle_stale, too_many_orders,
insufficient_margin, post_only_would_cross); each caller chooses which apply and how a failure
is answered (a `rejected` event, or an `order_cancelled` for an order that already exists).
"""
from libc.stdint cimport int64_t, int32_t, uint8_t

from .state cimport State, OrderCmd, CidKey, Traded

cdef int new_order(State s, object cmd) except -1
cdef int order_fields(State s, object acct, object market, object cid, object side_name,
                      object kind_name, object qty_v, object price_v, object trigger_v,
                      object tif_name, bint ro, object stp_name, object expire_v=*) except -1
cdef int place_handles(State s, int32_t a, int32_t m, int64_t cid, int side, int kind,
                       int tif, int flags, int64_t qty, int64_t price, int64_t trigger,
                       int64_t expire_ts) except -1
cdef int place(State s, OrderCmd* c) except -1
cdef int fire_triggers(State s, int32_t m) except -1
cdef int expire_due(State s) except -1             # gtd orders whose time the clock reached
cdef int amend(State s, object cmd) except -1
cdef int amend_fields(State s, object acct, object market, object cid, object price_v,
                      object qty_v) except -1
cdef int cancel(State s, object cmd) except -1
cdef int cancel_fields(State s, object acct, object market, object cid) except -1
cdef int cancel_all(State s, object cmd) except -1
cdef int cancel_handles(State s, int32_t a, int32_t m, int64_t cid) except -1
cdef int amend_handles(State s, int32_t a, int32_t m, int64_t cid, int64_t price,
                       int64_t qty) except -1
cdef int64_t liquidation_order(State s, int32_t a, int32_t p, int side, int64_t qty,
                               int64_t limit, Traded* traded) except -1


cdef inline void order_cmd(OrderCmd* c, int32_t a, int32_t m, int side, int kind, int tif,
                           int stp, bint ro, int64_t qty, int64_t price,
                           int64_t trigger) noexcept:
    c.account = a
    c.market = m
    c.side = side
    c.kind = kind
    c.tif = tif
    c.stp = stp
    c.reduce_only = ro
    c.qty = qty
    c.price = price
    c.trigger_price = trigger
    c.expire_ts = 0
