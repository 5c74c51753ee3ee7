# cython: language_level=3
"""The engine: see core.pxd for its state and docs/engine-api.md for how to drive it."""
cimport cython
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memcmp, strlen
from cpython.long cimport PyLong_AsLongLongAndOverflow
from libc.stdint cimport int64_t, int32_t, uint8_t, uint64_t, uint32_t

from engine.margin cimport (
    AccountC, MarketC, PosC, TierC, int128, ceil_div, floor_div, iabs, initial_requirement,
    maintenance_requirement, unrealised, unsettled_funding,
)
from engine.book cimport (
    Book, OrderPool, Order, Level, cid_hash_int, cid_hash_str, CID_BYTES,
    BID, ASK, LIMIT, MARKET, STOP_MARKET, STOP_LIMIT, TAKE_PROFIT_MARKET, TAKE_PROFIT_LIMIT, GTC, IOC, FOK, ALO, CANCEL_MAKER, CANCEL_TAKER, CANCEL_BOTH,
)
from engine.wire cimport (
    EventWriter, FMT_MSGPACK, FMT_JSON, skip_object,
    T_ORDER_ACCEPTED, T_FILL, T_ORDER_CANCELLED, T_ORDER_AMENDED, T_MARK, T_STATE_HASH, T_REJECTED,
    K_ACCOUNT, K_MARKET, K_CID, K_OID, K_SIDE, K_KIND, K_PRICE, K_QTY, K_TIF, K_REDUCE_ONLY,
    K_TAKER_SIDE, K_TAKER_ACCOUNT, K_TAKER_CID, K_TAKER_OID, K_TAKER_REMAINING, K_MAKER_ACCOUNT,
    K_MAKER_CID, K_MAKER_OID, K_MAKER_REMAINING, K_TAKER_FEE, K_MAKER_FEE, K_LIQUIDATION,
    K_REMAINING, K_REASON, K_PRIORITY_KEPT, K_INDEX, K_MARK, K_HASH, K_COMMAND, K_DETAIL,
    V_BUY, V_LIMIT, V_GTC, V_USER, V_IOC_REMAINDER, V_FOK_UNFILLED, V_SELF_TRADE, V_REDUCE_ONLY,
    V_MARGIN, V_PRICE_OUT_OF_BAND, V_POST_ONLY_WOULD_CROSS, V_LIQUIDATION,
)

import math
from fractions import Fraction

import msgspec
from sortedcontainers import SortedList

from engine import messages as M
from engine.codec import CommandReader, Malformed, MsgpackFramer, FORMATS, _mp_events, decode_msgpack

cdef object _decode_events = _mp_events.decode
from engine.markets import MarketConfigError, TierSpec, market_spec, MAX_PRICE, MAX_QTY
from engine.messages import Reason
from engine.statehash import digest


_json_encode = msgspec.json.encode
_mp_encode = msgspec.msgpack.encode

cdef int64_t NS = 1000000000
cdef int64_t PPM = 1000000
# The account whose cash is the insurance fund (seeded by a deposit to it).
INSURANCE = "insurance"
# The notional (quote units) whose average fill price is the impact bid / ask of funding's
# premium: 10,000 USD, as dYdX and Binance size theirs for a retail-scale order.
cdef int64_t IMPACT_NOTIONAL = 10_000_000_000

# Why the matching walk stopped early.
cdef enum Stop:
    STOP_NONE = 0
    STOP_SELF_TRADE
    STOP_REDUCE_ONLY
    STOP_MARGIN

# Enum strings of the contract -> the core's small integers (module-level C dicts: no global
# name lookup on the hot path).
cdef dict _SIDES = {"buy": BID, "sell": ASK}
cdef dict _KINDS = {"limit": LIMIT, "market": MARKET, "stop_market": STOP_MARKET,
                    "stop_limit": STOP_LIMIT, "take_profit_market": TAKE_PROFIT_MARKET,
                    "take_profit_limit": TAKE_PROFIT_LIMIT}
cdef dict _TIFS = {"gtc": GTC, "ioc": IOC, "fok": FOK, "alo": ALO}
cdef dict _STPS = {"cancel_maker": CANCEL_MAKER, "cancel_taker": CANCEL_TAKER,
                   "cancel_both": CANCEL_BOTH}
cdef tuple _SIDE_NAMES = ("buy", "sell")
cdef tuple _KIND_NAMES = tuple(_KINDS)
cdef tuple _TIF_NAMES = tuple(_TIFS)
cdef tuple _STP_NAMES = tuple(_STPS)

cdef int64_t C_MAX_PRICE = MAX_PRICE
cdef int64_t C_MAX_QTY = MAX_QTY

cdef object _Command = M.Command
cdef object NewOrder = M.NewOrder
cdef object Cancel = M.Cancel
cdef object CancelAll = M.CancelAll
cdef object Amend = M.Amend
cdef object Oracle = M.Oracle
cdef object CreateMarket = M.CreateMarket
cdef object StateHash = M.StateHash
cdef object Clock = M.Clock
cdef object Deposit = M.Deposit
cdef object Withdraw = M.Withdraw
cdef object SetLeverage = M.SetLeverage
cdef object QueryAccount = M.QueryAccount
cdef object SetMarginMode = M.SetMarginMode
cdef object TransferMargin = M.TransferMargin
cdef object Audit = M.Audit


cdef inline int64_t band_high_at(int64_t ref, int64_t band) noexcept nogil:
    return <int64_t>floor_div(<int128>ref * (PPM + band), PPM)


cdef inline int64_t band_low_at(int64_t ref, int64_t band) noexcept nogil:
    return <int64_t>ceil_div(<int128>ref * (PPM - band), PPM)


cdef inline int64_t band_high(MarketC* mk) noexcept nogil:
    return band_high_at(mk.mark, mk.band_ppm)


cdef inline int64_t band_low(MarketC* mk) noexcept nogil:
    return band_low_at(mk.mark, mk.band_ppm)


cdef inline int64_t fee(int64_t price, int64_t qty, int64_t mult, int64_t rate) noexcept nogil:
    """Rounded up: a fee is never short by a unit, and a rebate (rate < 0) never over-paid."""
    return <int64_t>ceil_div(<int128>price * qty * mult * rate, PPM)


INT64_MAX_PY = 2**63 - 1


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


def _show(v):
    """A value as the client wrote it (JSON), for a detail sentence."""
    if v is None:
        return "nothing"
    try:
        return _json_encode(v).decode()
    except TypeError:
        return repr(v)


# ---- the sentences of rejections (rare paths: Python strings are fine here) -----------------

def _no_market(name):
    return f"no market named {_show(name)}"


def _bad_qty(v):
    return f"qty must be a positive whole number of lots up to {MAX_QTY}, got {_show(v)}"


def _bad_price(field, v):
    return f"{field} must be a positive whole number of ticks up to {MAX_PRICE}, got {_show(v)}"


def _below_min(qty, min_qty):
    return f"qty {qty} is below the market's min_qty {min_qty}"


def _no_order(cid, market):
    return f"no open order with cid {_show(cid)} in {market}"


cdef str _band_violation(MarketC* mk, int side, int64_t price):
    """Why `price` is outside the band around the mark, or None if it is inside."""
    return _band_violation_at(mk.mark, "mark", mk.band_ppm, side, price)


cdef str _band_violation_at(int64_t ref, str what, int64_t band, int side, int64_t price):
    if side == BID and price > band_high_at(ref, band):
        return (f"buy price {price} is above the band limit {band_high_at(ref, band)} "
                f"({what} {ref})")
    if side == ASK and price < band_low_at(ref, band):
        return (f"sell price {price} is below the band limit {band_low_at(ref, band)} "
                f"({what} {ref})")
    return None


cdef object _py128(int128 x):
    """An int128 as a Python int, exactly (Cython sees the type as long long and would
    truncate above 2**63)."""
    return (<object><int64_t>(x >> 64)) * 18446744073709551616 + <object><uint64_t>(
        x & <int128>0xFFFFFFFFFFFFFFFF)


cdef inline void _order_cmd(OrderCmd* c, int32_t a, int32_t m, int side, int kind, int tif,
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


cdef inline int64_t _positive(object v, int64_t limit):
    """`v` as a positive integer no larger than `limit`, or 0 when it is not one (not an int,
    a bool, <= 0, or too large)."""
    cdef int overflow = 0
    cdef long long x
    if type(v) is not int:
        return 0
    x = PyLong_AsLongLongAndOverflow(v, &overflow)
    if overflow or x <= 0 or x > limit:
        return 0
    return x


# ---- the msgpack fast path: common commands straight from their bytes ------------------------
#
# A new_order or cancel as msgspec (or any canonical encoder) writes it is read here without a
# Python object; anything unusual (another type, an unknown or repeated key, a value of another
# type or out of range, a non-ASCII string, an account or market not seen before, a cancel of an
# order that is not open) is left to the msgspec path, which has the exact rejection for it. So
# the fast path changes speed, never behaviour: tests/test_fast_path.py holds the two equal.

cdef enum:
    F_TYPE = 1
    F_TS = 2
    F_ACCOUNT = 4
    F_MARKET = 8
    F_CID = 16
    F_SIDE = 32
    F_KIND = 64
    F_QTY = 128
    F_PRICE = 256
    F_TRIGGER = 512
    F_TIF = 1024
    F_RO = 2048
    F_STP = 4096


cdef inline bint _eq(const unsigned char* a, Py_ssize_t n, const char* lit, Py_ssize_t m) noexcept nogil:
    return n == m and memcmp(a, lit, n) == 0


# The enum strings the fast path knows, in the order of their values (BID/ASK, LIMIT/MARKET,
# GTC..ALO, CANCEL_MAKER..CANCEL_BOTH); NULL ends each table.
cdef const char* _FAST_SIDES[3]
cdef const char* _FAST_KINDS[3]
cdef const char* _FAST_TIFS[5]
cdef const char* _FAST_STPS[4]
_FAST_SIDES[:] = [b"buy", b"sell", NULL]
_FAST_KINDS[:] = [b"limit", b"market", NULL]
_FAST_TIFS[:] = [b"gtc", b"ioc", b"fok", b"alo", NULL]
_FAST_STPS[:] = [b"cancel_maker", b"cancel_taker", b"cancel_both", NULL]


cdef Py_ssize_t _rd_choice(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                           const char** names, int* out) noexcept:
    """A string at p[i] that is one of `names`: its index into `out`; the index after, or -1."""
    cdef const unsigned char* s
    cdef Py_ssize_t ln
    cdef int k = 0
    i = _rd_str(p, i, n, &s, &ln)
    if i < 0:
        return -1
    while names[k] != NULL:
        if _eq(s, ln, names[k], strlen(names[k])):
            out[0] = k
            return i
        k += 1
    return -1


cdef Py_ssize_t _rd_int(const unsigned char* p, Py_ssize_t i, Py_ssize_t n, int64_t* out) noexcept nogil:
    """An integer that fits int64 at p[i]; the index after it, or -1."""
    cdef unsigned char c
    cdef uint64_t u = 0
    cdef int w = 0, k
    if i >= n:
        return -1
    c = p[i]
    if c <= 0x7f:
        out[0] = c
        return i + 1
    if c >= 0xe0:
        out[0] = <int64_t>c - 256
        return i + 1
    if c == 0xcc or c == 0xd0:
        w = 1
    elif c == 0xcd or c == 0xd1:
        w = 2
    elif c == 0xce or c == 0xd2:
        w = 4
    elif c == 0xcf or c == 0xd3:
        w = 8
    else:
        return -1
    if i + 1 + w > n:
        return -1
    for k in range(w):
        u = (u << 8) | p[i + 1 + k]
    if c >= 0xd0:                                   # signed: sign-extend
        if w < 8 and (u >> (8 * w - 1)) & 1:
            u |= ~((<uint64_t>1 << (8 * w)) - 1)
        out[0] = <int64_t>u
    else:
        if u > <uint64_t>0x7fffffffffffffff:
            return -1
        out[0] = <int64_t>u
    return i + 1 + w


cdef Py_ssize_t _rd_str(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                        const unsigned char** s, Py_ssize_t* ln) noexcept nogil:
    """A string at p[i]; the index after it, or -1."""
    cdef unsigned char c
    cdef Py_ssize_t L
    if i >= n:
        return -1
    c = p[i]
    if 0xa0 <= c <= 0xbf:
        L = c & 0x1f
        i += 1
    elif c == 0xd9 and i + 1 < n:
        L = p[i + 1]
        i += 2
    elif c == 0xda and i + 2 < n:
        L = (p[i + 1] << 8) | p[i + 2]
        i += 3
    else:
        return -1
    if i + L > n:
        return -1
    s[0] = p + i
    ln[0] = L
    return i + L


cdef inline bint _ascii(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        if s[j] >= 0x80:
            return False
    return True


cdef Py_ssize_t _canonical_key(int is_str, int64_t v, const unsigned char* s, Py_ssize_t n,
                               unsigned char* out) noexcept nogil:
    """The canonical (smallest) msgpack encoding of an account key, as msgspec writes it."""
    cdef Py_ssize_t k = 0, j
    cdef int w = 0
    cdef unsigned char tag = 0
    cdef uint64_t u
    if is_str:
        if n < 32:
            out[0] = 0xa0 | n
            k = 1
        else:
            out[0] = 0xd9
            out[1] = <unsigned char>n
            k = 2
        memcpy(out + k, s, n)
        return k + n
    if 0 <= v < 128:
        out[0] = <unsigned char>v
        return 1
    if -32 <= v < 0:
        out[0] = <unsigned char>(v & 0xff)
        return 1
    if v > 0:
        if v < 0x100:
            tag = 0xcc; w = 1
        elif v < 0x10000:
            tag = 0xcd; w = 2
        elif v < <int64_t>0x100000000:
            tag = 0xce; w = 4
        else:
            tag = 0xcf; w = 8
    else:
        if v >= -128:
            tag = 0xd0; w = 1
        elif v >= -32768:
            tag = 0xd1; w = 2
        elif v >= -2147483648:
            tag = 0xd2; w = 4
        else:
            tag = 0xd3; w = 8
    out[0] = tag
    u = <uint64_t>v
    for j in range(w):
        out[w - j] = <unsigned char>(u & 0xff)
        u >>= 8
    return 1 + w


cdef bint _complete_objects(const unsigned char[::1] data) except -1:
    """Is `data` a run of complete msgpack objects (nothing truncated, no stray byte)?"""
    cdef Py_ssize_t n = data.shape[0], i = 0
    if n == 0:
        return True
    try:
        while i < n:
            i = skip_object(&data[0], i, n, 0)
            if i < 0:
                return False
    except ValueError:
        return False
    return True


cdef inline uint64_t _fnv(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = <uint64_t>0xcbf29ce484222325
    cdef Py_ssize_t j
    for j in range(n):
        h ^= s[j]
        h *= <uint64_t>0x100000001b3
    return h


cdef class Engine:
    """The deterministic state machine. One command in, its events out, in `seq` order.

    * `execute(cmd)`: one command Struct (engine.messages) -> a list of event Structs.
    * `execute_batch(data, fmt)`: encoded commands (JSON Lines or msgpack) -> encoded events.

    Both run the same code; the batch path skips building a Python object per event.
    """

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
        self.specs = []
        self.market_ids = {}
        self.mk_cap = 8
        self.mk = <MarketC*>malloc(self.mk_cap * sizeof(MarketC))
        self.pos_of = <int32_t**>malloc(self.mk_cap * sizeof(int32_t*))
        self.account_ids = {}
        self.account_keys = []
        self._acct_mp = []
        self._market_utf8 = []
        self.akey = NULL
        self.akey_mask = 0
        self.acct_cap = 0
        self.ac = NULL
        self.pos_cap = 1024
        self.pos = <PosC*>malloc(self.pos_cap * sizeof(PosC))
        if self.mk == NULL or self.pos == NULL or self.pos_of == NULL:
            raise MemoryError()
        self.n_markets = 0
        self.n_accounts = 0
        self.n_pos = 0
        self.clock = 0
        self.seq = 0
        self.next_oid = 1

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
        free(self.akey)

    # ---- public API ------------------------------------------------------------------------

    cpdef list execute(self, object cmd):
        """Apply one command; return its events as Structs. O(1) + O(fills) for an order."""
        cdef int64_t first = self.seq, n
        if self.w.fmt != FMT_MSGPACK:
            self.w.set_format(FMT_MSGPACK)
        self.w.clear()
        self.w.array_header(0)
        self._dispatch(cmd)
        n = self.seq - first
        self.w.buf[1] = <char>((n >> 24) & 0xff)
        self.w.buf[2] = <char>((n >> 16) & 0xff)
        self.w.buf[3] = <char>((n >> 8) & 0xff)
        self.w.buf[4] = <char>(n & 0xff)
        return _decode_events(self.w.take())

    def execute_batch(self, data, str fmt="msgpack", out=None):
        """Apply a buffer of encoded commands; return the encoded events.

        `fmt` is the input format, `msgpack` (a stream of maps) or `jsonl`; `out` the output
        format (default: the same). What cannot be decoded is answered with `invalid_command`.
        msgpack takes the fast path (no Python object per plain order or cancel).
        """
        if fmt == "msgpack":
            if _complete_objects(data):       # one request's worth: no framing state needed
                return self.execute_msgpack(data, 1, 0, out or fmt)
            framer = MsgpackFramer()
            frames, first, offset, bad = framer.split(data)
            bad.extend(framer.close())
            head = self.execute_msgpack(frames, first, offset, out or fmt)
            return head + self.execute_many(bad, out or fmt) if bad else head
        reader = CommandReader(fmt)
        items = reader.feed(data)
        items.extend(reader.close())
        return self.execute_many(items, out or fmt)

    def execute_many(self, list items, str fmt="msgpack"):
        """Apply decoded commands (and Malformed items) in order; return the encoded events.

        `fmt` is the output format. No Python object is made per event: the core writes bytes
        as it matches.
        """
        cdef object cmd
        cdef int f = FMT_JSON if fmt == "jsonl" else FMT_MSGPACK
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {_show(fmt)}: expected one of {', '.join(FORMATS)}")
        if self.w.fmt != f:
            self.w.set_format(f)
        self.w.clear()
        for cmd in items:
            self._dispatch(cmd)
        return self.w.take()

    def state(self):
        """The complete state in canonical form (docs/state-hash.md). O(orders + positions)."""
        cdef int32_t m, s, j, lvl, i, a
        cdef Book b
        cdef Order* o
        cdef PosC* p
        cdef MarketC* mk
        markets = []
        for name in sorted(self.market_ids):
            m = self.market_ids[name]
            b = self.books[m]
            sides = []
            for s in range(2):
                orders = []
                for j in range(b.n[s] - 1, -1, -1):
                    lvl = b.slots[s][j]
                    i = b.lv[lvl].head
                    while i >= 0:
                        o = &self.pool.o[i]
                        orders.append([o.oid, self.account_keys[o.account], self._cid_obj(i),
                                       o.price, o.qty, _KIND_NAMES[o.kind], _TIF_NAMES[o.tif],
                                       _STP_NAMES[o.stp], bool(o.reduce_only)])
                        i = o.next
                sides.append(orders)
            mk = &self.mk[m]
            markets.append([self.specs[m].hash_record(),
                            mk.index if mk.has_mark else None,
                            mk.mark if mk.has_mark else None,
                            mk.last_oracle_ts, sides[0], sides[1],
                            [mk.next_funding, mk.premium_sum, mk.premium_n, _py128(mk.cum_funding)],
                            self._armed_orders(m)])
        positions = []
        accounts = []
        for key in sorted(self.account_keys, key=_account_order):
            a = self.account_ids[key]
            if self.ac[a].collateral or self.ac[a].margin_call:
                accounts.append([key, self.ac[a].collateral, bool(self.ac[a].margin_call)])
            for name in sorted(self.market_ids):
                m = self.market_ids[name]
                if self.pos_of[m][a] >= 0:
                    p = &self.pos[self.pos_of[m][a]]
                    if (p.size or p.cost or p.leverage or p.isolated or p.iso_margin
                            or p.realised):
                        positions.append([key, name, p.size, p.cost, p.leverage,
                                          bool(p.isolated), p.iso_margin, _py128(p.funding_last),
                                          bool(p.margin_call), p.realised])
        return {"clock": self.clock, "next_oid": self.next_oid, "markets": markets,
                "accounts": accounts, "positions": positions,
                "totals": [self.deposits, self.withdrawals, self.fees]}

    def _armed_orders(self, int32_t m):
        """The market's trigger orders waiting for their mark, by oid (canonical form)."""
        cdef Order* o
        out = []
        for key in sorted(list(self.trig_up[m]) + list(self.trig_down[m]), key=_by_oid):
            o = &self.pool.o[<int32_t>key[2]]
            out.append([o.oid, self.account_keys[o.account], self._cid_obj(key[2]),
                        _KIND_NAMES[o.kind], _SIDE_NAMES[o.side], o.trigger_price,
                        None if o.kind == STOP_MARKET or o.kind == TAKE_PROFIT_MARKET else o.price,
                        o.qty, _TIF_NAMES[o.tif], _STP_NAMES[o.stp], bool(o.reduce_only)])
        return out

    def market_names(self):
        return list(self.market_ids)

    def book(self, str market, int depth=5):
        """The best `depth` levels a side: {"bids": [[price, qty], ...], "asks": [...]}, best
        first. O(depth)."""
        cdef int32_t m = self.market_ids[market], j, k, lvl
        cdef Book b = self.books[m]
        out = {}
        for k, name in ((BID, "bids"), (ASK, "asks")):
            levels = []
            for j in range(b.n[k] - 1, max(-1, b.n[k] - 1 - depth), -1):
                lvl = b.slots[k][j]
                levels.append([b.lv[lvl].price, b.lv[lvl].qty])
            out[name] = levels
        return out

    def position(self, account, str market):
        """(size in lots, cost in quote units) of an account in a market; (0, 0) if none."""
        cdef int32_t a = self.account_ids.get(account, -1)
        cdef int32_t m = self.market_ids.get(market, -1)
        cdef int32_t p
        if a < 0 or m < 0 or a >= self.acct_cap:
            return (0, 0)
        p = self.pos_of[m][a]
        if p < 0:
            return (0, 0)
        return (self.pos[p].size, self.pos[p].cost)

    def check_integrity(self):
        """Raise AssertionError if any index disagrees with the books. O(orders)."""
        cdef int32_t m, s, j, lvl, i, n, prev, a
        cdef int64_t qty, last_key
        cdef Book b
        cdef Order* o
        live = 0
        counts = {}
        for m in range(self.n_markets):
            b = self.books[m]
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
                        o = &self.pool.o[i]
                        assert o.live and o.level == lvl and o.prev == prev and o.market == m
                        assert o.side == s and o.price == b.lv[lvl].price and o.qty > 0
                        assert self.pool.cid_find(o.account, o.cid_is_str, o.cid_int,
                                                  self.pool.cid_text + <size_t>i * CID_BYTES,
                                                  o.cid_len, o.cid_hash) == i
                        counts[(o.account, m)] = counts.get((o.account, m), 0) + 1
                        n += 1
                        qty += o.qty
                        prev = i
                        i = o.next
                    assert b.lv[lvl].tail == prev and b.lv[lvl].count == n and b.lv[lvl].qty == qty
                    live += n
            if b.n[0] and b.n[1]:
                assert b.lv[b.best(BID)].price < b.lv[b.best(ASK)].price, "the book is crossed"
        for m in range(self.n_markets):
            for key in list(self.trig_up[m]) + list(self.trig_down[m]):
                o = &self.pool.o[<int32_t>key[2]]
                assert o.live and o.armed and o.level < 0 and o.oid == key[1] and o.market == m
                assert o.trigger_price == key[0]
                counts[(o.account, m)] = counts.get((o.account, m), 0) + 1
                live += 1
        assert live == self.pool.n_live, f"{self.pool.n_live} live slots, {live} in books"
        for m in range(self.n_markets):
            for a in range(self.n_accounts):
                if self.pos_of[m][a] >= 0:
                    assert self.pos[self.pos_of[m][a]].n_orders == counts.get((a, m), 0)

    def risk_violations(self, str market):
        """Scopes with a position in `market` left liquidatable, or with a margin-call flag that
        disagrees with their equity, found by looking at every position (for tests: after a mark
        update of that market that hit no bound, this must be empty). O(positions)."""
        cdef int32_t p, a, iso
        cdef int32_t m = self.market_ids[market]
        cdef int64_t eq, mm
        out = []
        if not self.margin:
            return out
        for p in range(self.n_pos):
            if (self.pos[p].size == 0 or self.pos[p].account == self.insurance
                    or self.pos[p].market != m):
                continue
            if self.mk[self.pos[p].market].liq_pending:
                continue
            a = self.pos[p].account
            iso = p if self.pos[p].isolated else -1
            eq = self._equity(a, iso)
            mm = self._maintenance_margin(a, iso)
            flag = self.pos[p].margin_call if iso >= 0 else self.ac[a].margin_call
            if eq < mm:
                out.append((self.account_keys[a], self.specs[self.pos[p].market].name,
                            "liquidatable", eq, mm))
            if bool(flag) != (2 * eq < 3 * mm):
                out.append((self.account_keys[a], self.specs[self.pos[p].market].name,
                            "margin_call flag", eq, mm))
        return out


    # ---- the msgpack fast path -----------------------------------------------------------

    cdef int _index_account_key(self, int32_t a, bytes key) except -1:
        """Index an account by the canonical msgpack bytes of its key (open addressing)."""
        cdef uint64_t h, j
        cdef int32_t* nt
        cdef int32_t i, b
        cdef bytes kb
        self._acct_mp.append(key)
        if 2 * (a + 1) > <int32_t>(self.akey_mask + 1):
            b = 2 * <int32_t>(self.akey_mask + 1) if self.akey_mask else 1024
            while 2 * (a + 1) > b:
                b *= 2
            nt = <int32_t*>malloc(b * sizeof(int32_t))
            if nt == NULL:
                raise MemoryError()
            for i in range(b):
                nt[i] = -1
            free(self.akey)
            self.akey = nt
            self.akey_mask = b - 1
            for i in range(a):
                kb = self._acct_mp[i]
                j = _fnv(kb, len(kb)) & self.akey_mask
                while self.akey[j] >= 0:
                    j = (j + 1) & self.akey_mask
                self.akey[j] = i
        j = _fnv(key, len(key)) & self.akey_mask
        while self.akey[j] >= 0:
            j = (j + 1) & self.akey_mask
        self.akey[j] = a
        return 0

    cdef int32_t _find_account(self, const unsigned char* k, Py_ssize_t n):
        cdef uint64_t j
        cdef int32_t a
        cdef bytes kb
        if self.akey_mask == 0:
            return -1
        j = _fnv(k, n) & self.akey_mask
        while True:
            a = self.akey[j]
            if a < 0:
                return -1
            kb = self._acct_mp[a]
            if len(kb) == n and memcmp(<const char*>kb, k, n) == 0:
                return a
            j = (j + 1) & self.akey_mask

    cdef int32_t _find_market(self, const unsigned char* s, Py_ssize_t n):
        cdef int32_t m
        cdef bytes name
        for m in range(self.n_markets):
            name = self._market_utf8[m]
            if len(name) == n and memcmp(<const char*>name, s, n) == 0:
                return m
        return -1

    cdef int _fast(self, const unsigned char* p, Py_ssize_t n) except -1:
        """Apply a plain new_order or cancel from its msgpack bytes; 0: use the msgspec path."""
        cdef Py_ssize_t i = 0, count, kl, sl, j
        cdef const unsigned char* ks
        cdef const unsigned char* sv
        cdef const unsigned char* ty = NULL
        cdef Py_ssize_t ty_n = 0
        cdef unsigned char c
        cdef unsigned char keybuf[80]
        cdef int seen = 0, bit, is_new
        cdef int64_t v, ts = 0, qty = 0, price = 0
        cdef int32_t a = -1, m = -1, oi
        cdef int side = 0, kind = 0, tif = GTC, stp = CANCEL_MAKER
        cdef bint ro = False, cid_str = False
        cdef int64_t cid_i = 0
        cdef const unsigned char* cid_s = NULL
        cdef Py_ssize_t cid_n = 0
        cdef OrderCmd oc
        cdef MarketC* mk
        if n < 1:
            return 0
        c = p[0]
        if 0x80 <= c <= 0x8f:
            count = c & 0x0f
            i = 1
        elif c == 0xde and n >= 3:
            count = (p[1] << 8) | p[2]
            i = 3
        else:
            return 0
        for j in range(count):
            i = _rd_str(p, i, n, &ks, &kl)
            if i < 0:
                return 0
            bit = 0
            if kl == 4 and memcmp(ks, b"type", 4) == 0:
                bit = F_TYPE
                i = _rd_str(p, i, n, &ty, &ty_n)
            elif kl == 2 and memcmp(ks, b"ts", 2) == 0:
                bit = F_TS
                i = _rd_int(p, i, n, &ts)
                if ts < 0:
                    return 0
            elif kl == 7 and memcmp(ks, b"account", 7) == 0:
                bit = F_ACCOUNT
                if i < n and (p[i] <= 0x7f or p[i] >= 0xe0 or 0xcc <= p[i] <= 0xd3):
                    i = _rd_int(p, i, n, &v)
                    if i < 0:
                        return 0
                    a = self._find_account(keybuf, _canonical_key(0, v, NULL, 0, keybuf))
                else:
                    i = _rd_str(p, i, n, &sv, &sl)
                    if i < 0 or sl < 1 or sl > 64 or not _ascii(sv, sl):
                        return 0
                    a = self._find_account(keybuf, _canonical_key(1, 0, sv, sl, keybuf))
                if a < 0:
                    return 0
            elif kl == 6 and memcmp(ks, b"market", 6) == 0:
                bit = F_MARKET
                i = _rd_str(p, i, n, &sv, &sl)
                if i < 0:
                    return 0
                m = self._find_market(sv, sl)
                if m < 0:
                    return 0
            elif kl == 3 and memcmp(ks, b"cid", 3) == 0:
                bit = F_CID
                if i < n and (p[i] <= 0x7f or p[i] >= 0xe0 or 0xcc <= p[i] <= 0xd3):
                    i = _rd_int(p, i, n, &cid_i)
                    cid_str = False
                else:
                    i = _rd_str(p, i, n, &cid_s, &cid_n)
                    if i < 0 or cid_n < 1 or cid_n > 36 or not _ascii(cid_s, cid_n):
                        return 0
                    cid_str = True
            elif kl == 4 and memcmp(ks, b"side", 4) == 0:
                bit = F_SIDE
                i = _rd_choice(p, i, n, _FAST_SIDES, &side)
            elif kl == 4 and memcmp(ks, b"kind", 4) == 0:
                bit = F_KIND
                i = _rd_choice(p, i, n, _FAST_KINDS, &kind)
            elif kl == 3 and memcmp(ks, b"qty", 3) == 0:
                bit = F_QTY
                i = _rd_int(p, i, n, &qty)
                if qty <= 0 or qty > C_MAX_QTY:
                    return 0
            elif kl == 5 and memcmp(ks, b"price", 5) == 0:
                bit = F_PRICE
                if i < n and p[i] == 0xc0:
                    price = 0
                    i += 1
                else:
                    i = _rd_int(p, i, n, &price)
                    if price <= 0 or price > C_MAX_PRICE:
                        return 0
            elif kl == 13 and memcmp(ks, b"trigger_price", 13) == 0:
                bit = F_TRIGGER
                if i >= n or p[i] != 0xc0:
                    return 0
                i += 1
            elif kl == 3 and memcmp(ks, b"tif", 3) == 0:
                bit = F_TIF
                i = _rd_choice(p, i, n, _FAST_TIFS, &tif)
            elif kl == 11 and memcmp(ks, b"reduce_only", 11) == 0:
                bit = F_RO
                if i >= n or (p[i] != 0xc2 and p[i] != 0xc3):
                    return 0
                ro = p[i] == 0xc3
                i += 1
            elif kl == 3 and memcmp(ks, b"stp", 3) == 0:
                bit = F_STP
                i = _rd_choice(p, i, n, _FAST_STPS, &stp)
            else:
                return 0
            if i < 0 or seen & bit:
                return 0
            seen |= bit
        if i != n or not (seen & F_TYPE):
            return 0
        if _eq(ty, ty_n, b"new_order", 9):
            if (seen & (F_ACCOUNT | F_MARKET | F_CID | F_SIDE | F_KIND | F_QTY)) != \
                    (F_ACCOUNT | F_MARKET | F_CID | F_SIDE | F_KIND | F_QTY):
                return 0
            mk = &self.mk[m]
            if qty < mk.min_qty or (kind == LIMIT and price == 0):
                return 0
            if kind == MARKET:
                tif = IOC
                price = 0
            _order_cmd(&oc, a, m, side, kind, tif, stp, ro, qty, price, 0)
            oc.cid.is_str = cid_str
            oc.cid.i = 0 if cid_str else cid_i
            oc.cid.text = <const char*>cid_s if cid_str else NULL
            oc.cid.n = cid_n if cid_str else 0
            oc.cid.h = cid_hash_str(a, oc.cid.text, cid_n) if cid_str else cid_hash_int(a, cid_i)
            self.n_commands += 1
            if ts > self.clock:
                self.clock = ts
                self._funding_due()
            self._place(&oc)
            return 1
        if _eq(ty, ty_n, b"cancel", 6):
            if seen != (F_TYPE | F_ACCOUNT | F_MARKET | F_CID) and \
                    seen != (F_TYPE | F_TS | F_ACCOUNT | F_MARKET | F_CID):
                return 0
            if cid_str:
                oi = self.pool.cid_find(a, True, 0, <const char*>cid_s, cid_n,
                                        cid_hash_str(a, <const char*>cid_s, cid_n))
            else:
                oi = self.pool.cid_find(a, False, cid_i, NULL, 0, cid_hash_int(a, cid_i))
            if oi < 0 or self.pool.o[oi].market != m:
                return 0                          # unknown_order: the msgspec path says so
            self.n_commands += 1
            if ts > self.clock:
                self.clock = ts
                self._funding_due()
            self._cancel_order(oi, V_USER)
            return 1
        return 0

    def execute_msgpack(self, data, int first=1, Py_ssize_t offset=0, str out="msgpack"):
        """Apply a buffer of complete msgpack commands (as MsgpackFramer.split gives them);
        return the encoded events. `first` and `offset` number the objects in rejections."""
        cdef const unsigned char[::1] view = data
        cdef Py_ssize_t n = view.shape[0], i = 0, j
        cdef const unsigned char* p
        cdef int f = FMT_JSON if out == "jsonl" else FMT_MSGPACK
        cdef int64_t k = first
        if self.w.fmt != f:
            self.w.set_format(f)
        self.w.clear()
        if n == 0:
            return self.w.take()
        p = &view[0]
        while i < n:
            j = skip_object(p, i, n, 0)
            if j < 0:
                raise ValueError("execute_msgpack takes complete objects (see MsgpackFramer)")
            if not self._fast(p + i, j - i):
                self._dispatch(decode_msgpack(bytes(view[i:j]), f"object {k} at byte {offset + i}: "))
            k += 1
            i = j
        return self.w.take()

    # ---- dispatch --------------------------------------------------------------------------

    cdef int _dispatch(self, object cmd) except -1:
        self.n_commands += 1
        try:
            return self._apply(cmd)
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
            # A Struct built by hand skips msgspec's validation, and its bad field surfaces here,
            # as the fields are read, before any state changes. Validate it now to say which.
            try:
                msgspec.convert(msgspec.to_builtins(cmd), type(cmd))
            except (msgspec.ValidationError, TypeError) as e:
                tag = getattr(getattr(type(cmd), "__struct_config__", None), "tag", None)
                return self._reject(tag if type(tag) is str else None, Reason.INVALID_COMMAND,
                                    str(e))
            raise

    cdef int _apply(self, object cmd) except -1:
        cdef object t = type(cmd)
        cdef int64_t ts
        if t is Malformed:
            return self._reject(cmd.command, Reason.INVALID_COMMAND, cmd.detail,
                                cmd.account, cmd.market, cmd.cid)
        if not isinstance(cmd, _Command):
            return self._reject(None, Reason.INVALID_COMMAND,
                                f"expected a command, got {type(cmd).__name__}")
        ts = cmd.ts
        if ts > self.clock:
            self.clock = ts
            self._funding_due()
        if t is NewOrder:
            return self._new_order(cmd)
        if t is Cancel:
            return self._cancel(cmd)
        if t is Amend:
            return self._amend(cmd)
        if t is Oracle:
            return self._oracle(cmd)
        if t is CancelAll:
            return self._cancel_all(cmd)
        if t is CreateMarket:
            return self._create_market(cmd)
        if t is StateHash:
            return self._state_hash()
        if t is Clock:
            return 0
        if t is Deposit:
            return self._deposit(cmd)
        if t is Withdraw:
            return self._withdraw(cmd)
        if t is SetLeverage:
            return self._set_leverage(cmd)
        if t is QueryAccount:
            return self._query_account(cmd)
        if t is SetMarginMode:
            return self._set_margin_mode(cmd)
        if t is TransferMargin:
            return self._transfer_margin(cmd)
        if t is Audit:
            return self._audit()
        return self._reject(None, Reason.INVALID_COMMAND,
                            f"{type(cmd).__name__} is not a command of the contract")

    cdef int _reject(self, str command, str reason, str detail, object account=None,
                     object market=None, object cid=None) except -1:
        cdef EventWriter w = self.w
        cdef int n = 3 + (account is not None) + (market is not None) + (cid is not None)
        self.seq += 1
        w.begin(T_REJECTED, n, self.seq, self.clock)
        w.key(K_COMMAND)
        w.pyobj(command)
        if account is not None:
            w.key(K_ACCOUNT)
            w.pyobj(account)
        if market is not None:
            w.key(K_MARKET)
            w.pyobj(market)
        if cid is not None:
            w.key(K_CID)
            w.pyobj(cid)
        w.key(K_REASON)
        w.pystr(reason)
        w.key(K_DETAIL)
        w.pystr(detail)
        w.end()
        return 0

    # ---- accounts, positions, cids ---------------------------------------------------------

    cdef int32_t _account(self, object key) except -1:
        """The account's id, made on first sight. O(1)."""
        cdef int32_t a = self.account_ids.get(key, -1)
        cdef int32_t m, c, i
        if a >= 0:
            return a
        a = self.n_accounts
        if a == self.acct_cap:
            c = 1024 if self.acct_cap == 0 else 2 * self.acct_cap
            self.ac = <AccountC*>realloc(self.ac, c * sizeof(AccountC))
            if self.ac == NULL:
                raise MemoryError()
            for m in range(self.n_markets):
                self.pos_of[m] = <int32_t*>realloc(self.pos_of[m], c * sizeof(int32_t))
                if self.pos_of[m] == NULL:
                    raise MemoryError()
                for i in range(self.acct_cap, c):
                    self.pos_of[m][i] = -1
            self.acct_cap = c
            self.pool.ensure_accounts(c)
        self.ac[a].name_tok = self.w.register_name(key)
        self.ac[a].collateral = 0
        self.ac[a].positions = -1
        self.ac[a].margin_call = 0
        self.ac[a].dirty = 0
        if key == INSURANCE and type(key) is str:
            self.insurance = a
        self._index_account_key(a, _mp_encode(key))
        self.account_ids[key] = a
        self.account_keys.append(key)
        self.n_accounts += 1
        return a

    cdef int32_t _position(self, int32_t m, int32_t a) except -1:
        """The position slot of account `a` in market `m`, made on first use. O(1)."""
        cdef int32_t p = self.pos_of[m][a]
        if p >= 0:
            return p
        if self.n_pos == self.pos_cap:
            self.pos_cap *= 2
            self.pos = <PosC*>realloc(self.pos, self.pos_cap * sizeof(PosC))
            if self.pos == NULL:
                raise MemoryError()
        p = self.n_pos
        self.n_pos += 1
        self.pos[p].size = 0
        self.pos[p].cost = 0
        self.pos[p].open_buy = 0
        self.pos[p].open_sell = 0
        self.pos[p].n_orders = 0
        self.pos[p].n_ro = 0
        self.pos[p].account = a
        self.pos[p].market = m
        self.pos[p].leverage = 0
        self.pos[p].isolated = 0
        self.pos[p].margin_call = 0
        self.pos[p].iso_margin = 0
        self.pos[p].realised = 0
        self.pos[p].rkey = 0
        self.pos[p].rlist = 0
        self.pos[p].funding_last = self.mk[m].cum_funding
        self.pos[p].next = self.ac[a].positions
        self.ac[a].positions = p
        self.pos_of[m][a] = p
        return p

    cdef object _cid_key(self, object cid, int32_t a, CidKey* k):
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

    cdef object _cid_obj(self, int32_t i):
        cdef Order* o = &self.pool.o[i]
        if o.cid_is_str:
            return (self.pool.cid_text + <size_t>i * CID_BYTES)[:o.cid_len].decode("utf-8")
        return o.cid_int

    cdef int64_t _reducible(self, int32_t a, int32_t m, int side):
        """How much an order on `side` may still trade and only shrink the position."""
        cdef int32_t p = self.pos_of[m][a]
        cdef int64_t s = self.pos[p].size if p >= 0 else 0
        if side == BID:
            return -s if s < 0 else 0
        return s if s > 0 else 0

    # ---- markets and prices ----------------------------------------------------------------

    cdef int _create_market(self, object cmd) except -1:
        cdef MarketC* mk
        cdef int32_t m, i
        if cmd.market in self.market_ids:
            return self._reject("create_market", Reason.MARKET_EXISTS,
                                f"market {cmd.market} already exists", None, cmd.market)
        try:
            spec = market_spec(cmd)
        except MarketConfigError as e:
            return self._reject("create_market", Reason.INVALID_MARKET, str(e), None, cmd.market)
        if self.n_markets == self.mk_cap:
            self.mk_cap *= 2
            self.mk = <MarketC*>realloc(self.mk, self.mk_cap * sizeof(MarketC))
            self.pos_of = <int32_t**>realloc(self.pos_of, self.mk_cap * sizeof(int32_t*))
            if self.mk == NULL or self.pos_of == NULL:
                raise MemoryError()
        m = self.n_markets
        self.pos_of[m] = <int32_t*>malloc((self.acct_cap if self.acct_cap else 1) * sizeof(int32_t))
        if self.pos_of[m] == NULL:
            raise MemoryError()
        for i in range(self.acct_cap):
            self.pos_of[m][i] = -1
        mk = &self.mk[m]
        mk.multiplier = spec.multiplier
        mk.min_qty = spec.min_qty
        mk.maker_fee_ppm = spec.maker_fee_ppm
        mk.taker_fee_ppm = spec.taker_fee_ppm
        mk.band_ppm = spec.price_band_ppm
        mk.max_orders = spec.max_orders_per_account
        mk.oracle_max_age_ns = spec.oracle_max_age_s * NS
        mk.index = 0
        mk.mark = 0
        mk.last_oracle_ts = 0
        mk.has_mark = 0
        tiers = spec.tiers or (TierSpec(2**63 - 1, spec.imf_ppm, spec.mmf_ppm, 0, 0),)
        mk.tiers = <TierC*>malloc(len(tiers) * sizeof(TierC))
        if mk.tiers == NULL:
            raise MemoryError()
        for i, t in enumerate(tiers):
            mk.tiers[i].max_notional = t.max_notional
            mk.tiers[i].imf_ppm = t.imf_ppm
            mk.tiers[i].mmf_ppm = t.mmf_ppm
            mk.tiers[i].imf_deduction = t.imf_deduction
            mk.tiers[i].mmf_deduction = t.mmf_deduction
        mk.n_tiers = len(tiers)
        mk.liq_fee_ppm = spec.liquidation_fee_ppm
        mk.max_liquidations = spec.max_liquidations_per_update
        mk.mmf_max = max(t.mmf_ppm for t in tiers)
        mk.liq_pending = 0
        mk.funding_interval_ns = spec.funding_interval_s * NS
        mk.funding_cap_ppm = spec.funding_cap_ppm
        mk.interest_ppm = spec.interest_ppm
        mk.next_funding = 0
        mk.premium_sum = 0
        mk.premium_n = 0
        mk.cum_funding = 0
        mk.max_leverage = PPM // tiers[0].imf_ppm
        mk.name_tok = self.w.register_name(spec.name)
        self.books.append(Book())
        self.trig_up.append(SortedList())
        self.trig_down.append(SortedList())
        self.risk_long.append(SortedList())
        self.risk_short.append(SortedList())
        self.risk_multi.append(set())
        self.risk_called.append(set())
        self.specs.append(spec)
        self._market_utf8.append(spec.name.encode("utf-8"))
        self.market_ids[spec.name] = m
        self.n_markets += 1
        return 0

    cdef int _oracle(self, object cmd) except -1:
        """A new index price; the mark is median(index, best bid, best ask)."""
        cdef int32_t m = self.market_ids.get(cmd.market, -1)
        cdef MarketC* mk
        cdef Book b
        cdef int64_t idx, bid, ask, lo, hi
        if m < 0:
            return self._reject("oracle", Reason.UNKNOWN_MARKET,
                                _no_market(cmd.market), None, cmd.market)
        idx = _positive(cmd.price, C_MAX_PRICE)
        if idx == 0:
            return self._reject("oracle", Reason.INVALID_PRICE,
                                _bad_price("price", cmd.price), None, cmd.market)
        mk = &self.mk[m]
        b = self.books[m]
        bid = b.lv[b.best(BID)].price if b.n[BID] else idx
        ask = b.lv[b.best(ASK)].price if b.n[ASK] else idx
        # median of three
        lo = bid if bid < ask else ask
        hi = ask if bid < ask else bid
        mk.index = idx
        mk.mark = lo if idx < lo else (hi if idx > hi else idx)
        mk.has_mark = 1
        mk.last_oracle_ts = self.clock
        if mk.next_funding == 0:      # funding runs from the first oracle, on interval multiples
            mk.next_funding = (self.clock // mk.funding_interval_ns + 1) * mk.funding_interval_ns
        self._ev_mark(m)
        self._sample_premium(m)
        self._fire_triggers(m)
        if self.margin:
            self._liquidations(m, True)
        return 0

    # ---- order entry -------------------------------------------------------------------------

    cdef int _new_order(self, object cmd) except -1:
        """The Struct path: field checks with the Python values at hand, then `_place`."""
        cdef int32_t m, a, kind, side, tif, stp
        cdef int64_t qty, price
        cdef bint ro
        cdef MarketC* mk
        cdef OrderCmd oc
        cdef object keep
        account = cmd.account
        market = cmd.market
        cid = cmd.cid
        m = self.market_ids.get(market, -1)
        if m < 0:
            return self._reject("new_order", Reason.UNKNOWN_MARKET,
                                _no_market(market), account, market, cid)
        mk = &self.mk[m]
        side = _SIDES[cmd.side]
        kind = _KINDS[cmd.kind]
        tif = _TIFS[cmd.tif]
        stp = _STPS[cmd.stp]
        ro = cmd.reduce_only
        qty = _positive(cmd.qty, C_MAX_QTY)
        if qty == 0:
            return self._reject("new_order", Reason.INVALID_QTY, _bad_qty(cmd.qty),
                                account, market, cid)
        if qty < mk.min_qty:
            return self._reject("new_order", Reason.BELOW_MIN_QTY, _below_min(qty, mk.min_qty),
                                account, market, cid)
        price = 0
        if kind == MARKET:
            tif = IOC           # a market order's `price`, if sent, is ignored
        elif kind != STOP_MARKET and kind != TAKE_PROFIT_MARKET:
            price = _positive(cmd.price, C_MAX_PRICE)
            if price == 0:
                return self._reject("new_order", Reason.INVALID_PRICE,
                                    _bad_price("price", cmd.price), account, market, cid)
        oc.trigger_price = 0
        if kind != LIMIT and kind != MARKET:
            oc.trigger_price = _positive(cmd.trigger_price, C_MAX_PRICE)
            if oc.trigger_price == 0:
                return self._reject("new_order", Reason.INVALID_PRICE,
                                    _bad_price("trigger_price", cmd.trigger_price),
                                    account, market, cid)
            if kind == STOP_MARKET or kind == TAKE_PROFIT_MARKET:
                tif = IOC
        a = self._account(account)
        keep = self._cid_key(cid, a, &oc.cid)
        _order_cmd(&oc, a, m, side, kind, tif, stp, ro, qty, price, oc.trigger_price)
        return self._place(&oc)

    cdef int _place(self, OrderCmd* c) except -1:
        """An order whose fields are valid: the state checks, in the contract's order, then
        acceptance and the matching walk. Both the Struct path and the msgpack fast path end here.
        """
        cdef int32_t a = c.account, m = c.market, p, i
        cdef int side = c.side, tif = c.tif
        cdef int64_t qty = c.qty, price = c.price, limit, s, before, after
        cdef int32_t iso
        cdef bint trigger
        cdef PosC* pp
        cdef bint ro = c.reduce_only
        cdef MarketC* mk = &self.mk[m]
        cdef Book b
        cdef Order* o
        cdef CidKey* k = &c.cid
        if self.pool.cid_find(a, k.is_str, k.i, k.text, k.n, k.h) >= 0:
            return self._reject_order(c, Reason.DUPLICATE_CID,
                                      f"cid {_show(self._cid_of(k))} is already used by an open "
                                      f"order of this account")
        if not mk.has_mark:
            return self._reject_order(c, Reason.NO_MARK_PRICE,
                                      f"{self.specs[m].name} has no oracle price yet")
        trigger = c.kind != LIMIT and c.kind != MARKET
        limit = price
        if c.kind == MARKET:
            limit = band_high(mk) if side == BID else band_low(mk)
        elif c.kind == LIMIT:
            why = _band_violation(mk, side, price)
            if why is not None:
                return self._reject_order(c, Reason.PRICE_OUT_OF_BAND, why)
        elif c.kind == STOP_LIMIT or c.kind == TAKE_PROFIT_LIMIT:
            # it will enter when the mark is at its trigger: the band is taken around that
            why = _band_violation_at(c.trigger_price, "trigger price", mk.band_ppm, side, price)
            if why is not None:
                return self._reject_order(c, Reason.PRICE_OUT_OF_BAND, why)
        p = self._position(m, a)
        s = self.pos[p].size
        if ro and self._reducible(a, m, side) == 0:
            return self._reject_order(c, Reason.REDUCE_ONLY_WOULD_INCREASE,
                                      f"reduce-only {_SIDE_NAMES[side]} with a position of {s} "
                                      f"lots would not reduce it")
        if (mk.oracle_max_age_ns and self.clock - mk.last_oracle_ts > mk.oracle_max_age_ns
                and not ro and (s == 0 or (s > 0) == (side == BID) or qty > (s if s > 0 else -s))):
            return self._reject_order(c, Reason.ORACLE_STALE,
                                      f"the last {self.specs[m].name} oracle price is "
                                      f"{(self.clock - mk.last_oracle_ts) // NS} s old (limit "
                                      f"{mk.oracle_max_age_ns // NS} s); only reducing orders "
                                      f"are taken")
        if (tif == GTC or tif == ALO or trigger) and self.pos[p].n_orders >= mk.max_orders:
            return self._reject_order(c, Reason.TOO_MANY_ORDERS,
                                      f"the account already has {self.pos[p].n_orders} open "
                                      f"orders in {self.specs[m].name} (limit {mk.max_orders})")
        if self.margin and not trigger:        # a trigger order is checked when it enters
            pp = &self.pos[p]
            iso = p if pp.isolated else -1
            before = self._initial_margin(a, iso, m, s, pp.open_buy, pp.open_sell)
            after = self._initial_margin(a, iso, m, s, pp.open_buy + (qty if side == BID else 0),
                                         pp.open_sell + (qty if side == ASK else 0))
            if after > before and after > self._equity(a, iso):
                return self._reject_order(c, Reason.INSUFFICIENT_MARGIN,
                                          f"the order would raise the initial margin to {after} "
                                          f"quote units, above the equity of "
                                          f"{self._equity(a, iso)}")
        b = self.books[m]
        if tif == ALO and not trigger and b.n[1 - side]:
            if (side == BID and price >= b.lv[b.best(ASK)].price) or \
               (side == ASK and price <= b.lv[b.best(BID)].price):
                return self._reject_order(c, Reason.POST_ONLY_WOULD_CROSS,
                                          f"post-only {_SIDE_NAMES[side]} at {price} would trade "
                                          f"against the best {'ask' if side == BID else 'bid'}")

        # ---- accepted: from here on the order exists ----
        i = self._open(c, p)
        self._ev_accepted(i, qty)
        if trigger:
            return self._arm(i)
        if tif == FOK and not self._fok_fillable(i, limit):
            return self._cancel_order(i, V_FOK_UNFILLED)
        return self._finish_taker(i, self._match(i, limit))

    # ---- trigger orders ----------------------------------------------------------------------

    cdef int _arm(self, int32_t i) except -1:
        """Rest a trigger order off-book, in its market's sorted list. O(log n)."""
        cdef Order* o = &self.pool.o[i]
        o.armed = 1
        if (o.kind == STOP_MARKET or o.kind == STOP_LIMIT) == (o.side == BID):
            (<object>self.trig_up[o.market]).add((o.trigger_price, o.oid, i))
        else:
            (<object>self.trig_down[o.market]).add((o.trigger_price, o.oid, i))
        return 0

    cdef int _disarm(self, int32_t i) except -1:
        cdef Order* o = &self.pool.o[i]
        key = (o.trigger_price, o.oid, i)
        o.armed = 0
        (<object>self.trig_up[o.market]).discard(key)
        (<object>self.trig_down[o.market]).discard(key)
        return 0

    cdef int _fire_triggers(self, int32_t m) except -1:
        """Fire every trigger order the mark has reached (stops: a buy at mark >= trigger, a sell
        at mark <= trigger; take-profits the other way round), in placement order. Each gives
        `order_triggered` and enters the book as a market or limit order. O(fired * log n)."""
        cdef MarketC* mk = &self.mk[m]
        cdef int64_t mark = mk.mark
        cdef int32_t i
        cdef Order* o
        up = self.trig_up[m]
        down = self.trig_down[m]
        fired = list(up.irange(maximum=(mark, INT64_MAX_PY, INT64_MAX_PY)))
        fired.extend(down.irange(minimum=(mark, -1, -1)))
        if not fired:
            return 0
        fired.sort(key=_by_oid)
        for key in fired:
            up.discard(key)
            down.discard(key)
        for key in fired:
            i = key[2]
            o = &self.pool.o[i]
            if not o.live or o.oid != key[1]:
                continue
            o.armed = 0
            self.seq += 1
            self.w.struct_event(M.OrderTriggered(
                seq=self.seq, ts=self.clock, account=self.account_keys[o.account],
                market=self.specs[m].name, cid=self._cid_obj(i), oid=o.oid,
                trigger_price=o.trigger_price, mark=mark))
            self._enter(i)
        return 0

    cdef int _enter(self, int32_t i) except -1:
        """A triggered order enters the book: checked as a new order would be at this mark (an
        order that cannot enter is cancelled with the reason), then matched and rested."""
        cdef Order* o = &self.pool.o[i]
        cdef int32_t m = o.market, a = o.account, p = self.pos_of[m][a], iso
        cdef MarketC* mk = &self.mk[m]
        cdef PosC* pp = &self.pos[p]
        cdef Book b = self.books[m]
        cdef int64_t limit, before, after
        cdef int side = o.side
        if o.kind == STOP_MARKET or o.kind == TAKE_PROFIT_MARKET:
            limit = band_high(mk) if side == BID else band_low(mk)
        else:
            limit = o.price
            if _band_violation(mk, side, o.price) is not None:
                return self._cancel_order(i, V_PRICE_OUT_OF_BAND)
        if o.reduce_only and self._reducible(a, m, side) == 0:
            return self._cancel_order(i, V_REDUCE_ONLY)
        if self.margin:
            iso = p if pp.isolated else -1
            before = self._initial_margin(a, iso, m, pp.size, pp.open_buy, pp.open_sell)
            after = self._initial_margin(a, iso, m, pp.size,
                                         pp.open_buy + (o.qty if side == BID else 0),
                                         pp.open_sell + (o.qty if side == ASK else 0))
            if after > before and after > self._equity(a, iso):
                return self._cancel_order(i, V_MARGIN)
        if o.tif == ALO and b.n[1 - side]:
            if (side == BID and o.price >= b.lv[b.best(ASK)].price) or \
               (side == ASK and o.price <= b.lv[b.best(BID)].price):
                return self._cancel_order(i, V_POST_ONLY_WOULD_CROSS)
        if o.tif == FOK and not self._fok_fillable(i, limit):
            return self._cancel_order(i, V_FOK_UNFILLED)
        return self._finish_taker(i, self._match(i, limit))

    cdef int32_t _open(self, OrderCmd* c, int32_t p) except -1:
        """A new open order from `c`: the next oid, a pool slot, the cid index, the account's
        list and the position's order count. O(1)."""
        cdef int32_t i = self.pool.alloc()
        cdef Order* o = &self.pool.o[i]
        cdef CidKey* k = &c.cid
        o.oid = self.next_oid
        self.next_oid += 1
        o.price = c.price
        o.qty = c.qty
        o.account = c.account
        o.market = c.market
        o.side = c.side
        o.kind = c.kind
        o.tif = c.tif
        o.stp = c.stp
        o.reduce_only = c.reduce_only
        o.trigger_price = c.trigger_price
        o.cid_is_str = k.is_str
        o.cid_int = k.i
        o.cid_hash = k.h
        o.cid_len = <uint8_t>k.n
        if k.is_str:
            memcpy(self.pool.cid_text + <size_t>i * CID_BYTES, k.text, k.n)
        self.pool.cid_insert(i)
        self.pool.account_link(i)
        self.pos[p].n_orders += 1
        return i

    cdef object _cid_of(self, CidKey* k):
        if k.is_str:
            return k.text[:k.n].decode("utf-8")
        return k.i

    cdef int _reject_order(self, OrderCmd* c, str reason, str detail) except -1:
        """`rejected` for a new_order already resolved to ids: the same bytes as `_reject`."""
        cdef EventWriter w = self.w
        self.seq += 1
        w.begin(T_REJECTED, 6, self.seq, self.clock)
        w.key(K_COMMAND)
        w.pystr("new_order")
        w.key(K_ACCOUNT)
        w.name(self.ac[c.account].name_tok)
        w.key(K_MARKET)
        w.name(self.mk[c.market].name_tok)
        w.key(K_CID)
        if c.cid.is_str:
            w.utf8(c.cid.text, c.cid.n)
        else:
            w.int64(c.cid.i)
        w.key(K_REASON)
        w.pystr(reason)
        w.key(K_DETAIL)
        w.pystr(detail)
        return w.end()

    cdef int _finish_taker(self, int32_t t, int stop) except -1:
        """After the walk: cancel what must go, rest what may rest."""
        cdef Order* o = &self.pool.o[t]
        if o.qty == 0:
            return self._drop(t)
        if stop == STOP_SELF_TRADE:
            return self._cancel_order(t, V_SELF_TRADE)
        if stop == STOP_REDUCE_ONLY:
            return self._cancel_order(t, V_REDUCE_ONLY)
        if stop == STOP_MARGIN:
            return self._cancel_order(t, V_MARGIN)
        if o.tif == IOC or o.tif == FOK:
            return self._cancel_order(t, V_IOC_REMAINDER)
        if o.reduce_only and self._reducible(o.account, o.market, o.side) == 0:
            return self._cancel_order(t, V_REDUCE_ONLY)
        return self._rest(t)

    cdef int _rest(self, int32_t i) except -1:
        cdef Order* o = &self.pool.o[i]
        cdef PosC* p = &self.pos[self.pos_of[o.market][o.account]]
        (<Book>self.books[o.market]).push_back(self.pool, i)
        if o.side == BID:
            p.open_buy += o.qty
        else:
            p.open_sell += o.qty
        if o.reduce_only:
            p.n_ro += 1
        return 0

    cdef int _drop(self, int32_t i) except -1:
        """Remove an order from every index and free its slot (no event). O(1), O(log n) for an
        armed trigger order."""
        cdef Order* o = &self.pool.o[i]
        cdef PosC* p = &self.pos[self.pos_of[o.market][o.account]]
        if o.armed:
            self._disarm(i)
        if o.level >= 0:
            (<Book>self.books[o.market]).unlink(self.pool, i)
            if o.side == BID:
                p.open_buy -= o.qty
            else:
                p.open_sell -= o.qty
            if o.reduce_only:
                p.n_ro -= 1
        p.n_orders -= 1
        self.pool.cid_remove(i)
        self.pool.account_unlink(i)
        self.pool.release(i)
        return 0

    cdef int _cancel_order(self, int32_t i, int reason) except -1:
        self._ev_cancelled(i, reason)
        return self._drop(i)

    # ---- the matching walk -------------------------------------------------------------------

    cdef int _match(self, int32_t t, int64_t limit) except -1:
        """Trade taker `t` against the opposite side down to `limit`, best price first, oldest
        first within a price. O(levels touched + fills + self-trade cancels)."""
        cdef OrderPool pool = self.pool
        cdef Book b = self.books[pool.o[t].market]
        cdef int side = pool.o[t].side
        cdef int opp = 1 - side
        cdef int32_t lvl, mi, acct = pool.o[t].account, m = pool.o[t].market
        cdef int64_t q, lp, cap, mfee, tfee
        cdef Order* mo
        cdef MarketC* mk
        while pool.o[t].qty > 0:
            lvl = b.best(opp)
            if lvl < 0:
                break
            lp = b.lv[lvl].price
            if (side == BID and lp > limit) or (side == ASK and lp < limit):
                break
            mi = b.lv[lvl].head
            mo = &pool.o[mi]
            if mo.account == acct:                      # self-trade prevention
                if pool.o[t].stp == CANCEL_TAKER:
                    return STOP_SELF_TRADE
                self._cancel_order(mi, V_SELF_TRADE)
                if pool.o[t].stp == CANCEL_BOTH:
                    return STOP_SELF_TRADE
                continue
            q = pool.o[t].qty if pool.o[t].qty < mo.qty else mo.qty
            if pool.o[t].reduce_only:
                cap = self._reducible(acct, m, side)
                if cap == 0:
                    return STOP_REDUCE_ONLY
                if cap < q:
                    q = cap
            if mo.reduce_only:
                cap = self._reducible(mo.account, m, opp)
                if cap == 0:
                    self._cancel_order(mi, V_REDUCE_ONLY)
                    continue
                if cap < q:
                    q = cap
            mk = &self.mk[m]
            mfee = fee(lp, q, mk.multiplier, mk.maker_fee_ppm)
            tfee = fee(lp, q, mk.multiplier, mk.taker_fee_ppm)
            if self.margin:                             # the pre-fill check, maker first
                if not self._fill_allowed(mo.account, m, opp, q, lp, mfee, True):
                    self._cancel_order(mi, V_MARGIN)
                    continue
                if not self._fill_allowed(acct, m, side, q, lp, tfee, False):
                    return STOP_MARGIN
            self._fill(t, mi, q, tfee, mfee)
        return STOP_NONE

    cdef bint _fok_fillable(self, int32_t t, int64_t limit):
        """Would the walk fill all of `t`? A dry run of _match's rules that changes nothing."""
        cdef OrderPool pool = self.pool
        cdef Order* o = &pool.o[t]
        cdef Book b = self.books[o.market]
        cdef int opp = 1 - o.side
        cdef int32_t j, lvl, mi
        cdef int64_t need = o.qty, q, cap, taker_cap = -1, t_pnl = 0, t_fees = 0
        cdef int64_t d = 1 if o.side == BID else -1
        cdef MarketC* mk = &self.mk[o.market]
        cdef Order* mo
        used = {}                                        # maker account -> qty taken so far
        walked = {}                                      # maker account -> (qty, pnl, fees)
        if o.reduce_only:
            taker_cap = self._reducible(o.account, o.market, o.side)
        for j in range(b.n[opp] - 1, -1, -1):
            lvl = b.slots[opp][j]
            if (o.side == BID and b.lv[lvl].price > limit) or \
               (o.side == ASK and b.lv[lvl].price < limit):
                break
            mi = b.lv[lvl].head
            while mi >= 0:
                mo = &pool.o[mi]
                if mo.account == o.account:
                    if o.stp != CANCEL_MAKER:
                        return False
                    mi = mo.next
                    continue
                q = mo.qty if mo.qty < need else need
                if mo.reduce_only:
                    cap = self._reducible(mo.account, o.market, opp) - used.get(mo.account, 0)
                    if cap < q:
                        q = cap if cap > 0 else 0
                if taker_cap >= 0 and taker_cap < q:
                    q = taker_cap
                if q > 0 and self.margin:                # as _match: maker first, then taker
                    prev = walked.get(mo.account, (0, 0, 0))
                    mpnl = -d * q * (mk.mark - mo.price) * mk.multiplier
                    mfee = fee(mo.price, q, mk.multiplier, mk.maker_fee_ppm)
                    if not self._allowed_after(mo.account, o.market, opp, prev[0], q,
                                               prev[1] + mpnl, prev[2] + mfee, True):
                        mi = mo.next                     # the walk cancels it and goes on
                        continue
                    t_pnl += d * q * (mk.mark - mo.price) * mk.multiplier
                    t_fees += fee(mo.price, q, mk.multiplier, mk.taker_fee_ppm)
                    if not self._allowed_after(o.account, o.market, o.side, o.qty - need, q,
                                               t_pnl, t_fees, False):
                        return False                     # the walk stops the taker here
                    walked[mo.account] = (prev[0] + q, prev[1] + mpnl, prev[2] + mfee)
                if q > 0:
                    used[mo.account] = used.get(mo.account, 0) + q
                    need -= q
                    if taker_cap >= 0:
                        taker_cap -= q
                    if need <= 0:
                        return True
                mi = mo.next
        return False

    cdef int _fill(self, int32_t t, int32_t mi, int64_t q, int64_t tfee,
                   int64_t mfee) except -1:
        """One trade at the maker's price: quantities, positions, the fees `_match` computed,
        the `fill` event."""
        cdef OrderPool pool = self.pool
        cdef Order* to = &pool.o[t]
        cdef Order* mo = &pool.o[mi]
        cdef int32_t m = to.market
        cdef MarketC* mk = &self.mk[m]
        cdef Book b = self.books[m]
        cdef int64_t price = mo.price
        cdef PosC* tp = &self.pos[self.pos_of[m][to.account]]
        cdef PosC* mp = &self.pos[self.pos_of[m][mo.account]]
        cdef int64_t t_before = tp.size, m_before = mp.size
        cdef int32_t t_acct = to.account, m_acct = mo.account
        cdef EventWriter w = self.w
        to.qty -= q
        mo.qty -= q
        b.lv[mo.level].qty -= q
        if mo.side == BID:
            mp.open_buy -= q
        else:
            mp.open_sell -= q
        self._book_trade(tp, to.side, q, price, tfee)
        self._book_trade(mp, mo.side, q, price, mfee)
        self.n_fills += 1
        if self.liquidating:
            self.liq_qty += q
            self.liq_notional += price * q * mk.multiplier
        self.seq += 1
        w.begin(T_FILL, 15, self.seq, self.clock)
        w.key(K_MARKET); w.name(mk.name_tok)
        w.key(K_PRICE); w.int64(price)
        w.key(K_QTY); w.int64(q)
        w.key(K_TAKER_SIDE); w.tok(V_BUY + to.side)
        w.key(K_TAKER_ACCOUNT); w.name(self.ac[t_acct].name_tok)
        w.key(K_TAKER_CID); self._ev_cid(t)
        w.key(K_TAKER_OID); w.int64(to.oid)
        w.key(K_TAKER_REMAINING); w.int64(to.qty)
        w.key(K_MAKER_ACCOUNT); w.name(self.ac[m_acct].name_tok)
        w.key(K_MAKER_CID); self._ev_cid(mi)
        w.key(K_MAKER_OID); w.int64(mo.oid)
        w.key(K_MAKER_REMAINING); w.int64(mo.qty)
        w.key(K_TAKER_FEE); w.int64(tfee)
        w.key(K_MAKER_FEE); w.int64(mfee)
        w.key(K_LIQUIDATION); w.boolean(self.liquidating)
        w.end()
        if mo.qty == 0:
            self._drop(mi)
        # Resting reduce-only orders that can no longer reduce go, on both sides of the trade.
        if mp.n_ro and (mp.size == 0 or (mp.size > 0) != (m_before > 0)):
            self._sweep_reduce_only(m_acct, m)
        if tp.n_ro and (tp.size == 0 or (tp.size > 0) != (t_before > 0)):
            self._sweep_reduce_only(t_acct, m)
        return 0

    cdef int _sweep_reduce_only(self, int32_t a, int32_t m) except -1:
        """Cancel `a`'s resting reduce-only orders in `m` that point the way of the position."""
        cdef int32_t i = self.pool.acct_head[a], nxt
        cdef Order* o
        while i >= 0:
            o = &self.pool.o[i]
            nxt = o.anext
            if (o.market == m and o.reduce_only and o.level >= 0
                    and self._reducible(a, m, o.side) == 0):
                self._cancel_order(i, V_REDUCE_ONLY)
            i = nxt
        return 0

    # ---- money and margin (engine/margin.pxd has the arithmetic) ---------------------------

    cdef int _book_trade(self, PosC* p, int side, int64_t q, int64_t price, int64_t fee) except -1:
        """`q` lots traded on `side` at `price` into position `p`. The part that closes the
        position takes its share of the cost basis (floor; the remainder stays in the basis, so
        nothing is lost) and realises PnL into collateral; the rest opens at cost. The fee moves
        from the account's collateral to the venue. O(1)."""
        cdef MarketC* mk = &self.mk[p.market]
        cdef int64_t d = 1 if side == BID else -1
        cdef int64_t s, close, removed, realised = 0
        self._settle(p)
        s = p.size
        if s != 0 and (s > 0) != (d > 0):
            close = q if q < iabs(s) else iabs(s)
            removed = <int64_t>floor_div(<int128>p.cost * close, iabs(s))
            realised = <int64_t>(<int128>(-d) * close * price * mk.multiplier - removed)
            p.cost -= removed
            p.size += d * close
            q -= close
        if q:
            p.cost += <int64_t>(<int128>d * q * price * mk.multiplier)
            p.size += d * q
        p.realised += realised
        self._touch(p.account)
        if p.isolated:
            p.iso_margin += realised - fee
        else:
            self.ac[p.account].collateral += realised - fee
        self.fees += fee
        return 0

    cdef int64_t _equity(self, int32_t a, int32_t iso):
        """Equity of a margin scope: the account's cross pool (iso = -1: collateral plus the
        cross positions' unrealised PnL) or one isolated position (its margin plus its PnL);
        unsettled funding counts. O(positions of the account)."""
        cdef int128 e
        cdef int32_t p
        cdef PosC* q
        if iso >= 0:
            q = &self.pos[iso]
            return <int64_t>(q.iso_margin + unrealised(&self.mk[q.market], q.size, q.cost)
                             - unsettled_funding(&self.mk[q.market], q.size, q.funding_last))
        e = self.ac[a].collateral
        p = self.ac[a].positions
        while p >= 0:
            q = &self.pos[p]
            if q.size and not q.isolated:
                e += unrealised(&self.mk[q.market], q.size, q.cost)
                e -= unsettled_funding(&self.mk[q.market], q.size, q.funding_last)
            p = q.next
        return <int64_t>e

    cdef int64_t _initial_margin(self, int32_t a, int32_t iso, int32_t m, int64_t size,
                                 int64_t buys, int64_t sells):
        """A scope's initial requirement, market `m` taken as (size, buys, sells)."""
        cdef int128 r = 0
        cdef int32_t p
        cdef PosC* q
        if iso >= 0:
            q = &self.pos[iso]
            if q.market == m:
                return <int64_t>initial_requirement(&self.mk[m], size, buys, sells, q.leverage)
            return <int64_t>initial_requirement(&self.mk[q.market], q.size, q.open_buy,
                                                q.open_sell, q.leverage)
        p = self.ac[a].positions
        while p >= 0:
            q = &self.pos[p]
            if q.isolated:
                pass
            elif q.market == m:
                r += initial_requirement(&self.mk[m], size, buys, sells, q.leverage)
            elif q.size or q.open_buy or q.open_sell:
                r += initial_requirement(&self.mk[q.market], q.size, q.open_buy, q.open_sell,
                                         q.leverage)
            p = q.next
        return <int64_t>r

    cdef int64_t _maintenance_margin(self, int32_t a, int32_t iso):
        cdef int128 r = 0
        cdef int32_t p
        if iso >= 0:
            return <int64_t>maintenance_requirement(&self.mk[self.pos[iso].market],
                                                    self.pos[iso].size)
        p = self.ac[a].positions
        while p >= 0:
            if self.pos[p].size and not self.pos[p].isolated:
                r += maintenance_requirement(&self.mk[self.pos[p].market], self.pos[p].size)
            p = self.pos[p].next
        return <int64_t>r

    cdef bint _fill_allowed(self, int32_t a, int32_t m, int side, int64_t q, int64_t price,
                            int64_t fee, bint maker):
        """May `a` trade `q` on `side` at `price`? See _allowed_after."""
        cdef MarketC* mk = &self.mk[m]
        cdef int64_t d = 1 if side == BID else -1
        return self._allowed_after(a, m, side, 0, q, d * q * (mk.mark - price) * mk.multiplier,
                                   fee, maker)

    cdef bint _allowed_after(self, int32_t a, int32_t m, int side, int64_t before, int64_t q,
                             int64_t pnl, int64_t fees, bint maker):
        """The pre-fill check for a fill of `q` after `before` lots already traded in this walk,
        `pnl` (at the mark) and `fees` being the walk's so far, this fill included. A fill that
        only shrinks the position always passes; one that grows it must leave the scope's equity
        >= its initial requirement, looked at as the fill would leave it (a maker's order no
        longer open for what it traded)."""
        cdef int32_t pi = self.pos_of[m][a]
        cdef PosC* p = &self.pos[pi]
        cdef int32_t iso = pi if p.isolated else -1
        cdef int64_t d = 1 if side == BID else -1
        cdef int64_t s1 = p.size + d * before, s2 = s1 + d * q
        cdef int64_t buys = p.open_buy, sells = p.open_sell
        if iabs(s2) <= iabs(s1):
            return True
        if maker:
            if side == BID:
                buys -= before + q
            else:
                sells -= before + q
        return (<int128>self._equity(a, iso) - fees + pnl
                >= self._initial_margin(a, iso, m, s2, buys, sells))

    # ---- funding ---------------------------------------------------------------------------

    cdef int _settle(self, PosC* p) except -1:
        """Settle a position's funding against the insurance fund (lazily: before it changes)."""
        cdef MarketC* mk = &self.mk[p.market]
        cdef int64_t amount
        cdef int32_t fund
        if p.funding_last == mk.cum_funding:
            return 0
        amount = unsettled_funding(mk, p.size, p.funding_last)
        p.funding_last = mk.cum_funding
        if amount == 0:
            return 0
        fund = self._insurance_fund()
        self._touch(p.account)
        if p.isolated:
            p.iso_margin -= amount
        else:
            self.ac[p.account].collateral -= amount
        self.ac[fund].collateral += amount
        return self._ev_balance(p.account, "funding")

    cdef int32_t _insurance_fund(self) except -1:
        if self.insurance < 0:
            self._account(INSURANCE)
        return self.insurance

    cdef int _sample_premium(self, int32_t m) except -1:
        """premium = (impact mid - index) / index, in ppm (toward zero), where the impact bid and
        ask are the average prices of selling and buying IMPACT_NOTIONAL (a missing or too thin
        side counts as the index)."""
        cdef MarketC* mk = &self.mk[m]
        cdef int128 bid = self._impact_price(m, BID), ask = self._impact_price(m, ASK)
        cdef int128 mid2 = bid + ask                      # twice the impact mid
        cdef int128 num = (mid2 - 2 * <int128>mk.index) * PPM
        cdef int128 den = 2 * <int128>mk.index
        mk.premium_sum += <int64_t>(floor_div(num, den) if num >= 0 else -floor_div(-num, den))
        mk.premium_n += 1
        return 0

    cdef int64_t _impact_price(self, int32_t m, int side):
        """The average price (ticks, floor) at which IMPACT_NOTIONAL trades against `side`."""
        cdef Book b = self.books[m]
        cdef MarketC* mk = &self.mk[m]
        cdef int32_t j, lvl
        cdef int128 want = IMPACT_NOTIONAL, notional = 0, lots = 0, take, lvl_notional
        cdef int64_t price
        for j in range(b.n[side] - 1, -1, -1):
            lvl = b.slots[side][j]
            price = b.lv[lvl].price
            lvl_notional = <int128>b.lv[lvl].qty * price * mk.multiplier
            if notional + lvl_notional >= want:
                take = floor_div(want - notional, <int128>price * mk.multiplier)
                lots += take
                notional += take * price * mk.multiplier
                if lots == 0:
                    return price
                return <int64_t>floor_div(notional, lots * mk.multiplier)
            notional += lvl_notional
            lots += b.lv[lvl].qty
        return mk.index

    cdef int _funding_due(self) except -1:
        """Apply every funding boundary the clock has passed, market by market (creation order),
        oldest boundary first: rate = clamp(mean premium + clamp(interest - mean, -500, 500),
        -cap, cap); the cumulative index moves by index * multiplier * rate."""
        cdef int32_t m, p
        cdef MarketC* mk
        cdef int64_t mean, rate, adj
        for m in range(self.n_markets):
            mk = &self.mk[m]
            while mk.next_funding and self.clock >= mk.next_funding:
                mean = mk.premium_sum // mk.premium_n if mk.premium_n else 0
                if mean < 0 and mk.premium_n and mk.premium_sum % mk.premium_n:
                    mean += 1                                 # toward zero
                adj = mk.interest_ppm - mean
                adj = 500 if adj > 500 else (-500 if adj < -500 else adj)
                rate = mean + adj
                rate = (mk.funding_cap_ppm if rate > mk.funding_cap_ppm else
                        (-mk.funding_cap_ppm if rate < -mk.funding_cap_ppm else rate))
                mk.cum_funding += <int128>mk.index * mk.multiplier * rate
                mk.premium_sum = 0
                mk.premium_n = 0
                self.seq += 1
                self.w.struct_event(M.FundingEvent(
                    seq=self.seq, ts=self.clock,
                    market=self.specs[m].name, rate_ppm=rate, index_price=mk.index))
                mk.next_funding += mk.funding_interval_ns
                if self.margin:
                    # funding moved the equity of every position here: re-key them, look again
                    for p in range(self.n_pos):
                        if self.pos[p].market == m and self.pos[p].size:
                            self._touch(self.pos[p].account)
                    self._liquidations(m, False)
            if mk.liq_pending and self.margin:    # work carried over from a busy mark update
                self._liquidations(m, False)
        return 0


    # ---- liquidation ---------------------------------------------------------------------------

    cdef int _liquidations(self, int32_t m, bint calls) except -1:
        """After a mark update (`calls`: with margin calls) or funding in market `m`: look at the
        scopes the risk index says may be below 1.5x maintenance, warn those that first fell
        below it, and liquidate those below maintenance, most under-margined first (equity /
        maintenance; ties by account), at most `max_liquidations_per_update` of them; the rest
        wait for the next mark update or clock tick.

        Cost: O(accounts changed since the last pass x log n) to re-key them, plus O(log n + k)
        for the k scopes near their line, plus the cross accounts holding several positions;
        not the accounts that exist."""
        cdef MarketC* mk = &self.mk[m]
        cdef int32_t p, a, iso, k = 0
        cdef int64_t eq, mm
        cdef bint below
        cdef PosC* q
        self._rekey_dirty()
        mark = mk.mark
        slots = [key[1] for key in self.risk_long[m].irange(minimum=(mark, -1))]
        slots.extend(key[1] for key in self.risk_short[m].irange(maximum=(mark, 2**62)))
        slots.extend(self.risk_multi[m])
        slots.extend(self.risk_called[m])
        found = []
        seen = set()
        for p in sorted(set(slots)):
            q = &self.pos[p]
            if q.size == 0 or q.account == self.insurance:
                self.risk_called[m].discard(p)
                continue
            a = q.account
            iso = p if q.isolated else -1
            if (a, iso) in seen:
                continue
            seen.add((a, iso))
            eq = self._equity(a, iso)
            mm = self._maintenance_margin(a, iso)
            if calls:
                below = 2 * <int128>eq < 3 * <int128>mm
                if below and not (q.margin_call if iso >= 0 else self.ac[a].margin_call):
                    self._ev_margin_call(a, eq, mm)
                if iso >= 0:
                    q.margin_call = below
                else:
                    self.ac[a].margin_call = below
                if below:
                    self._mark_called(a, iso)
                else:
                    self.risk_called[m].discard(p)
            if eq < mm:
                found.append((Fraction(eq, mm), _account_order(self.account_keys[a]), a, iso))
            elif (q.rlist == 1 or q.rlist == 2) and 2 * <int128>eq >= 3 * <int128>mm:
                self._index_position(p, q.rlist, self._risk_key(p), True)   # was early
        found.sort()
        mk.liq_pending = 0
        for _, _, a, iso in found:
            if k == mk.max_liquidations:
                mk.liq_pending = 1
                break
            self._liquidate_scope(a, iso)
            k += 1
            # The warning now describes the scope as the liquidation left it (no new event).
            below = (2 * <int128>self._equity(a, iso)
                     < 3 * <int128>self._maintenance_margin(a, iso))
            if iso >= 0:
                self.pos[iso].margin_call = below
            else:
                self.ac[a].margin_call = below
        return 0

    # ---- the risk index ------------------------------------------------------------------------

    cdef int _touch(self, int32_t a) except -1:
        """Note that account `a`'s money or positions changed: its index keys are stale. O(1)."""
        if self.margin and not self.ac[a].dirty:
            self.ac[a].dirty = 1
            self.dirty.append(a)
        return 0

    cdef int _rekey_dirty(self) except -1:
        cdef int32_t a
        for a in self.dirty:
            self.ac[a].dirty = 0
            self._rekey(a)
        self.dirty.clear()
        return 0

    cdef int _mark_called(self, int32_t a, int32_t iso) except -1:
        """A warned scope is looked at by every pass of each market it holds, until its warning
        clears (a pass that finds it recovered drops it from that market's set)."""
        cdef int32_t p
        if iso >= 0:
            self.risk_called[self.pos[iso].market].add(iso)
            return 0
        p = self.ac[a].positions
        while p >= 0:
            if self.pos[p].size and not self.pos[p].isolated:
                self.risk_called[self.pos[p].market].add(p)
            p = self.pos[p].next
        return 0

    cdef int _rekey(self, int32_t a) except -1:
        """Bring the account's positions up to date in the risk index. A position that is its
        scope's only one (isolated, or the cross account's single position) is keyed by the
        mark at which its equity could meet 1.5x its maintenance requirement (see _risk_key); a
        long is looked at when the mark is at or below its key, a short at or above. Positions
        of cross accounts with several positions are looked at on every pass. A key that became
        less urgent is left as it is (it only makes a position looked at too early, and that
        look re-keys it exactly), so most re-keys are a few C operations. O(positions of the
        account), plus O(log n) for each key that moves."""
        cdef int32_t p, n_cross = 0
        cdef PosC* q
        cdef int want
        p = self.ac[a].positions
        while p >= 0:
            if self.pos[p].size and not self.pos[p].isolated:
                n_cross += 1
            p = self.pos[p].next
        p = self.ac[a].positions
        while p >= 0:
            q = &self.pos[p]
            if q.size == 0 or a == self.insurance:
                want = 0
            elif not q.isolated and n_cross > 1:
                want = 3
            else:
                want = 1 if q.size > 0 else 2
            self._index_position(p, want, self._risk_key(p) if want == 1 or want == 2 else 0,
                                 False)
            if want and (q.margin_call if q.isolated else self.ac[a].margin_call):
                self.risk_called[q.market].add(p)      # its warning is still to be cleared
            p = q.next
        return 0

    cdef int _index_position(self, int32_t p, int want, int64_t key, bint exact) except -1:
        cdef PosC* q = &self.pos[p]
        cdef int32_t m = q.market
        if q.rlist == want:
            if want == 0 or want == 3:
                return 0
            if not exact and ((want == 1 and key <= q.rkey) or (want == 2 and key >= q.rkey)):
                return 0                      # less urgent: the old key is still safe
            if key == q.rkey:
                return 0
        if q.rlist == 1:
            (<object>self.risk_long[m]).discard((q.rkey, p))
        elif q.rlist == 2:
            (<object>self.risk_short[m]).discard((q.rkey, p))
        elif q.rlist == 3:
            (<object>self.risk_multi[m]).discard(p)
        q.rlist = want
        q.rkey = key
        if want == 1:
            (<object>self.risk_long[m]).add((key, p))
        elif want == 2:
            (<object>self.risk_short[m]).add((key, p))
        elif want == 3:
            (<object>self.risk_multi[m]).add(p)
        return 0

    cdef int64_t _risk_key(self, int32_t p):
        """The mark at which a single-position scope's equity could meet 1.5x its maintenance,
        solved with the market's highest maintenance rate r and widened by two ticks:
        a long, E + n (M - M0) = 1.5 n M r  ->  M = 2 (n M0 - E) / (n (2 - 3r));
        a short, E - n (M - M0) = 1.5 n M r  ->  M = 2 (E + n M0) / (n (2 + 3r)),
        with n = |size| x multiplier and E the equity at the mark M0."""
        cdef PosC* q = &self.pos[p]
        cdef MarketC* mk = &self.mk[q.market]
        cdef int128 n = <int128>iabs(q.size) * mk.multiplier
        cdef int128 eq = self._equity(q.account, p if q.isolated else -1)
        cdef int128 num, den
        if q.size > 0:
            den = n * (2 * PPM - 3 * mk.mmf_max)
            num = 2 * PPM * (n * mk.mark - eq)
            if den <= 0:
                return 1 << 62                # always at risk
            if num <= 0:
                return -1                     # no positive mark reaches it
            num = ceil_div(num, den) + 2
        else:
            num = 2 * PPM * (eq + n * mk.mark)
            den = n * (2 * PPM + 3 * mk.mmf_max)
            if num <= 0:
                return -1                     # always at risk
            num = floor_div(num, den) - 2
        return <int64_t>(num if num < (1 << 62) else (1 << 62))

    cdef int _liquidate_scope(self, int32_t a, int32_t iso) except -1:
        """Cancel the scope's open orders (reason liquidation); while it is still liquidatable,
        close its positions, the largest maintenance requirement first."""
        cdef int32_t i, nxt, p, best
        cdef int64_t req, best_req
        cdef int guard = 0
        cdef int32_t m_iso = self.pos[iso].market if iso >= 0 else -1
        i = self.pool.acct_head[a]
        while i >= 0:
            nxt = self.pool.o[i].anext
            if m_iso < 0 or self.pool.o[i].market == m_iso:
                self._cancel_order(i, V_LIQUIDATION)
            i = nxt
        while self._equity(a, iso) < self._maintenance_margin(a, iso) and guard < 64:
            guard += 1
            if iso >= 0:
                best = iso if self.pos[iso].size else -1
            else:
                best = -1
                best_req = -1
                p = self.ac[a].positions
                while p >= 0:
                    if self.pos[p].size and not self.pos[p].isolated:
                        req = <int64_t>maintenance_requirement(&self.mk[self.pos[p].market],
                                                               self.pos[p].size)
                        if req > best_req:
                            best, best_req = p, req
                    p = self.pos[p].next
            if best < 0:
                break
            self._liquidate_position(a, iso, best)
        return 0

    cdef int _liquidate_position(self, int32_t a, int32_t iso, int32_t p) except -1:
        """Reduce position `p` with an IOC into the book, no worse than the bankruptcy price,
        only as much as should restore maintenance margin with a 10 % buffer; what the book
        cannot take at that price, the insurance fund takes over at it."""
        cdef PosC* q = &self.pos[p]
        cdef int32_t m = q.market, fund, fp
        cdef MarketC* mk = &self.mk[m]
        cdef int64_t s = q.size, n = iabs(s), eq, mm, bp, qty, filled, fee, per_lot, deficit
        cdef int side = ASK if s > 0 else BID          # the closing trade
        cdef int128 num, takeover
        eq = self._equity(a, iso)
        mm = self._maintenance_margin(a, iso)
        bp = self._bankruptcy_price(a, iso, p)
        # Sizing: each lot closed near the mark frees its maintenance and costs its fee.
        per_lot = <int64_t>floor_div(
            maintenance_requirement(mk, s)
            - ceil_div(<int128>n * mk.mark * mk.multiplier * mk.liq_fee_ppm, PPM), n)
        deficit = mm + mm // 10 - eq
        if per_lot <= 0:
            qty = n
        else:
            qty = <int64_t>ceil_div(deficit, per_lot)
            qty = n if qty > n or qty <= 0 else qty
        filled = self._book_liquidation(a, p, side, qty, bp)
        if filled:
            num = self.liq_notional
            fee = <int64_t>ceil_div(num * mk.liq_fee_ppm, PPM)
            eq = self._equity(a, iso)
            if fee > eq:
                fee = eq if eq > 0 else 0
            if fee:
                fund = self._insurance_fund()
                self._touch(a)
                if iso >= 0:
                    self.pos[iso].iso_margin -= fee
                else:
                    self.ac[a].collateral -= fee
                self.ac[fund].collateral += fee
            self._ev_liquidation(a, m, side, filled,
                                 <int64_t>floor_div(num, <int128>filled * mk.multiplier), "book", fee)
        q = &self.pos[p]
        if filled < qty and q.size and self._equity(a, iso) < self._maintenance_margin(a, iso):
            # The book is exhausted down to the bankruptcy price: the fund takes the rest there.
            bp = self._bankruptcy_price(a, iso, p)
            n = iabs(q.size)
            fund = self._insurance_fund()
            # The fund takes it over at the bankruptcy price if its equity stays >= 0 after;
            # else the profitable opposite positions are deleveraged at that price.
            takeover = <int128>(1 if side == ASK else -1) * n * (mk.mark - bp) * mk.multiplier
            if self._equity(fund, -1) + takeover < 0:
                n = self._deleverage(a, p, side, n, bp)
            if n:
                fp = self._position(m, fund)
                q = &self.pos[p]
                self._book_trade(q, side, n, bp, 0)
                self._book_trade(&self.pos[fp], 1 - side, n, bp, 0)
                self._ev_liquidation(a, m, side, n, bp, "backstop", 0)
        return 0

    cdef int64_t _deleverage(self, int32_t a, int32_t p, int side, int64_t n,
                             int64_t bp) except -1:
        """Auto-deleverage: close `n` of position `p` against the profitable positions on the
        other side, at the bankruptcy price `bp`, highest (PnL / |cost|) x (notional / equity)
        first (ties by account). Each match gives a `liquidation` event (kind adl) to both
        accounts. Returns what no one could take (the fund takes it)."""
        cdef int32_t m = self.pos[p].market, c, ca, iso
        cdef MarketC* mk = &self.mk[m]
        cdef PosC* q
        cdef int64_t take, eq
        cdef int128 pnl
        ranked = []
        for c in range(self.n_pos):
            q = &self.pos[c]
            if (q.market != m or q.size == 0 or q.account == a or q.account == self.insurance
                    or (q.size > 0) == (side == ASK)):
                continue                                  # must point against the bankrupt one
            pnl = unrealised(mk, q.size, q.cost)
            if pnl <= 0:
                continue
            iso = c if q.isolated else -1
            eq = self._equity(q.account, iso)
            notional = int(iabs(q.size)) * mk.mark * mk.multiplier
            # PnL ratio times effective leverage; an account with no equity left ranks first
            score = (Fraction(_py128(pnl) * notional, iabs(q.cost) * eq) if eq > 0 and q.cost
                     else Fraction(10**30))
            ranked.append((-score, _account_order(self.account_keys[q.account]), c))
        ranked.sort()
        for _, _, c in ranked:
            if n == 0:
                break
            q = &self.pos[c]
            ca = q.account
            take = n if n < iabs(q.size) else iabs(q.size)
            self._book_trade(&self.pos[p], side, take, bp, 0)
            self._book_trade(q, 1 - side, take, bp, 0)
            self._ev_liquidation(a, m, side, take, bp, "adl", 0)
            self._ev_liquidation(ca, m, 1 - side, take, bp, "adl", 0)
            n -= take
        return n

    cdef int64_t _bankruptcy_price(self, int32_t a, int32_t iso, int32_t p) except -1:
        """The price at which closing all of `p` leaves the scope's equity at zero, the other
        marks held: mark - equity / (size * multiplier), rounded so the closing trade is never
        worse for the account (up for a long's sale, down for a short's purchase); at least 1."""
        cdef PosC* q = &self.pos[p]
        cdef MarketC* mk = &self.mk[q.market]
        cdef int128 num = <int128>mk.mark * q.size * mk.multiplier - self._equity(a, iso)
        cdef int128 den = <int128>q.size * mk.multiplier
        cdef int128 bp
        if den > 0:
            bp = ceil_div(num, den)
        else:
            bp = floor_div(-num, -den)
        return <int64_t>(bp if bp > 0 else 1)

    cdef int64_t _book_liquidation(self, int32_t a, int32_t p, int side, int64_t qty,
                                   int64_t limit) except -1:
        """An IOC reduce-only order for the account, no worse than `limit`; its fills say
        `liquidation: true`. The order is the engine's: it gets an oid and the cid
        "liquidation:<oid>", and no order_accepted or order_cancelled. Returns the qty filled."""
        cdef int32_t i
        cdef OrderCmd c
        cid = f"liquidation:{self.next_oid}".encode()
        c.account = a
        c.market = self.pos[p].market
        c.side = side
        c.kind = MARKET
        c.tif = IOC
        c.stp = CANCEL_TAKER
        c.reduce_only = 1
        c.qty = qty
        c.price = limit
        c.trigger_price = 0
        c.cid.is_str = True
        c.cid.i = 0
        c.cid.text = cid
        c.cid.n = len(cid)
        c.cid.h = cid_hash_str(a, c.cid.text, c.cid.n)
        i = self._open(&c, p)
        self.liquidating = True
        self.liq_qty = 0
        self.liq_notional = 0
        try:
            self._match(i, limit)
        finally:
            self.liquidating = False
        self._drop(i)
        return self.liq_qty

    cdef int _ev_liquidation(self, int32_t a, int32_t m, int side, int64_t qty, int64_t price,
                             str kind, int64_t fee) except -1:
        self.seq += 1
        return self.w.struct_event(M.LiquidationEvent(
            seq=self.seq, ts=self.clock, account=self.account_keys[a], market=self.specs[m].name,
            side=_SIDE_NAMES[side], qty=qty, price=price, mark=self.mk[m].mark, kind=kind,
            fee=fee))

    cdef int _ev_margin_call(self, int32_t a, int64_t equity, int64_t mm) except -1:
        self.seq += 1
        return self.w.struct_event(M.MarginCall(seq=self.seq, ts=self.clock,
                                                account=self.account_keys[a], equity=equity,
                                                maintenance_margin=mm))

    cdef int _ev_balance(self, int32_t a, str reason) except -1:
        self.seq += 1
        return self.w.struct_event(M.Balance(
            seq=self.seq, ts=self.clock, account=self.account_keys[a],
            collateral=self.ac[a].collateral, reason=reason))

    cdef int _deposit(self, object cmd) except -1:
        cdef int32_t a
        if cmd.amount <= 0:
            return self._reject("deposit", Reason.INVALID_AMOUNT,
                                f"amount must be a positive number of quote units, got {cmd.amount}",
                                cmd.account)
        a = self._account(cmd.account)
        self.ac[a].collateral += cmd.amount
        self.deposits += cmd.amount
        self._touch(a)
        return self._ev_balance(a, "deposit")

    cdef int _withdraw(self, object cmd) except -1:
        cdef int32_t a = self.account_ids.get(cmd.account, -1)
        cdef int64_t amount = cmd.amount, im, eq
        if amount <= 0:
            return self._reject("withdraw", Reason.INVALID_AMOUNT,
                                f"amount must be a positive number of quote units, got {amount}",
                                cmd.account)
        if a < 0 or a == self.insurance:
            return self._reject("withdraw", Reason.INSUFFICIENT_COLLATERAL,
                                "no collateral to withdraw" if a < 0 else
                                "the insurance fund cannot be withdrawn", cmd.account)
        im = self._initial_margin(a, -1, -1, 0, 0, 0)
        eq = self._equity(a, -1)
        if amount > self.ac[a].collateral or eq - amount < im:
            return self._reject("withdraw", Reason.INSUFFICIENT_COLLATERAL,
                                f"withdrawing {amount} would leave equity {eq - amount} against an "
                                f"initial margin of {im} (collateral {self.ac[a].collateral})",
                                cmd.account)
        self.ac[a].collateral -= amount
        self.withdrawals += amount
        self._touch(a)
        return self._ev_balance(a, "withdraw")

    cdef int _set_leverage(self, object cmd) except -1:
        cdef int32_t m = self.market_ids.get(cmd.market, -1), a, p, iso
        cdef int32_t old
        cdef int64_t im
        if m < 0:
            return self._reject("set_leverage", Reason.UNKNOWN_MARKET, _no_market(cmd.market),
                                cmd.account, cmd.market)
        if not 1 <= cmd.leverage <= self.mk[m].max_leverage:
            return self._reject("set_leverage", Reason.INVALID_LEVERAGE,
                                f"leverage must be between 1 and {self.mk[m].max_leverage} in "
                                f"{cmd.market}, got {cmd.leverage}", cmd.account, cmd.market)
        a = self._account(cmd.account)
        p = self._position(m, a)
        old = self.pos[p].leverage
        self.pos[p].leverage = cmd.leverage
        if self.margin and self.mk[m].has_mark:
            iso = p if self.pos[p].isolated else -1
            im = self._initial_margin(a, iso, -1, 0, 0, 0)
            if cmd.leverage < old or old == 0:
                if im > self._equity(a, iso) and (self.pos[p].size or self.pos[p].open_buy
                                                  or self.pos[p].open_sell):
                    self.pos[p].leverage = old
                    return self._reject("set_leverage", Reason.INSUFFICIENT_MARGIN,
                                        f"at {cmd.leverage}x the initial margin would be {im}, "
                                        f"above the equity of {self._equity(a, iso)}",
                                        cmd.account, cmd.market)
        return 0

    cdef int _set_margin_mode(self, object cmd) except -1:
        cdef int32_t m = self.market_ids.get(cmd.market, -1), a, p
        cdef bint want = cmd.mode == "isolated"
        cdef PosC* q
        if m < 0:
            return self._reject("set_margin_mode", Reason.UNKNOWN_MARKET, _no_market(cmd.market),
                                cmd.account, cmd.market)
        a = self._account(cmd.account)
        p = self._position(m, a)
        q = &self.pos[p]
        if q.isolated == want:
            return 0
        if q.size or q.n_orders:
            return self._reject("set_margin_mode", Reason.MARGIN_MODE_LOCKED,
                                f"the margin mode of {cmd.market} can change only with no position "
                                f"and no open orders there (position {q.size} lots, "
                                f"{q.n_orders} open orders)", cmd.account, cmd.market)
        q.isolated = want
        self._touch(a)
        if not want and q.iso_margin:        # back to cross: the position's margin comes home
            self.ac[a].collateral += q.iso_margin
            q.iso_margin = 0
            return self._ev_balance(a, "transfer_margin")
        return 0

    cdef int _transfer_margin(self, object cmd) except -1:
        cdef int32_t m = self.market_ids.get(cmd.market, -1), a, p
        cdef int64_t amount = cmd.amount, eq, im
        cdef PosC* q
        if m < 0:
            return self._reject("transfer_margin", Reason.UNKNOWN_MARKET, _no_market(cmd.market),
                                cmd.account, cmd.market)
        a = self.account_ids.get(cmd.account, -1)
        p = self.pos_of[m][a] if a >= 0 else -1
        if p < 0 or not self.pos[p].isolated:
            return self._reject("transfer_margin", Reason.NOT_ISOLATED,
                                f"{cmd.market} is not in isolated mode for this account "
                                f"(set_margin_mode first)", cmd.account, cmd.market)
        if amount == 0:
            return self._reject("transfer_margin", Reason.INVALID_AMOUNT,
                                "amount must not be 0 (positive moves collateral in, negative out)",
                                cmd.account, cmd.market)
        q = &self.pos[p]
        if amount > 0:
            eq = self._equity(a, -1)
            im = self._initial_margin(a, -1, -1, 0, 0, 0)
            if amount > self.ac[a].collateral or eq - amount < im:
                return self._reject("transfer_margin", Reason.INSUFFICIENT_COLLATERAL,
                                    f"moving {amount} in would leave the cross equity {eq - amount} "
                                    f"against an initial margin of {im} (collateral "
                                    f"{self.ac[a].collateral})", cmd.account, cmd.market)
        else:
            eq = self._equity(a, p)
            im = self._initial_margin(a, p, -1, 0, 0, 0)
            if -amount > q.iso_margin or eq + amount < im:
                return self._reject("transfer_margin", Reason.INSUFFICIENT_COLLATERAL,
                                    f"moving {-amount} out would leave the position's equity "
                                    f"{eq + amount} against an initial margin of {im} (isolated "
                                    f"margin {q.iso_margin})", cmd.account, cmd.market)
        self.ac[a].collateral -= amount
        q.iso_margin += amount
        self._touch(a)
        return self._ev_balance(a, "transfer_margin")

    cdef int _query_account(self, object cmd) except -1:
        cdef int32_t a = self.account_ids.get(cmd.account, -1)
        self.seq += 1
        return self.w.struct_event(self._account_report(a, cmd.account))

    cdef object _account_report(self, int32_t a, object key):
        cdef int32_t p, i
        cdef PosC* q
        cdef MarketC* mk
        cdef Order* o
        positions = []
        orders = []
        if a < 0:
            return M.AccountEvent(seq=self.seq, ts=self.clock, account=key, collateral=0,
                                  equity=0, initial_margin=0, maintenance_margin=0,
                                  positions=[], open_orders=[])
        p = self.ac[a].positions
        while p >= 0:
            q = &self.pos[p]
            if q.size or q.iso_margin:
                mk = &self.mk[q.market]
                positions.append(M.PositionInfo(
                    market=self.specs[q.market].name, size=q.size,
                    entry_price=_nearest(q.cost, q.size * mk.multiplier),
                    unrealised_pnl=<int64_t>unrealised(mk, q.size, q.cost),
                    unsettled_funding=unsettled_funding(mk, q.size, q.funding_last),
                    mode="isolated" if q.isolated else "cross", isolated_margin=q.iso_margin,
                    liquidation_price=self._liquidation_price(a, p), realised_pnl=q.realised))
            p = q.next
        positions.sort(key=lambda x: x.market)
        i = self.pool.acct_head[a]
        while i >= 0:
            o = &self.pool.o[i]
            orders.append(M.OrderInfo(
                market=self.specs[o.market].name, cid=self._cid_obj(i), oid=o.oid,
                side=_SIDE_NAMES[o.side], kind=_KIND_NAMES[o.kind],
                price=(None if o.kind == MARKET or o.kind == STOP_MARKET
                       or o.kind == TAKE_PROFIT_MARKET else o.price),
                qty=o.qty, tif=_TIF_NAMES[o.tif],
                reduce_only=bool(o.reduce_only)))
            i = o.anext
        return M.AccountEvent(
            seq=self.seq, ts=self.clock, account=key, collateral=self.ac[a].collateral,
            equity=self._equity(a, -1), initial_margin=self._initial_margin(a, -1, -1, 0, 0, 0),
            maintenance_margin=self._maintenance_margin(a, -1), positions=positions,
            open_orders=orders)

    cdef object _liquidation_price(self, int32_t a, int32_t p):
        """The mark at which position `p` makes its account liquidatable, the other marks held:
        solved exactly (fractions) tier by tier; rounded to the first tick that is still safe
        (up for a long, down for a short). None if no positive mark liquidates it."""
        cdef PosC* q = &self.pos[p]
        cdef MarketC* mk = &self.mk[q.market]
        cdef int32_t k, iso
        cdef TierC t
        s = q.size
        mult = mk.multiplier
        # equity(M) = rest + s * M * mult ; maintenance(M) = others + |s| M mult r / 1e6 - ded
        iso = p if q.isolated else -1
        if s == 0:
            return None
        rest = self._equity(a, iso) - s * mk.mark * mult
        others = self._maintenance_margin(a, iso) - <int64_t>maintenance_requirement(mk, s)
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

    cdef int _audit(self) except -1:
        cdef int32_t a, p, m
        cdef int128 upnl = 0, coll = 0
        cdef PosC* q
        longs = [0] * self.n_markets
        shorts = [0] * self.n_markets
        for a in range(self.n_accounts):
            if a != self.insurance:
                coll += self.ac[a].collateral
        for p in range(self.n_pos):
            q = &self.pos[p]
            coll += q.iso_margin
            if q.size:
                upnl += unrealised(&self.mk[q.market], q.size, q.cost)
                if q.size > 0:
                    longs[q.market] += q.size
                else:
                    shorts[q.market] -= q.size
        self.seq += 1
        return self.w.struct_event(M.AuditEvent(
            seq=self.seq, ts=self.clock, deposits=self.deposits, withdrawals=self.withdrawals,
            collateral=<int64_t>coll, unrealised_pnl=<int64_t>upnl,
            insurance_fund=self.ac[self.insurance].collateral if self.insurance >= 0 else 0,
            fees=self.fees,
            open_interest={self.specs[m].name: M.OpenInterest(long=longs[m], short=shorts[m])
                           for m in sorted(range(self.n_markets),
                                           key=lambda i: self.specs[i].name)}))

    # ---- cancel and amend --------------------------------------------------------------------

    cdef int32_t _open_order(self, object account, object cid, int32_t m) except -2:
        """The slot of the account's order `cid` resting in market `m`, or -1. O(1)."""
        cdef int32_t a = self.account_ids.get(account, -1), i
        cdef CidKey k
        cdef object keep
        if a < 0:
            return -1
        keep = self._cid_key(cid, a, &k)
        i = self.pool.cid_find(a, k.is_str, k.i, k.text, k.n, k.h)
        if i < 0 or self.pool.o[i].market != m or (self.pool.o[i].level < 0
                                                   and not self.pool.o[i].armed):
            return -1
        return i

    cdef int _cancel(self, object cmd) except -1:
        cdef int32_t m = self.market_ids.get(cmd.market, -1)
        cdef int32_t i
        if m < 0:
            return self._reject("cancel", Reason.UNKNOWN_MARKET, _no_market(cmd.market),
                                cmd.account, cmd.market, cmd.cid)
        i = self._open_order(cmd.account, cmd.cid, m)
        if i < 0:
            return self._reject("cancel", Reason.UNKNOWN_ORDER, _no_order(cmd.cid, cmd.market),
                                cmd.account, cmd.market, cmd.cid)
        return self._cancel_order(i, V_USER)

    cdef int _cancel_all(self, object cmd) except -1:
        cdef int32_t m = -1, a, i, nxt
        if cmd.market is not None:
            m = self.market_ids.get(cmd.market, -1)
            if m < 0:
                return self._reject("cancel_all", Reason.UNKNOWN_MARKET,
                                    _no_market(cmd.market), cmd.account, cmd.market)
        a = self.account_ids.get(cmd.account, -1)
        if a < 0:
            return 0
        i = self.pool.acct_head[a]
        while i >= 0:
            nxt = self.pool.o[i].anext
            if m < 0 or self.pool.o[i].market == m:
                self._cancel_order(i, V_USER)
            i = nxt
        return 0

    cdef int _amend(self, object cmd) except -1:
        cdef int32_t m = self.market_ids.get(cmd.market, -1)
        cdef int32_t i
        cdef int64_t qty, price
        cdef MarketC* mk
        cdef Order* o
        cdef Book b
        cdef PosC* p
        account = cmd.account
        market = cmd.market
        cid = cmd.cid
        if m < 0:
            return self._reject("amend", Reason.UNKNOWN_MARKET, _no_market(market),
                                account, market, cid)
        mk = &self.mk[m]
        i = self._open_order(account, cid, m)
        if i < 0:
            return self._reject("amend", Reason.UNKNOWN_ORDER, _no_order(cid, market),
                                account, market, cid)
        o = &self.pool.o[i]
        if cmd.qty is None:
            qty = o.qty
        else:
            qty = _positive(cmd.qty, C_MAX_QTY)
            if qty == 0:
                return self._reject("amend", Reason.INVALID_QTY, _bad_qty(cmd.qty),
                                    account, market, cid)
            if qty < mk.min_qty:
                return self._reject("amend", Reason.BELOW_MIN_QTY, _below_min(qty, mk.min_qty),
                                    account, market, cid)
        if cmd.price is None or o.kind == STOP_MARKET or o.kind == TAKE_PROFIT_MARKET:
            price = o.price                  # a stop or take-profit market order has no price
        else:
            price = _positive(cmd.price, C_MAX_PRICE)
            if price == 0:
                return self._reject("amend", Reason.INVALID_PRICE, _bad_price("price", cmd.price),
                                    account, market, cid)
        if o.armed:                          # off-book: no queue, no band until it enters
            if price != o.price:
                why = _band_violation_at(o.trigger_price, "trigger price", mk.band_ppm, o.side,
                                         price)
                if why is not None:
                    return self._reject("amend", Reason.PRICE_OUT_OF_BAND, why, account, market,
                                        cid)
            o.price = price
            o.qty = qty
            return self._ev_amended(i, True)
        if price != o.price:
            why = _band_violation(mk, o.side, price)
            if why is not None:
                return self._reject("amend", Reason.PRICE_OUT_OF_BAND, why, account, market, cid)
        p = &self.pos[self.pos_of[m][o.account]]
        if (mk.oracle_max_age_ns and self.clock - mk.last_oracle_ts > mk.oracle_max_age_ns
                and not o.reduce_only and qty > o.qty):
            return self._reject("amend", Reason.ORACLE_STALE,
                                f"the last {market} oracle price is "
                                f"{(self.clock - mk.last_oracle_ts) // NS} s old (limit "
                                f"{mk.oracle_max_age_ns // NS} s); an amend may not raise qty",
                                account, market, cid)
        b = self.books[m]
        if o.tif == ALO and b.n[1 - o.side]:
            if (o.side == BID and price >= b.lv[b.best(ASK)].price) or \
               (o.side == ASK and price <= b.lv[b.best(BID)].price):
                return self._reject("amend", Reason.POST_ONLY_WOULD_CROSS,
                                    f"post-only order at {price} would trade against the best "
                                    f"{'ask' if o.side == BID else 'bid'}", account, market, cid)
        if price == o.price and qty <= o.qty:           # keeps its place in the queue
            b.lv[o.level].qty -= o.qty - qty
            if o.side == BID:
                p.open_buy -= o.qty - qty
            else:
                p.open_sell -= o.qty - qty
            o.qty = qty
            return self._ev_amended(i, True)
        # Out and in again at the back: it may trade on re-entry.
        b.unlink(self.pool, i)
        if o.side == BID:
            p.open_buy -= o.qty
        else:
            p.open_sell -= o.qty
        if o.reduce_only:
            p.n_ro -= 1
        o.price = price
        o.qty = qty
        self._ev_amended(i, False)
        return self._finish_taker(i, self._match(i, price))

    cdef int _state_hash(self) except -1:
        h = digest(self.state())
        self.seq += 1
        self.w.begin(T_STATE_HASH, 1, self.seq, self.clock)
        self.w.key(K_HASH)
        self.w.pystr(h)
        return self.w.end()

    # ---- events ------------------------------------------------------------------------------

    cdef int _ev_cid(self, int32_t i) except -1:
        cdef Order* o = &self.pool.o[i]
        if o.cid_is_str:
            return self.w.utf8(self.pool.cid_text + <size_t>i * CID_BYTES, o.cid_len)
        return self.w.int64(o.cid_int)

    cdef int _ev_order_head(self, int32_t i, int etype, int nfields) except -1:
        """Open an order event: type, seq, ts, then account, market, cid, oid."""
        cdef Order* o = &self.pool.o[i]
        cdef EventWriter w = self.w
        self.seq += 1
        w.begin(etype, nfields, self.seq, self.clock)
        w.key(K_ACCOUNT); w.name(self.ac[o.account].name_tok)
        w.key(K_MARKET); w.name(self.mk[o.market].name_tok)
        w.key(K_CID); self._ev_cid(i)
        w.key(K_OID); w.int64(o.oid)
        return 0

    cdef int _ev_accepted(self, int32_t i, int64_t qty) except -1:
        cdef Order* o = &self.pool.o[i]
        cdef EventWriter w = self.w
        self._ev_order_head(i, T_ORDER_ACCEPTED, 10)
        w.key(K_SIDE); w.tok(V_BUY + o.side)
        w.key(K_KIND); w.tok(V_LIMIT + o.kind)
        w.key(K_PRICE)
        if o.kind == MARKET or o.kind == STOP_MARKET or o.kind == TAKE_PROFIT_MARKET:
            w.null()
        else:
            w.int64(o.price)
        w.key(K_QTY); w.int64(qty)
        w.key(K_TIF); w.tok(V_GTC + o.tif)
        w.key(K_REDUCE_ONLY); w.boolean(o.reduce_only)
        return w.end()

    cdef int _ev_cancelled(self, int32_t i, int reason) except -1:
        cdef Order* o = &self.pool.o[i]
        cdef EventWriter w = self.w
        self._ev_order_head(i, T_ORDER_CANCELLED, 6)
        w.key(K_REMAINING); w.int64(o.qty)
        w.key(K_REASON); w.tok(reason)
        return w.end()

    cdef int _ev_amended(self, int32_t i, bint kept) except -1:
        cdef Order* o = &self.pool.o[i]
        cdef EventWriter w = self.w
        self._ev_order_head(i, T_ORDER_AMENDED, 7)
        w.key(K_PRICE)
        if o.kind == STOP_MARKET or o.kind == TAKE_PROFIT_MARKET:
            w.null()
        else:
            w.int64(o.price)
        w.key(K_QTY); w.int64(o.qty)
        w.key(K_PRIORITY_KEPT); w.boolean(kept)
        return w.end()

    cdef int _ev_mark(self, int32_t m) except -1:
        cdef EventWriter w = self.w
        self.seq += 1
        w.begin(T_MARK, 3, self.seq, self.clock)
        w.key(K_MARKET); w.name(self.mk[m].name_tok)
        w.key(K_INDEX); w.int64(self.mk[m].index)
        w.key(K_MARK); w.int64(self.mk[m].mark)
        return w.end()


def _account_order(key):
    """Accounts sort integers first, then strings: a total order for mixed keys."""
    return (1, key) if type(key) is str else (0, key)
