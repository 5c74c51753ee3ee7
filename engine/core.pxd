# cython: language_level=3
"""The engine: clock, sequence numbers, dispatch, validation and the price-time matching walk.

The one place events are emitted. Python objects appear only at the edge (reading a command's
fields, naming a new account or market, a rejection's sentence); the walk itself runs on C
structs: the order pool and books of engine.book, and the market and position arrays below.
"""
cimport cython
from libc.stdint cimport int64_t, int32_t, uint8_t, uint64_t

from engine.book cimport Book, OrderPool
from engine.margin cimport AccountC, MarketC, PosC
from engine.wire cimport EventWriter


# ---- C-level state ---------------------------------------------------------------------------

ctypedef struct CidKey:
    uint64_t h
    int64_t i
    const char* text
    Py_ssize_t n
    bint is_str

# A new_order whose fields are valid and resolved to ids (the input of Engine._place).
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


@cython.final
cdef class Engine:
    # ---- fields --------------------------------------------------------------------------
    cdef EventWriter w
    cdef OrderPool pool
    cdef list books                 # Book per market id
    cdef list trig_up               # per market: SortedList of (trigger, oid, slot) firing at mark >= trigger
    cdef list trig_down             # ... and firing at mark <= trigger
    # The risk index, per market: single-position scopes keyed by the mark at which they may
    # reach 1.5x maintenance (longs: (key, slot) looked at when mark <= key; shorts: mark >=
    # key); positions of cross accounts with several positions (always looked at); scopes
    # currently warned. Accounts whose money or positions changed wait in `dirty`.
    cdef list risk_long
    cdef list risk_short
    cdef list risk_multi
    cdef list risk_called
    cdef list dirty
    cdef readonly list specs        # MarketSpec per market id
    cdef dict market_ids            # name -> id
    cdef MarketC* mk
    cdef int32_t n_markets
    cdef int32_t mk_cap
    cdef dict account_ids           # key -> id
    cdef list account_keys
    cdef AccountC* ac
    cdef int32_t n_accounts
    cdef int32_t acct_cap
    cdef list _acct_mp              # canonical msgpack bytes of each account key
    cdef int32_t* akey              # open-addressing index over _acct_mp (the fast path)
    cdef uint64_t akey_mask
    cdef list _market_utf8          # each market's name, UTF-8
    cdef PosC* pos
    cdef int32_t n_pos
    cdef int32_t pos_cap
    cdef int32_t** pos_of           # [market][account] -> position slot, -1 if none
    cdef readonly int64_t clock
    cdef readonly int64_t seq
    cdef readonly int64_t next_oid
    cdef readonly int64_t n_commands
    cdef readonly int64_t n_fills
    cdef bint liquidating              # the walk is a liquidation's: fills say so
    cdef int64_t liq_qty               # what the liquidation walk filled, and its notional
    cdef int64_t liq_notional
    cdef readonly bint margin          # False: no margin checks (pure matching, benchmarks)
    cdef readonly int64_t deposits
    cdef readonly int64_t withdrawals
    cdef readonly int64_t fees         # the venue's net fee income
    cdef int32_t insurance             # the account named "insurance" (the fund), -1 until seen

    # ---- cpdef API -------------------------------------------------------------------------
    cpdef list execute(self, object cmd)

    # ---- cdef internals --------------------------------------------------------------------
    cdef int _index_account_key(self, int32_t a, bytes key) except -1
    cdef int32_t _find_account(self, const unsigned char* k, Py_ssize_t n)
    cdef int32_t _find_market(self, const unsigned char* s, Py_ssize_t n)
    cdef int _fast(self, const unsigned char* p, Py_ssize_t n) except -1
    cdef int _dispatch(self, object cmd) except -1
    cdef int _apply(self, object cmd) except -1
    cdef int32_t _account(self, object key) except -1
    cdef int32_t _position(self, int32_t m, int32_t a) except -1
    cdef int _reject(self, str command, str reason, str detail, object account=*,
                     object market=*, object cid=*) except -1
    cdef object _cid_key(self, object cid, int32_t a, CidKey* k)
    cdef object _cid_obj(self, int32_t i)
    # commands
    cdef int _create_market(self, object cmd) except -1
    cdef int _oracle(self, object cmd) except -1
    cdef int _new_order(self, object cmd) except -1
    cdef int _place(self, OrderCmd* c) except -1
    cdef int32_t _open(self, OrderCmd* c, int32_t p) except -1
    cdef int _enter(self, int32_t i) except -1
    cdef int _arm(self, int32_t i) except -1
    cdef int _disarm(self, int32_t i) except -1
    cdef int _fire_triggers(self, int32_t m) except -1
    cdef int _reject_order(self, OrderCmd* c, str reason, str detail) except -1
    cdef object _cid_of(self, CidKey* k)
    cdef int32_t _open_order(self, object account, object cid, int32_t m) except -2
    cdef int _cancel(self, object cmd) except -1
    cdef int _cancel_all(self, object cmd) except -1
    cdef int _amend(self, object cmd) except -1
    cdef int _state_hash(self) except -1
    cdef int _deposit(self, object cmd) except -1
    cdef int _withdraw(self, object cmd) except -1
    cdef int _set_leverage(self, object cmd) except -1
    cdef int _query_account(self, object cmd) except -1
    cdef int _audit(self) except -1
    cdef object _account_report(self, int32_t a, object key)
    cdef object _liquidation_price(self, int32_t a, int32_t p)
    # margin
    cdef int64_t _equity(self, int32_t a, int32_t iso)
    cdef int64_t _initial_margin(self, int32_t a, int32_t iso, int32_t m, int64_t size,
                                 int64_t buys, int64_t sells)
    cdef int64_t _maintenance_margin(self, int32_t a, int32_t iso)
    cdef int _settle(self, PosC* p) except -1
    cdef int32_t _insurance_fund(self) except -1
    cdef int _sample_premium(self, int32_t m) except -1
    cdef int64_t _impact_price(self, int32_t m, int side)
    cdef int _funding_due(self) except -1
    cdef int _liquidations(self, int32_t m, bint calls) except -1
    cdef int _touch(self, int32_t a) except -1
    cdef int _rekey_dirty(self) except -1
    cdef int _rekey(self, int32_t a) except -1
    cdef int _mark_called(self, int32_t a, int32_t iso) except -1
    cdef int _index_position(self, int32_t p, int want, int64_t key, bint exact) except -1
    cdef int64_t _risk_key(self, int32_t p)
    cdef int _liquidate_scope(self, int32_t a, int32_t iso) except -1
    cdef int _liquidate_position(self, int32_t a, int32_t iso, int32_t p) except -1
    cdef int64_t _bankruptcy_price(self, int32_t a, int32_t iso, int32_t p) except -1
    cdef int64_t _deleverage(self, int32_t a, int32_t p, int side, int64_t n,
                             int64_t bp) except -1
    cdef int64_t _book_liquidation(self, int32_t a, int32_t p, int side, int64_t qty,
                                   int64_t limit) except -1
    cdef int _ev_liquidation(self, int32_t a, int32_t m, int side, int64_t qty, int64_t price,
                             str kind, int64_t fee) except -1
    cdef int _ev_margin_call(self, int32_t a, int64_t equity, int64_t mm) except -1
    cdef int _set_margin_mode(self, object cmd) except -1
    cdef int _transfer_margin(self, object cmd) except -1
    cdef bint _fill_allowed(self, int32_t a, int32_t m, int side, int64_t q, int64_t price,
                            int64_t fee, bint maker)
    cdef bint _allowed_after(self, int32_t a, int32_t m, int side, int64_t before, int64_t q,
                             int64_t pnl, int64_t fees, bint maker)
    cdef int _book_trade(self, PosC* p, int side, int64_t q, int64_t price, int64_t fee) except -1
    cdef int _ev_balance(self, int32_t a, str reason) except -1
    # matching
    cdef int _match(self, int32_t t, int64_t limit) except -1
    cdef bint _fok_fillable(self, int32_t t, int64_t limit)
    cdef int _fill(self, int32_t t, int32_t m, int64_t q, int64_t tfee, int64_t mfee) except -1
    cdef int _finish_taker(self, int32_t t, int stop) except -1
    cdef int _rest(self, int32_t i) except -1
    cdef int _cancel_order(self, int32_t i, int reason) except -1
    cdef int _drop(self, int32_t i) except -1
    cdef int _sweep_reduce_only(self, int32_t a, int32_t m) except -1
    cdef int64_t _reducible(self, int32_t a, int32_t m, int side)
    # events
    cdef int _ev_cid(self, int32_t i) except -1
    cdef int _ev_order_head(self, int32_t i, int etype, int nfields) except -1
    cdef int _ev_accepted(self, int32_t i, int64_t qty) except -1
    cdef int _ev_cancelled(self, int32_t i, int reason) except -1
    cdef int _ev_amended(self, int32_t i, bint kept) except -1
    cdef int _ev_mark(self, int32_t m) except -1
