# cython: language_level=3
"""The engine's state: the C arrays every room works on, and the few functions that grow them.

One `State` per engine, shared by pointer with every room (rooms are modules of `cdef` functions
taking it first). Markets, accounts and positions are C structs in growable arrays addressed by
id; orders live in engine.book's pool. Python objects here are the edge's: names, specs, and the
sorted indexes of trigger orders and of positions at risk.

Ownership: `seq` and the event writer `w` are written only by engine.events; `clock` only by
engine.core (time moves only through commands).
"""
cimport cython
from libc.stdint cimport int64_t, int32_t, uint8_t, uint64_t

from .units cimport int128
from libc.string cimport memcmp


cdef extern from *:
    """
    #ifndef PERPDEX_KEY_HASH
    #define PERPDEX_KEY_HASH
    #include <string.h>
    #include <stdint.h>
    /* The hash of a short key (an account key's msgpack bytes, a market's name) in the State's
       look-up tables: overlapping word loads and a multiply-xorshift, not a step a byte. Made
       and compared within one process only (no table is ever stored). */
    static inline uint64_t pdx_key_hash(const unsigned char *p, Py_ssize_t n) {
        uint64_t a = 0, b, t;
        if (n >= 8) {
            Py_ssize_t i;
            for (i = 0; i + 8 < n; i += 8) {
                memcpy(&t, p + i, 8);
                a = (a ^ t) * 0x9e3779b97f4a7c15ULL;
                a ^= a >> 29;
            }
            memcpy(&b, p + n - 8, 8);
        } else if (n >= 4) {
            uint32_t x, y;
            memcpy(&x, p, 4);
            memcpy(&y, p + n - 4, 4);
            b = ((uint64_t)x << 32) | y;
        } else if (n > 0) {
            b = ((uint64_t)p[0] << 16) | ((uint64_t)p[n >> 1] << 8) | p[n - 1];
        } else {
            b = 0;
        }
        b ^= a ^ ((uint64_t)n << 56);
        b *= 0xd6e8feb86659fd93ULL;
        b ^= b >> 32;
        b *= 0xd6e8feb86659fd93ULL;
        return b ^ (b >> 29);
    }
    #endif
    """
    uint64_t key_hash "pdx_key_hash"(const unsigned char* p, Py_ssize_t n) noexcept nogil
from .book cimport Book, OrderPool, BID
from .wire cimport EventWriter


# ---- C-level state ---------------------------------------------------------------------------

ctypedef struct TierC:
    int64_t max_notional        # quote units
    int64_t imf_ppm
    int64_t mmf_ppm
    int64_t imf_deduction       # quote units, so that requirements are continuous
    int64_t mmf_deduction

# a market's status (engine.lifecycle; docs/contract.md, "Market lifecycle")
cdef enum:
    ACTIVE = 0
    POST_ONLY = 1
    REDUCE_ONLY_STATUS = 2
    HALTED = 3
    SETTLED = 4

ctypedef struct MarketC:
    int64_t multiplier          # quote units per tick per lot
    int64_t min_qty
    int64_t max_price           # ticks: orders and oracles above it are refused
    int64_t max_qty             # lots: the largest order and the largest position
    int64_t maker_fee_ppm
    int64_t taker_fee_ppm
    int64_t band_ppm
    int64_t max_orders          # open orders per account
    int64_t oracle_max_age_ns   # 0: no limit
    int64_t index               # last oracle price (ticks)
    int64_t mark
    int64_t last_oracle_ts
    int64_t max_leverage        # floor(1e6 / the first tier's imf)
    int64_t liq_fee_ppm
    int64_t max_liquidations    # scopes liquidated per mark update
    int64_t mmf_max             # the highest maintenance rate of any tier (the risk index)
    uint8_t liq_pending         # the bound was hit: more to do at the next tick
    int64_t funding_interval_ns
    int64_t funding_cap_ppm
    int64_t interest_ppm
    int64_t next_funding        # the next interval boundary (ns); 0 until the first oracle
    int64_t premium_sum         # premium samples (ppm) since the last boundary
    int64_t premium_n
    int128 cum_funding          # cumulative funding per lot, in 1e-6 quote units
    int128 unsettled            # sum of size x (cum_funding - funding_last) over its positions,
                                # the fund's included, in 1e-6 quote units: what the positions
                                # owe the fund, net, through lazy settlement (a funding boundary
                                # leaves it unchanged, since the sizes sum to zero); below 2^101
    TierC* tiers                # at least one (the market's own imf/mmf when it has no tiers)
    int32_t n_tiers
    int32_t name_tok            # the market's name, pre-encoded in the writer
    uint8_t has_mark
    uint8_t status              # ACTIVE, POST_ONLY, REDUCE_ONLY, HALTED, SETTLED (lifecycle)
    int32_t n_sources           # a multi-source index (engine.oracle); 0: one source
    int64_t ema_updates         # the basis-average mark's window (0: the contract's median)
    int128 basis_ema            # its average of (mid - index), in 1e-6 ticks
    uint8_t funding_next_set    # funding_cap_next / interest_next apply after the next boundary
    int64_t funding_cap_next
    int64_t interest_next
    int64_t velocity_ppm        # the price velocity guard (engine.lifecycle): 0 off
    int64_t velocity_pause_ns
    int64_t paused_until        # a guard's pause of an active market ends here (ns); 0 none

ctypedef struct PosC:
    int64_t size                # signed lots: long > 0
    int64_t cost                # signed quote units paid for the open size (exact, never rounded)
    int64_t open_buy            # resting buy qty
    int64_t open_sell           # resting sell qty
    int32_t n_orders            # open orders in this market
    int32_t n_ro                # resting reduce-only orders in this market
    int32_t account
    int32_t market
    int32_t next                # the account's next position (list head: AccountC.positions)
    int32_t leverage            # 0: none set
    uint8_t isolated
    uint8_t margin_call         # an isolated position's warning state
    int64_t iso_margin          # quote units held by an isolated position
    int64_t realised            # PnL realised by this position so far (fees and funding apart)
    int128 funding_last         # the market's cum_funding when this position last settled
    int64_t rkey                # its key in the risk index (see engine.risk)
    uint8_t rlist               # where it is indexed: 0 nowhere, 1 longs, 2 shorts, 3 multi

ctypedef struct AccountC:
    int64_t collateral          # quote units of cash
    int32_t name_tok            # the account's key, pre-encoded in the writer
    int32_t positions           # first position slot, -1 if none
    uint8_t margin_call         # equity < 1.5 x maintenance when last looked at
    uint8_t dirty               # its money or positions changed since the risk index saw it

# What engine.margin knows of a cross scope's headroom: its equity less its initial requirement,
# exact when `epoch` equals State.margin_epoch (0: not known). A fill, a payment or any cash move
# of the account forgets it (touch), anything that moves every scope's margin (a mark, funding,
# a market's parameters, any command but an order, cancel or amend) moves the epoch, and an
# order admitted takes its rise of the requirement off it (margin.order_fits): what is known is
# never above the truth (an order that does not rest, or leaves, makes it lower). Kept beside
# AccountC, not in it: derived, so never in a snapshot. Sizes: equity and requirement are sums
# of int64 terms, one or two a position (docs/limits.md), so each is within 2^64 x (markets
# + 1) and a learnt headroom within twice that, far inside int128; it is spent only while it
# covers the rise (one position's term), so spending never takes it below zero.
ctypedef struct HeadroomC:
    int128 headroom
    int64_t epoch

# An entry of the open-addressed indexes of account keys and market names by their bytes (the
# msgpack fast path): the key's hash, where its bytes are (a bytes object the State keeps) and
# how many, and the id (-1: an empty entry). A probe reads the entry and, when the hash and the
# length agree, the bytes.
ctypedef struct KeyEntry:
    uint64_t h
    const char* p
    int32_t n
    int32_t id

ctypedef struct CidKey:
    uint64_t h
    int64_t i
    const char* text
    Py_ssize_t n
    bint is_str

# One fill as the per-command API reports it (Engine.fills, Engine.place): no Python object
# per fill. The first four fields are Engine.fills' row; the cids are the orders' integer cids,
# or, when either is a string, `strs` is 1 + the index of (maker cid, taker cid) in `log_strs`.
ctypedef struct FillC:
    int64_t price
    int64_t qty
    int64_t taker_oid
    int64_t maker_oid
    int64_t taker_cid
    int64_t maker_cid
    int64_t strs

# What a walk traded, for a caller that asks (the liquidation's order: its size and average
# price). notional: sum of price x qty x multiplier, below 2^125 (qty x price x multiplier of
# one order is below 2^62 by the market's limits, and a walk fills at most the order).
ctypedef struct Traded:
    int64_t qty
    int128 notional

# A new order whose fields are valid and resolved to ids (the input of engine.entry.place).
ctypedef struct OrderCmd:
    int64_t qty
    int64_t price               # 0 for a market order
    int64_t trigger_price       # stop / take-profit kinds
    CidKey cid
    int32_t account
    int32_t market
    uint8_t side
    uint8_t kind
    uint8_t tif
    uint8_t stp
    uint8_t reduce_only
    int64_t expire_ts           # tif gtd: when it expires (ns); 0 otherwise


# What the current call asks of the events beside the state change: its output modes, and what
# it collects. Owned by engine.events (written there only; made in engine.state): a caller opens
# and closes a call through engine.events' functions.
@cython.final
cdef class Output:
    cdef bint log_fills              # record fills in fill_log (the per-command and handle calls)
    cdef bint quiet                  # number events but encode none (per-command calls with
                                     # Engine.record_events off, the binary batch path)
    cdef str last_reason             # the reason of the last `rejected`
    cdef list reject_log             # None, or where the n_commands of each rejection go
                                     # (Engine.execute_many's `rejected`)
    cdef list structs                # Engine.execute: the order events as Structs, else None
    cdef list rows                   # Engine.route: each event's index row, else None
    cdef FillC* fill_log
    cdef list log_strs               # (maker cid, taker cid) of logged fills with a string cid
    cdef int32_t n_logged
    cdef int32_t log_cap


@cython.final
cdef class State:
    # ---- orders and books -----------------------------------------------------------------
    cdef OrderPool pool
    cdef list books                 # Book per market id
    cdef list trig_up               # per market: SortedList of (trigger, oid, slot) firing at mark >= trigger
    cdef list trig_down             # ... and firing at mark <= trigger
    # ---- the risk index (engine.risk), per market -----------------------------------------
    cdef list risk_long             # KeyHeap of (key, slot): looked at when mark <= key
    cdef list risk_short            # KeyHeap of (-key, slot): looked at when mark >= key
    cdef list risk_multi            # set of slots of cross accounts with several positions
    cdef list risk_called           # set of slots of scopes currently warned
    cdef list dirty                 # accounts whose money or positions changed
    cdef list deleveraged           # (account, scope) deleveraged in this liquidation pass
    cdef dict adl_queues            # (market, side) -> the pass's ranked ADL queues (engine.liquidation)
    cdef list liq_queue             # per market: scopes (account, iso) waiting, the next last
    cdef dict pending_updates       # market -> (effective_ts, MarketSpec) (engine.lifecycle)
    cdef object gtd                 # SortedList of (expire_ts, oid, slot): gtd orders open
    cdef dict gtd_of                # slot -> expire_ts of an open gtd order
    cdef dict trigger_of            # slot -> trigger_price of an open stop / take-profit order
                                    # (kept out of Order: 8 bytes of every resting order)
    cdef dict sources               # market -> [(price, ts) or None a source] (engine.oracle)
    # ---- markets -----------------------------------------------------------------------------
    cdef list specs                 # MarketSpec per market id
    cdef list market_pos            # per market: its position slots, in slot order
    cdef dict market_ids            # name -> id
    cdef object seen_market         # the name market_id looked up last, and its id
    cdef int32_t seen_market_id
    cdef list market_utf8           # each market's name, UTF-8
    cdef KeyEntry* mkey             # open-addressing index over market_utf8 (the fast path)
    cdef uint64_t mkey_mask
    cdef list market_names          # ... and as the str (the events Engine.execute builds)
    cdef MarketC* mk
    cdef int32_t n_markets
    cdef int32_t mk_cap
    # ---- accounts and positions --------------------------------------------------------------
    cdef dict account_ids           # key -> id
    cdef list account_keys
    cdef list acct_mp               # canonical msgpack bytes of each account key
    cdef KeyEntry* akey             # open-addressing index over acct_mp (the fast path)
    cdef uint64_t akey_mask
    cdef AccountC* ac
    cdef HeadroomC* hr              # per account (engine.margin's cache; see HeadroomC)
    cdef int64_t margin_epoch       # moved by margin_moved(); starts at 1; at most a few
                                    # moves a command, so below 2^62 for any journal
    cdef int32_t n_accounts
    cdef int32_t acct_cap
    cdef PosC* pos
    cdef int32_t n_pos
    cdef int32_t pos_cap
    cdef int32_t** pos_of           # [market][account] -> position slot, -1 if none
    cdef int32_t insurance          # the account named "insurance" (the fund), -1 until seen
    # ---- events, time, counters --------------------------------------------------------------
    cdef EventWriter w              # written by engine.events only
    cdef int64_t seq                # written by engine.events only
    cdef int64_t clock              # written by engine.core only
    cdef int64_t wake               # the clock may move below this with nothing else to do
                                    # (engine.core._advance): at most the earliest gtd expiry,
                                    # pause end, funding boundary and scheduled update, or
                                    # INT64_MIN while a liquidation pass waits to go on; a
                                    # writer that brings one of them earlier lowers it
                                    # (wake_by), a clock move that passes it recomputes it
                                    # (rewake). Derived: never in a snapshot.
    cdef int64_t jump_quiet         # funding.jump_fits has nothing to look at below this ts:
                                    # at most every market's next_funding + its interval
                                    # (jump_by lowers it, rewake recomputes it)
    cdef int64_t next_oid
    cdef int64_t n_commands
    cdef int64_t n_fills
    cdef int64_t n_looked           # scopes looked at by liquidation passes (Engine.work)
    cdef int64_t n_ranked           # positions ranked for ADL (Engine.work)
    cdef bint margin                # False: no margin checks (pure matching, benchmarks)
    cdef bint liquidating           # the walk is a liquidation's: fills say so (engine.entry)
    cdef Output out                 # what the current call asks of the events (engine.events)
    # ---- totals of the audit -----------------------------------------------------------------
    cdef int64_t deposits
    cdef int64_t withdrawals
    cdef int64_t fees               # the venue's net fee income


# ---- growth and lookup (engine/state.pyx) ----------------------------------------------------
cdef int32_t account(State s, object key) except -1                 # O(1), made on first sight
cdef int32_t position(State s, int32_t m, int32_t a) except -1      # O(1), made on first use
cdef int32_t add_market(State s, object spec) except -1
cdef int set_spec(State s, int32_t m, object spec) except -1      # add_market, update_market
cdef int set_mark(State s, int32_t m, int64_t idx) except -1       # median(index, bid, ask)
cdef int32_t insurance_fund(State s) except -1
cdef int rewake(State s) except -1                                  # wake, jump_quiet exact
cdef object cid_key(object cid, int32_t a, CidKey* k)
cdef object cid_obj(State s, int32_t i)
cdef object cid_of(CidKey* k)


cdef inline int32_t find_key(const KeyEntry* t, uint64_t mask, const unsigned char* k,
                             Py_ssize_t n) noexcept:
    """The id whose key is k[0:n] in the index `t` (mask + 1 entries; mask 0: empty), or -1.
    O(1) expected."""
    cdef uint64_t h, j
    if mask == 0:
        return -1
    h = key_hash(k, n)
    j = h & mask
    while t[j].id >= 0:
        if t[j].h == h and t[j].n == n and memcmp(t[j].p, k, n) == 0:
            return t[j].id
        j = (j + 1) & mask
    return -1


cdef inline int32_t find_account_bytes(State s, const unsigned char* k, Py_ssize_t n) noexcept:
    """The account whose key's canonical msgpack bytes are k[0:n], or -1. O(1) expected."""
    return find_key(s.akey, s.akey_mask, k, n)


cdef inline int32_t find_market_bytes(State s, const unsigned char* name,
                                      Py_ssize_t n) noexcept:
    """The market named by the UTF-8 bytes name[0:n], or -1. O(1) expected."""
    return find_key(s.mkey, s.mkey_mask, name, n)


cdef inline int32_t market_id(State s, object name) except -2:
    """The id of the market called `name`, -1 if none. O(1): the same name object as the last
    look-up (a caller's interned literal) is answered without hashing; markets never go."""
    cdef int32_t m
    if name is s.seen_market:
        return s.seen_market_id
    m = s.market_ids.get(name, -1)
    if m >= 0:
        s.seen_market = name
        s.seen_market_id = m
    return m


cdef inline void wake_by(State s, int64_t t) noexcept:
    """Time-driven work falls due at clock time `t` (a gtd expiry, a pause's end, a funding
    boundary, a scheduled update; INT64_MIN: at the clock's next move): the clock's move to
    `t` or past it must not be skipped. O(1)."""
    if t < s.wake:
        s.wake = t


cdef inline void jump_by(State s, int64_t t) noexcept:
    """A market's funding boundary after next is at `t`: funding.jump_fits looks at a jump to
    `t` or past it. O(1)."""
    if t < s.jump_quiet:
        s.jump_quiet = t


cdef inline int touch(State s, int32_t a) except -1:
    """Note that account `a`'s money or positions changed: its risk-index keys are stale and
    its headroom is no longer known. O(1)."""
    if s.margin:
        s.hr[a].epoch = 0
        if not s.ac[a].dirty:
            s.ac[a].dirty = 1
            s.dirty.append(a)
    return 0


cdef inline void margin_moved(State s) noexcept:
    """Something moved every scope's margin (a mark, funding, a market's parameters, a command
    other than an order, cancel or amend): no headroom is known any more. O(1)."""
    s.margin_epoch += 1


cdef inline int64_t reducible(State s, int32_t a, int32_t m, int side) noexcept:
    """How much an order on `side` may still trade and only shrink the position."""
    cdef int32_t p = s.pos_of[m][a]
    cdef int64_t size = s.pos[p].size if p >= 0 else 0
    if side == BID:
        return -size if size < 0 else 0
    return size if size > 0 else 0


cdef inline int32_t scope_of(State s, int32_t p) noexcept:
    """The margin scope of position `p`: itself when isolated, else -1 (the account's cross)."""
    return p if s.pos[p].isolated else -1
