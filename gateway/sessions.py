"""Sessions: what the server knows of each connection (whose it is, when it last spoke, the
orders it placed, what it was sent), silence timers with cancel-on-disconnect, and the
dead-man's switch (`schedule_cancel`: the deadlines themselves are records, gateway/records.py).
"""
from __future__ import annotations

from collections import deque


class Session:
    """What the server knows of one connection: whose it is, when it last spoke, whether the
    orders it placed go when it falls silent (`orders`: oid -> (market, cid), those still open),
    the last stream item it was sent, whether its stream is suspended, and the bytes sent to it
    that may still be queued in this process (`queued()`)."""

    __slots__ = ("account", "last_seen", "cancel_on_disconnect", "orders", "delivered",
                 "suspended", "sent", "acked", "mark", "trackers", "spend", "counted")

    def __init__(self, account: str, now: int, spend: "Spend | None" = None):
        self.account = account
        self.last_seen = now
        self.cancel_on_disconnect = False
        self.orders: dict[int, tuple] = {}
        self.delivered = 0
        self.suspended = False
        self.sent = 0                       # bytes handed to ZeroMQ for this connection
        self.acked = 0                      # of which ZeroMQ is known to be done with
        self.mark = 0                       # `sent` at the last tracked message
        self.trackers: deque = deque()      # (MessageTracker, `sent` after it), oldest first
        self.spend = spend if spend is not None else Spend()    # its account's, shared
        self.counted = 0                    # what `spend.total` holds of this connection
        self.spend.sessions.add(self)

    def recount(self) -> int:
        """`queued()`, and the account's total brought up to date with it."""
        q = self.queued()
        self.spend.total += q - self.counted
        self.counted = q
        return q

    def end(self) -> None:
        self.spend.total -= self.counted
        self.counted = 0
        self.spend.sessions.discard(self)

    def queued(self) -> int:
        """Bytes sent to this connection that ZeroMQ may still hold: those after the newest
        tracked message it is done with (its pipe is first in, first out). O(trackers done)."""
        t = self.trackers
        while t and t[0][0].done:
            self.acked = t.popleft()[1]
        return self.sent - self.acked


class Spend:
    """The bytes all the connections of one account may still hold in this process: the sum
    of what each had queued when it was last sent to (`Session.recount`), so never less than
    now; `refresh` counts them all again. O(1), `refresh` O(the account's sessions)."""

    __slots__ = ("total", "sessions")

    def __init__(self):
        self.total = 0
        self.sessions: set = set()

    def refresh(self) -> int:
        for sess in self.sessions:
            sess.recount()
        return self.total


class Sessions(dict):
    """connection -> Session; the bytes each account's connections hold (`spends`) and the
    session that placed each open order (`owners`: oid -> Session)."""

    def __init__(self):
        super().__init__()
        self.spends: dict[str, Spend] = {}
        self.owners: dict[int, Session] = {}

    def open(self, identity: bytes, account: str, now: int) -> Session:
        """A session for the connection's first request. O(1)."""
        spend = self.spends.get(account)
        if spend is None:
            spend = self.spends[account] = Spend()
        sess = self[identity] = Session(account, now, spend)
        return sess

    def placed(self, sess: Session, oid: int, market: str, cid) -> None:
        sess.orders[oid] = (market, cid)
        self.owners[oid] = sess

    def closed(self, oid: int) -> None:
        """An order no longer open: no session cancels it any more. O(1)."""
        sess = self.owners.pop(oid, None)
        if sess is not None:
            sess.orders.pop(oid, None)

    def silent(self, now: int, timeout_ns: int) -> list:
        """The sessions silent for more than `timeout_ns`, ended and removed, with the orders
        they placed no longer theirs: [(connection, Session)]. O(sessions)."""
        gone = [(identity, sess) for identity, sess in self.items()
                if now - sess.last_seen > timeout_ns]
        for identity, sess in gone:
            del self[identity]
            sess.end()
            for oid in sess.orders:
                self.owners.pop(oid, None)
        return gone

    def forget_orders(self) -> None:
        """No session owns an order (a follower that starts the log again)."""
        self.owners.clear()
        for sess in self.values():
            sess.orders.clear()


def due(deadlines: dict, now: int) -> list:
    """The accounts whose dead-man's switch ran out by `now`, in order, removed from
    `deadlines`. O(deadlines)."""
    out = sorted(a for a, t in deadlines.items() if now >= t)
    for account in out:
        del deadlines[account]
    return out
