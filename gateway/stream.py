"""The private stream on the client's side: `Chain` checks each item against the account's hash
chain (docs/protocol.md, "Hash chains"; the step is gateway/chain.py's), and `FillLog` keeps
every fill seen, by order, so that a client awaits an order's fills without a race."""
from __future__ import annotations

from collections import OrderedDict

import msgspec

from .chain import START, step
from .errors import ChainError
from .replies import own_sides


class Chain:
    """Checks one hash chain: each item's `hash` must be `chain.step` of the previous hash and
    the item's event bytes (msgpack, as sent). `head` is the hash after the last item checked;
    None: trust the first item's hash (a public subscriber that joined midway)."""

    next = staticmethod(step)

    def __init__(self, head: bytes | None = START, pseq: int | None = None):
        self.head = head
        self.pseq = pseq

    def check(self, event: bytes, claimed: bytes, pseq: int | None = None) -> None:
        """Take one item (its event's bytes and the hash it carries); ChainError if it does not
        follow. O(len(event))."""
        if pseq is not None and self.pseq is not None and pseq != self.pseq + 1:
            raise ChainError(f"pseq {pseq} after {self.pseq}: items are missing")
        if self.head is not None and step(self.head, event) != claimed:
            raise ChainError(f"the hash of the event at pseq {pseq} does not follow from the "
                             f"one before: this is not the history the engine produced")
        self.head = claimed
        if pseq is not None:
            self.pseq = pseq

    def check_item(self, item: dict) -> None:
        """A private-stream item as the Client decodes it (its event re-encoded: msgspec writes
        the bytes the server sent). A `suspended` notice carries no event and is skipped."""
        if "event" in item:
            self.check(msgspec.msgpack.encode(item["event"]), item["hash"], item["pseq"])


class FillLog:
    """Every fill this client has seen, by (account, market, cid) of each side, from its replies
    and its private stream, so that an order's fills can be awaited whether they arrived before
    or after the call. Keeps the last `orders` orders' fills."""

    def __init__(self, orders: int = 8192):
        self.orders = orders
        self.by_order: OrderedDict = OrderedDict()

    def add(self, e: dict) -> bool:
        if e.get("type") != "fill":
            return False
        for o in own_sides(e):
            key = (o["account"], o["market"], o["cid"])
            got = self.by_order.get(key)
            if got is None:
                got = self.by_order[key] = []
                while len(self.by_order) > self.orders:
                    self.by_order.popitem(last=False)
            if all(f["seq"] != o["seq"] for f in got):
                got.append(o)
        return True

    def of(self, me, market: str, cid) -> list[dict]:
        return list(self.by_order.get((me, market, cid), ()))
