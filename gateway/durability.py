"""The one clock and the durability seam of the gateway.

`Sequencer` is where the wall clock is read, once per command, as the gateway stamps it: the
stamp never runs backwards, so the engine clock (`max(clock, ts)`) and the journal agree.
Every command the engine runs goes through `Sequencer.run`: the clients' and the server's own
(the configured markets and deposits at boot, the simulated oracle, cancel-on-disconnect, the
dead-man's switch), in the order they run.

`Durability` is what a journal implements (the durability issue). The server calls
`append(commands)` with the commands sequenced since the last call, in order, then `sync()`,
and only after `sync()` returns does any reply or event for them leave the process. Replaying
every appended command, in order, through a fresh `Engine` gives the same events, byte for byte
(the `ts` of each command is in it). `NoDurability` keeps nothing; `perpdex serve` plugs in
the journal (gateway/journal.py) unless `[journal] enabled = false`.

A Durability whose class sets `notes = True` (the journal) is also handed the gateway's own
records, in order among the commands: `Reply` (a reply kept for retries) and `Deadline` (a
dead-man's switch set, renewed, disarmed or run out). They are what a restart needs besides the
engine (docs/operations.md, "What survives a restart").
"""
from __future__ import annotations

import time
from typing import Protocol, Union

import msgspec

from perpdex.engine import Engine, messages as M


class Reply(msgspec.Struct, array_like=True):
    """A reply kept for retries: a req_id repeated after a restart gets these bytes again."""
    account: str
    req_id: Union[int, str]
    data: bytes


class Deadline(msgspec.Struct, array_like=True):
    """An account's dead-man's switch: the deadline (ns), or None once disarmed or run out."""
    account: str
    at: Union[int, None]


class StateHash(msgspec.Struct, array_like=True):
    """The writer's state hash after `commands` commands (docs/state-hash.md): a follower of the
    replicated log checks its own against it (gateway/replication.py)."""
    commands: int
    state_hash: str


class Takeover(msgspec.Struct, array_like=True):
    """A node became the one writer of the replicated log, at `ns` by its clock."""
    node: str
    ns: int


class Durability(Protocol):
    def append(self, commands: list[M.Command]) -> None:
        """Take the commands sequenced since the last call (cost: the journal's)."""

    def sync(self) -> None:
        """Return once everything appended is durable."""


class NoDurability:
    """Nothing is journaled: the seam with no journal behind it."""

    def append(self, commands: list[M.Command]) -> None:
        pass

    def sync(self) -> None:
        pass


class Sequencer:
    """Stamps commands with the gateway's clock and runs them through the engine, keeping the
    sequenced ones for `Durability`.

    `now()` is the only place the gateway reads the wall clock: ns since the epoch, never less
    than the last stamp given (a wall clock stepped back does not move time backwards)."""

    __slots__ = ("engine", "durability", "pending", "last", "n_commands", "notes")

    def __init__(self, engine: Engine, durability: Durability | None = None):
        self.engine = engine
        self.durability = durability if durability is not None else NoDurability()
        self.pending: list = []
        self.last = 0
        self.n_commands = 0
        self.notes = getattr(self.durability, "notes", False)

    def now(self) -> int:
        t = time.time_ns()
        if t < self.last:
            t = self.last
        self.last = t
        return t

    def run(self, cmd: M.Command) -> list:
        """Execute `cmd` (stamped already, see `stamp`) and keep it for `commit`. O(engine)."""
        events = self.engine.execute(cmd)
        self.pending.append(cmd)
        self.n_commands += 1
        return events

    def route(self, cmd: M.Command) -> tuple:
        """Execute `cmd` (stamped already) and keep it for `commit`: its events' bytes and
        index rows (Engine.route). O(engine)."""
        routed = self.engine.route(cmd)
        self.pending.append(cmd)
        self.n_commands += 1
        return routed

    def note(self, record) -> None:
        """Keep one of the gateway's own records (`Reply`, `Deadline`) for `commit`, in order,
        when the Durability takes them. O(1)."""
        if self.notes:
            self.pending.append(record)

    def stamp(self, cmd: M.Command) -> M.Command:
        """`cmd` with the current time as its `ts` (for commands built without one)."""
        return msgspec.structs.replace(cmd, ts=self.now())

    def write(self) -> None:
        """Hand what was sequenced to a pipelined Durability without waiting (the server holds
        the turn's messages until `durable(seq)`)."""
        if self.pending:
            batch, self.pending = self.pending, []
            self.durability.append(batch)

    def commit(self) -> None:
        """Hand what was sequenced to `Durability` and wait for it to be durable."""
        if self.pending:
            batch, self.pending = self.pending, []
            self.durability.append(batch)
            self.durability.sync()
