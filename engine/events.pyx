# cython: language_level=3
"""Events (see events.pxd): the one owner of `seq`, writing every event the engine emits."""
from libc.stdlib cimport realloc
from libc.stdint cimport int64_t, int32_t

from .units cimport int128, py128
from .book cimport Order, CID_BYTES, MARKET, STOP_MARKET, TAKE_PROFIT_MARKET
from .state cimport State, Output, OrderCmd, FillC, cid_obj
from .wire cimport (
    FMT_MSGPACK, EventWriter, mp_accepted, mp_cancelled, mp_amended, mp_fill, w_raw, w_key, w_name, w_int64, w_bool, w_end, u_key, u_name, u_int64, T_ORDER_ACCEPTED, T_FILL, T_ORDER_CANCELLED, T_ORDER_AMENDED, T_MARK,
    T_STATE_HASH, T_REJECTED, K_ACCOUNT, K_MARKET, K_CID, K_OID, K_SIDE, K_KIND, K_PRICE, K_QTY,
    K_TIF, K_REDUCE_ONLY, K_TAKER_SIDE, K_TAKER_ACCOUNT, K_TAKER_CID, K_TAKER_OID,
    K_TAKER_REMAINING, K_MAKER_ACCOUNT, K_MAKER_CID, K_MAKER_OID, K_MAKER_REMAINING, K_TAKER_FEE,
    K_MAKER_FEE, K_LIQUIDATION, K_REMAINING, K_REASON, K_PRIORITY_KEPT, K_INDEX, K_MARK, K_HASH,
    K_COMMAND, K_DETAIL, V_BUY, V_LIMIT, V_GTC,
)

from . import messages as M
from .state import SIDE_NAMES
from .wire import VALUES

cdef tuple _SIDE_NAMES = SIDE_NAMES
cdef tuple _VALUES = VALUES                 # a value token's text: _VALUES[tok - V_BUY]
cdef object _Accepted = M.OrderAccepted
cdef object _Cancelled = M.OrderCancelled
cdef object _Amended = M.OrderAmended
cdef object _Fill = M.Fill
cdef object _decode = None                  # codec's list[AnyEvent] decoder, on first use


cdef inline int64_t _next(State s) noexcept:
    """The next event's sequence number: the only place `seq` moves."""
    s.seq += 1
    return s.seq


cdef inline bint _unwritten(State s) noexcept:
    """In a quiet call (Engine.record_events off) an event takes its number and is not
    encoded: the state, `seq` included, is what it would have been. O(1)."""
    if s.out.quiet:
        _next(s)
        return True
    return False


# ---- a call's output modes -------------------------------------------------------------------

cdef int log_rejections(State s, list into) except -1:
    """Note each rejection's n_commands in `into` from now (None: no more). O(1)."""
    s.out.reject_log = into
    return 0


cdef int drop_structs(State s) except -1:
    """An Engine.execute that failed: the Structs made so far are dropped. O(1)."""
    s.out.structs = None
    return 0


cdef int log_fill(State s, int32_t t, int32_t mi, int64_t price, int64_t q) except -1:
    """Keep a fill of taker slot `t` and maker slot `mi` for the per-command API (Engine.fills,
    Engine.place). O(1) amortised."""
    cdef Output out = s.out
    cdef FillC* grown
    cdef FillC* f
    cdef Order* to = &s.pool.o[t]
    cdef Order* mo = &s.pool.o[mi]
    if out.n_logged == out.log_cap:
        grown = <FillC*>realloc(out.fill_log, 2 * <size_t>out.log_cap * sizeof(FillC))
        if grown == NULL:
            raise MemoryError()
        out.fill_log = grown
        out.log_cap *= 2
    f = &out.fill_log[out.n_logged]
    f.price = price
    f.qty = q
    f.taker_oid = to.oid
    f.maker_oid = mo.oid
    f.taker_cid = to.cid_int
    f.maker_cid = mo.cid_int
    f.strs = 0
    if to.cid_is_str or mo.cid_is_str:
        out.log_strs.append((cid_obj(s, mi), cid_obj(s, t)))
        f.strs = len(out.log_strs)
    out.n_logged += 1
    return 0


# ---- the output buffer ----------------------------------------------------------------------

cdef int begin_output(State s, int fmt, bint counted) except -1:
    """Start the events of a call in format `fmt`; `counted`: as one msgpack array whose
    length is patched in by take_output (Engine.execute decodes it in one call)."""
    if s.w.fmt != fmt:
        s.w.set_format(fmt)
    s.w.clear()
    if counted:
        s.w.array_header(0)
    return 0


cdef bytes take_output(State s, int64_t first_seq, bint counted):
    """The events written since begin_output, as bytes."""
    cdef int64_t n = s.seq - first_seq
    if counted:
        _count(s, n)
    return s.w.take()


cdef inline void _count(State s, int64_t n) noexcept:
    s.w.buf[1] = <char>((n >> 24) & 0xff)
    s.w.buf[2] = <char>((n >> 16) & 0xff)
    s.w.buf[3] = <char>((n >> 8) & 0xff)
    s.w.buf[4] = <char>(n & 0xff)


cdef int begin_structs(State s) except -1:
    """Start the events of an Engine.execute call: the order events (accepted, cancelled,
    amended, fill) are made as Structs straight from the C fields, into `s.out.structs`; the rest
    are written to the buffer as usual (a counted msgpack array) and decoded by take_structs."""
    begin_output(s, FMT_MSGPACK, True)
    s.out.structs = []
    return 0


cdef list take_structs(State s, int64_t first_seq):
    """The events since begin_structs, as Structs in `seq` order. O(events); the buffer is
    decoded only when a rare event was written, and merged by `seq` then."""
    global _decode
    cdef list made = s.out.structs
    cdef int64_t rare = s.seq - first_seq - len(made)
    s.out.structs = None
    if rare == 0:
        s.w.clear()
        return made
    _count(s, rare)
    if _decode is None:
        from .codec import _mp_events
        _decode = _mp_events.decode
    cdef list written = _decode(s.w.take())
    if not made:
        return written
    made.extend(written)
    made.sort(key=_seq_of)
    return made


def _seq_of(event):
    return event.seq


cdef int begin_route(State s) except -1:
    """Start the events of an Engine.route call: each written to the buffer (msgpack, one
    after the other), and its index row kept in `s.out.rows` (Engine.route's docstring)."""
    begin_output(s, FMT_MSGPACK, False)
    s.out.rows = []
    return 0


cdef tuple take_route(State s):
    """(the events' bytes, their index rows) since begin_route."""
    cdef list rows = s.out.rows
    s.out.rows = None
    return s.w.take(), rows


cdef int drop_rows(State s) except -1:
    """An Engine.route that failed: its rows are dropped. O(1)."""
    s.out.rows = None
    return 0


cdef inline int _row(State s, tuple row) except -1:
    s.out.rows.append(row)
    return 0


cdef int _rare(State s, object ev) except -1:
    """A rare event, a whole Struct encoded by msgspec; routed, its row carries the Struct."""
    cdef Py_ssize_t start = s.w.length
    s.w.struct_event(ev)
    if s.out.rows is not None:
        _row(s, (R_RARE, start, s.w.length, getattr(ev, "account", None), ev))
    return 0


# ---- order lifecycle -------------------------------------------------------------------------

cdef int _cid(State s, int32_t i) except -1:
    cdef Order* o = &s.pool.o[i]
    if o.cid_is_str:
        return s.w.utf8(s.pool.cid_text + <size_t>i * CID_BYTES, o.cid_len)
    return u_int64(s.w, o.cid_int)


cdef int _order_head(State s, int32_t i, int etype, int nfields) except -1:
    """Open an order event: type, seq, ts, then account, market, cid, oid."""
    cdef Order* o = &s.pool.o[i]
    cdef EventWriter w = s.w
    w.begin(etype, nfields, _next(s), s.clock)
    u_key(w, K_ACCOUNT); u_name(w, s.ac[o.account].name_tok)
    u_key(w, K_MARKET); u_name(w, s.mk[o.market].name_tok)
    u_key(w, K_CID); _cid(s, i)
    u_key(w, K_OID); u_int64(w, o.oid)
    return 0


cdef inline bint _priceless(int kind) noexcept:
    return kind == MARKET or kind == STOP_MARKET or kind == TAKE_PROFIT_MARKET


cdef inline str _value(int tok):
    return <str>_VALUES[tok - V_BUY]


cdef int accepted(State s, int32_t i, int64_t qty) except -1:
    if _unwritten(s):
        return 0
    cdef Order* o = &s.pool.o[i]
    cdef EventWriter w = s.w
    if s.out.structs is not None:
        s.out.structs.append(_Accepted(
            _next(s), s.clock, s.account_keys[o.account], s.market_names[o.market],
            cid_obj(s, i), o.oid, _value(V_BUY + o.side), _value(V_LIMIT + o.kind),
            None if _priceless(o.kind) else o.price, qty, _value(V_GTC + o.tif),
            <bint>o.reduce_only))
        return 0
    cdef Py_ssize_t start = w.length
    if w.fmt == FMT_MSGPACK:
        mp_accepted(w, _next(s), s.clock, s.ac[o.account].name_tok, s.mk[o.market].name_tok,
                    o.cid_is_str, o.cid_int, s.pool.cid_text + <size_t>i * CID_BYTES,
                    o.cid_len, o.oid, V_BUY + o.side, V_LIMIT + o.kind, not _priceless(o.kind),
                    o.price, qty, V_GTC + o.tif, o.reduce_only)
    else:
        _order_head(s, i, T_ORDER_ACCEPTED, 10)
        u_key(w, K_SIDE); u_key(w, V_BUY + o.side)
        u_key(w, K_KIND); u_key(w, V_LIMIT + o.kind)
        u_key(w, K_PRICE)
        if _priceless(o.kind):
            w.null()
        else:
            u_int64(w, o.price)
        u_key(w, K_QTY); u_int64(w, qty)
        u_key(w, K_TIF); u_key(w, V_GTC + o.tif)
        u_key(w, K_REDUCE_ONLY); w_bool(w, o.reduce_only)
    if s.out.rows is not None:
        _row(s, (T_ORDER_ACCEPTED, start, w.length, s.account_keys[o.account], o.oid,
                 s.market_names[o.market], o.side, None if _priceless(o.kind) else o.price,
                 cid_obj(s, i)))
    return w_end(w)


cdef int cancelled(State s, int32_t i, int reason) except -1:
    if _unwritten(s):
        return 0
    cdef Order* o = &s.pool.o[i]
    cdef EventWriter w = s.w
    if s.out.structs is not None:
        s.out.structs.append(_Cancelled(
            _next(s), s.clock, s.account_keys[o.account], s.market_names[o.market],
            cid_obj(s, i), o.oid, o.qty, _value(reason)))
        return 0
    cdef Py_ssize_t start = w.length
    if w.fmt == FMT_MSGPACK:
        mp_cancelled(w, _next(s), s.clock, s.ac[o.account].name_tok, s.mk[o.market].name_tok,
                     o.cid_is_str, o.cid_int, s.pool.cid_text + <size_t>i * CID_BYTES,
                     o.cid_len, o.oid, o.qty, reason)
    else:
        _order_head(s, i, T_ORDER_CANCELLED, 6)
        u_key(w, K_REMAINING); u_int64(w, o.qty)
        u_key(w, K_REASON); u_key(w, reason)
    if s.out.rows is not None:
        _row(s, (T_ORDER_CANCELLED, start, w.length, s.account_keys[o.account], o.oid,
                 s.market_names[o.market]))
    return w_end(w)


cdef int amended(State s, int32_t i, bint kept) except -1:
    if _unwritten(s):
        return 0
    cdef Order* o = &s.pool.o[i]
    cdef EventWriter w = s.w
    if s.out.structs is not None:
        s.out.structs.append(_Amended(
            _next(s), s.clock, s.account_keys[o.account], s.market_names[o.market],
            cid_obj(s, i), o.oid,
            None if o.kind == STOP_MARKET or o.kind == TAKE_PROFIT_MARKET else o.price,
            o.qty, kept))
        return 0
    cdef Py_ssize_t start = w.length
    cdef bint priceless = o.kind == STOP_MARKET or o.kind == TAKE_PROFIT_MARKET
    if w.fmt == FMT_MSGPACK:
        mp_amended(w, _next(s), s.clock, s.ac[o.account].name_tok, s.mk[o.market].name_tok,
                   o.cid_is_str, o.cid_int, s.pool.cid_text + <size_t>i * CID_BYTES,
                   o.cid_len, o.oid, not priceless, o.price, o.qty, kept)
    else:
        _order_head(s, i, T_ORDER_AMENDED, 7)
        u_key(w, K_PRICE)
        if priceless:
            w.null()
        else:
            u_int64(w, o.price)
        u_key(w, K_QTY); u_int64(w, o.qty)
        u_key(w, K_PRIORITY_KEPT); w_bool(w, kept)
    if s.out.rows is not None:
        _row(s, (T_ORDER_AMENDED, start, w.length, s.account_keys[o.account], o.oid,
                 s.market_names[o.market], None if priceless else o.price))
    return w_end(w)


cdef int fill(State s, int32_t t, int32_t mi, int64_t price, int64_t q, int64_t tfee,
              int64_t mfee) except -1:
    """A trade of `q` at `price` between taker `t` and maker `mi` (their quantities already
    reduced by it)."""
    if _unwritten(s):
        return 0
    cdef Order* to = &s.pool.o[t]
    cdef Order* mo = &s.pool.o[mi]
    cdef EventWriter w = s.w
    if s.out.structs is not None:
        s.out.structs.append(_Fill(
            _next(s), s.clock, s.market_names[to.market], price, q, _value(V_BUY + to.side),
            s.account_keys[to.account], cid_obj(s, t), to.oid, to.qty,
            s.account_keys[mo.account], cid_obj(s, mi), mo.oid, mo.qty, tfee, mfee,
            s.liquidating))
        return 0
    cdef Py_ssize_t start = w.length, end, mid
    cdef int64_t seq = _next(s)
    if w.fmt == FMT_MSGPACK:
        mp_fill(w, seq, s.clock, s.mk[to.market].name_tok, price, q, V_BUY + to.side,
                s.ac[to.account].name_tok, to.cid_is_str, to.cid_int,
                s.pool.cid_text + <size_t>t * CID_BYTES, to.cid_len, to.oid, to.qty,
                s.ac[mo.account].name_tok, mo.cid_is_str, mo.cid_int,
                s.pool.cid_text + <size_t>mi * CID_BYTES, mo.cid_len, mo.oid, mo.qty,
                tfee, mfee, s.liquidating)
    else:
        w.begin(T_FILL, 15, seq, s.clock)
        u_key(w, K_MARKET); u_name(w, s.mk[to.market].name_tok)
        u_key(w, K_PRICE); u_int64(w, price)
        u_key(w, K_QTY); u_int64(w, q)
        u_key(w, K_TAKER_SIDE); u_key(w, V_BUY + to.side)
        u_key(w, K_TAKER_ACCOUNT); u_name(w, s.ac[to.account].name_tok)
        u_key(w, K_TAKER_CID); _cid(s, t)
        u_key(w, K_TAKER_OID); u_int64(w, to.oid)
        u_key(w, K_TAKER_REMAINING); u_int64(w, to.qty)
        u_key(w, K_MAKER_ACCOUNT); u_name(w, s.ac[mo.account].name_tok)
        u_key(w, K_MAKER_CID); _cid(s, mi)
        u_key(w, K_MAKER_OID); u_int64(w, mo.oid)
        u_key(w, K_MAKER_REMAINING); u_int64(w, mo.qty)
        u_key(w, K_TAKER_FEE); u_int64(w, tfee)
        u_key(w, K_MAKER_FEE); u_int64(w, mfee)
        u_key(w, K_LIQUIDATION); w_bool(w, s.liquidating)
    w_end(w)
    if s.out.rows is None:
        return 0
    end = w.length
    _own_fill(s, t, seq, price, q, tfee, False)
    mid = w.length
    _own_fill(s, mi, seq, price, q, mfee, True)
    return _row(s, (T_FILL, start, end, s.account_keys[to.account], s.account_keys[mo.account],
                    mid, w.length, s.market_names[to.market], to.side, price, q, to.oid,
                    to.qty, mo.oid, mo.qty, s.liquidating, seq, s.clock))


cdef int _own_fill(State s, int32_t i, int64_t seq, int64_t price, int64_t q, int64_t fee,
                   bint maker) except -1:
    """A fill as the side of order `i` sees it (the gateway's OwnFill, docs/protocol.md,
    "Fills"): its own order's fields and nothing of the counterparty's, `trade_id` the fill's
    seq. Routed calls only (Engine.route): msgpack."""
    cdef Order* o = &s.pool.o[i]
    cdef EventWriter w = s.w
    w.begin(T_FILL, 12, seq, s.clock)
    u_key(w, K_ACCOUNT); u_name(w, s.ac[o.account].name_tok)
    u_key(w, K_MARKET); u_name(w, s.mk[o.market].name_tok)
    u_key(w, K_SIDE); u_key(w, V_BUY + o.side)
    u_key(w, K_CID); _cid(s, i)
    u_key(w, K_OID); u_int64(w, o.oid)
    u_key(w, K_PRICE); u_int64(w, price)
    u_key(w, K_QTY); u_int64(w, q)
    u_key(w, K_REMAINING); u_int64(w, o.qty)
    w_raw(w, b"\xa3fee", 4); w_int64(w, fee)
    w_raw(w, b"\xa9liquidity", 10)
    w_raw(w, b"\xa5maker" if maker else b"\xa5taker", 6)
    u_key(w, K_LIQUIDATION); w_bool(w, s.liquidating)
    w_raw(w, b"\xa8trade_id", 9); w_int64(w, seq)
    return 0


cdef int mark(State s, int32_t m) except -1:
    if _unwritten(s):
        return 0
    cdef EventWriter w = s.w
    cdef Py_ssize_t start = w.length
    cdef int64_t seq = _next(s)
    w.begin(T_MARK, 3, seq, s.clock)
    u_key(w, K_MARKET); u_name(w, s.mk[m].name_tok)
    u_key(w, K_INDEX); u_int64(w, s.mk[m].index)
    u_key(w, K_MARK); u_int64(w, s.mk[m].mark)
    if s.out.rows is not None:
        _row(s, (T_MARK, start, w.length, None, s.market_names[m], s.mk[m].index, s.mk[m].mark,
                 seq, s.clock))
    return w_end(w)


# ---- rejections ------------------------------------------------------------------------------

cdef int reject(State s, str command, str reason, str detail, object account=None,
                object market=None, object cid=None) except -1:
    s.out.last_reason = reason
    if s.out.reject_log is not None:
        s.out.reject_log.append(s.n_commands)
    if _unwritten(s):
        return 0
    cdef EventWriter w = s.w
    cdef Py_ssize_t start = w.length
    cdef int n = 3 + (account is not None) + (market is not None) + (cid is not None)
    w.begin(T_REJECTED, n, _next(s), s.clock)
    w_key(w, K_COMMAND)
    w.pyobj(command)
    if account is not None:
        w_key(w, K_ACCOUNT)
        w.pyobj(account)
    if market is not None:
        w_key(w, K_MARKET)
        w.pyobj(market)
    if cid is not None:
        w_key(w, K_CID)
        w.pyobj(cid)
    w_key(w, K_REASON)
    w.pystr(reason)
    w_key(w, K_DETAIL)
    w.pystr(detail)
    if s.out.rows is not None:
        _row(s, (T_REJECTED, start, w.length, account, reason))
    return w_end(w)


cdef int reject_order(State s, OrderCmd* c, str reason, str detail) except -1:
    """`rejected` for a new_order already resolved to ids: the same bytes as `reject`."""
    s.out.last_reason = reason
    if s.out.reject_log is not None:
        s.out.reject_log.append(s.n_commands)
    if _unwritten(s):
        return 0
    cdef EventWriter w = s.w
    cdef Py_ssize_t start = w.length
    w.begin(T_REJECTED, 6, _next(s), s.clock)
    w_key(w, K_COMMAND)
    w.pystr("new_order")
    w_key(w, K_ACCOUNT)
    w_name(w, s.ac[c.account].name_tok)
    w_key(w, K_MARKET)
    w_name(w, s.mk[c.market].name_tok)
    w_key(w, K_CID)
    if c.cid.is_str:
        w.utf8(c.cid.text, c.cid.n)
    else:
        w_int64(w, c.cid.i)
    w_key(w, K_REASON)
    w.pystr(reason)
    w_key(w, K_DETAIL)
    w.pystr(detail)
    if s.out.rows is not None:
        _row(s, (T_REJECTED, start, w.length, s.account_keys[c.account], reason))
    return w_end(w)


# ---- the rare events, as Structs -------------------------------------------------------------

cdef int triggered(State s, int32_t i, int64_t mark) except -1:
    if _unwritten(s):
        return 0
    cdef Order* o = &s.pool.o[i]
    return _rare(s, M.OrderTriggered(
        seq=_next(s), ts=s.clock, account=s.account_keys[o.account],
        market=s.specs[o.market].name, cid=cid_obj(s, i), oid=o.oid,
        trigger_price=s.trigger_of[i], mark=mark))


cdef int funding(State s, int32_t m, int64_t rate, int64_t intervals) except -1:
    if _unwritten(s):
        return 0
    return _rare(s, M.FundingEvent(
        seq=_next(s), ts=s.clock, market=s.specs[m].name, rate_ppm=rate,
        index_price=s.mk[m].index, intervals=intervals))


cdef int liquidation(State s, int32_t a, int32_t m, int side, int64_t qty, int64_t price,
                     str kind, int64_t fee) except -1:
    if _unwritten(s):
        return 0
    return _rare(s, M.LiquidationEvent(
        seq=_next(s), ts=s.clock, account=s.account_keys[a], market=s.specs[m].name,
        side=_SIDE_NAMES[side], qty=qty, price=price, mark=s.mk[m].mark, kind=kind, fee=fee))


cdef int margin_call(State s, int32_t a, int128 equity, int128 mm) except -1:
    if _unwritten(s):
        return 0
    return _rare(s, M.MarginCall(seq=_next(s), ts=s.clock, account=s.account_keys[a],
                                         equity=py128(equity), maintenance_margin=py128(mm)))


cdef int balance(State s, int32_t a, str reason) except -1:
    if _unwritten(s):
        return 0
    return _rare(s, M.Balance(seq=_next(s), ts=s.clock, account=s.account_keys[a],
                                      collateral=s.ac[a].collateral, reason=reason))


cdef int state_hash(State s, str digest) except -1:
    if _unwritten(s):
        return 0
    cdef Py_ssize_t start = s.w.length
    s.w.begin(T_STATE_HASH, 1, _next(s), s.clock)
    w_key(s.w, K_HASH)
    s.w.pystr(digest)
    if s.out.rows is not None:
        _row(s, (T_STATE_HASH, start, s.w.length, None))
    return w_end(s.w)


cdef int report(State s, object cls, dict fields) except -1:
    """A report event (account, audit) built from `fields`, numbered and stamped here."""
    if _unwritten(s):
        return 0
    return _rare(s, cls(seq=_next(s), ts=s.clock, **fields))
