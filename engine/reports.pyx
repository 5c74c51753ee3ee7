# cython: language_level=3
"""Reports (contract: `query_account`, `audit`, `state_hash`): what the engine says about its
state without changing it, and the views tests and tools read (the canonical state, the book's
best levels, the integrity check)."""
from libc.stdint cimport int64_t, int32_t

from .units cimport int128, PPM, py128, narrow
from .book cimport (Book, Order, CID_BYTES, BID, ASK, MARKET, STOP_MARKET,
                          TAKE_PROFIT_MARKET)
from .state cimport State, PosC, MarketC, TierC, cid_obj
from .margin cimport (equity, initial_margin, maintenance_margin, maintenance_requirement,
                            unrealised, unsettled_funding, below_call)
from . cimport events

import math
from fractions import Fraction

from . import messages as M
from .state import SIDE_NAMES, KIND_NAMES, TIF_NAMES, STP_NAMES, account_order
from .lifecycle import STATUS_NAMES as _STATUS_NAMES
from .statehash import digest

cdef tuple _SIDE_NAMES = SIDE_NAMES
cdef tuple _KIND_NAMES = KIND_NAMES
cdef tuple _TIF_NAMES = TIF_NAMES
cdef tuple _STP_NAMES = STP_NAMES


def _by_oid(key):
    return key[1]


def _nearest(num, den):
    """num / den rounded to the nearest integer (halves away from zero); None when den is 0."""
    if den == 0:
        return None
    q, r = divmod(abs(num), abs(den))
    if 2 * r >= abs(den):
        q += 1
    return q if (num >= 0) == (den > 0) else -q


cdef int query_account(State st, object key) except -1:
    """The `account` event of account `key` (zeros for an account never seen)."""
    return events.report(st, M.AccountEvent, _account_report(st, st.account_ids.get(key, -1), key))


cdef int state_hash(State st) except -1:
    """The `state_hash` event: the digest of the canonical state."""
    return events.state_hash(st, digest(state(st)))


def state(State st):
    """The complete state in canonical form (docs/state-hash.md). O(orders + positions)."""
    cdef int32_t m, s, j, lvl, i, a
    cdef Book b
    cdef Order* o
    cdef PosC* p
    cdef MarketC* mk
    markets = []
    for name in sorted(st.market_ids):
        m = st.market_ids[name]
        b = st.books[m]
        sides = []
        for s in range(2):
            orders = []
            for j in range(b.n[s] - 1, -1, -1):
                lvl = b.slots[s][j]
                i = b.lv[lvl].head
                while i >= 0:
                    o = &st.pool.o[i]
                    orders.append([o.oid, st.account_keys[o.account], cid_obj(st, i),
                                   o.price, o.qty, _KIND_NAMES[o.kind], _TIF_NAMES[o.tif],
                                   _STP_NAMES[o.stp], bool(o.reduce_only)]
                                  + ([st.gtd_of[i]] if i in st.gtd_of else []))
                    i = o.next
            sides.append(orders)
        mk = &st.mk[m]
        markets.append([st.specs[m].hash_record(),
                        mk.index if mk.has_mark else None,
                        mk.mark if mk.has_mark else None,
                        mk.last_oracle_ts, sides[0], sides[1],
                        [mk.next_funding, mk.premium_sum, mk.premium_n, py128(mk.cum_funding)],
                        _armed_orders(st, m)]
                       + ([[list(x) if x else None for x in st.sources[m]]]
                          if m in st.sources else [])
                       + ([py128(mk.basis_ema)] if mk.ema_updates else [])
                       + _lifecycle_record(st, m))
    positions = []
    accounts = []
    for key in sorted(st.account_keys, key=account_order):
        a = st.account_ids[key]
        if st.ac[a].collateral or st.ac[a].margin_call:
            accounts.append([key, st.ac[a].collateral, bool(st.ac[a].margin_call)])
        for name in sorted(st.market_ids):
            m = st.market_ids[name]
            if st.pos_of[m][a] >= 0:
                p = &st.pos[st.pos_of[m][a]]
                if (p.size or p.cost or p.leverage or p.isolated or p.iso_margin
                        or p.realised):
                    positions.append([key, name, p.size, p.cost, p.leverage,
                                      bool(p.isolated), p.iso_margin, py128(p.funding_last),
                                      bool(p.margin_call), p.realised])
    return {"clock": st.clock, "next_oid": st.next_oid, "markets": markets,
            "accounts": accounts, "positions": positions,
            "totals": [st.deposits, st.withdrawals, st.fees]}


def _lifecycle_record(State st, int32_t m):
    """What a market holds beyond the contract's state that changes what it will do, each
    tagged and present only when it is not the default (so a market without any of it has the
    record it always had): its status, funding parameters waiting for the next boundary, a
    scheduled update, and the scopes waiting for liquidation, the next first."""
    cdef MarketC* mk = &st.mk[m]
    out = []
    if mk.status:
        out.append(["status", _STATUS_NAMES[mk.status]])
    if mk.paused_until:
        out.append(["paused_until", mk.paused_until])
    if mk.funding_next_set:
        out.append(["funding_next", mk.funding_cap_next, mk.interest_next])
    if m in st.pending_updates:
        ts, spec = st.pending_updates[m]
        out.append(["update", ts, spec.hash_record()])
    if st.liq_queue[m]:
        out.append(["waiting", [[st.account_keys[a], st.specs[st.pos[iso].market].name
                                 if iso >= 0 else None]
                                for a, iso in reversed(st.liq_queue[m])]])
    return out


def _armed_orders(State st, int32_t m):
    """The market's trigger orders waiting for their mark, by oid (canonical form)."""
    cdef Order* o
    out = []
    for key in sorted(list(st.trig_up[m]) + list(st.trig_down[m]), key=_by_oid):
        o = &st.pool.o[<int32_t>key[2]]
        out.append([o.oid, st.account_keys[o.account], cid_obj(st, key[2]),
                    _KIND_NAMES[o.kind], _SIDE_NAMES[o.side], st.trigger_of[key[2]],
                    None if o.kind == STOP_MARKET or o.kind == TAKE_PROFIT_MARKET else o.price,
                    o.qty, _TIF_NAMES[o.tif], _STP_NAMES[o.stp], bool(o.reduce_only)]
                   + ([st.gtd_of[key[2]]] if key[2] in st.gtd_of else []))
    return out


def book(State st, str market, int depth=5):
    """The best `depth` levels a side: {"bids": [[price, qty], ...], "asks": [...]}, best
    first. O(depth)."""
    cdef int32_t m = st.market_ids[market], j, k, lvl
    cdef Book b = st.books[m]
    out = {}
    for k, name in ((BID, "bids"), (ASK, "asks")):
        levels = []
        for j in range(b.n[k] - 1, max(-1, b.n[k] - 1 - depth), -1):
            lvl = b.slots[k][j]
            levels.append([b.lv[lvl].price, b.lv[lvl].qty])
        out[name] = levels
    return out


def position(State st, account, str market):
    """(size in lots, cost in quote units) of an account in a market; (0, 0) if none."""
    cdef int32_t a = st.account_ids.get(account, -1)
    cdef int32_t m = st.market_ids.get(market, -1)
    cdef int32_t p
    if a < 0 or m < 0 or a >= st.acct_cap:
        return (0, 0)
    p = st.pos_of[m][a]
    if p < 0:
        return (0, 0)
    return (st.pos[p].size, st.pos[p].cost)


def check_integrity(State st):
    """Raise AssertionError if any index disagrees with the books. O(orders)."""
    cdef int32_t m, s, j, lvl, i, n, prev, a
    cdef int64_t qty, last_key
    cdef Book b
    cdef Order* o
    live = 0
    counts = {}
    for m in range(st.n_markets):
        b = st.books[m]
        for s in range(2):
            for j in range(b.n[s]):
                lvl = b.slots[s][j]
                assert b.keys[s][j] == (b.lv[lvl].price if s == BID else -b.lv[lvl].price)
                if j:
                    assert b.keys[s][j - 1] < b.keys[s][j], "levels out of order"
                i = b.lv[lvl].head
                n = 0
                qty = 0
                prev = -1
                while i >= 0:
                    o = &st.pool.o[i]
                    assert o.live and o.level == lvl and o.prev == prev and o.market == m
                    assert o.side == s and o.price == b.lv[lvl].price and o.qty > 0
                    assert st.pool.cid_find(o.account, o.cid_is_str, o.cid_int,
                                              st.pool.cid_text + <size_t>i * CID_BYTES,
                                              o.cid_len, st.pool._hash(i)) == i
                    counts[(o.account, m)] = counts.get((o.account, m), 0) + 1
                    n += 1
                    qty += o.qty
                    prev = i
                    i = o.next
                assert b.lv[lvl].tail == prev and b.lv[lvl].count == n and b.lv[lvl].qty == qty
                live += n
        if b.n[0] and b.n[1]:
            assert b.lv[b.best(BID)].price < b.lv[b.best(ASK)].price, "the book is crossed"
    for m in range(st.n_markets):
        for key in list(st.trig_up[m]) + list(st.trig_down[m]):
            o = &st.pool.o[<int32_t>key[2]]
            assert o.live and o.armed and o.level < 0 and o.oid == key[1] and o.market == m
            assert st.trigger_of[<int32_t>key[2]] == key[0]
            counts[(o.account, m)] = counts.get((o.account, m), 0) + 1
            live += 1
    assert live == st.pool.n_live, f"{st.pool.n_live} live slots, {live} in books"
    for m in range(st.n_markets):
        for a in range(st.n_accounts):
            if st.pos_of[m][a] >= 0:
                assert st.pos[st.pos_of[m][a]].n_orders == counts.get((a, m), 0)


def risk_violations(State st, str market):
    """Scopes with a position in `market` left liquidatable, or with a margin-call flag that
    disagrees with their equity, found by looking at every position (for tests: after a mark
    update of that market that hit no bound, this must be empty). O(positions)."""
    cdef int32_t p, a, iso
    cdef int32_t m = st.market_ids[market]
    cdef int128 eq, mm
    out = []
    if not st.margin:
        return out
    for p in range(st.n_pos):
        if (st.pos[p].size == 0 or st.pos[p].account == st.insurance
                or st.pos[p].market != m):
            continue
        if st.mk[st.pos[p].market].liq_pending:
            continue
        a = st.pos[p].account
        iso = p if st.pos[p].isolated else -1
        eq = equity(st, a, iso)
        mm = maintenance_margin(st, a, iso)
        flag = st.pos[p].margin_call if iso >= 0 else st.ac[a].margin_call
        if eq < mm:
            out.append((st.account_keys[a], st.specs[st.pos[p].market].name,
                        "liquidatable", py128(eq), py128(mm)))
        if bool(flag) != below_call(eq, mm):
            out.append((st.account_keys[a], st.specs[st.pos[p].market].name,
                        "margin_call flag", py128(eq), py128(mm)))
    return out


cdef dict _account_report(State st, int32_t a, object key):
    """The fields of an `account` event. O(positions + open orders of the account)."""
    cdef int32_t p, i
    cdef PosC* q
    cdef MarketC* mk
    cdef Order* o
    positions = []
    orders = []
    if a < 0:
        return dict(account=key, collateral=0, equity=0, initial_margin=0, maintenance_margin=0,
                    positions=[], open_orders=[])
    p = st.ac[a].positions
    while p >= 0:
        q = &st.pos[p]
        if q.size or q.iso_margin:
            mk = &st.mk[q.market]
            positions.append(M.PositionInfo(
                market=st.specs[q.market].name, size=q.size,
                entry_price=_nearest(q.cost, q.size * mk.multiplier),
                unrealised_pnl=narrow(unrealised(mk, q.size, q.cost)),
                unsettled_funding=unsettled_funding(mk, q.size, q.funding_last),
                mode="isolated" if q.isolated else "cross", isolated_margin=q.iso_margin,
                liquidation_price=_liquidation_price(st, a, p), realised_pnl=q.realised))
        p = q.next
    positions.sort(key=lambda x: x.market)
    i = st.pool.acct_head[a]
    while i >= 0:
        o = &st.pool.o[i]
        orders.append(M.OrderInfo(
            market=st.specs[o.market].name, cid=cid_obj(st, i), oid=o.oid,
            side=_SIDE_NAMES[o.side], kind=_KIND_NAMES[o.kind],
            price=(None if o.kind == MARKET or o.kind == STOP_MARKET
                   or o.kind == TAKE_PROFIT_MARKET else o.price),
            qty=o.qty, tif=_TIF_NAMES[o.tif],
            reduce_only=bool(o.reduce_only)))
        i = o.anext
    return dict(
        account=key, collateral=st.ac[a].collateral,
        equity=py128(equity(st, a, -1)),
        initial_margin=py128(initial_margin(st, a, -1, -1, 0, 0, 0)),
        maintenance_margin=py128(maintenance_margin(st, a, -1)), positions=positions,
        open_orders=orders)


cdef object _liquidation_price(State st, int32_t a, int32_t p):
    """The mark at which position `p` makes its account liquidatable, the other marks held:
    solved exactly (fractions) tier by tier; rounded to the first tick that is still safe
    (up for a long, down for a short). None if no positive mark liquidates it."""
    cdef PosC* q = &st.pos[p]
    cdef MarketC* mk = &st.mk[q.market]
    cdef int32_t k, iso
    cdef TierC t
    s = q.size
    mult = mk.multiplier
    # equity(M) = rest + s * M * mult ; maintenance(M) = others + |s| M mult r / 1e6 - ded
    iso = p if q.isolated else -1
    if s == 0:
        return None
    rest = py128(equity(st, a, iso)) - s * mk.mark * mult
    others = py128(maintenance_margin(st, a, iso)) - py128(maintenance_requirement(mk, s))
    lo = 0
    for k in range(mk.n_tiers):
        t = mk.tiers[k]
        slope = Fraction(s * mult) - Fraction(abs(s) * mult * t.mmf_ppm, PPM)
        if slope == 0:
            continue
        root = (others - t.mmf_deduction - rest) / slope
        notional = abs(s) * root * mult
        hi = t.max_notional if k < mk.n_tiers - 1 else None
        root = Fraction(root)
        if root > 0 and notional >= lo and (hi is None or notional <= hi):
            return math.ceil(root) if s > 0 else math.floor(root)
        lo = t.max_notional
    return None


cdef int audit(State st) except -1:
    """The solvency report (contract: "Events", the audit). O(accounts + positions)."""
    cdef int32_t a, p, m
    cdef int128 upnl = 0, coll = 0
    cdef PosC* q
    longs = [0] * st.n_markets
    shorts = [0] * st.n_markets
    for a in range(st.n_accounts):
        if a != st.insurance:
            coll += st.ac[a].collateral
    for p in range(st.n_pos):
        q = &st.pos[p]
        coll += q.iso_margin
        if q.size:
            upnl += unrealised(&st.mk[q.market], q.size, q.cost)
            if q.size > 0:
                longs[q.market] += q.size
            else:
                shorts[q.market] -= q.size
    return events.report(st, M.AuditEvent, dict(
        deposits=st.deposits, withdrawals=st.withdrawals,
        collateral=narrow(coll), unrealised_pnl=narrow(upnl),
        insurance_fund=st.ac[st.insurance].collateral if st.insurance >= 0 else 0,
        fees=st.fees,
        open_interest={st.specs[m].name: M.OpenInterest(long=longs[m], short=shorts[m])
                       for m in sorted(range(st.n_markets),
                                       key=lambda i: st.specs[i].name)}))
