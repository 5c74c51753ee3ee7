# cython: language_level=3
"""The engine's state (see state.pxd): construction, and the growth of markets, accounts and
positions. Every growth keeps the old array until the new one is known good."""
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcmp
from libc.stdint cimport int64_t, int32_t, uint64_t, INT64_MAX, INT64_MIN

from .units cimport PPM, NS, fnv1a, narrow, grow_zeroed
from .book cimport (Book, OrderPool, Order, KeyHeap, CID_BYTES, cid_hash_int, cid_hash_str, BID,
                    ASK)
from .book cimport (LIMIT, MARKET, STOP_MARKET, STOP_LIMIT, TAKE_PROFIT_MARKET,
                          TAKE_PROFIT_LIMIT, GTC, IOC, FOK, ALO, GTD, CANCEL_MAKER, CANCEL_TAKER,
                          CANCEL_BOTH)
from .wire cimport EventWriter

import msgspec
from sortedcontainers import SortedList

from . import messages as M
from .markets import TierSpec

_mp_encode = msgspec.msgpack.encode

# The account whose cash is the insurance fund (seeded by a deposit to it).
INSURANCE = "insurance"

# The contract's enum strings (engine.messages, the vocabulary's source) and the core's small
# integers (engine.book's enums): a name's code is its place in messages' tuple, held here.
SIDE_NAMES = M.SIDES
KIND_NAMES = M.ORDER_KINDS
TIF_NAMES = M.TIFS
STP_NAMES = M.STP_MODES
assert (BID, ASK) == (SIDE_NAMES.index("buy"), SIDE_NAMES.index("sell"))
assert (LIMIT, MARKET, STOP_MARKET, STOP_LIMIT, TAKE_PROFIT_MARKET, TAKE_PROFIT_LIMIT) == tuple(
    KIND_NAMES.index(n) for n in ("limit", "market", "stop_market", "stop_limit",
                                  "take_profit_market", "take_profit_limit"))
assert (GTC, IOC, FOK, ALO, GTD) == tuple(TIF_NAMES.index(n) for n in ("gtc", "ioc", "fok", "alo",
                                                                      "gtd"))
assert (CANCEL_MAKER, CANCEL_TAKER, CANCEL_BOTH) == tuple(
    STP_NAMES.index(n) for n in ("cancel_maker", "cancel_taker", "cancel_both"))
SIDES = {n: i for i, n in enumerate(SIDE_NAMES)}
KINDS = {n: i for i, n in enumerate(KIND_NAMES)}
TIFS = {n: i for i, n in enumerate(TIF_NAMES)}
STPS = {n: i for i, n in enumerate(STP_NAMES)}


def account_order(key):
    """Accounts sort integers first, then strings: a total order for mixed keys."""
    return (1, key) if type(key) is str else (0, key)


cdef class Output:
    """A call's output modes and what it collects (state.pxd): off, nothing collected."""

    def __cinit__(self):
        self.log_fills = False
        self.quiet = False
        self.last_reason = None
        self.reject_log = None
        self.structs = None
        self.rows = None
        self.log_cap = 64
        self.n_logged = 0
        self.log_strs = []
        self.fill_log = <FillC*>malloc(self.log_cap * sizeof(FillC))
        if self.fill_log == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.fill_log)


cdef class State:

    def __cinit__(self, bint margin=True):
        self.margin = margin
        self.insurance = -1
        self.w = EventWriter()
        self.pool = OrderPool(4096)
        self.books = []
        self.trig_up = []
        self.trig_down = []
        self.risk_long = []
        self.risk_short = []
        self.risk_multi = []
        self.risk_called = []
        self.dirty = []
        self.deleveraged = []
        self.adl_queues = {}
        self.liq_queue = []
        self.pending_updates = {}
        self.gtd = SortedList()
        self.gtd_of = {}
        self.trigger_of = {}
        self.sources = {}
        self.specs = []
        self.market_pos = []
        self.market_ids = {}
        self.market_utf8 = []
        self.mkey = NULL
        self.mkey_mask = 0
        self.market_names = []
        self.mk_cap = 8
        self.mk = <MarketC*>calloc(self.mk_cap, sizeof(MarketC))
        self.pos_of = <int32_t**>malloc(self.mk_cap * sizeof(int32_t*))
        self.account_ids = {}
        self.account_keys = []
        self.acct_mp = []
        self.akey = NULL
        self.akey_mask = 0
        self.acct_cap = 0
        self.ac = NULL
        self.hr = NULL
        self.margin_epoch = 1
        self.pos_cap = 1024
        self.pos = <PosC*>calloc(self.pos_cap, sizeof(PosC))
        if self.mk == NULL or self.pos == NULL or self.pos_of == NULL:
            raise MemoryError()
        self.n_markets = 0
        self.n_accounts = 0
        self.n_pos = 0
        self.clock = 0
        self.wake = INT64_MAX
        self.jump_quiet = INT64_MAX
        self.seq = 0
        self.next_oid = 1
        self.seen_market = None
        self.seen_market_id = -1
        self.out = Output()

    def __dealloc__(self):
        cdef int32_t m
        if self.pos_of != NULL:
            for m in range(self.n_markets):
                free(self.pos_of[m])
                free(self.mk[m].tiers)
        free(self.pos_of)
        free(self.mk)
        free(self.pos)
        free(self.ac)
        free(self.hr)
        free(self.akey)
        free(self.mkey)


# ---- accounts ------------------------------------------------------------------------------

cdef int _index_key(KeyEntry** table, uint64_t* mask, int32_t id, bytes key) except -1:
    """Index `key` (kept alive by the caller) as `id` in an open-addressed table, ids 0 .. id - 1
    already in it; the table doubles before it would be more than half full. O(1) amortised."""
    cdef uint64_t j, b
    cdef KeyEntry* t = table[0]
    cdef KeyEntry* nt
    cdef uint64_t i
    if 2 * (<uint64_t>id + 1) > mask[0] + 1 or t == NULL:
        b = 2 * (mask[0] + 1) if t != NULL else 16
        while 2 * (<uint64_t>id + 1) > b:
            b *= 2
        nt = <KeyEntry*>malloc(b * sizeof(KeyEntry))
        if nt == NULL:
            raise MemoryError()
        for i in range(b):
            nt[i].id = -1
        if t != NULL:
            for i in range(mask[0] + 1):
                if t[i].id >= 0:
                    j = t[i].h & (b - 1)
                    while nt[j].id >= 0:
                        j = (j + 1) & (b - 1)
                    nt[j] = t[i]
        free(t)
        t = table[0] = nt
        mask[0] = b - 1
    j = key_hash(key, len(key))
    b = j & mask[0]
    while t[b].id >= 0:
        b = (b + 1) & mask[0]
    t[b].h = j
    t[b].p = <const char*>key
    t[b].n = <int32_t>len(key)
    t[b].id = id
    return 0


cdef int _grow_accounts(State s) except -1:
    """Double the account arrays (and each market's position map); nothing is lost on failure."""
    cdef int32_t c = 1024 if s.acct_cap == 0 else 2 * s.acct_cap
    cdef int32_t m, i
    cdef AccountC* na
    cdef HeadroomC* nh
    cdef int32_t* np
    s.pool.ensure_accounts(c)
    na = <AccountC*>grow_zeroed(s.ac, s.acct_cap * sizeof(AccountC), c * sizeof(AccountC))
    if na == NULL:
        raise MemoryError()
    s.ac = na
    nh = <HeadroomC*>grow_zeroed(s.hr, s.acct_cap * sizeof(HeadroomC), c * sizeof(HeadroomC))
    if nh == NULL:                      # (zero: epoch 0, not known)
        raise MemoryError()
    s.hr = nh
    for m in range(s.n_markets):
        np = <int32_t*>realloc(s.pos_of[m], c * sizeof(int32_t))
        if np == NULL:
            raise MemoryError()
        s.pos_of[m] = np
        for i in range(s.acct_cap, c):
            np[i] = -1
    # only now is every array at least c long
    s.acct_cap = c
    return 0


cdef int32_t account(State s, object key) except -1:
    """The account's id, made on first sight. O(1)."""
    cdef int32_t a = s.account_ids.get(key, -1)
    if a >= 0:
        return a
    a = s.n_accounts
    if a == s.acct_cap:
        _grow_accounts(s)
    s.ac[a].name_tok = s.w.register_name(key)
    s.ac[a].collateral = 0
    s.ac[a].positions = -1
    s.ac[a].margin_call = 0
    s.ac[a].dirty = 0
    if key == INSURANCE and type(key) is str:
        s.insurance = a
    kb = _mp_encode(key)
    _index_key(&s.akey, &s.akey_mask, a, kb)
    s.acct_mp.append(kb)
    s.account_ids[key] = a
    s.account_keys.append(key)
    s.n_accounts += 1
    return a


cdef int32_t insurance_fund(State s) except -1:
    if s.insurance < 0:
        account(s, INSURANCE)
    return s.insurance


cdef int32_t position(State s, int32_t m, int32_t a) except -1:
    """The position slot of account `a` in market `m`, made on first use. O(1)."""
    cdef int32_t p = s.pos_of[m][a]
    cdef PosC* np
    if p >= 0:
        return p
    if s.n_pos == s.pos_cap:
        np = <PosC*>grow_zeroed(s.pos, <size_t>s.pos_cap * sizeof(PosC),
                                2 * <size_t>s.pos_cap * sizeof(PosC))
        if np == NULL:
            raise MemoryError()
        s.pos = np
        s.pos_cap *= 2
    p = s.n_pos
    s.n_pos += 1
    s.pos[p].size = 0
    s.pos[p].cost = 0
    s.pos[p].open_buy = 0
    s.pos[p].open_sell = 0
    s.pos[p].n_orders = 0
    s.pos[p].n_ro = 0
    s.pos[p].account = a
    s.pos[p].market = m
    s.pos[p].leverage = 0
    s.pos[p].isolated = 0
    s.pos[p].margin_call = 0
    s.pos[p].iso_margin = 0
    s.pos[p].realised = 0
    s.pos[p].rkey = 0
    s.pos[p].rlist = 0
    s.pos[p].funding_last = s.mk[m].cum_funding
    s.pos[p].next = s.ac[a].positions
    s.ac[a].positions = p
    s.pos_of[m][a] = p
    s.market_pos[m].append(p)
    return p


# ---- markets -------------------------------------------------------------------------------

cdef int32_t add_market(State s, object spec) except -1:
    """A new market from a validated MarketSpec (engine.markets); its id."""
    cdef MarketC* mk
    cdef MarketC* nm
    cdef int32_t** npo
    cdef int32_t* row
    cdef int32_t m, i
    cdef bytes name
    if s.n_markets == s.mk_cap:
        nm = <MarketC*>grow_zeroed(s.mk, s.mk_cap * sizeof(MarketC), 2 * s.mk_cap * sizeof(MarketC))
        if nm == NULL:
            raise MemoryError()
        s.mk = nm
        npo = <int32_t**>realloc(s.pos_of, 2 * s.mk_cap * sizeof(int32_t*))
        if npo == NULL:
            raise MemoryError()
        s.pos_of = npo
        s.mk_cap *= 2
    row = <int32_t*>malloc((s.acct_cap if s.acct_cap else 1) * sizeof(int32_t))
    if row == NULL:
        raise MemoryError()
    m = s.n_markets
    s.pos_of[m] = row
    for i in range(s.acct_cap):
        row[i] = -1
    mk = &s.mk[m]
    mk.tiers = NULL
    set_spec(s, m, spec)
    mk.multiplier = spec.multiplier
    mk.max_price = spec.max_price
    mk.max_qty = spec.max_qty
    mk.funding_interval_ns = spec.funding_interval_s * NS
    mk.funding_cap_ppm = spec.funding_cap_ppm
    mk.interest_ppm = spec.interest_ppm
    mk.index = 0
    mk.mark = 0
    mk.last_oracle_ts = 0
    mk.has_mark = 0
    mk.liq_pending = 0
    mk.next_funding = 0
    mk.premium_sum = 0
    mk.premium_n = 0
    mk.cum_funding = 0
    mk.unsettled = 0
    mk.status = ACTIVE
    mk.basis_ema = 0
    mk.funding_next_set = 0
    mk.funding_cap_next = 0
    mk.interest_next = 0
    mk.paused_until = 0
    mk.name_tok = s.w.register_name(spec.name)
    s.books.append(Book())
    s.trig_up.append(SortedList())
    s.trig_down.append(SortedList())
    s.risk_long.append(KeyHeap())
    s.risk_short.append(KeyHeap())
    s.risk_multi.append(set())
    s.risk_called.append(set())
    s.liq_queue.append([])
    s.specs.append(spec)
    s.market_pos.append([])
    name = spec.name.encode("utf-8")
    _index_key(&s.mkey, &s.mkey_mask, m, name)
    s.market_utf8.append(name)
    s.market_names.append(spec.name)
    s.market_ids[spec.name] = m
    s.n_markets += 1
    return m


cdef int set_spec(State s, int32_t m, object spec) except -1:
    """The fields of market `m` that its spec sets and `update_market` may change: sizes,
    fees, band, limits, the tiers (a new C array) and what derives from them. The multiplier,
    the largest price and quantity and the funding interval never change; the funding cap and
    interest rate are set by the caller (an update applies them after the next boundary)."""
    cdef MarketC* mk = &s.mk[m]
    cdef TierC* tiers_c
    cdef int32_t i
    margin_moved(s)
    tiers = spec.tiers or (TierSpec(2**63 - 1, spec.imf_ppm, spec.mmf_ppm, 0, 0),)
    tiers_c = <TierC*>malloc(len(tiers) * sizeof(TierC))
    if tiers_c == NULL:
        raise MemoryError()
    for i, t in enumerate(tiers):
        tiers_c[i].max_notional = t.max_notional
        tiers_c[i].imf_ppm = t.imf_ppm
        tiers_c[i].mmf_ppm = t.mmf_ppm
        tiers_c[i].imf_deduction = t.imf_deduction
        tiers_c[i].mmf_deduction = t.mmf_deduction
    free(mk.tiers)
    mk.tiers = tiers_c
    mk.n_tiers = len(tiers)
    mk.min_qty = spec.min_qty
    mk.maker_fee_ppm = spec.maker_fee_ppm
    mk.taker_fee_ppm = spec.taker_fee_ppm
    mk.band_ppm = spec.price_band_ppm
    mk.max_orders = spec.max_orders_per_account
    mk.oracle_max_age_ns = spec.oracle_max_age_s * NS
    mk.liq_fee_ppm = spec.liquidation_fee_ppm
    mk.max_liquidations = spec.max_liquidations_per_update
    mk.mmf_max = max(t.mmf_ppm for t in tiers)
    mk.max_leverage = PPM // tiers[0].imf_ppm
    mk.n_sources = len(spec.sources)
    mk.ema_updates = spec.mark_ema_updates
    mk.velocity_ppm = spec.velocity_max_ppm
    mk.velocity_pause_ns = spec.velocity_pause_s * NS
    if spec.sources and m not in s.sources:
        s.sources[m] = [None] * len(spec.sources)
    return 0


# ---- time-driven work ---------------------------------------------------------------------

cdef int rewake(State s) except -1:
    """`wake` and `jump_quiet` exactly (state.pxd): the earliest time-driven work and the
    earliest funding boundary after next, over every market. O(markets + scheduled updates)."""
    cdef int64_t wake = INT64_MAX, quiet = INT64_MAX, t
    cdef int32_t m
    cdef MarketC* mk
    if s.gtd_of:
        t = s.gtd[0][0]
        wake = t if t < wake else wake
    for entry in s.pending_updates.values():
        t = entry[0] if entry[0] < INT64_MAX else INT64_MAX
        wake = t if t < wake else wake
    for m in range(s.n_markets):
        mk = &s.mk[m]
        if mk.liq_pending:
            wake = INT64_MIN
        if mk.paused_until and mk.paused_until < wake:
            wake = mk.paused_until
        if mk.next_funding:
            if mk.next_funding < wake:
                wake = mk.next_funding
            t = mk.next_funding + mk.funding_interval_ns
            quiet = t if t < quiet else quiet
    s.wake = wake
    s.jump_quiet = quiet
    return 0


# ---- cids ----------------------------------------------------------------------------------

cdef object cid_key(object cid, int32_t a, CidKey* k):
    """Fill `k` for a lookup; returns the bytes that `k.text` points into (keep it alive)."""
    cdef bytes b
    if type(cid) is str:
        b = (<str>cid).encode("utf-8")
        k.is_str = True
        k.text = b
        k.n = len(b)
        k.i = 0
        k.h = cid_hash_str(a, k.text, k.n)
        return b
    k.is_str = False
    k.i = cid
    k.text = NULL
    k.n = 0
    k.h = cid_hash_int(a, k.i)
    return None


cdef object cid_obj(State s, int32_t i):
    """The cid of the order in slot `i`, as the client gave it."""
    cdef Order* o = &s.pool.o[i]
    if o.cid_is_str:
        return (s.pool.cid_text + <size_t>i * CID_BYTES)[:o.cid_len].decode("utf-8")
    return o.cid_int


cdef object cid_of(CidKey* k):
    if k.is_str:
        return k.text[:k.n].decode("utf-8")
    return k.i


cdef int set_mark(State s, int32_t m, int64_t idx) except -1:
    """A new index: the mark becomes median(index, best bid, best ask), a missing side of the
    book counting as the index (the contract's "Mark price"). O(1)."""
    cdef MarketC* mk = &s.mk[m]
    cdef Book b = s.books[m]
    cdef int64_t bid = b.lv[b.best(BID)].price if b.n[BID] else idx
    cdef int64_t ask = b.lv[b.best(ASK)].price if b.n[ASK] else idx
    cdef int64_t lo = bid if bid < ask else ask
    cdef int64_t hi = ask if bid < ask else bid
    cdef int64_t mark = lo if idx < lo else (hi if idx > hi else idx), mid, a, c
    cdef int128 ema
    mk.index = idx
    if mk.ema_updates:
        # The basis-average mark (an extension): the book's mid minus the index, averaged over
        # the last `mark_ema_updates` oracles, added to the index; the mark is the median of
        # the index, that, and the contract's mark. A book pinned away from the index moves
        # it by at most 1 / mark_ema_updates of the distance an oracle.
        mid = (bid + ask) // 2 if b.n[BID] and b.n[ASK] else idx
        ema = mk.basis_ema + ((<int128>(mid - idx) * PPM - mk.basis_ema) // mk.ema_updates)
        mk.basis_ema = ema
        c = idx + narrow(ema // PPM if ema >= 0 else -((-ema) // PPM))   # toward the index
        a = idx if idx < c else c
        c = c if idx < c else idx                    # a <= c: the index and index + basis
        mark = a if mark < a else (c if mark > c else mark)
    mk.mark = mark
    mk.has_mark = 1
    margin_moved(s)
    return 0
