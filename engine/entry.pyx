# cython: language_level=3
"""Order entry (see entry.pxd)."""
from libc.string cimport memcpy
from libc.stdint cimport int64_t, int32_t, uint8_t

from .units cimport int128, PPM, NS, floor_div, ceil_div, iabs, positive, py128
from .book cimport (
    Book, Order, CID_BYTES, cid_hash_str, cid_hash_int, BID, ASK, LIMIT, MARKET, STOP_MARKET, STOP_LIMIT,
    TAKE_PROFIT_MARKET, TAKE_PROFIT_LIMIT, GTC, IOC, FOK, ALO, GTD, CANCEL_MAKER, CANCEL_TAKER,
    CANCEL_BOTH,
)
from .state cimport (State, MarketC, PosC, OrderCmd, CidKey, Traded, account, position, cid_key,
                           cid_of, reducible, market_id, wake_by, ACTIVE, POST_ONLY, REDUCE_ONLY_STATUS,
                           HALTED, SETTLED)
from .wire cimport (V_USER, V_FOK_UNFILLED, V_REDUCE_ONLY, V_MARGIN, V_PRICE_OUT_OF_BAND,
                          V_POST_ONLY_WOULD_CROSS, V_MARKET_STATUS, V_EXPIRED)
from .margin cimport order_fits
from .oracle cimport sources_stale
from .matching cimport (walk, finish_taker, drop, cancel_order, cancel_orders, opened, shrink,
                        unrest, STOP_NONE)
from .triggers cimport arm, due
from . cimport events

from .details import show, no_market, bad_qty, bad_price, below_min, no_order
from .messages import Reason
from .state import SIDES, KINDS, TIFS, STPS, SIDE_NAMES

cdef dict _SIDES = SIDES
cdef dict _KINDS = KINDS
cdef dict _TIFS = TIFS
cdef dict _STPS = STPS
cdef tuple _SIDE_NAMES = SIDE_NAMES


cdef inline int _code(object name, object a, int code_a, object b, int code_b,
                      dict table) except -1:
    """A contract name's code: the two common names `a` and `b` by identity (callers pass
    interned literals), anything else through `table` (KeyError for a name the contract does
    not have). O(1)."""
    if name is a:
        return code_a
    if name is b:
        return code_b
    return table[name]


# ---- the price band ------------------------------------------------------------------------

cdef inline int64_t band_high(int64_t ref, int64_t band) noexcept nogil:
    """The highest price a buy may have: floor(ref * (1e6 + band) / 1e6). ref < 2^40 ticks and
    band <= 1e6 ppm: below 2^41, an int64 by construction."""
    return <int64_t>floor_div(<int128>ref * (PPM + band), PPM)


cdef inline int64_t band_low(int64_t ref, int64_t band) noexcept nogil:
    """The lowest price a sell may have: ceil(ref * (1e6 - band) / 1e6), below ref."""
    return <int64_t>ceil_div(<int128>ref * (PPM - band), PPM)


cdef inline bint outside_band(int64_t ref, int64_t band, int side, int64_t price) noexcept nogil:
    return ((side == BID and price > band_high(ref, band))
            or (side == ASK and price < band_low(ref, band)))


cdef str band_sentence(int64_t ref, str what, int64_t band, int side, int64_t price):
    if side == BID:
        return (f"buy price {price} is above the band limit {band_high(ref, band)} "
                f"({what} {ref})")
    return f"sell price {price} is below the band limit {band_low(ref, band)} ({what} {ref})"


cdef inline int64_t sweep_limit(MarketC* mk, int side) noexcept nogil:
    """How far a market order may sweep: the band's edge around the mark."""
    return band_high(mk.mark, mk.band_ppm) if side == BID else band_low(mk.mark, mk.band_ppm)


# ---- admission: the state checks, in the contract's order ------------------------------------

cdef enum:
    C_DUPLICATE = 1
    C_MARK = 2
    C_BAND = 4
    C_REDUCE_ONLY = 8
    C_STALE = 16
    C_COUNT = 32
    C_MARGIN = 64
    C_POST_ONLY = 128

# An order as admission looks at it: as it would be once admitted.
ctypedef struct Ticket:
    CidKey* cid                 # checked for a duplicate (new orders)
    int32_t account
    int32_t market
    int32_t pos
    int side
    int tif
    bint reduce_only
    int64_t price
    int64_t band_ref            # the band is taken around it: the mark, or a trigger price
    bint band_at_trigger
    int64_t buys                # the position's open quantities with the order in
    int64_t sells
    int128 after                # set by a failed margin check, for its sentence
    int128 equity


cdef inline bint _crosses(Book b, int side, int64_t price) noexcept:
    if not b.n[1 - side]:
        return False
    if side == BID:
        return price >= b.lv[b.best(ASK)].price
    return price <= b.lv[b.best(BID)].price


cdef inline bint _stale(State s, int32_t m) except -1:
    """Is the index too old to grow a position on? The last oracle older than
    oracle_max_age_s; or, for a multi-source index, too few fresh sources (engine.oracle)."""
    cdef MarketC* mk = &s.mk[m]
    if mk.n_sources:
        return sources_stale(s, m)
    return mk.oracle_max_age_ns and s.clock - mk.last_oracle_ts > mk.oracle_max_age_ns


cdef int admit(State s, Ticket* t, int checks) except -1:
    """The first check of `checks` that the order fails (one of C_*), or 0. O(1) but for the
    margin check, O(positions of the account)."""
    cdef MarketC* mk = &s.mk[t.market]
    cdef CidKey* k = t.cid
    if checks & C_DUPLICATE and s.pool.cid_find(t.account, k.is_str, k.i, k.text, k.n, k.h) >= 0:
        return C_DUPLICATE
    if checks & C_MARK and not mk.has_mark:
        return C_MARK
    if checks & C_BAND and outside_band(t.band_ref, mk.band_ppm, t.side, t.price):
        return C_BAND
    if checks & C_REDUCE_ONLY and t.reduce_only and reducible(s, t.account, t.market, t.side) == 0:
        return C_REDUCE_ONLY
    if checks & C_STALE and _stale(s, t.market):
        return C_STALE
    if checks & C_COUNT and s.pos[t.pos].n_orders >= mk.max_orders:
        return C_COUNT
    if checks & C_MARGIN and s.margin and not order_fits(s, t.pos, t.buys, t.sells, &t.after,
                                                         &t.equity):
        return C_MARGIN
    if checks & C_POST_ONLY and t.tif == ALO and _crosses(s.books[t.market], t.side, t.price):
        return C_POST_ONLY
    return 0


cdef tuple refusal(State s, Ticket* t, int failed, bint amending):
    """(reason, detail) of a failed admission. Rare: Python strings."""
    cdef MarketC* mk = &s.mk[t.market]
    name = s.specs[t.market].name
    if failed == C_DUPLICATE:
        return (Reason.DUPLICATE_CID, f"cid {show(cid_of(t.cid))} is already used by an open "
                                      f"order of this account")
    if failed == C_MARK:
        return (Reason.NO_MARK_PRICE, f"{name} has no oracle price yet")
    if failed == C_BAND:
        return (Reason.PRICE_OUT_OF_BAND,
                band_sentence(t.band_ref, "trigger price" if t.band_at_trigger else "mark",
                              mk.band_ppm, t.side, t.price))
    if failed == C_REDUCE_ONLY:
        return (Reason.REDUCE_ONLY_WOULD_INCREASE,
                f"reduce-only {_SIDE_NAMES[t.side]} with a position of {s.pos[t.pos].size} "
                f"lots would not reduce it")
    if failed == C_STALE and mk.n_sources:
        return (Reason.ORACLE_STALE,
                f"fewer than {s.specs[t.market].min_sources} of the {name} index's sources are "
                f"fresh and agree; "
                + ("an amend may not raise qty" if amending else "only reducing orders are taken"))
    if failed == C_STALE:
        return (Reason.ORACLE_STALE,
                f"the last {name} oracle price is {(s.clock - mk.last_oracle_ts) // NS} s old "
                f"(limit {mk.oracle_max_age_ns // NS} s); "
                + ("an amend may not raise qty" if amending else "only reducing orders are taken"))
    if failed == C_COUNT:
        return (Reason.TOO_MANY_ORDERS,
                f"the account already has {s.pos[t.pos].n_orders} open orders in {name} "
                f"(limit {mk.max_orders})")
    if failed == C_MARGIN:
        return (Reason.INSUFFICIENT_MARGIN,
                f"the order would raise the initial margin to {py128(t.after)} quote units, "
                f"above the equity of {py128(t.equity)}")
    other = "ask" if t.side == BID else "bid"
    if amending:
        return (Reason.POST_ONLY_WOULD_CROSS,
                f"post-only order at {t.price} would trade against the best {other}")
    return (Reason.POST_ONLY_WOULD_CROSS,
            f"post-only {_SIDE_NAMES[t.side]} at {t.price} would trade against the best {other}")


cdef tuple status_refusal(State s, int32_t m, int kind, int tif, bint ro, int side,
                          int64_t price):
    """Why the market's status refuses this order, as (reason, detail), or None (an active
    market refuses nothing here). Checked after the field checks, before duplicate_cid
    (docs/contract.md, "Market lifecycle")."""
    cdef MarketC* mk = &s.mk[m]
    name = s.specs[m].name
    if mk.status == SETTLED:
        return (Reason.MARKET_SETTLED, f"{name} is settled: it takes no more orders")
    if mk.status == HALTED:
        return (Reason.MARKET_HALTED,
                f"{name} is halted: no order is taken until it resumes (cancels are)")
    if mk.status == REDUCE_ONLY_STATUS and not ro:
        return (Reason.MARKET_REDUCE_ONLY,
                f"{name} takes reduce-only orders only: set reduce_only to close a position")
    if mk.status == POST_ONLY and (kind == LIMIT or kind == MARKET):
        if kind == MARKET or tif == IOC or tif == FOK:
            return (Reason.MARKET_POST_ONLY,
                    f"{name} is post-only: an order that can only take liquidity is refused")
        if (tif == GTC or tif == GTD) and _crosses(s.books[m], side, price):
            return (Reason.MARKET_POST_ONLY,
                    f"{name} is post-only: a {_SIDE_NAMES[side]} at {price} would trade "
                    f"against the best {'ask' if side == BID else 'bid'}")
    return None


cdef inline void _with_order(Ticket* t, PosC* p, int side, int64_t qty) noexcept:
    """The position's open quantities with `qty` more on `side`."""
    t.buys = p.open_buy + (qty if side == BID else 0)
    t.sells = p.open_sell + (qty if side == ASK else 0)


# ---- new orders ----------------------------------------------------------------------------

cdef int new_order(State s, object cmd) except -1:
    """The Struct path: its fields, checked by `order_fields`."""
    return order_fields(s, cmd.account, cmd.market, cmd.cid, cmd.side, cmd.kind, cmd.qty,
                        cmd.price, cmd.trigger_price, cmd.tif, cmd.reduce_only, cmd.stp,
                        cmd.expire_ts)


cdef int order_fields(State s, object acct, object market, object cid, object side_name,
                      object kind_name, object qty_v, object price_v, object trigger_v,
                      object tif_name, bint ro, object stp_name,
                      object expire_v=None) except -1:
    """A new order's fields as Python values (a Struct's, or the per-command API's): the field
    checks in the contract's order, then `place`. A name that is not one of the contract's
    raises KeyError (the dispatch answers it as invalid_command)."""
    cdef int32_t m, a, kind
    cdef int failed
    cdef MarketC* mk
    cdef OrderCmd oc
    cdef object keep
    m = market_id(s, market)
    if m < 0:
        return events.reject(s, "new_order", Reason.UNKNOWN_MARKET, no_market(market), acct,
                             market, cid)
    mk = &s.mk[m]
    kind = _code(kind_name, "limit", LIMIT, "market", MARKET, _KINDS)
    oc.kind = kind
    oc.side = _code(side_name, "buy", BID, "sell", ASK, _SIDES)
    oc.tif = _code(tif_name, "gtc", GTC, "ioc", IOC, _TIFS)
    oc.stp = _code(stp_name, "cancel_maker", CANCEL_MAKER, "cancel_taker", CANCEL_TAKER, _STPS)
    oc.qty = positive(qty_v, mk.max_qty)
    oc.price = 0
    if kind != MARKET and kind != STOP_MARKET and kind != TAKE_PROFIT_MARKET:
        oc.price = positive(price_v, mk.max_price)
    oc.trigger_price = 0
    if kind != LIMIT and kind != MARKET:
        oc.trigger_price = positive(trigger_v, mk.max_price)
    oc.expire_ts = 0
    if expire_v is not None:
        oc.expire_ts = expire_v if type(expire_v) is int and expire_v > 0 else -1
    failed = field_failure(mk, &oc)
    if failed:
        return reject_fields(s, failed, mk, &oc, qty_v, price_v, trigger_v, acct, market, cid)
    a = account(s, acct)
    keep = cid_key(cid, a, &oc.cid)
    oc.account = a
    oc.market = m
    oc.reduce_only = ro
    return place(s, &oc)


cdef int place_handles(State s, int32_t a, int32_t m, int64_t cid, int side, int kind,
                       int tif, int flags, int64_t qty, int64_t price, int64_t trigger,
                       int64_t expire_ts) except -1:
    """A new order from the handle calls (Engine.place): an existing account and market by
    id, an integer cid, codes for side, kind, tif and (in `flags`) reduce-only and stp, 0 for
    a price, trigger price or expiry not given. The same checks in the same order as
    `order_fields`, then `place`. O(1) before `place`."""
    cdef MarketC* mk = &s.mk[m]
    cdef OrderCmd oc
    cdef int failed
    cdef int stp = flags >> 1
    if (side | kind | tif | stp) < 0 or side > ASK or kind > TAKE_PROFIT_LIMIT or tif > GTD \
            or stp > CANCEL_BOTH or flags >> 3:
        return events.reject(s, "new_order", Reason.INVALID_COMMAND,
                             f"side {side}, kind {kind}, tif {tif} or flags {flags} is not one of "
                             f"the codes in docs/engine-api.md", s.account_keys[a],
                             s.market_names[m], cid)
    oc.kind = kind
    oc.side = side
    oc.tif = tif
    oc.stp = stp
    oc.reduce_only = flags & 1
    oc.qty = qty if 0 < qty <= mk.max_qty else 0
    oc.price = 0
    if kind != MARKET and kind != STOP_MARKET and kind != TAKE_PROFIT_MARKET:
        oc.price = price if 0 < price <= mk.max_price else 0
    oc.trigger_price = 0
    if kind != LIMIT and kind != MARKET:
        oc.trigger_price = trigger if 0 < trigger <= mk.max_price else 0
    oc.expire_ts = expire_ts if expire_ts >= 0 else -1
    failed = field_failure(mk, &oc)
    if failed:
        return reject_fields(s, failed, mk, &oc, qty, price or None, trigger or None,
                             s.account_keys[a], s.market_names[m], cid)
    oc.account = a
    oc.market = m
    oc.cid.is_str = False
    oc.cid.i = cid
    oc.cid.text = NULL
    oc.cid.n = 0
    oc.cid.h = cid_hash_int(a, cid)
    return place(s, &oc)


cdef enum:
    F_QTY = 1
    F_MIN_QTY
    F_PRICE
    F_TRIGGER


cdef inline int field_failure(MarketC* mk, OrderCmd* c) noexcept:
    """The contract's field checks of a new order, in its order (qty, minimum qty, price,
    trigger price), on values already read (0: missing or out of range); 0 if they pass. A
    market order and a trigger-market order become ioc, and any expiry they carry is dropped."""
    if c.qty == 0:
        return F_QTY
    if c.qty < mk.min_qty:
        return F_MIN_QTY
    if c.kind == MARKET or c.kind == STOP_MARKET or c.kind == TAKE_PROFIT_MARKET:
        c.tif = IOC
        c.expire_ts = 0
    elif c.price == 0:
        return F_PRICE
    if c.kind != LIMIT and c.kind != MARKET and c.trigger_price == 0:
        return F_TRIGGER
    return 0


cdef int reject_fields(State s, int failed, MarketC* mk, OrderCmd* c, object qty_v,
                       object price_v, object trigger_v, object acct, object market,
                       object cid) except -1:
    """The `rejected` event of a `field_failure`, naming the value as the caller sent it."""
    if failed == F_QTY:
        return events.reject(s, "new_order", Reason.INVALID_QTY, bad_qty(qty_v, mk.max_qty),
                             acct, market, cid)
    if failed == F_MIN_QTY:
        return events.reject(s, "new_order", Reason.BELOW_MIN_QTY,
                             below_min(c.qty, mk.min_qty), acct, market, cid)
    if failed == F_PRICE:
        return events.reject(s, "new_order", Reason.INVALID_PRICE,
                             bad_price("price", price_v, mk.max_price), acct, market, cid)
    return events.reject(s, "new_order", Reason.INVALID_PRICE,
                         bad_price("trigger_price", trigger_v, mk.max_price), acct, market, cid)


cdef int place(State s, OrderCmd* c) except -1:
    """An order whose fields are valid: admission, then acceptance and the matching walk. The
    Struct path and the msgpack fast path both end here."""
    cdef int32_t m = c.market, p, i
    cdef MarketC* mk = &s.mk[m]
    cdef bint trigger = c.kind != LIMIT and c.kind != MARKET
    cdef int64_t size, limit = c.price
    cdef int checks = C_DUPLICATE | C_MARK | C_REDUCE_ONLY | C_POST_ONLY
    cdef int failed
    cdef Ticket t
    if (c.tif == GTD) != (c.expire_ts != 0) or (c.tif == GTD and c.expire_ts <= s.clock):
        return events.reject_order(s, c, Reason.INVALID_EXPIRY, _expiry_sentence(s, c))
    if mk.status != ACTIVE:
        why = status_refusal(s, m, c.kind, c.tif, c.reduce_only, c.side, c.price)
        if why is not None:
            return events.reject_order(s, c, why[0], why[1])
    t.cid = &c.cid
    t.account = c.account
    t.market = m
    t.side = c.side
    t.tif = c.tif
    t.reduce_only = c.reduce_only
    t.price = c.price
    t.band_at_trigger = False
    if c.kind == MARKET:
        limit = sweep_limit(mk, c.side)
    elif c.kind == LIMIT:
        checks |= C_BAND
        t.band_ref = mk.mark
    elif c.kind == STOP_LIMIT or c.kind == TAKE_PROFIT_LIMIT:
        checks |= C_BAND       # it will enter when the mark is at its trigger: the band is there
        t.band_ref = c.trigger_price
        t.band_at_trigger = True
    if trigger:
        checks &= ~C_POST_ONLY                  # a trigger order is looked at when it enters
    elif s.margin:
        checks |= C_MARGIN
    # The checks that need no position first: a refused order makes none.
    failed = admit(s, &t, checks & (C_DUPLICATE | C_MARK | C_BAND))
    if not failed:
        p = position(s, m, c.account)
        t.pos = p
        size = s.pos[p].size
        if not c.reduce_only and (size == 0 or (size > 0) == (c.side == BID)
                                  or c.qty > iabs(size)):
            checks |= C_STALE                   # it may grow the position
        if c.tif == GTC or c.tif == ALO or c.tif == GTD or trigger:
            checks |= C_COUNT
        _with_order(&t, &s.pos[p], c.side, c.qty)
        failed = admit(s, &t, checks & ~(C_DUPLICATE | C_MARK | C_BAND))
    if failed:
        reason, detail = refusal(s, &t, failed, False)
        return events.reject_order(s, c, reason, detail)
    # ---- accepted: from here on the order exists ----
    i = _open(s, c, p)
    events.accepted(s, i, c.qty)
    if trigger:
        return arm(s, i)
    if c.tif == FOK and walk(s, i, limit, True, NULL) != STOP_NONE:
        return cancel_order(s, i, V_FOK_UNFILLED)
    return finish_taker(s, i, walk(s, i, limit, False, NULL))


cdef int32_t _open(State s, OrderCmd* c, int32_t p) except -1:
    """A new open order from `c`: the next oid, a pool slot, the cid index, the account's
    list and the position's order count. O(1)."""
    cdef int32_t i = s.pool.alloc()
    cdef Order* o = &s.pool.o[i]
    cdef CidKey* k = &c.cid
    o.oid = s.next_oid
    s.next_oid += 1
    o.price = c.price
    o.qty = c.qty
    o.account = c.account
    o.market = c.market
    o.side = c.side
    o.kind = c.kind
    o.tif = c.tif
    o.stp = c.stp
    o.reduce_only = c.reduce_only
    if c.trigger_price:
        s.trigger_of[i] = c.trigger_price
    o.cid_is_str = k.is_str
    o.cid_int = k.i
    o.cid_len = <uint8_t>k.n
    if k.is_str:
        memcpy(s.pool.cid_text + <size_t>i * CID_BYTES, k.text, k.n)
    s.pool.cid_insert(i)
    s.pool.account_link(i)
    opened(s, i)
    if c.tif == GTD:
        s.gtd.add((c.expire_ts, o.oid, i))
        s.gtd_of[i] = c.expire_ts
        wake_by(s, c.expire_ts)
    return i


cdef str _expiry_sentence(State s, OrderCmd* c):
    if c.tif != GTD:
        return "expire_ts is for tif gtd only"
    if c.expire_ts == 0:
        return "a gtd order needs expire_ts (ns)"
    if c.expire_ts < 0:
        return "expire_ts must be a positive integer (ns)"
    return f"expire_ts {c.expire_ts} is not after the clock {s.clock}"


cdef int expire_due(State s) except -1:
    """Cancel (reason `expired`) every gtd order whose expire_ts the clock has reached, oldest
    expiry first, ties by oid. O(expired x log n); nothing when none is due."""
    cdef int32_t i
    while s.gtd and s.gtd[0][0] <= s.clock:
        i = s.gtd[0][2]
        cancel_order(s, i, V_EXPIRED)           # drop() takes it out of the index
    return 0


# ---- trigger orders entering -----------------------------------------------------------------

cdef int fire_triggers(State s, int32_t m) except -1:
    """Fire every trigger order the mark has reached, in placement order: each gives
    `order_triggered` and enters the book. O(fired * log n)."""
    cdef int64_t mark = s.mk[m].mark
    cdef int32_t i
    cdef Order* o
    if s.mk[m].status == HALTED:                # they wait for the halt to lift
        return 0
    for key in due(s, m):
        i = key[2]
        o = &s.pool.o[i]
        if not o.live or o.oid != key[1]:
            continue
        o.armed = 0
        events.triggered(s, i, mark)
        _enter(s, i)
    return 0


cdef int _enter(State s, int32_t i) except -1:
    """A triggered order enters the book: admitted as a new order would be at this mark (one
    that cannot enter is cancelled with the reason), then matched and rested."""
    cdef Order* o = &s.pool.o[i]
    cdef int32_t m = o.market
    cdef MarketC* mk = &s.mk[m]
    cdef int64_t limit = o.price
    cdef int checks = C_REDUCE_ONLY | C_POST_ONLY | C_MARGIN
    cdef int failed
    cdef Ticket t
    t.account = o.account
    t.market = m
    t.pos = s.pos_of[m][o.account]
    t.side = o.side
    t.tif = o.tif
    t.reduce_only = o.reduce_only
    t.price = o.price
    t.band_ref = mk.mark
    t.band_at_trigger = False
    if o.kind == STOP_MARKET or o.kind == TAKE_PROFIT_MARKET:
        if mk.status == POST_ONLY:                  # it could only take
            return cancel_order(s, i, V_MARKET_STATUS)
        limit = sweep_limit(mk, o.side)
        checks &= ~C_POST_ONLY
    else:
        checks |= C_BAND
        if mk.status == POST_ONLY and _crosses(s.books[m], o.side, o.price):
            return cancel_order(s, i, V_MARKET_STATUS)
    _with_order(&t, &s.pos[t.pos], o.side, o.qty)
    failed = admit(s, &t, checks)
    if failed == C_BAND:
        return cancel_order(s, i, V_PRICE_OUT_OF_BAND)
    if failed == C_REDUCE_ONLY:
        return cancel_order(s, i, V_REDUCE_ONLY)
    if failed == C_MARGIN:
        return cancel_order(s, i, V_MARGIN)
    if failed == C_POST_ONLY:
        return cancel_order(s, i, V_POST_ONLY_WOULD_CROSS)
    if o.tif == FOK and walk(s, i, limit, True, NULL) != STOP_NONE:
        return cancel_order(s, i, V_FOK_UNFILLED)
    return finish_taker(s, i, walk(s, i, limit, False, NULL))


# ---- the liquidation's orders ----------------------------------------------------------------

cdef int64_t liquidation_order(State s, int32_t a, int32_t p, int side, int64_t qty,
                               int64_t limit, Traded* traded) except -1:
    """An IOC reduce-only order for the account, no worse than `limit`; its fills say
    `liquidation: true`. The order is the engine's: it gets an oid and the cid
    "liquidation:<oid>", is not admitted (the engine may always reduce a position it
    liquidates), and gives no order_accepted or order_cancelled. `traded` is set to what it
    filled; returns the qty."""
    cdef int32_t i
    cdef OrderCmd c
    cid = f"liquidation:{s.next_oid}".encode()
    order_cmd(&c, a, s.pos[p].market, side, MARKET, IOC, CANCEL_TAKER, True, qty, limit, 0)
    c.cid.is_str = True
    c.cid.i = 0
    c.cid.text = cid
    c.cid.n = len(cid)
    c.cid.h = cid_hash_str(a, c.cid.text, c.cid.n)
    i = _open(s, &c, p)
    traded.qty = 0
    traded.notional = 0
    s.liquidating = True
    try:
        walk(s, i, limit, False, traded)
    finally:
        s.liquidating = False
    drop(s, i)
    return traded.qty


# ---- cancel and amend ------------------------------------------------------------------------

cdef int32_t _open_order(State s, object acct, object cid, int32_t m) except -2:
    """The slot of the account's order `cid` open in market `m` (resting or armed), or -1.
    O(1)."""
    cdef int32_t a = s.account_ids.get(acct, -1)
    cdef CidKey k
    cdef object keep
    if a < 0:
        return -1
    keep = cid_key(cid, a, &k)
    return _open_slot(s, a, &k, m)


cdef inline int32_t _open_slot(State s, int32_t a, CidKey* k, int32_t m) noexcept:
    cdef int32_t i = s.pool.cid_find(a, k.is_str, k.i, k.text, k.n, k.h)
    if i < 0 or s.pool.o[i].market != m or (s.pool.o[i].level < 0 and not s.pool.o[i].armed):
        return -1
    return i


cdef int32_t _open_handle(State s, int32_t a, int32_t m, int64_t cid) noexcept:
    """`_open_order` for the handle calls: an account id and an integer cid."""
    cdef CidKey k
    k.is_str = False
    k.i = cid
    k.text = NULL
    k.n = 0
    k.h = cid_hash_int(a, cid)
    return _open_slot(s, a, &k, m)


cdef int cancel_handles(State s, int32_t a, int32_t m, int64_t cid) except -1:
    """A cancel from the handle calls (Engine.cancel_order). O(1)."""
    cdef int32_t i = _open_handle(s, a, m, cid)
    if i < 0:
        return events.reject(s, "cancel", Reason.UNKNOWN_ORDER, no_order(cid, s.market_names[m]),
                             s.account_keys[a], s.market_names[m], cid)
    return cancel_order(s, i, V_USER)


cdef int amend_handles(State s, int32_t a, int32_t m, int64_t cid, int64_t price,
                       int64_t qty) except -1:
    """An amend from the handle calls (Engine.amend_order): 0 leaves price or qty as it is."""
    cdef int32_t i = _open_handle(s, a, m, cid)
    if i < 0:
        return events.reject(s, "amend", Reason.UNKNOWN_ORDER, no_order(cid, s.market_names[m]),
                             s.account_keys[a], s.market_names[m], cid)
    return _amend(s, i, price if price else None, qty if qty else None, s.account_keys[a],
                  s.market_names[m], cid)


cdef int cancel(State s, object cmd) except -1:
    return cancel_fields(s, cmd.account, cmd.market, cmd.cid)


cdef int cancel_fields(State s, object acct, object market, object cid) except -1:
    """A cancel's fields as Python values (a Struct's, or the per-command API's)."""
    cdef int32_t m = market_id(s, market)
    cdef int32_t i
    if m < 0:
        return events.reject(s, "cancel", Reason.UNKNOWN_MARKET, no_market(market), acct,
                             market, cid)
    i = _open_order(s, acct, cid, m)
    if i < 0:
        return events.reject(s, "cancel", Reason.UNKNOWN_ORDER, no_order(cid, market), acct,
                             market, cid)
    return cancel_order(s, i, V_USER)


cdef int cancel_all(State s, object cmd) except -1:
    cdef int32_t m = -1, a
    if cmd.market is not None:
        m = s.market_ids.get(cmd.market, -1)
        if m < 0:
            return events.reject(s, "cancel_all", Reason.UNKNOWN_MARKET, no_market(cmd.market),
                                 cmd.account, cmd.market)
    a = s.account_ids.get(cmd.account, -1)
    if a < 0:
        return 0
    return cancel_orders(s, a, m, V_USER)


cdef int amend(State s, object cmd) except -1:
    return amend_fields(s, cmd.account, cmd.market, cmd.cid, cmd.price, cmd.qty)


cdef int amend_fields(State s, object acct, object market, object cid, object price_v,
                      object qty_v) except -1:
    """An amend's fields as Python values (a Struct's, or the per-command API's)."""
    cdef int32_t m = market_id(s, market)
    cdef int32_t i
    if m < 0:
        return events.reject(s, "amend", Reason.UNKNOWN_MARKET, no_market(market), acct, market,
                             cid)
    i = _open_order(s, acct, cid, m)
    if i < 0:
        return events.reject(s, "amend", Reason.UNKNOWN_ORDER, no_order(cid, market), acct,
                             market, cid)
    return _amend(s, i, price_v, qty_v, acct, market, cid)


cdef int _amend(State s, int32_t i, object price_v, object qty_v, object acct, object market,
                object cid) except -1:
    """A new price and/or remaining qty (None: unchanged) for the open order in slot `i`,
    admitted like a new order; a smaller or equal qty at the same price keeps the order's
    place, anything else re-enters it at the back (it may trade). A failed amend leaves the
    order as it was. `acct`, `market` and `cid` name it in a `rejected` event."""
    cdef Order* o = &s.pool.o[i]
    cdef int32_t m = o.market
    cdef MarketC* mk = &s.mk[m]
    cdef int64_t qty, price
    cdef int checks = C_POST_ONLY
    cdef int failed
    cdef Book b
    cdef PosC* p
    cdef Ticket t
    if mk.status == HALTED:
        return events.reject(s, "amend", Reason.MARKET_HALTED,
                             f"{s.specs[m].name} is halted: amends wait until it resumes "
                             f"(cancels are taken)", acct, market, cid)
    if qty_v is None:
        qty = o.qty
    else:
        qty = positive(qty_v, mk.max_qty)
        if qty == 0:
            return events.reject(s, "amend", Reason.INVALID_QTY, bad_qty(qty_v, mk.max_qty),
                                 acct, market, cid)
        if qty < mk.min_qty:
            return events.reject(s, "amend", Reason.BELOW_MIN_QTY, below_min(qty, mk.min_qty),
                                 acct, market, cid)
    if price_v is None or o.kind == STOP_MARKET or o.kind == TAKE_PROFIT_MARKET:
        price = o.price                  # a stop or take-profit market order has no price
    else:
        price = positive(price_v, mk.max_price)
        if price == 0:
            return events.reject(s, "amend", Reason.INVALID_PRICE,
                                 bad_price("price", price_v, mk.max_price), acct, market, cid)
    t.account = o.account
    t.market = m
    t.pos = s.pos_of[m][o.account]
    t.side = o.side
    t.tif = o.tif
    t.reduce_only = o.reduce_only
    t.price = price
    t.band_ref = s.trigger_of[i] if o.armed else mk.mark
    t.band_at_trigger = o.armed
    if price != o.price:
        checks |= C_BAND
    if o.armed:                          # off-book: no queue, no band until it enters
        failed = admit(s, &t, checks & C_BAND)
        if failed:
            reason, detail = refusal(s, &t, failed, True)
            return events.reject(s, "amend", reason, detail, acct, market, cid)
        o.price = price
        o.qty = qty
        return events.amended(s, i, True)
    if not o.reduce_only and qty > o.qty:
        checks |= C_STALE
    p = &s.pos[t.pos]
    # Margin as for a new order: the position's open quantities with the order at its new qty.
    checks |= C_MARGIN
    _with_order(&t, p, o.side, qty - o.qty)
    failed = admit(s, &t, checks)
    if failed:
        reason, detail = refusal(s, &t, failed, True)
        return events.reject(s, "amend", reason, detail, acct, market, cid)
    b = s.books[m]
    if mk.status == POST_ONLY and price != o.price and _crosses(b, o.side, price):
        return events.reject(s, "amend", Reason.MARKET_POST_ONLY,
                             f"{s.specs[m].name} is post-only: the amended order at {price} "
                             f"would trade", acct, market, cid)
    if price == o.price and qty <= o.qty:           # keeps its place in the queue
        shrink(s, i, qty)
        return events.amended(s, i, True)
    # Out and in again at the back: it may trade on re-entry.
    unrest(s, i)
    o.price = price
    o.qty = qty
    events.amended(s, i, False)
    return finish_taker(s, i, walk(s, i, price, False, NULL))
