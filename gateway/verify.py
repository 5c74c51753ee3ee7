"""`perpdex verify DATA_DIR`: replay a data folder's journal from scratch and hold the state
hash to every snapshot and to what recovery gives, the public feed's hash chains and the
private streams' heads included (docs/operations.md). Changes nothing.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import msgspec

from perpdex.engine import Engine

from . import journal as J
from .chain import START as CHAIN_START, step as _chain
from .feed import Feed
from .streams import private_views


def verify(data_dir: Path, out=sys.stdout, err=sys.stderr) -> int:
    """Replay the journal of `data_dir` from scratch (or from the oldest snapshot it continues,
    when covered segments were deleted); compare the state hash at each snapshot's seq with the
    snapshot's stored hash and with the engine it restores, and at the end with the state that
    recovery gives; check that the journal reaches every seq known durable (the newest
    snapshot's, `durable-seq`'s). Changes nothing. 0: every check matches; 1: a mismatch, a
    corrupt journal or snapshot, missing segments; 2: no journal. O(journal) + O(state) per
    snapshot."""
    jdir, sdir = data_dir / "journal", data_dir / "snapshots"
    w, fail = out.write, err.write
    if not jdir.is_dir():
        fail(f"perpdex verify: {data_dir}: no journal folder (is it a data folder?)\n")
        return 2
    failures = 0
    snaps = []
    for path in J.snapshots(sdir):
        try:
            snaps.append((path, J.read_snapshot(path)))
        except J.JournalError as e:
            fail(f"  snapshot {path.name}: CORRUPT: {e}\n")
            failures += 1
    try:
        recs, scan = J.read_all(jdir)
    except J.JournalError as e:
        fail(f"  journal: CORRUPT: {e}\n")
        fail("perpdex verify: FAILED (the journal is corrupt)\n")
        return 1
    cut = sum(c[2] for c in scan.cut)
    w(f"perpdex verify {data_dir}: journal {len(J.segments(jdir))} segments, records "
      f"{scan.first:,}..{scan.last:,}, {scan.commands:,} commands"
      + (f"; a torn tail of {cut} bytes (recovery cuts it)" if cut else "") + "\n")
    end = J.journal_end(jdir, scan, snaps[-1][1].seq if snaps else 0)
    first = scan.first or end + 1
    try:
        hole = J.missing(data_dir, scan, snaps[-1] if snaps else None)
        mark = J.read_mark(data_dir / J.MARK)
    except J.JournalError as e:
        hole, mark = str(e), 0
    if hole is not None:
        fail(f"  {hole}: MISSING\n")
        failures += 1
    elif mark:
        w(f"  durable seq {mark:,} (DATA/{J.MARK}): ok (the journal ends at seq {end:,})\n")
    else:
        w(f"  durable seq: no DATA/{J.MARK} (a data folder from before it): not checked\n")
    start = 0
    eng = Engine()
    if first > 1:
        base = [(p, s) for p, s in snaps if s.seq >= first - 1]
        if not base:
            fail(f"  journal starts at seq {first} and no snapshot covers the records before "
              f"it: cannot replay from scratch\n")
            fail("perpdex verify: FAILED\n")
            return 1
        path, s = base[0]
        eng = Engine.from_snapshot(s.engine)
        start = s.seq
        w(f"  the segments before seq {first} were deleted: replaying from snapshot "
          f"{path.name} (seq {s.seq})\n")
    at = {s.seq: (p, s) for p, s in snaps}
    decode = J.decode

    def check(label, want, got):
        nonlocal failures
        ok = want == got
        failures += not ok
        if ok:
            w(f"  {label}: ok ({want})\n")
        else:
            fail(f"  {label}: MISMATCH (replay {want}, {got})\n")

    streams = Streams(_accounts(data_dir)) if start == 0 else None
    public = Feed(eng, msgspec.msgpack.Encoder().encode) if start == 0 else None
    boot = start == 0
    for seq, kind, payload in recs:
        if seq <= start:
            continue
        if kind == J.COMMAND:
            events = eng.execute(decode(kind, payload))
            if streams is not None and not boot:
                streams.route(events)
                for ev in events:
                    public.event(ev)
        elif kind == J.TURN:
            boot = False
            if public is not None:
                public.flush()
        if kind == J.TURN and seq in at:
            path, s = at[seq]
            if streams is not None:
                kept = {a: (v[0], v[2]) for a, v in s.gateway.get("streams", {}).items()}
                mine = streams.heads()
                for a in set(kept) - set(mine):     # a stream with no event yet
                    mine[a] = (0, streams.start)
                check(f"snapshot {path.name}, private streams' pseq and hash chains",
                      _short(mine), _short(kept))
                if "public" in s.gateway:           # (snapshots from before it have none)
                    check(f"snapshot {path.name}, public topics' seq and hash chains",
                          _short_public(public.chains()), _short_public(s.gateway["public"]))
            h = J.state_hash(eng)
            check(f"snapshot {path.name} (seq {s.seq:,}, {s.commands:,} commands), stored hash",
                  h, s.state_hash)
            try:
                restored = J.state_hash(Engine.from_snapshot(s.engine))
            except ValueError as e:
                restored = f"unrestorable: {e}"
            check(f"snapshot {path.name}, restored engine", h, restored)
    final = J.state_hash(eng)
    for path, s in [x for x in snaps if x[1].seq > end][:-1]:     # the newest: `hole` above
        fail(f"  snapshot {path.name}: covers seq {s.seq:,}, beyond the journal's {end:,}: "
          f"MISMATCH\n")
        failures += 1
    newest = [(p, s) for p, s in snaps if s.seq <= end]
    if newest:
        path, s = newest[-1]
        try:
            rec = J.engine_from_snapshot(s.engine)
        except ValueError as e:
            rec = None
            fail(f"  recovered: snapshot {path.name} cannot be restored ({e})\n")
            failures += 1
        if rec is not None:
            for seq, kind, payload in recs:
                if seq > s.seq and kind == J.COMMAND:
                    rec.execute(decode(kind, payload))
            check(f"recovered state (snapshot {path.name} + the journal after it), "
                  f"against the replay from scratch", final, J.state_hash(rec))
    else:
        w(f"  recovered state (the journal alone, no snapshot): ok ({final})\n")
    verdict = f"FAILED ({failures} mismatches)" if failures else "ok"
    (fail if failures else w)(f"perpdex verify: {verdict}: state hash {final} at seq {end:,}\n")
    return 1 if failures else 0


class Streams:
    """The private streams' pseq and hash-chain heads, from the events alone, as the server
    routes them (gateway/server.py `_route`): each event to each of its accounts that the
    configuration names, the events of the boot turn to none. O(events)."""

    def __init__(self, accounts: set | None):
        self.accounts, self.views, self.chain = accounts, private_views, _chain
        self.start = CHAIN_START
        self.state: dict = {}
        self.encode = msgspec.msgpack.Encoder().encode

    def route(self, events) -> None:
        for ev in events:
            for account, data in self.views(ev, self.encode):
                if self.accounts is not None and account not in self.accounts:
                    continue
                pseq, head = self.state.get(account, (0, self.start))
                self.state[account] = (pseq + 1, self.chain(head, data))

    def heads(self) -> dict:
        return dict(self.state)


def _accounts(data_dir: Path) -> set | None:
    """The accounts the server admits (data_dir/authorized/NAME.key), or None if unknown."""
    d = data_dir / "authorized"
    return {p.name[:-4] for p in d.glob("*.key")} if d.is_dir() else None


def _short_public(chains: dict) -> str:
    """A digest of {market: {kind: [seq, hash]}} (Feed.chains) to print."""
    text = repr(sorted((m, k, seq, bytes(h).hex()) for m, topics in chains.items()
                       for k, (seq, h) in topics.items()))
    n = sum(len(t) for t in chains.values())
    return f"{n} topics, {hashlib.blake2b(text.encode(), digest_size=8).hexdigest()}"


def _short(heads: dict) -> str:
    """A digest of {account: (pseq, head)} to print: equal heads give equal text."""
    text = repr(sorted((str(a), p, bytes(h).hex()) for a, (p, h) in heads.items()))
    return f"{len(heads)} streams, {hashlib.blake2b(text.encode(), digest_size=8).hexdigest()}"
