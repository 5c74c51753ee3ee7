# cython: language_level=3
"""Snapshots (see snapshot.pxd). O(orders + positions + accounts) both ways, mostly memcpy."""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memset
from libc.stdint cimport int64_t, int32_t, uint64_t

from .book cimport Book, OrderPool, Order, Level, CidEntry, CID_BYTES
from .state cimport (State, MarketC, PosC, AccountC, TierC, account, add_market, rewake)
from .triggers cimport arm
from .risk cimport index_restored

from decimal import Decimal

import msgspec

from .markets import MarketSpec, TierSpec

_encode = msgspec.msgpack.encode
_decode = msgspec.msgpack.decode

# What the raw parts depend on: a snapshot is read back only by a build with the same layout.
VERSION = 7                 # 2: MarketC.unsettled, the waiting-liquidation queues; 3: lifecycle;
                            # 4: gtd orders; 5: a multi-source index; 6: the open-addressed
                            # cid index (Order loses hnext, cid_hash and trigger_price);
                            # 7: the cid index's hash (a multiply-xorshift), its buckets
                            # by the tag, no tombstones


cdef list _layout():
    return [VERSION, sizeof(MarketC), sizeof(PosC), sizeof(AccountC), sizeof(Order),
            sizeof(Level), CID_BYTES]


cdef inline bytes _raw(const void* p, size_t n):
    return PyBytes_FromStringAndSize(<const char*>p, n)


cdef bytes _cid_text(OrderPool pool):
    """The pool's cid text as a snapshot holds it: each live order's string cid in its slot,
    zeros everywhere else (the text of a free slot or of an integer cid's slot is whatever
    was there, since the pool grows it without zeroing). O(pool capacity)."""
    cdef size_t n = <size_t>pool.cap * CID_BYTES
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef char* d = PyBytes_AS_STRING(out)
    cdef int32_t i
    memset(d, 0, n)
    for i in range(pool.cap):
        if pool.o[i].live and pool.o[i].cid_is_str:
            memcpy(d + <size_t>i * CID_BYTES, pool.cid_text + <size_t>i * CID_BYTES,
                   pool.o[i].cid_len)
    return out


cdef bytes _markets_raw(State s):
    """The markets' C part with each tiers pointer zeroed: an address is no part of the state
    (a restore keeps its own), and a snapshot is a function of the state alone. O(markets)."""
    cdef bytes out = _raw(s.mk, s.n_markets * sizeof(MarketC))
    cdef MarketC* mk = <MarketC*>PyBytes_AS_STRING(out)
    cdef int32_t m
    for m in range(s.n_markets):
        mk[m].tiers = NULL
    return out


cdef int _copy(bytes b, void* dst, size_t n, str what) except -1:
    if <size_t>PyBytes_GET_SIZE(b) != n:
        raise ValueError(f"snapshot: {what} has {PyBytes_GET_SIZE(b)} bytes, expected {n}")
    memcpy(dst, PyBytes_AS_STRING(b), n)
    return 0


cdef void* _grow(void* p, size_t n) except NULL:
    cdef void* q = realloc(p, n if n else 1)
    if q == NULL:
        raise MemoryError()
    return q


def _spec_record(spec):
    return {"name": spec.name, "tick_size": str(spec.tick_size), "lot_size": str(spec.lot_size),
            **{k: getattr(spec, k) for k in spec.__dataclass_fields__
               if k not in ("name", "tick_size", "lot_size", "tiers")},
            "tiers": [[t.max_notional, t.imf_ppm, t.mmf_ppm, t.imf_deduction, t.mmf_deduction]
                      for t in spec.tiers]}


def _spec(rec):
    rec = dict(rec)
    rec["tick_size"] = Decimal(rec["tick_size"])
    rec["lot_size"] = Decimal(rec["lot_size"])
    rec["tiers"] = tuple(TierSpec(*t) for t in rec["tiers"])
    rec["sources"] = tuple(tuple(x) for x in rec.get("sources", ()))
    return MarketSpec(**rec)


cdef bytes dump(State s):
    """The state as one msgpack document (see snapshot.pxd)."""
    cdef int32_t m
    cdef Book b
    cdef OrderPool pool = s.pool
    books = []
    for m in range(s.n_markets):
        b = s.books[m]
        books.append([b.lv_cap, b.lv_free, _raw(b.lv, b.lv_cap * sizeof(Level)),
                      [b.n[0], b.n[1]], [b.side_cap[0], b.side_cap[1]],
                      [_raw(b.slots[0], b.side_cap[0] * sizeof(int32_t)),
                       _raw(b.slots[1], b.side_cap[1] * sizeof(int32_t))],
                      [_raw(b.keys[0], b.side_cap[0] * sizeof(int64_t)),
                       _raw(b.keys[1], b.side_cap[1] * sizeof(int64_t))]])
    doc = {
        "layout": _layout(),
        "margin": s.margin,
        "scalars": [s.clock, s.seq, s.next_oid, s.n_commands, s.n_fills, s.deposits,
                    s.withdrawals, s.fees],
        "markets": [_spec_record(spec) for spec in s.specs],
        "market_c": _markets_raw(s),
        "accounts": list(s.account_keys),
        "account_c": _raw(s.ac, s.n_accounts * sizeof(AccountC)),
        "positions": _raw(s.pos, s.n_pos * sizeof(PosC)),
        "pool": [pool.cap, pool.free_head, pool.n_live, <uint64_t>pool.mask,
                 _raw(pool.o, pool.cap * sizeof(Order)), _cid_text(pool),
                 _raw(pool.cids, (pool.mask + 1) * sizeof(CidEntry)), pool.n_tombs, pool.acct_cap,
                 _raw(pool.acct_head, pool.acct_cap * sizeof(int32_t)),
                 _raw(pool.acct_tail, pool.acct_cap * sizeof(int32_t))],
        "books": books,
        "risk_called": [sorted(x) for x in s.risk_called],
        "liq_queue": [[list(x) for x in q] for q in s.liq_queue],
        "gtd": [list(k) for k in s.gtd],
        "triggers": sorted([i, t] for i, t in s.trigger_of.items()),
        "sources": [[m, [list(x) if x else None for x in said]]
                    for m, said in sorted(s.sources.items())],
        "pending_updates": [[m, ts, _spec_record(spec)]
                            for m, (ts, spec) in sorted(s.pending_updates.items())],
        "dirty": list(s.dirty),
    }
    return _encode(doc)


cdef int load(State s, bytes data) except -1:
    """Fill a new State from `dump`'s bytes. Raises ValueError for data of another layout."""
    cdef int32_t m, a, p, i, k, side, tok
    cdef TierC* tiers
    cdef Book b
    cdef OrderPool pool = s.pool
    cdef PosC* q
    try:
        doc = _decode(data)
        layout = doc["layout"]
    except (msgspec.DecodeError, TypeError, KeyError) as e:
        raise ValueError(f"snapshot: not a perpdex snapshot ({e})") from None
    if layout != _layout():
        raise ValueError(f"snapshot: written by a build of another layout ({layout}, this "
                         f"build {_layout()}); rebuild the state from the journal")
    if s.n_markets or s.n_accounts or bool(doc["margin"]) != s.margin:
        raise ValueError("snapshot: load into a new engine with the same margin setting")
    for rec in doc["markets"]:
        add_market(s, _spec(rec))
    for key in doc["accounts"]:
        account(s, key)
    # markets: the C fields as written, but the tiers and the name token of this build
    for m in range(s.n_markets):
        tiers = s.mk[m].tiers
        tok = s.mk[m].name_tok
        memcpy(&s.mk[m], PyBytes_AS_STRING(doc["market_c"]) + m * sizeof(MarketC),
               sizeof(MarketC))
        s.mk[m].tiers = tiers
        s.mk[m].name_tok = tok
    if <size_t>len(doc["market_c"]) != s.n_markets * sizeof(MarketC):
        raise ValueError("snapshot: the markets' part has the wrong size")
    for a in range(s.n_accounts):
        tok = s.ac[a].name_tok
        memcpy(&s.ac[a], PyBytes_AS_STRING(doc["account_c"]) + a * sizeof(AccountC),
               sizeof(AccountC))
        s.ac[a].name_tok = tok
    # positions, and the maps derived from them
    n_pos = len(doc["positions"]) // sizeof(PosC)
    if n_pos > s.pos_cap:
        s.pos = <PosC*>_grow(s.pos, n_pos * sizeof(PosC))
        s.pos_cap = n_pos
    _copy(doc["positions"], s.pos, n_pos * sizeof(PosC), "positions")
    s.n_pos = n_pos
    for p in range(s.n_pos):
        q = &s.pos[p]
        s.pos_of[q.market][q.account] = p
        s.market_pos[q.market].append(p)
        index_restored(s, p)
    # the order pool
    cap, free_head, n_live, mask, o, text, cids, n_tombs, acct_cap, heads, tails = doc["pool"]
    pool.o = <Order*>_grow(pool.o, cap * sizeof(Order))
    pool.cid_text = <char*>_grow(pool.cid_text, cap * CID_BYTES)
    pool.cap = cap
    _copy(o, pool.o, cap * sizeof(Order), "orders")
    _copy(text, pool.cid_text, cap * CID_BYTES, "cids")
    pool.cids = <CidEntry*>_grow(pool.cids, (mask + 1) * sizeof(CidEntry))
    pool.mask = mask
    pool.n_tombs = n_tombs
    _copy(cids, pool.cids, (mask + 1) * sizeof(CidEntry), "the cid index")
    pool.ensure_accounts(acct_cap)
    _copy(heads, pool.acct_head, acct_cap * sizeof(int32_t), "account order lists")
    _copy(tails, pool.acct_tail, acct_cap * sizeof(int32_t), "account order lists")
    pool.free_head = free_head
    pool.n_live = n_live
    # the books
    for m, rec in enumerate(doc["books"]):
        b = s.books[m]
        lv_cap, lv_free, lv, n, side_cap, slots, keys = rec
        b.lv = <Level*>_grow(b.lv, lv_cap * sizeof(Level))
        b.lv_cap = lv_cap
        _copy(lv, b.lv, lv_cap * sizeof(Level), "levels")
        b.lv_free = lv_free
        for side in range(2):
            b.slots[side] = <int32_t*>_grow(b.slots[side], side_cap[side] * sizeof(int32_t))
            b.keys[side] = <int64_t*>_grow(b.keys[side], side_cap[side] * sizeof(int64_t))
            b.side_cap[side] = side_cap[side]
            _copy(slots[side], b.slots[side], side_cap[side] * sizeof(int32_t), "level slots")
            _copy(keys[side], b.keys[side], side_cap[side] * sizeof(int64_t), "level keys")
            b.n[side] = n[side]
    # trigger orders waiting for their mark: the sorted lists are derived from the pool
    s.trigger_of.update({i: t for i, t in doc["triggers"]})
    for i in range(pool.cap):
        if pool.o[i].live and pool.o[i].armed:
            arm(s, i)
    for m, called in enumerate(doc["risk_called"]):
        s.risk_called[m].update(called)
    for m, queue in enumerate(doc["liq_queue"]):
        s.liq_queue[m] = [(a, iso) for a, iso in queue]
    for m, said in doc["sources"]:
        s.sources[m] = [tuple(x) if x else None for x in said]
    for expire, oid, i in doc["gtd"]:
        s.gtd.add((expire, oid, i))
        s.gtd_of[i] = expire
    for m, ts, rec in doc["pending_updates"]:
        s.pending_updates[m] = (ts, _spec(rec))
    s.dirty.extend(doc["dirty"])
    (s.clock, s.seq, s.next_oid, s.n_commands, s.n_fills, s.deposits, s.withdrawals,
     s.fees) = doc["scalars"]
    rewake(s)
    return 0
