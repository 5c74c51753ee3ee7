"""The server's role: what makes a server plain or replicated, held by the server (`role`) and
called at fixed points of its life and loop. `Writer` is the plain one: the server writes its
own journal (or the Durability it was given). The replicated one is gateway/replicated.py's
`Replicated`; gateway/server.py picks one from the configuration.

A role's interface (`Role`): `writer` and `poll_ms` (read by the loop), `start(server)` once
at boot (the engine recovered or booted; what to say), and then, between loop turns,
`between()`, `maybe_snapshot()`; `refuse(cls)` before a command runs; `health_facts()`,
`threads()` for `health`; `ask_snapshot()` (SIGUSR1); `close()` last. What a role may use of
the server is its public face (gateway/dispatch.py, "What a role may use"): `cfg`, `seq`,
`records`, `engine`, `use(engine)`, `boot()`, `flush()`, `outputs()`, `drop_turns()`.
"""
from __future__ import annotations

from typing import Protocol

from . import boot, snapshots
from .journal import Journal
from .recovery import recover


class Role(Protocol):
    writer: bool            # runs commands now (its own timers, cancel-on-disconnect included)
    poll_ms: int            # the loop's longest wait for requests (0: its tick)

    def start(self, server) -> str | None:
        """Once, at boot: the engine recovered or booted; what to say of it (None: nothing)."""
        ...

    def between(self) -> None: ...
    def refuse(self, cls) -> str | None: ...
    def maybe_snapshot(self) -> None: ...
    def ask_snapshot(self) -> None: ...
    def health_facts(self) -> dict: ...
    def threads(self) -> dict: ...
    def close(self) -> None: ...


class Writer:
    """The plain server's role: with the journal (`[journal] enabled`, and no Durability given
    to the server: `journaled`), the data folder recovered or booted, and snapshots every
    `snapshot_every` commands or when asked; otherwise a boot and nothing kept."""

    writer = True
    poll_ms = 0

    def __init__(self, journaled: bool = True):
        self.journaled = journaled
        self.server = None
        self.snapshot_at = 0                # engine commands at the last snapshot
        self.snapshot_asked = False

    def start(self, server) -> str | None:
        """Recover the data folder, or boot it when it is new (a folder that holds a venue is
        checked against the configuration: gateway/boot.py `against`). What was recovered."""
        self.server = server
        cfg = server.cfg
        journaled = self.journaled and cfg.journal.enabled
        existing = journaled and boot.holds_a_venue(cfg.data_dir)
        if not journaled:
            server.boot()
            return None
        r = recover(cfg, server.records, server.engine)
        server.use(r.engine)
        seq = server.seq
        seq.durability = r.journal
        seq.notes = True
        seq.last = max(seq.last, r.engine.clock)
        self.snapshot_at = r.engine.n_commands
        if not r.new:
            said = r.said
            if existing:                    # a venue's folder: it is that venue
                said = "\n".join([said, *boot.against(cfg, r.engine, r.journal)])
            return said
        server.boot()
        if r.journal.seq == 0:          # nothing configured: the boot is still a turn of its own
            r.journal.append([])
            r.journal.sync()
        return (f"perpdex: a new data folder {cfg.data_dir}: the journal starts "
                f"(fsync {cfg.journal.fsync}); {len(cfg.markets)} markets and "
                f"{sum(1 for a in cfg.accounts.values() if a.deposit)} deposits booted")

    def between(self) -> None:
        pass

    def refuse(self, cls) -> str | None:
        return None

    def maybe_snapshot(self) -> None:
        """Between turns: a snapshot every `snapshot_every` commands, or when asked (SIGUSR1)."""
        if type(self.server.seq.durability) is Journal and (self.snapshot_asked
                                                            or self.snapshot_due()):
            self.snapshot_asked = False
            self.take_snapshot()

    def ask_snapshot(self) -> None:
        self.snapshot_asked = True

    def snapshot_due(self) -> bool:
        s = self.server
        return snapshots.due(s.cfg.journal.snapshot_every, s.engine, self.snapshot_at,
                             s.seq.durability)

    def take_snapshot(self):
        """A snapshot of the engine and the records now (gateway/snapshots.py `take`): its
        path, or None when it could not be written."""
        s = self.server
        path = snapshots.take(s.cfg, s.engine, s.records, s.seq.durability)
        if path is not None:
            self.snapshot_at = s.engine.n_commands
        return path

    def health_facts(self) -> dict:
        return {}

    def threads(self) -> dict:
        return {}

    def close(self) -> None:
        pass
