# cython: language_level=3
"""A market's lifecycle (see lifecycle.pxd)."""
from libc.stdint cimport int64_t, int32_t, INT64_MAX

from .units cimport int128, PPM, positive, iabs
from .book cimport BID, ASK
from .state cimport (State, MarketC, PosC, market_id, scope_of, set_spec, set_mark, touch,
                     wake_by,
                     ACTIVE, POST_ONLY, REDUCE_ONLY_STATUS, HALTED, SETTLED)
from .wire cimport V_MARKET_STATUS
from .ledger cimport book_trade, settle
from .matching cimport cancel_order, cancel_orders
from .entry cimport fire_triggers
from .liquidation cimport run, warn, cover_settled
from . cimport events

from .details import no_market, bad_price
from .markets import MarketConfigError, updated_spec
from .messages import Reason, MarketStatusEvent, MarketUpdated, Settlement, Tier

STATUS_NAMES = ("active", "post_only", "reduce_only", "halted", "settled")
cdef dict _STATUS = {name: k for k, name in enumerate(STATUS_NAMES) if name != "settled"}


cdef int _status_event(State s, int32_t m, object price=None) except -1:
    cdef int64_t until = s.mk[m].paused_until
    return events.report(s, MarketStatusEvent, dict(
        market=s.specs[m].name, status=STATUS_NAMES[s.mk[m].status], price=price,
        until=until if until else None))


# ---- the price velocity guard ----------------------------------------------------------------

cdef bint too_fast(MarketC* mk, int64_t idx) noexcept:
    """Does a new index `idx` move more than the guard allows from the last one? Only an
    active market with a guard and an index is judged. |d| x 1e6 <= 2^62 x 2^20: int128."""
    return (mk.velocity_ppm != 0 and mk.status == ACTIVE and mk.has_mark
            and <int128>iabs(idx - mk.index) * PPM > <int128>mk.velocity_ppm * mk.index)


cdef int pause(State s, int32_t m) except -1:
    """The guard tripped: the market is post_only until the clock passes `paused_until` (a
    `market_status` event says until when)."""
    cdef MarketC* mk = &s.mk[m]
    mk.status = POST_ONLY
    mk.paused_until = s.clock + mk.velocity_pause_ns
    wake_by(s, mk.paused_until)
    return _status_event(s, m)


cdef int end_pause(State s, int32_t m) except -1:
    """The clock passed a guard's pause: the market is active again."""
    s.mk[m].paused_until = 0
    s.mk[m].status = ACTIVE
    return _status_event(s, m)


cdef int32_t _open_market(State s, str command, object market) except -2:
    """The market's id, or -1 after a refusal: unknown, or settled for ever."""
    cdef int32_t m = market_id(s, market)
    if m < 0:
        events.reject(s, command, Reason.UNKNOWN_MARKET, no_market(market), None, market)
        return -1
    if s.mk[m].status == SETTLED:
        events.reject(s, command, Reason.MARKET_SETTLED,
                      f"{market} is settled: it is closed for ever", None, market)
        return -1
    return m


# ---- status ------------------------------------------------------------------------------------

cdef int set_market_status(State s, object cmd) except -1:
    """active, post_only, reduce_only or halted. Going reduce_only cancels every order that is
    not reduce-only (reason `market_status`). Lifting a halt takes the mark from the last
    index and the book (a `mark` event), fires the trigger orders it has reached and runs the
    liquidation pass that waited."""
    cdef int32_t m = _open_market(s, "set_market_status", cmd.market)
    cdef MarketC* mk
    cdef int was
    if m < 0:
        return 0
    mk = &s.mk[m]
    was = mk.status
    mk.status = _STATUS[cmd.status]
    if mk.paused_until:
        mk.paused_until = 0                       # the operator's word ends a guard's pause
        if mk.status == was:
            return _status_event(s, m)
    if mk.status == was:
        return 0
    _status_event(s, m)
    if mk.status == REDUCE_ONLY_STATUS:
        _cancel_growing(s, m)
    if was == HALTED and mk.has_mark:
        set_mark(s, m, mk.index)                  # the mark from the index and the book now
        events.mark(s, m)
        fire_triggers(s, m)
        if s.margin:
            run(s, m, True)
    return 0


cdef int _cancel_growing(State s, int32_t m) except -1:
    """Cancel market `m`'s orders that are not reduce-only, resting and waiting for their
    trigger alike, account by account (slot order), oldest first. O(positions of the market +
    their orders)."""
    cdef int32_t p, i, nxt
    for p in list(s.market_pos[m]):
        if not s.pos[p].n_orders:
            continue
        i = s.pool.acct_head[s.pos[p].account]
        while i >= 0:
            nxt = s.pool.o[i].anext
            if s.pool.o[i].market == m and not s.pool.o[i].reduce_only:
                cancel_order(s, i, V_MARKET_STATUS)
            i = nxt
    return 0


# ---- settlement ------------------------------------------------------------------------------

cdef int settle_market(State s, object cmd) except -1:
    """Delist at a final price: every position's funding settled, every order cancelled
    (reason `market_status`), every position closed at `price` with no fee (a `settlement`
    event each; each close realises exactly the position's unrealised PnL at that price, so
    the audit holds to the unit and the longs' and shorts' sizes close to zero alike), the
    status `settled` for ever. A scope left below zero is made whole by the fund, whose floor
    then takes it back from those that gained first."""
    cdef int32_t m = _open_market(s, "settle_market", cmd.market)
    cdef MarketC* mk
    cdef PosC* q
    cdef int32_t p, a
    cdef int64_t price, n, before
    cdef int side
    if m < 0:
        return 0
    mk = &s.mk[m]
    price = positive(cmd.price, mk.max_price)
    if price == 0:
        return events.reject(s, "settle_market", Reason.INVALID_PRICE,
                             bad_price("price", cmd.price, mk.max_price), None, cmd.market)
    slots = list(s.market_pos[m])
    for p in slots:                               # funding first, under the last index
        if s.pos[p].size:
            settle(s, &s.pos[p])
    for p in slots:
        if s.pos[p].n_orders:
            cancel_orders(s, s.pos[p].account, m, V_MARKET_STATUS)
    mk.status = SETTLED
    mk.paused_until = 0                           # a guard's pause ends with the market
    mk.next_funding = 0                           # no more boundaries
    mk.liq_pending = 0
    s.liq_queue[m] = []
    scopes = []
    gainers = []
    for p in slots:
        q = &s.pos[p]
        if q.size == 0:
            continue
        a = q.account
        n = iabs(q.size)
        side = ASK if q.size > 0 else BID
        before = q.realised
        book_trade(s, q, side, n, price, 0)
        q = &s.pos[p]
        events.report(s, Settlement, dict(
            account=s.account_keys[a], market=s.specs[m].name,
            side="sell" if side == ASK else "buy", qty=n, price=price,
            realised_pnl=q.realised - before))
        if a != s.insurance:
            (gainers if q.realised > before else scopes).append((a, scope_of(s, p)))
    _status_event(s, m, price)
    cover_settled(s, m, scopes, gainers)
    return 0


# ---- parameters -------------------------------------------------------------------------------

cdef int update_market(State s, object cmd) except -1:
    """New parameters, checked as `create_market` checks them (`invalid_market` with the
    sentence); now, or at `effective_ts` (one scheduled update a market: a later one replaces
    it). A `market_updated` event gives the parameters and when they take effect."""
    cdef int32_t m = _open_market(s, "update_market", cmd.market)
    if m < 0:
        return 0
    try:
        spec = updated_spec(s.specs[m], cmd)
    except MarketConfigError as e:
        return events.reject(s, "update_market", Reason.INVALID_MARKET, str(e), None,
                             cmd.market)
    if cmd.effective_ts is not None and cmd.effective_ts > s.clock:
        s.pending_updates[m] = (cmd.effective_ts, spec)
        wake_by(s, cmd.effective_ts if cmd.effective_ts < INT64_MAX else INT64_MAX)
        return _updated_event(s, m, spec, cmd.effective_ts)
    s.pending_updates.pop(m, None)
    return _apply(s, m, spec)


cdef int due_updates(State s) except -1:
    """Apply the scheduled updates whose time the clock has reached, markets in creation
    order. O(1) when none is scheduled."""
    cdef int32_t m
    for m in sorted(s.pending_updates):
        ts, spec = s.pending_updates[m]
        if s.clock >= ts:
            del s.pending_updates[m]
            if s.mk[m].status != SETTLED:
                _apply(s, m, spec)
    return 0


cdef int _apply(State s, int32_t m, object spec) except -1:
    """The update takes effect: every parameter at once but the funding cap and interest
    rate, which apply after the next funding boundary (the interval in progress is paid
    under the old ones); open orders and positions stay (each is checked by the new rules at
    its next fill, amend or mark update); the accounts of the market are re-keyed in the risk
    index; scopes now below 1.5x maintenance get their margin call at once, and liquidations
    wait for the next mark update or funding boundary. O(positions of the market)."""
    cdef MarketC* mk = &s.mk[m]
    cdef int32_t p
    set_spec(s, m, spec)
    if mk.next_funding:                           # an interval is in progress
        mk.funding_cap_next = spec.funding_cap_ppm
        mk.interest_next = spec.interest_ppm
        mk.funding_next_set = 1
    else:
        mk.funding_cap_ppm = spec.funding_cap_ppm
        mk.interest_ppm = spec.interest_ppm
    s.specs[m] = spec
    _updated_event(s, m, spec, s.clock)
    for p in s.market_pos[m]:
        if s.pos[p].size:
            touch(s, s.pos[p].account)
    if s.margin and mk.has_mark and mk.status != HALTED:
        warn(s, m)
    return 0


cdef int _updated_event(State s, int32_t m, object spec, int64_t when) except -1:
    return events.report(s, MarketUpdated, dict(
        market=spec.name, effective_ts=when, min_qty=spec.min_qty, imf_ppm=spec.imf_ppm,
        mmf_ppm=spec.mmf_ppm,
        tiers=[Tier(max_notional=t.max_notional, imf_ppm=t.imf_ppm, mmf_ppm=t.mmf_ppm)
               for t in spec.tiers],
        maker_fee_ppm=spec.maker_fee_ppm, taker_fee_ppm=spec.taker_fee_ppm,
        liquidation_fee_ppm=spec.liquidation_fee_ppm, price_band_ppm=spec.price_band_ppm,
        funding_cap_ppm=spec.funding_cap_ppm, interest_ppm=spec.interest_ppm,
        oracle_max_age_s=spec.oracle_max_age_s,
        max_orders_per_account=spec.max_orders_per_account,
        max_liquidations_per_update=spec.max_liquidations_per_update,
        oracle_min_sources=spec.min_sources, oracle_max_deviation_ppm=spec.max_deviation_ppm,
        velocity_max_ppm=spec.velocity_max_ppm, velocity_pause_s=spec.velocity_pause_s))
