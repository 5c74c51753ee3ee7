# cython: language_level=3
"""The engine (contract: "Time" and the dispatch of "Commands"): the clock, the command
dispatch, and the public API. The rooms (core.pxd lists them) do the work; docs/engine-api.md
says how to drive it."""
from libc.stdint cimport int64_t, int32_t, uint8_t

from .units cimport positive, CHECKS
from .book cimport Book, KeyHeap, BID, ASK
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.bytearray cimport PyByteArray_Resize, PyByteArray_AS_STRING
from cpython.ref cimport Py_INCREF
from libc.string cimport memcpy
cimport cython
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.object cimport PyObject, PyObject_TypeCheck, PyTypeObject

from .state cimport (State, MarketC, FillC, add_market, cid_obj, set_mark, margin_moved, rewake,
                     SETTLED, HALTED, POST_ONLY)
from .wire cimport FMT_MSGPACK, FMT_JSON, skip_object
from .matching cimport cancel_order
from .wire cimport (V_USER, T_ORDER_ACCEPTED, T_ORDER_CANCELLED, T_ORDER_AMENDED, T_FILL, T_MARK,
                   T_REJECTED, T_STATE_HASH)
from . cimport (events, entry, funding, liquidation, lifecycle, accounts, reports, snapshot,
                     fastpath, oracle)
from .fastpath cimport FastCmd, FAST_NONE, FAST_NEW_ORDER, FAST_CANCEL, FAST_AMEND

import msgspec

from . import messages as M
from .codec import CommandReader, Malformed, MsgpackFramer, FORMATS, _mp_events, decode_msgpack
from .details import show, no_market, bad_price
from .markets import MAX_MONEY, MarketConfigError, market_spec
from .messages import MAX_TS, Reason
from .lifecycle import STATUS_NAMES as _STATUS_NAMES
from . import reports as _reports

cdef int64_t C_MAX_TS = MAX_TS                          # the latest ts a command may carry
cdef object _decode_events = _mp_events.decode
cdef object _NO_FILLS = memoryview(b"").cast("q")      # `fills` after a call that made none

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
cdef object SetMarketStatus = M.SetMarketStatus
cdef object SettleMarket = M.SettleMarket
cdef object UpdateMarket = M.UpdateMarket


cdef inline bint _key(object v, Py_ssize_t longest):
    """An account key or cid as the contract allows it: an int64, or a non-empty string of at
    most `longest` characters (the Struct path has msgspec check the same)."""
    cdef int overflow = 0
    if type(v) is int:
        PyLong_AsLongLongAndOverflow(v, &overflow)
        return overflow == 0
    return type(v) is str and 0 < len(<str>v) <= longest


cdef bint _call_fields(State s, str command, int64_t ts, object account,
                       object cid) except -1:
    """The per-command API's own edge: ts, the account and the cid as the decoder bounds them;
    False after answering the call with `invalid_command`."""
    if not (0 <= ts <= C_MAX_TS and _key(account, 64) and _key(cid, 36)):
        events.reject(s, command, Reason.INVALID_COMMAND,
                      f"ts must be 0 .. {MAX_TS} ns, account an int64 or a string of 1 to 64 "
                      f"characters, cid an int64 or a string of 1 to 36")
        return False
    if not funding.jump_fits(s, ts):
        events.reject(s, command, Reason.INVALID_COMMAND, _too_far(ts))
        return False
    return True


cdef str _too_far(int64_t ts):
    return (f"ts {ts} jumps over so many funding intervals at once that what a position could "
            f"owe would pass the largest amount, {MAX_MONEY} quote units: move the clock in "
            f"smaller steps")


cdef inline bint _fields_in_bounds(object cmd):
    """The bounds msgspec's decoder checks that applying a command would not trip over: `ts`,
    and the account, cid and market names (a Struct built by hand skips the decoder). O(1)."""
    return _in_bounds(cmd.ts, getattr(cmd, "account", None), getattr(cmd, "cid", None),
                      getattr(cmd, "market", None))


cdef inline bint _in_bounds(object ts_v, object account, object cid, object market):
    cdef int64_t ts
    cdef int overflow = 0
    if type(ts_v) is not int:
        return False
    ts = PyLong_AsLongLongAndOverflow(ts_v, &overflow)
    if overflow or ts < 0 or ts > C_MAX_TS:
        return False
    if account is not None and not _key(account, 64):
        return False
    if cid is not None and not _key(cid, 36):
        return False
    return market is None or (type(market) is str and 0 < len(<str>market) <= 32)


# The order commands' fields, read in one call (msgspec.structs.astuple) rather than one
# attribute look-up each: their positions, held to messages.py here.
cdef object _astuple = msgspec.structs.astuple
assert NewOrder.__struct_fields__ == (
    "account", "market", "cid", "side", "kind", "qty", "price", "trigger_price", "tif",
    "reduce_only", "stp", "expire_ts", "ts")
assert Cancel.__struct_fields__ == ("account", "market", "cid", "ts")
assert Amend.__struct_fields__ == ("account", "market", "cid", "price", "qty", "ts")


cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void* op)


cdef tuple _rows(State s):
    """The fills logged by the current call as (price, qty, maker cid, taker cid) tuples, built
    in C. They hold ints and strs only, so the cycle collector is told at once that they can
    be in no cycle (as it would find out itself, the first time it looked at them, after
    walking them on every young collection until then). O(fills)."""
    cdef int32_t i
    cdef FillC* f
    cdef tuple rows, row
    if s.out.n_logged == 0:
        return ()
    rows = PyTuple_New(s.out.n_logged)
    for i in range(s.out.n_logged):
        f = &s.out.fill_log[i]
        if f.strs:
            row = (f.price, f.qty) + <tuple>s.out.log_strs[f.strs - 1]
        else:
            row = (f.price, f.qty, f.maker_cid, f.taker_cid)
        PyObject_GC_UnTrack(<PyObject*>row)
        Py_INCREF(row)
        PyTuple_SET_ITEM(rows, i, row)
    PyObject_GC_UnTrack(<PyObject*>rows)
    return rows


# The binary batch path's records (docs/engine-api.md, "The binary batch path").
cdef enum:
    RECORD = 64                 # bytes of a command record and of a fill record
    REC_NEW_ORDER = 1
    REC_CANCEL = 2
    REC_AMEND = 3
    FILL_MAKER_CID_STR = 1      # a fill record's flags: the maker's cid is a string (not given)
    FILL_TAKER_CID_STR = 2

ctypedef packed struct CommandRecord:
    uint8_t type
    uint8_t side
    uint8_t kind
    uint8_t tif
    uint8_t flags
    uint8_t pad[3]
    int32_t account
    int32_t market
    int64_t cid
    int64_t price
    int64_t qty
    int64_t trigger_price
    int64_t ts
    int64_t expire_ts

ctypedef packed struct FillRecord:
    int64_t command             # the command's index in the batch
    int64_t price
    int64_t qty
    int64_t maker_cid
    int64_t taker_cid
    int64_t maker_oid
    int64_t taker_oid
    int64_t flags

assert sizeof(CommandRecord) == RECORD and sizeof(FillRecord) == RECORD

cdef dict _REASON_CODE = {r: i for i, r in enumerate(M.REASONS)}


cdef int64_t _fill_records(State s, bytearray fills, int64_t n, Py_ssize_t k) except -1:
    """Append the current command's fills (command index `k`) to `fills`, which holds `n`
    records; the new count. O(fills)."""
    cdef int32_t i
    cdef FillC* f
    cdef FillRecord* r
    PyByteArray_Resize(fills, (n + s.out.n_logged) * RECORD)
    r = <FillRecord*>PyByteArray_AS_STRING(fills) + n
    for i in range(s.out.n_logged):
        f = &s.out.fill_log[i]
        r.command = k
        r.price = f.price
        r.qty = f.qty
        r.maker_cid = f.maker_cid
        r.taker_cid = f.taker_cid
        r.maker_oid = f.maker_oid
        r.taker_oid = f.taker_oid
        r.flags = 0
        if f.strs:
            maker, taker = s.out.log_strs[f.strs - 1]
            if type(maker) is str:
                r.flags |= FILL_MAKER_CID_STR
                r.maker_cid = 0
            if type(taker) is str:
                r.flags |= FILL_TAKER_CID_STR
                r.taker_cid = 0
        r += 1
    return n + s.out.n_logged


cdef int _indices(list rejected, Py_ssize_t start, int64_t before) except -1:
    """The commands' numbers that engine.events noted in `rejected` from `start` on (Engine.
    n_commands at each rejection, this call's from `before` + 1) become their indices in the
    call, each once; what the list held before `start` stays."""
    cdef Py_ssize_t k, n = start
    cdef int64_t last = -1, c
    if rejected is None:
        return 0
    for k in range(start, len(rejected)):
        c = rejected[k]
        if c != last:
            rejected[n] = c - before - 1
            n += 1
            last = c
    del rejected[n:]
    return 0


# The kinds of Engine.route's index rows (docs/engine-api.md, "Routing a command's events"):
# each row's first item.
ROUTE = {"order_accepted": T_ORDER_ACCEPTED, "order_cancelled": T_ORDER_CANCELLED,
         "order_amended": T_ORDER_AMENDED, "fill": T_FILL, "mark": T_MARK,
         "rejected": T_REJECTED, "state_hash": T_STATE_HASH, "rare": events.R_RARE}
# What each kind's row holds, in order (engine.events writes them): a router names a field by
# its place here, e.g. ROW_FIELDS["fill"].index("maker_oid").
_HEAD = ("kind", "start", "end", "account")
ROW_FIELDS = {
    "order_accepted": _HEAD + ("oid", "market", "side", "price", "cid"),
    "order_cancelled": _HEAD + ("oid", "market"),
    "order_amended": _HEAD + ("oid", "market", "price"),
    "fill": _HEAD + ("maker_account", "mid", "vend", "market", "taker_side", "price", "qty",
                     "taker_oid", "taker_remaining", "maker_oid", "maker_remaining",
                     "liquidation", "seq", "ts"),
    "mark": _HEAD + ("market", "index", "mark", "seq", "ts"),
    "rejected": _HEAD + ("reason",),
    "state_hash": _HEAD,
    "rare": _HEAD + ("event",),
}


cdef inline int _advance(State s, int64_t ts) except -1:
    """The clock becomes max(clock, ts); every funding boundary it passes is applied,
    market by market (creation order), oldest first, each followed by a liquidation pass;
    a pass that hit its bound at the last mark update goes on (_pass_time). O(1) while the
    clock stays below the earliest of those (State.wake)."""
    if ts <= s.clock:
        return 0
    s.clock = ts
    if ts < s.wake:
        if CHECKS:
            _check_quiet(s, ts)
        return 0
    return _pass_time(s, ts)


cdef inline bint _handles(State s, str command, int32_t a, int32_t m, int64_t ts) except -1:
    """The handle calls' own edge: handles the engine gave and a ts the contract allows;
    False after answering the call with `invalid_command`. O(1) (funding.jump_fits)."""
    if (0 <= a < s.n_accounts and 0 <= m < s.n_markets and 0 <= ts <= C_MAX_TS
            and funding.jump_fits(s, ts)):
        return True
    return _handles_refused(s, command, a, m, ts)


cdef bint _handles_refused(State s, str command, int32_t a, int32_t m, int64_t ts) except -1:
    """_handles' answer to a call it does not let through: which check failed, in order."""
    if not (0 <= a < s.n_accounts and 0 <= m < s.n_markets):
        events.reject(s, command, Reason.INVALID_COMMAND,
                      f"account handle {a} or market handle {m} is not one the engine "
                      f"gave (Engine.account_handle, Engine.market_handle)")
        return False
    if not (0 <= ts <= C_MAX_TS):
        events.reject(s, command, Reason.INVALID_COMMAND, f"ts must be 0 .. {MAX_TS} ns")
        return False
    if not funding.jump_fits(s, ts):
        events.reject(s, command, Reason.INVALID_COMMAND, _too_far(ts))
        return False
    return True


# ---- the handle calls' bodies -----------------------------------------------------------------

cdef object _place(Engine e, int32_t account, int32_t market, int64_t cid, int side, int64_t qty,
                   int64_t price, int kind, int tif, int64_t ts, int flags, int64_t trigger_price,
                   int64_t expire_ts):
    """Engine.place."""
    cdef State s = e._call(True)
    cdef int64_t first = s.next_oid
    try:
        if _handles(s, "new_order", account, market, ts):
            _advance(s, ts)
            entry.place_handles(s, account, market, cid, side, kind, tif, flags, qty, price,
                                trigger_price, expire_ts)
    finally:
        events.close_call(s)
    result = ((first if s.next_oid > first else 0), _rows(s))
    PyObject_GC_UnTrack(<PyObject*>result)         # an int and an untracked tuple (_rows)
    return result


cdef object _cancel_order(Engine e, int32_t account, int32_t market, int64_t cid, int64_t ts):
    """Engine.cancel_order."""
    cdef State s = e._call(False)
    cdef int64_t before = s.pool.n_live
    try:
        if _handles(s, "cancel", account, market, ts):
            _advance(s, ts)
            entry.cancel_handles(s, account, market, cid)
    finally:
        events.close_call(s)
    return s.pool.n_live < before


cdef object _amend_order(Engine e, int32_t account, int32_t market, int64_t cid, int64_t price,
                         int64_t qty, int64_t ts):
    """Engine.amend_order."""
    cdef State s = e._call(True)
    try:
        if _handles(s, "amend", account, market, ts):
            _advance(s, ts)
            entry.amend_handles(s, account, market, cid, price, qty)
    finally:
        events.close_call(s)
    return _rows(s)


cdef int _check_quiet(State s, int64_t ts) except -1:
    """The debug build's check that a clock move State.wake let through had nothing to do."""
    cdef int32_t m
    assert not (s.gtd_of and s.gtd[0][0] <= ts), "a gtd expiry was skipped"
    for m_ts, spec in s.pending_updates.values():
        assert m_ts > ts, "a scheduled market update was skipped"
    for m in range(s.n_markets):
        assert not (s.mk[m].paused_until and ts >= s.mk[m].paused_until), \
            "a pause's end was skipped"
        assert not funding.due(s, m), "a funding boundary was skipped"
        assert not (s.mk[m].liq_pending and s.margin), "a waiting liquidation pass was skipped"
    return 0


cdef int _pass_time(State s, int64_t ts) except -1:
    """_advance's work once the clock (now `ts`) reached State.wake."""
    cdef int32_t m
    if s.gtd_of and s.gtd[0][0] <= ts:        # gtd_of: a dict, sized in C
        entry.expire_due(s)
    if s.pending_updates:
        lifecycle.due_updates(s)
    for m in range(s.n_markets):
        if s.mk[m].paused_until and ts >= s.mk[m].paused_until:
            if s.mk[m].status == POST_ONLY:
                lifecycle.end_pause(s, m)
            s.mk[m].paused_until = 0
        if s.mk[m].status == HALTED and funding.due(s, m):
            funding.skip_boundaries(s, m)       # no funding accrues while halted
        while funding.due(s, m):
            funding.apply_boundary(s, m)
            if s.margin:
                liquidation.run(s, m, False)
        if s.mk[m].liq_pending and s.margin:
            liquidation.resume(s, m)
    rewake(s)
    return 0


cdef class Engine:
    """The deterministic state machine. One command in, its events out, in `seq` order.

    * `execute(cmd)`: one command Struct (engine.messages) -> a list of event Structs.
    * `execute_batch(data, fmt)`: encoded commands (JSON Lines or msgpack) -> encoded events.
    * `execute_many(items, fmt)`: decoded commands -> encoded events.
    * `route(cmd)`: one command Struct -> its events' bytes and an index row per event (the
      server's way in).

    All run the same code; the batch paths skip building a Python object per event.
    """

    def __cinit__(self, bint margin=True):
        self.s = State(margin)
        self.record_events = True
        self._recorded = True

    # ---- public API ------------------------------------------------------------------------

    cpdef list execute(self, object cmd):
        """Apply one command; return its events as Structs. O(1) + O(fills) for an order."""
        cdef State s = self.s
        cdef int64_t first = s.seq
        events.begin_structs(s)
        try:
            self._dispatch(cmd)
        except BaseException:
            events.drop_structs(s)
            raise
        return events.take_structs(s, first)

    def route(self, object cmd):
        """Apply one command; return (data, rows): its events as msgpack bytes, one after the
        other in `seq` order (the bytes `execute_many` writes), and one index row per event,
        in the same order, saying where the event is and what a router needs of it (who it
        names, its order, its level), so that a server routes replies, private streams and a
        public feed without building an event object. A row is a tuple (kind, start, end,
        account, ...): `kind` one of ROUTE's values, data[start:end] the event, `account` the
        account it names (None: none); a fill's row also locates the two sides' own views
        of it, written after it. Each kind's row: docs/engine-api.md, "Routing a command's
        events". O(1) + O(events)."""
        cdef State s = self.s
        events.begin_route(s)
        try:
            self._dispatch(cmd)
        except BaseException:
            events.drop_rows(s)
            raise
        return events.take_route(s)

    def execute_batch(self, data, str fmt="msgpack", out=None):
        """Apply a buffer of encoded commands; return the encoded events.

        `fmt` is the input format, `msgpack` (a stream of maps) or `jsonl`; `out` the output
        format (default: the same). What cannot be decoded is answered with `invalid_command`.
        msgpack takes the fast path (no Python object per plain order or cancel).
        """
        cdef Py_ssize_t used = 0
        cdef int64_t count = 0
        if fmt == "msgpack":
            # One pass: the complete objects are applied as they are framed; from the first that
            # is truncated or starts with a bad byte, the framer says what is wrong.
            head = self._run_msgpack(data, 1, 0, out or fmt, &used, &count)
            if used == len(data):
                return head
            framer = MsgpackFramer(count, used)
            frames, first, offset, bad = framer.split(memoryview(data)[used:].tobytes())
            bad.extend(framer.close())
            if frames:
                head += self.execute_msgpack(frames, first, offset, out or fmt)
            return head + self.execute_many(bad, out or fmt) if bad else head
        reader = CommandReader(fmt)
        items = reader.feed(data)
        items.extend(reader.close())
        return self.execute_many(items, out or fmt)

    def execute_many(self, list items, str fmt="msgpack", list rejected=None):
        """Apply decoded commands (and Malformed items) in order; return the encoded events.

        `fmt` is the output format. No Python object is made per event: the core writes bytes
        as it matches. `rejected` (a list): the index in `items` of each command that was
        rejected is appended to it, in order.
        """
        cdef object cmd
        cdef int64_t before = self.s.n_commands
        cdef Py_ssize_t start = len(rejected) if rejected is not None else 0
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {show(fmt)}: expected one of {', '.join(FORMATS)}")
        events.begin_output(self.s, FMT_JSON if fmt == "jsonl" else FMT_MSGPACK, False)
        events.log_rejections(self.s, rejected)
        try:
            for cmd in items:
                self._dispatch(cmd)
        finally:
            events.log_rejections(self.s, None)
        _indices(rejected, start, before)
        return events.take_output(self.s, 0, False)

    def execute_msgpack(self, data, int first=1, Py_ssize_t offset=0, str out="msgpack",
                        list rejected=None):
        """Apply a buffer of complete msgpack commands (as MsgpackFramer.split gives them);
        return the encoded events. `first` and `offset` number the objects in rejections.
        `rejected` (a list): the index in `data` (0 its first object) of each command that was
        rejected is appended to it, in order."""
        cdef Py_ssize_t used = 0
        cdef int64_t count = 0, before = self.s.n_commands
        cdef Py_ssize_t start = len(rejected) if rejected is not None else 0
        events.log_rejections(self.s, rejected)
        try:
            result = self._run_msgpack(data, first, offset, out, &used, &count)
        finally:
            events.log_rejections(self.s, None)
        if used != len(data):
            raise ValueError("execute_msgpack takes complete objects (see MsgpackFramer)")
        _indices(rejected, start, before)
        return result

    cdef bytes _run_msgpack(self, data, int64_t first, Py_ssize_t offset, str out,
                            Py_ssize_t* used, int64_t* count):
        """Apply the msgpack commands of `data` up to the first object that is truncated or
        starts with a bad byte; `used` is where it stopped, `count` the objects applied. O(n)."""
        cdef const unsigned char[::1] view = data
        cdef Py_ssize_t n = view.shape[0], i = 0, j
        cdef const unsigned char* p
        cdef int64_t k = first
        cdef int kind
        cdef FastCmd fc
        cdef State s = self.s
        events.begin_output(s, FMT_JSON if out == "jsonl" else FMT_MSGPACK, False)
        if n == 0:
            return events.take_output(s, 0, False)
        p = &view[0]
        while i < n:
            kind = fastpath.read(s, p + i, n - i, &fc)
            if kind != FAST_NONE and not funding.jump_fits(s, fc.ts):
                kind = FAST_NONE                  # the msgspec path refuses it, saying why
            if kind != FAST_NONE:
                j = i + fc.end                    # the fast path framed it as it read it
            else:
                try:
                    j = skip_object(p, i, n, 0)
                except ValueError:
                    j = -1
                if j < 0:
                    break
            if kind == FAST_NEW_ORDER:
                s.n_commands += 1
                _advance(s, fc.ts)
                entry.place(s, &fc.order)
            elif kind == FAST_CANCEL or kind == FAST_AMEND:
                s.n_commands += 1
                _advance(s, fc.ts)
                if not (s.pool.o[fc.slot].live and s.pool.o[fc.slot].oid == fc.oid):
                    self._apply(decode_msgpack(bytes(view[i:j]),   # gone while the clock
                                               f"object {k} at byte {offset + i}: "))  # moved
                elif kind == FAST_CANCEL:
                    cancel_order(s, fc.slot, V_USER)
                else:                             # its fields as the command named them
                    entry.amend_fields(s, s.account_keys[s.pool.o[fc.slot].account],
                                       s.market_names[s.pool.o[fc.slot].market],
                                       cid_obj(s, fc.slot), fc.price or None, fc.qty or None)
            else:
                self._dispatch(decode_msgpack(bytes(view[i:j]),
                                              f"object {k} at byte {offset + i}: "))
            k += 1
            i = j
        used[0] = i
        count[0] = k - 1
        return events.take_output(s, 0, False)

    # ---- the per-command API: one call per order or cancel, no Python object per event ------

    def new_order(self, account, str market, cid, str side, qty, price=None, str kind="limit",
                  str tif="gtc", int64_t ts=0, bint reduce_only=False, str stp="cancel_maker",
                  trigger_price=None, expire_ts=None):
        """Place one order, as the `new_order` command with these fields would; return the
        number of fills it made. Each fill is in `fills` (price, qty, taker oid, maker oid) until
        the next call; `last_reason` is the rejection's reason (None if accepted); with
        `record_events` on, every event of the call is in `last_events()`. A field the contract
        refuses is rejected, as for the command. O(1) + O(fills)."""
        cdef State s = self._call(True)
        try:
            if not _call_fields(s, "new_order", ts, account, cid):
                return 0
            _advance(s, ts)
            entry.order_fields(s, account, market, cid, side, kind, qty, price, trigger_price,
                               tif, reduce_only, stp, expire_ts)
        except (KeyError, TypeError, ValueError, OverflowError):
            events.reject(s, "new_order", Reason.INVALID_COMMAND,
                          "side, kind, tif or stp is not one of the contract's names, or the "
                          "account or cid is not an integer or a string")
        finally:
            events.close_call(s)
        return s.out.n_logged

    def cancel(self, account, str market, cid, int64_t ts=0):
        """Cancel one open order, as the `cancel` command would; return True when it was
        cancelled (False: rejected, `last_reason` says why). O(1)."""
        cdef State s = self._call(False)
        cdef int64_t before
        try:
            if not _call_fields(s, "cancel", ts, account, cid):
                return False
            _advance(s, ts)
            before = s.pool.n_live
            entry.cancel_fields(s, account, market, cid)
            return s.pool.n_live < before
        finally:
            events.close_call(s)

    def amend(self, account, str market, cid, price=None, qty=None, int64_t ts=0):
        """Amend one open order, as the `amend` command would (None: unchanged); return the
        number of fills its re-entry made (`fills`), 0 when it kept its place or was rejected
        (`last_reason`). O(1) + O(fills)."""
        cdef State s = self._call(True)
        try:
            if not _call_fields(s, "amend", ts, account, cid):
                return 0
            _advance(s, ts)
            entry.amend_fields(s, account, market, cid, price, qty)
        finally:
            events.close_call(s)
        return s.out.n_logged

    # ---- the handle calls: integer handles and codes, the fills returned ----------------------

    def account_handle(self, account):
        """The integer handle of an account some command has named (a deposit makes one), for
        `place`, `cancel_order` and `amend_order`; KeyError for an account the engine has not
        seen. Handles never change. O(1)."""
        cdef int32_t a = self.s.account_ids.get(account, -1)
        if a < 0:
            raise KeyError(f"account {account!r} has no record yet: a deposit (or any command "
                           f"naming it) makes one")
        return a

    def market_handle(self, str market):
        """The integer handle of a market, for the handle calls; KeyError if there is none.
        O(1)."""
        cdef int32_t m = self.s.market_ids.get(market, -1)
        if m < 0:
            raise KeyError(no_market(market))
        return m

    @cython.binding(False)
    def place(self, int32_t account, int32_t market, int64_t cid, int side, int64_t qty,
              int64_t price=0, int kind=0, int tif=0, int64_t ts=0, int flags=0,
              int64_t trigger_price=0, int64_t expire_ts=0):
        """Place one order, as `new_order` would, from handles and codes (docs/engine-api.md:
        side 0 buy / 1 sell; kind and tif their place in engine.messages.ORDER_KINDS and TIFS;
        flags bit 0 reduce-only, bits 1-2 the stp mode; 0 for a price, trigger price or expiry
        not given). Returns (oid, fills): the order's oid, 0 if it was rejected (`last_reason`
        says why), and every fill the call made, in order, as (price, qty, maker cid, taker
        cid) tuples. O(1) + O(fills)."""
        return _place(self, account, market, cid, side, qty, price, kind, tif, ts, flags,
                      trigger_price, expire_ts)

    @cython.binding(False)
    def cancel_order(self, int32_t account, int32_t market, int64_t cid, int64_t ts=0):
        """Cancel one open order, as `cancel` would, from handles; True when it was cancelled
        (False: rejected, `last_reason` says why). O(1)."""
        return _cancel_order(self, account, market, cid, ts)

    @cython.binding(False)
    def amend_order(self, int32_t account, int32_t market, int64_t cid, int64_t price=0,
                    int64_t qty=0, int64_t ts=0):
        """Amend one open order, as `amend` would, from handles (0: unchanged); the fills its
        re-entry made, as `place` returns them (empty when it kept its place or was rejected:
        `last_reason`). O(1) + O(fills)."""
        return _amend_order(self, account, market, cid, price, qty, ts)

    # ---- the binary batch path: fixed-size records in and out -------------------------------

    def execute_records(self, commands, bytearray results=None, bytearray fills=None):
        """Run `commands`, a buffer of 64-byte command records (docs/engine-api.md, "The binary
        batch path": new_order, cancel and amend by handles and codes), in order, as the
        commands would run. Returns (results, fills), two bytearrays (the caller's, resized and
        overwritten, when given): `results` one int64 a command, a new_order's oid or a cancel's
        or amend's 1, or -1 - the reason's code (its place in messages.REASONS) when it was
        rejected; `fills` a 64-byte fill record for every fill, in order. The events are
        numbered as the commands' would be, and not written. O(commands + fills)."""
        cdef const unsigned char[::1] view = commands
        cdef Py_ssize_t n = view.shape[0] // RECORD, k
        cdef State s = self.s
        cdef const CommandRecord* c
        cdef int64_t* out
        cdef int64_t first, before, n_fills = 0
        if view.shape[0] % RECORD:
            raise ValueError(f"commands must be whole {RECORD}-byte records: "
                             f"{view.shape[0]} bytes is not")
        if results is None:
            results = bytearray()
        if fills is None:
            fills = bytearray()
        PyByteArray_Resize(results, n * 8)
        PyByteArray_Resize(fills, 0)
        out = <int64_t*>PyByteArray_AS_STRING(results)
        if self.record_events:
            events.begin_output(s, FMT_MSGPACK, True)
        self._first = s.seq
        self._recorded = False
        events.open_call(s, True, True)
        try:
            for k in range(n):
                c = <const CommandRecord*>(&view[0] + k * RECORD)
                events.open_call(s, True, True)
                s.n_commands += 1
                first = s.next_oid
                before = s.pool.n_live
                if c.type == REC_NEW_ORDER:
                    if _handles(s, "new_order", c.account, c.market, c.ts):
                        _advance(s, c.ts)
                        entry.place_handles(s, c.account, c.market, c.cid, c.side, c.kind,
                                            c.tif, c.flags, c.qty, c.price, c.trigger_price,
                                            c.expire_ts)
                    out[k] = first if s.next_oid > first else 0
                elif c.type == REC_CANCEL:
                    if _handles(s, "cancel", c.account, c.market, c.ts):
                        _advance(s, c.ts)
                        entry.cancel_handles(s, c.account, c.market, c.cid)
                    out[k] = s.pool.n_live < before
                elif c.type == REC_AMEND:
                    if _handles(s, "amend", c.account, c.market, c.ts):
                        _advance(s, c.ts)
                        entry.amend_handles(s, c.account, c.market, c.cid, c.price, c.qty)
                    out[k] = s.out.last_reason is None
                else:
                    events.reject(s, "record", Reason.INVALID_COMMAND,
                                  f"record {k} has type {c.type}: 1 new_order, 2 cancel, 3 amend")
                    out[k] = 0
                if s.out.last_reason is not None:
                    out[k] = -1 - _REASON_CODE[s.out.last_reason]
                if s.out.n_logged:
                    n_fills = _fill_records(s, fills, n_fills, k)
                    out = <int64_t*>PyByteArray_AS_STRING(results)
        finally:
            events.close_call(s)
        return results, fills

    cdef inline State _call(self, bint log_fills):
        """Open a per-command call: its events are numbered from here, and encoded only with
        `record_events` on (quiet otherwise); `log_fills`: its fills are kept for the caller."""
        cdef State s = self.s
        if self.record_events:
            events.begin_output(s, FMT_MSGPACK, True)
        self._first = s.seq
        self._recorded = self.record_events
        events.open_call(s, not self.record_events, log_fills)
        s.n_commands += 1
        return s

    @property
    def fills(self):
        """The fills of the last `new_order` call: a read-only memoryview of int64 rows
        (price, qty, taker oid, maker oid), shape (n, 4). Its own copy: it outlives the call
        and the engine. O(fills)."""
        cdef State s = self.s
        cdef int32_t i
        cdef int64_t* row
        if s.out.n_logged == 0:
            return _NO_FILLS
        raw = PyBytes_FromStringAndSize(NULL, s.out.n_logged * 4 * sizeof(int64_t))
        row = <int64_t*>PyBytes_AS_STRING(raw)
        for i in range(s.out.n_logged):
            memcpy(row + 4 * i, &s.out.fill_log[i], 4 * sizeof(int64_t))
        return memoryview(raw).cast("q", (s.out.n_logged, 4))

    @property
    def last_reason(self):
        """The reason code of the last per-command call's rejection; None if it was accepted
        (for `cancel`: if the order was cancelled)."""
        return self.s.out.last_reason

    def last_events(self):
        """The events of the last `new_order` or `cancel` call, as Structs (made on request).
        Needs `record_events` on during that call: the events of a quiet call were numbered,
        not written."""
        if not self._recorded:
            raise ValueError("the last call ran with record_events off: its events were not "
                             "written (set Engine.record_events = True to keep them)")
        return _decode_events(events.take_output(self.s, self._first, True))

    # ---- snapshots (engine.snapshot) --------------------------------------------------------

    def snapshot(self):
        """The whole state as bytes, for `Engine.from_snapshot` of the same build.
        O(orders + positions + accounts)."""
        return snapshot.dump(self.s)

    @staticmethod
    def from_snapshot(data):
        """An engine in the state `snapshot()` wrote: the same state hash, seq, clock, next oid
        and counters. Raises ValueError for bytes that are no snapshot of this build."""
        cdef Engine eng
        try:
            margin = msgspec.msgpack.decode(data)["margin"]
        except (msgspec.DecodeError, TypeError, KeyError, IndexError) as e:
            raise ValueError(f"snapshot: not a perpdex snapshot ({e})") from None
        eng = Engine(bool(margin))
        snapshot.load(eng.s, bytes(data))
        return eng

    # ---- views (engine.reports) ------------------------------------------------------------

    def state(self):
        """The complete state in canonical form (docs/state-hash.md). O(orders + positions)."""
        return _reports.state(self.s)

    def book(self, str market, int depth=5):
        """The best `depth` levels a side: {"bids": [[price, qty], ...], "asks": [...]}, best
        first. O(depth)."""
        return _reports.book(self.s, market, depth)

    def position(self, account, str market):
        """(size in lots, cost in quote units) of an account in a market; (0, 0) if none."""
        return _reports.position(self.s, account, market)

    def check_integrity(self):
        """Raise AssertionError if any index disagrees with the books. O(orders)."""
        return _reports.check_integrity(self.s)

    def risk_violations(self, str market):
        """Scopes with a position in `market` left liquidatable, or with a margin-call flag that
        disagrees with their equity (for tests). O(positions)."""
        return _reports.risk_violations(self.s, market)

    def market_names(self):
        return list(self.s.market_ids)

    def market_status(self, str market):
        """A market's status: active, post_only, reduce_only, halted or settled (lifecycle)."""
        return _STATUS_NAMES[self.s.mk[self.s.market_ids[market]].status]

    def prices(self, str market):
        """A market's last index and mark, in ticks: (index, mark), (None, None) before its
        first oracle price; KeyError for a market there is not. O(1)."""
        cdef MarketC* mk = &self.s.mk[self.s.market_ids[market]]
        return (mk.index, mk.mark) if mk.has_mark else (None, None)

    @property
    def specs(self):
        """The MarketSpec of each market, by market id."""
        return self.s.specs

    @property
    def clock(self):
        return self.s.clock

    @property
    def seq(self):
        return self.s.seq

    @property
    def next_oid(self):
        return self.s.next_oid

    @property
    def n_commands(self):
        return self.s.n_commands

    @property
    def n_fills(self):
        return self.s.n_fills

    def work(self):
        """Counts of the liquidation machinery's work since this engine was made (not kept in
        snapshots): `scopes_looked_at` by passes and resumed passes, `adl_ranked` positions
        ranked for auto-deleveraging; and the size of the risk index now, `risk_entries`
        (every heap entry, superseded ones included) against `risk_current`. The bounds of
        docs/limits.md are tested on these."""
        cdef int32_t m
        cdef KeyHeap h
        cdef int64_t entries = 0, current = 0
        for m in range(self.s.n_markets):
            for h in (self.s.risk_long[m], self.s.risk_short[m]):
                entries += h.n
                current += h.n_current
        return {"scopes_looked_at": self.s.n_looked, "adl_ranked": self.s.n_ranked,
                "risk_entries": entries, "risk_current": current}

    @property
    def margin(self):
        return self.s.margin

    @property
    def checks(self):
        """Whether this build checks the engine's own invariants as it runs (the debug build:
        PERPDEX_DEBUG=1, `make debug-test`)."""
        return CHECKS

    @property
    def deposits(self):
        return self.s.deposits

    @property
    def withdrawals(self):
        return self.s.withdrawals

    @property
    def fees(self):
        return self.s.fees

    # ---- dispatch --------------------------------------------------------------------------

    cdef int _dispatch(self, object cmd) except -1:
        cdef object t = type(cmd)
        cdef bint order = t is NewOrder or t is Cancel or t is Amend
        self.s.n_commands += 1
        if not order:                   # it may move any scope's margin: before and after it
            margin_moved(self.s)
        try:
            return self._apply(cmd)
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
            # A Struct built by hand skips msgspec's validation, and its bad field surfaces here,
            # as the fields are read, before any state changes. Validate it now to say which.
            try:
                msgspec.convert(msgspec.to_builtins(cmd), type(cmd))
            except (msgspec.ValidationError, TypeError) as e:
                tag = getattr(getattr(type(cmd), "__struct_config__", None), "tag", None)
                return events.reject(self.s, tag if type(tag) is str else None,
                                     Reason.INVALID_COMMAND, str(e))
            return self._failed(cmd)
        except (RecursionError, MemoryError, ArithmeticError, IndexError):
            return self._failed(cmd)
        finally:
            if not order:
                margin_moved(self.s)

    cdef int _failed(self, object cmd) except -1:
        """The last guard: a command that raised is answered, never thrown out of the engine.
        Every command validates before it changes anything, so reaching here is a bug; say so
        plainly rather than stop a replay."""
        return events.reject(self.s, None, Reason.INVALID_COMMAND,
                             f"the engine could not apply this {type(cmd).__name__}")

    cdef int _apply(self, object cmd) except -1:
        cdef object t = type(cmd)
        cdef State s = self.s
        cdef tuple f
        if t is NewOrder or t is Cancel or t is Amend:
            f = _astuple(cmd)
            if _in_bounds(f[len(f) - 1], f[0], f[2], f[1]):
                return self._order_command(t, f)
        elif t is Malformed:
            return events.reject(s, cmd.command, Reason.INVALID_COMMAND, cmd.detail,
                                 cmd.account, cmd.market, cmd.cid)
        if not PyObject_TypeCheck(cmd, <PyTypeObject*>_Command):
            return events.reject(s, None, Reason.INVALID_COMMAND,
                                 f"expected a command, got {type(cmd).__name__}")
        if not _fields_in_bounds(cmd):
            # A Struct built by hand skips msgspec's validation: say what the decoder would.
            try:
                msgspec.convert(msgspec.to_builtins(cmd), t)
            except (msgspec.ValidationError, TypeError) as e:
                return events.reject(s, cmd.__struct_config__.tag, Reason.INVALID_COMMAND,
                                     str(e))
        if not funding.jump_fits(s, cmd.ts):
            return events.reject(s, cmd.__struct_config__.tag, Reason.INVALID_COMMAND,
                                 _too_far(cmd.ts))
        _advance(s, cmd.ts)
        if t is NewOrder:
            return entry.new_order(s, cmd)
        if t is Cancel:
            return entry.cancel(s, cmd)
        if t is Amend:
            return entry.amend(s, cmd)
        if t is Oracle:
            return self._oracle(cmd)
        if t is CancelAll:
            return entry.cancel_all(s, cmd)
        if t is CreateMarket:
            return self._create_market(cmd)
        if t is StateHash:
            return reports.state_hash(s)
        if t is Clock:
            return 0
        if t is Deposit:
            return accounts.deposit(s, cmd)
        if t is Withdraw:
            return accounts.withdraw(s, cmd)
        if t is SetLeverage:
            return accounts.set_leverage(s, cmd)
        if t is QueryAccount:
            return reports.query_account(s, cmd.account)
        if t is SetMarginMode:
            return accounts.set_margin_mode(s, cmd)
        if t is TransferMargin:
            return accounts.transfer_margin(s, cmd)
        if t is Audit:
            return reports.audit(s)
        if t is SetMarketStatus:
            return lifecycle.set_market_status(s, cmd)
        if t is SettleMarket:
            return lifecycle.settle_market(s, cmd)
        if t is UpdateMarket:
            return lifecycle.update_market(s, cmd)
        return events.reject(s, None, Reason.INVALID_COMMAND,
                             f"{type(cmd).__name__} is not a command of the contract")

    cdef int _order_command(self, object t, tuple f) except -1:
        """new_order, cancel or amend from its fields in order (`f`, already in bounds)."""
        cdef State s = self.s
        cdef int64_t ts = f[len(f) - 1]
        if not funding.jump_fits(s, ts):
            return events.reject(s, t.__struct_config__.tag, Reason.INVALID_COMMAND,
                                 _too_far(ts))
        _advance(s, ts)
        if t is NewOrder:
            return entry.order_fields(s, f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8],
                                      f[9], f[10], f[11])
        if t is Cancel:
            return entry.cancel_fields(s, f[0], f[1], f[2])
        return entry.amend_fields(s, f[0], f[1], f[2], f[3], f[4])

    # ---- time ------------------------------------------------------------------------------

    # ---- markets and prices ----------------------------------------------------------------

    cdef int _create_market(self, object cmd) except -1:
        if cmd.market in self.s.market_ids:
            return events.reject(self.s, "create_market", Reason.MARKET_EXISTS,
                                 f"market {cmd.market} already exists", None, cmd.market)
        try:
            spec = market_spec(cmd)
        except MarketConfigError as e:
            return events.reject(self.s, "create_market", Reason.INVALID_MARKET, str(e), None,
                                 cmd.market)
        add_market(self.s, spec)
        return 0

    cdef int _oracle(self, object cmd) except -1:
        """A new index price: the mark becomes median(index, best bid, best ask) (a missing side
        counts as the index); then premiums are sampled, triggers fire, liquidations run."""
        cdef State s = self.s
        cdef int32_t m = s.market_ids.get(cmd.market, -1)
        cdef MarketC* mk
        cdef Book b
        cdef int64_t idx, bid, ask, lo, hi
        if m < 0:
            return events.reject(s, "oracle", Reason.UNKNOWN_MARKET, no_market(cmd.market), None,
                                 cmd.market)
        mk = &s.mk[m]
        if mk.status == SETTLED:
            return events.reject(s, "oracle", Reason.MARKET_SETTLED,
                                 f"{cmd.market} is settled: it takes no more prices", None,
                                 cmd.market)
        idx = positive(cmd.price, mk.max_price)
        if idx == 0:
            return events.reject(s, "oracle", Reason.INVALID_PRICE,
                                 bad_price("price", cmd.price, mk.max_price), None, cmd.market)
        if mk.n_sources or cmd.source is not None:
            idx = oracle.source_price(s, m, cmd.source, idx)    # the sources' median, or -1
            if idx < 0:
                return 0
        mk.last_oracle_ts = s.clock
        if mk.status == HALTED and mk.has_mark:
            # Halted: the index is kept, the mark stays where trading stopped, nothing else
            # runs; lifting the halt takes the mark from this index (engine.lifecycle).
            mk.index = idx
            return events.mark(s, m)
        if lifecycle.too_fast(mk, idx):
            lifecycle.pause(s, m)                  # the velocity guard: post_only for a while
        set_mark(s, m, idx)
        funding.start(s, m)
        events.mark(s, m)
        funding.sample_premium(s, m)
        entry.fire_triggers(s, m)
        if s.margin:
            liquidation.run(s, m, True)
        return 0
