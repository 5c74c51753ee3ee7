"""The venue's own records: what a restart and a follower need besides the engine. Each
account's retry cache and private stream (pseq, resume buffer, chain head), the dead-man's
switches and the public feed (its topics' seq and chain heads). One object (`Records`),
written by the server as it serves and by recovery and replication as they apply the journal's
records; `snapshot()` is what a snapshot holds of it.
"""
from __future__ import annotations

from .feed import Feed
from .logfile import COMMAND, DEADLINE, REPLY, decode
from .streams import RetryBooks, Streams, row_views


class Records:
    """The records of one venue. `feed` is None until `attach` gives it an engine."""

    def __init__(self, limits, accounts, encode):
        self.retries = RetryBooks(limits.retry_window, limits.retry_bytes)
        self.streams = Streams(limits.stream_buffer, accounts)
        self.deadlines: dict[str, int] = {}     # account -> schedule_cancel time (ns)
        self.encode = encode
        self.feed: Feed | None = None

    def attach(self, engine) -> None:
        """A new public feed over `engine`'s books (its topics start again)."""
        self.feed = Feed(engine, self.encode)

    def clear(self) -> None:
        """Nothing kept: a follower that starts the log again from its beginning."""
        for kept in (self.retries, self.streams, self.deadlines):
            kept.clear()

    def snapshot(self) -> dict:
        """The records as a snapshot holds them: the kept replies (oldest first), each private
        stream's pseq, resume buffer and chain head, the dead-man's switches and the public
        chain heads. O(kept items)."""
        return {
            "retries": {a: [[rid, r.replies[rid]] for rid in r.order]
                        for a, r in self.retries.items()},
            "streams": {a: [st.pseq, list(st.buffer), st.head]
                        for a, st in self.streams.items()},
            "deadlines": dict(self.deadlines),
            "public": self.feed.chains() if self.feed is not None else {},
        }

    def restore(self, g: dict) -> None:
        """The records a snapshot held (`snapshot()`); the feed's chains go on from its own (an
        attached feed's). An older snapshot's "sim_index" (the simulated oracle's prices, when
        it ran inside the server) is ignored. O(kept items)."""
        self.retries.clear()
        for account, kept in g.get("retries", {}).items():
            r = self.retries.of(account)
            for rid, data in kept:
                r.add(rid, data)
        self.streams.clear()
        for account, (pseq, items, head) in g.get("streams", {}).items():
            st = self.streams.of(account)
            st.pseq = pseq
            st.buffer.extend(items)
            st.head = head
        self.deadlines.clear()
        self.deadlines.update(g.get("deadlines", {}))
        if self.feed is not None:
            self.feed.restore_chains(g.get("public", {}))

    def apply(self, engine, kind: int, payload: bytes, out: list | None = None) -> None:
        """One journal record, as serving made it: a command through `engine` and, with `out`
        (where subscribers' items go), its events to the private streams and the feed; a kept
        reply; a dead-man's switch. O(the command)."""
        if kind == COMMAND:
            cmd = decode(kind, payload)
            if out is None:
                engine.execute_many([cmd])
            else:
                self.route(*engine.route(cmd), out)
        elif kind == REPLY:
            rep = decode(kind, payload)
            self.retries.of(rep.account).add(rep.req_id, rep.data)
        elif kind == DEADLINE:
            d = decode(kind, payload)
            if d.at is None:
                self.deadlines.pop(d.account, None)
            else:
                self.deadlines[d.account] = d.at

    def route(self, data: bytes, rows: list, out: list) -> None:
        """A command's events (Engine.route's bytes and index rows) to the feed and the private
        streams, as the server routes them (what a reply holds aside). O(events *
        subscribers)."""
        feed, push = self.feed.row, self.streams.push
        for row in rows:
            feed(data, row)
            views = row_views(data, row)
            if views:
                push(views, out)
