"""The paths the suite measures: the plain book, perpdex through each entry point, the reference
engine, and (bench/peers.py) engines from PyPI. Each runs a Workload (bench/workloads.py) from
the same starting book and reports the fills it made, so the suite can check, for every path,
that it did the same matching work as the plain book.

A path gives two things:
  build(wl)   a fresh instance with the setup applied (not timed) -> Prepared(run, fills): `run()`
              is the timed loop over every operation; `fills()` the fills it made, as
              (price, qty, maker id, taker id) tuples in order (decoding, where needed, is not
              timed)
  single(wl)  for the latency pass: (step, items) on another fresh instance; `step(item)` does
              one operation and is timed call by call
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Callable

import msgspec

CHUNK = 4096                                  # commands per execute_batch / execute_many call


@dataclass
class Prepared:
    run: Callable[[], None]
    fills: Callable[[], list]


@dataclass
class Path:
    name: str
    label: str                                # what it is, for the table's notes
    build: Callable
    single: Callable
    notes: dict = field(default_factory=dict)  # workload or kind -> what the path cannot do
    baseline: bool = False
    kinds: Callable | None = None             # wl -> the kind of each latency item, if not
                                              # the workload's own


# ---- decoding perpdex's output (not timed) ---------------------------------------------------

def fills_of_msgpack(chunks) -> list:
    from perpdex.engine.wire import msgpack_frames
    out = []
    dec = msgspec.msgpack.Decoder()
    for data in chunks:
        if not data:
            continue
        ends, error = msgpack_frames(data)
        assert error is None, error
        start = 0
        for end in ends:
            ev = dec.decode(data[start:end])
            start = end
            if ev["type"] == "fill":
                out.append((ev["price"], ev["qty"], ev["maker_cid"], ev["taker_cid"]))
    return out


def fills_of_jsonl(chunks) -> list:
    out = []
    dec = msgspec.json.Decoder()
    for data in chunks:
        for line in data.splitlines():
            if b'"fill"' in line:
                ev = dec.decode(line)
                if ev["type"] == "fill":
                    out.append((ev["price"], ev["qty"], ev["maker_cid"], ev["taker_cid"]))
    return out


# ---- the plain book --------------------------------------------------------------------------

def _plain_build(wl):
    book = wl.fresh_plain()
    calls = wl.plain_calls(book)

    def run():
        for f, a in calls:
            f(*a)
    return Prepared(run, lambda: list(book.fills))


def _plain_single(wl):
    book = wl.fresh_plain()

    def step(fa):
        fa[0](*fa[1])
    return step, wl.plain_calls(book)


PLAIN = Path("plain book", "bench/plain_book.py: SortedDict of price -> deque, dict id -> order, "
             "fills as tuples; no events, no margin", _plain_build, _plain_single, baseline=True)


# ---- perpdex ---------------------------------------------------------------------------------

def _execute_build(wl, margin=True, cmds=None):
    from perpdex.engine import messages as M
    Fill = M.Fill
    eng = wl.fresh_engine(margin)
    cmds = wl.commands() if cmds is None else cmds
    fills = []

    def run():
        ex, keep = eng.execute, fills.append
        for c in cmds:
            for ev in ex(c):
                if type(ev) is Fill:
                    keep((ev.price, ev.qty, ev.maker_cid, ev.taker_cid))
    return Prepared(run, lambda: fills)


def _execute_single(wl):
    from perpdex.engine import messages as M
    Fill = M.Fill
    ex = wl.fresh_engine().execute
    fills = []
    keep = fills.append

    def step(c):
        for ev in ex(c):
            if type(ev) is Fill:
                keep((ev.price, ev.qty, ev.maker_cid, ev.taker_cid))
    return step, wl.commands()


NEW, AMEND, OTHER = 1, 2, 0          # what a per-command call is: it takes an oid, it may fill


def _api_calls(eng, cmds):
    """The workload as calls of the per-command API, (NEW, AMEND or OTHER, the call, its
    args): Engine.new_order / Engine.amend / Engine.cancel (anything else as execute(Struct))."""
    from perpdex.engine import messages as M
    calls = []
    for c in cmds:
        t = type(c)
        if t is M.NewOrder:
            calls.append((NEW, eng.new_order, (c.account, c.market, c.cid, c.side, c.qty,
                                                c.price, c.kind, c.tif, c.ts)))
        elif t is M.Cancel:
            calls.append((OTHER, eng.cancel, (c.account, c.market, c.cid, c.ts)))
        elif t is M.Amend:
            calls.append((AMEND, eng.amend, (c.account, c.market, c.cid, c.price, c.qty, c.ts)))
        else:
            calls.append((OTHER, eng.execute, (c,)))
    return calls


def _api_engine(wl, record):
    eng = wl.fresh_engine()
    eng.record_events = record
    return eng


def _api_build(wl, record=False):
    """The per-command API, each call's fills read (as lists) from Engine.fills; the oid each
    order takes is noted, to name the fills by cid afterwards (not timed). `record`: the
    calls also encode their events (Engine.record_events), for last_events()."""
    from perpdex.engine import messages as M
    eng = _api_engine(wl, record)
    calls = _api_calls(eng, wl.commands())
    rows, placed = [], []

    def run():
        keep, note = rows.append, placed.append
        for what, f, a in calls:
            if what == NEW:
                note((eng.next_oid, a[2]))
            if f(*a) and what:
                keep(eng.fills.tolist())

    def fills():
        cid, oid = {}, 1
        for c in wl.setup_commands():                       # the setup's orders took 1, 2, ...
            if type(c) is M.NewOrder:
                cid[oid] = c.cid
                oid += 1
        cid.update(placed)
        return [(price, qty, cid[maker], cid[taker])
                for group in rows for price, qty, taker, maker in group]
    return Prepared(run, fills)


def _api_single(wl, record=False):
    eng = _api_engine(wl, record)

    def step(call):
        what, f, a = call
        if f(*a) and what:
            eng.fills.tolist()
    return step, _api_calls(eng, wl.commands())


def _handle_calls(eng, cmds):
    """The workload as handle calls (Engine.place / cancel_order / amend_order): accounts and
    the market by handle, side, kind and tif as codes, every argument made before the timed
    loop. (NEW, AMEND or OTHER, the call, its args)."""
    from perpdex.engine import messages as M
    mh = eng.market_handle(cmds[0].market)
    sides, kinds, tifs = M.SIDES.index, M.ORDER_KINDS.index, M.TIFS.index
    calls = []
    for c in cmds:
        a = eng.account_handle(c.account)
        if type(c) is M.NewOrder:
            calls.append((NEW, eng.place, (a, mh, c.cid, sides(c.side), c.qty, c.price or 0,
                                          kinds(c.kind), tifs(c.tif), c.ts)))
        elif type(c) is M.Cancel:
            calls.append((OTHER, eng.cancel_order, (a, mh, c.cid, c.ts)))
        else:
            calls.append((AMEND, eng.amend_order, (a, mh, c.cid, c.price or 0, c.qty or 0, c.ts)))
    return calls


def _handles_build(wl):
    """The handle calls, each call's fills kept as it returns them (no other read)."""
    eng = _api_engine(wl, False)
    calls = _handle_calls(eng, wl.commands())
    rows = []

    def run():
        keep = rows.append
        for what, f, a in calls:
            out = f(*a)
            if what == NEW:
                keep(out[1])
            elif what:
                keep(out)
    return Prepared(run, lambda: [r for group in rows for r in group])


def _handles_single(wl):
    eng = _api_engine(wl, False)

    def step(call):
        call[1](*call[2])
    return step, _handle_calls(eng, wl.commands())


def _records_of(eng, cmds) -> list[bytes]:
    """The workload as 64-byte command records (docs/engine-api.md), CHUNK to a buffer."""
    import struct
    rec = struct.Struct("<BBBBB3xiiqqqqqq")
    calls = _handle_calls(eng, cmds)
    out = []
    for what, _, a in calls:
        if what == NEW:
            acct, m, cid, side, qty, price, kind, tif, ts = a
            out.append(rec.pack(1, side, kind, tif, 0, acct, m, cid, price, qty, 0, ts, 0))
        elif what == AMEND:
            acct, m, cid, price, qty, ts = a
            out.append(rec.pack(3, 0, 0, 0, 0, acct, m, cid, price, qty, 0, ts, 0))
        else:
            acct, m, cid, ts = a
            out.append(rec.pack(2, 0, 0, 0, 0, acct, m, cid, 0, 0, 0, ts, 0))
    return [b"".join(out[i:i + CHUNK]) for i in range(0, len(out), CHUNK)]


def _fills_of_records(chunks) -> list:
    import struct
    fill = struct.Struct("<qqqqqqqq")
    return [(price, qty, maker, taker) for data in chunks
            for _, price, qty, maker, taker, *_ in fill.iter_unpack(data)]


def _records_build(wl):
    """execute_records over CHUNK records a call, the results into one reused bytearray, each
    chunk's fill records kept as the engine returns them."""
    eng = _api_engine(wl, False)
    chunks = _records_of(eng, wl.commands())
    outs = []

    def run():
        ex, keep, results = eng.execute_records, outs.append, bytearray()
        for data in chunks:
            keep(ex(data, results)[1])
    return Prepared(run, lambda: _fills_of_records(outs))


def _records_single(wl):
    eng = _api_engine(wl, False)
    ex, results, fills = eng.execute_records, bytearray(), bytearray()
    items = [data[i:i + 64] for data in _records_of(eng, wl.commands())
             for i in range(0, len(data), 64)]

    def step(rec):
        ex(rec, results, fills)
    return step, items


def _marks_build(wl):
    return _execute_build(wl, cmds=wl.commands_with_marks()[0])


def _marks_single(wl):
    step, _ = _execute_single(wl)
    return step, wl.commands_with_marks()[0]


def _many_build(wl):
    eng = wl.fresh_engine()
    cmds = wl.commands()
    chunks = [cmds[i:i + CHUNK] for i in range(0, len(cmds), CHUNK)]
    outs = []

    def run():
        em, keep = eng.execute_many, outs.append
        for chunk in chunks:
            keep(em(chunk, "msgpack"))
    return Prepared(run, lambda: fills_of_msgpack(outs))


def _many_read_build(wl):
    """execute_many, and the fills read from the returned bytes into tuples, in the timed loop:
    what a Python caller of the batch path pays to see its fills. The events of a chunk are
    framed (engine.wire.msgpack_frames) and decoded as one msgpack array of event Structs."""
    from perpdex.engine import messages as M
    from perpdex.engine.wire import msgpack_frames
    Fill = M.Fill
    dec = msgspec.msgpack.Decoder(list[M.AnyEvent])
    eng = wl.fresh_engine()
    cmds = wl.commands()
    chunks = [cmds[i:i + CHUNK] for i in range(0, len(cmds), CHUNK)]
    fills = []

    def run():
        em, keep = eng.execute_many, fills.append
        for chunk in chunks:
            out = em(chunk, "msgpack")
            n = len(msgpack_frames(out)[0])
            for ev in dec.decode(b"\xdd" + n.to_bytes(4, "big") + out):
                if type(ev) is Fill:
                    keep((ev.price, ev.qty, ev.maker_cid, ev.taker_cid))
    return Prepared(run, lambda: fills)


def _many_single(wl):
    em = wl.fresh_engine().execute_many
    return (lambda c: em([c], "msgpack")), wl.commands()


def _batch_build(wl, margin=True):
    eng = wl.fresh_engine(margin)
    mp = wl.msgpack()
    chunks = [b"".join(mp[i:i + CHUNK]) for i in range(0, len(mp), CHUNK)]
    outs = []

    def run():
        eb, keep = eng.execute_batch, outs.append
        for chunk in chunks:
            keep(eb(chunk, "msgpack"))
    return Prepared(run, lambda: fills_of_msgpack(outs))


def _batch_single(wl, fmt="msgpack"):
    eb = wl.fresh_engine().execute_batch
    return (lambda b: eb(b, fmt)), (wl.msgpack() if fmt == "msgpack" else wl.jsonl())


class _Sink:
    def __init__(self):
        self.chunks = []

    def write(self, b):
        self.chunks.append(b)

    def flush(self):
        pass


def _replay_build(wl, fmt):
    from perpdex.gateway.replay import replay_stream
    eng = wl.fresh_engine()
    data = b"".join(wl.msgpack() if fmt == "msgpack" else wl.jsonl())
    sink = _Sink()

    def run():
        replay_stream(io.BytesIO(data), sink, fmt, fmt, engine=eng)
    decode = fills_of_msgpack if fmt == "msgpack" else fills_of_jsonl
    return Prepared(run, lambda: decode([b"".join(sink.chunks)]))


EXECUTE = Path("perpdex execute", "Engine.execute(Struct) per command, margin on; a list of "
               "event Structs back, fills read from it", _execute_build, _execute_single)
API = Path("perpdex new_order/cancel", "the per-command API: Engine.new_order / Engine.cancel "
           "per command, margin on, record_events off (events numbered, not encoded); each "
           "call's fills read from Engine.fills (an amend through execute)", _api_build,
           _api_single)
API_EVENTS = Path("perpdex new_order/cancel, events kept", "as perpdex new_order/cancel, with "
                  "record_events on: every call also encodes its events for last_events()",
                  lambda wl: _api_build(wl, True), lambda wl: _api_single(wl, True))
HANDLES = Path("perpdex place/cancel_order", "the handle calls: Engine.place / cancel_order / "
               "amend_order per command, accounts and market by integer handle, codes for side, "
               "kind and tif, margin on, record_events off; each call returns its oid and fills",
               _handles_build, _handles_single)
RECORDS = Path("perpdex execute_records", f"the binary batch path: Engine.execute_records("
               f"{CHUNK:,} 64-byte command records a call), margin on; a result a command and a "
               "64-byte record a fill back (one record alone for latency)", _records_build,
               _records_single)
MARKS = Path("perpdex execute, with marks", "as perpdex execute, plus an `oracle` (mark update: "
             "risk pass, premium sample, triggers) every 500 operations, in its time; perpdex "
             "only: the plain book has no marks", _marks_build, _marks_single,
             kinds=lambda wl: wl.commands_with_marks()[1])
MANY = Path("perpdex execute_many", f"Engine.execute_many(list of {CHUNK:,} Structs), margin on; "
            "msgpack event bytes back (one command alone for latency)", _many_build, _many_single)
MANY_READ = Path("perpdex execute_many, fills read", "as perpdex execute_many, and in its time "
                 "the events decoded from the bytes (as Structs) and the fills read from them",
                 _many_read_build, None)
BATCH = Path("perpdex execute_batch", f"Engine.execute_batch(msgpack chunk of {CHUNK:,} "
             "commands), margin on; msgpack event bytes back (one command alone for latency)",
             _batch_build, _batch_single)
BATCH_NO_MARGIN = Path("perpdex execute_batch, margin off", "the same on Engine(margin=False): "
                       "what the margin checks cost", lambda wl: _batch_build(wl, False), None)
REPLAY_MSGPACK = Path("replay msgpack", "as `perpdex replay --quiet`: msgpack bytes in 1 MiB "
                      "chunks -> msgpack events (one command alone for latency)",
                      lambda wl: _replay_build(wl, "msgpack"), _batch_single)
REPLAY_JSONL = Path("replay jsonl", "as `perpdex replay --quiet`: JSON Lines in 1 MiB chunks "
                    "-> JSON Lines events (one command alone for latency)",
                    lambda wl: _replay_build(wl, "jsonl"), lambda wl: _batch_single(wl, "jsonl"))


# ---- the reference engine --------------------------------------------------------------------

def _reference(wl):
    from .reference import ReferenceEngine
    ref = ReferenceEngine()
    for c in wl.setup_commands():
        ref.execute(c)
    return ref


def _reference_build(wl):
    ref = _reference(wl)
    cmds = wl.commands()
    fills = []

    def run():
        ex, keep = ref.execute, fills.append
        for c in cmds:
            for ev in ex(c):
                if ev["type"] == "fill":
                    keep((ev["price"], ev["qty"], ev["maker_cid"], ev["taker_cid"]))
    return Prepared(run, lambda: fills)


def _reference_single(wl):
    ex = _reference(wl).execute
    return ex, wl.commands()


REFERENCE = Path("reference engine", "bench/reference.py: the whole contract (accounts, money, "
                 "events as dicts) in Python; not the baseline", _reference_build,
                 _reference_single)

CORE = [PLAIN, HANDLES, RECORDS, API, API_EVENTS, EXECUTE, MARKS, MANY, MANY_READ, BATCH, BATCH_NO_MARGIN, REFERENCE]
REPLAY = [PLAIN, REPLAY_MSGPACK, REPLAY_JSONL]
