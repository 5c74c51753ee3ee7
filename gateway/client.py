"""Clients for `perpdex serve` (docs/protocol.md): `Client` (synchronous) and `AsyncClient`
(asyncio), and `Units`, which turns Decimal prices and sizes into exact ticks and lots and back.

    c = Client("tcp://127.0.0.1:7701", server_key="perpdex-data/keys/server.key",
               secret_key="perpdex-data/keys/mm-1.key_secret")
    reply = c.request("new_order", market="BTC-PERP", cid=1, side="buy", kind="limit",
                      qty=10, price=649_000)
"""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from decimal import Decimal

import msgspec
import zmq
import zmq.asyncio
import zmq.auth


def curve_socket(ctx, kind: int, server_key: str, secret_key: str):
    """A socket of `kind` that speaks CURVE to the server, with this account's key pair."""
    sock = ctx.socket(kind)
    sock.linger = 0
    pub, sec = zmq.auth.load_certificate(secret_key)
    sock.curve_publickey = pub
    sock.curve_secretkey = sec
    sock.curve_serverkey = zmq.auth.load_certificate(server_key)[0]
    return sock


class Timeout(RuntimeError):
    """No reply in time (the server is down, or refused the key at the CURVE handshake)."""


CHAIN_START = bytes(16)


class ChainError(RuntimeError):
    """An event whose hash does not follow from the ones before it: this is not the history the
    engine produced (or an item is missing). docs/protocol.md, "Hash chains"."""


class Chain:
    """Checks one hash chain: each item's `hash` must be blake2b-128 over the previous hash and
    the item's event bytes (msgpack, as sent). `head` is the hash after the last item checked;
    None: trust the first item's hash (a public subscriber that joined midway)."""

    def __init__(self, head: bytes | None = CHAIN_START, pseq: int | None = None):
        self.head = head
        self.pseq = pseq

    @staticmethod
    def next(head: bytes, event: bytes) -> bytes:
        return hashlib.blake2b(head + event, digest_size=16).digest()

    def check(self, event: bytes, claimed: bytes, pseq: int | None = None) -> None:
        """Take one item (its event's bytes and the hash it carries); ChainError if it does not
        follow. O(len(event))."""
        if pseq is not None and self.pseq is not None and pseq != self.pseq + 1:
            raise ChainError(f"pseq {pseq} after {self.pseq}: items are missing")
        if self.head is not None and self.next(self.head, event) != claimed:
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

class Client:
    """The synchronous client. `endpoint` is one request endpoint, or the list of a replicated
    venue's nodes (docs/operations.md, "Replication"): then a request that gets no reply within
    `timeout_ms`, or `unavailable`, is sent again, the same bytes and req_id (a retry, answered
    once), to the next node, round and round for up to `failover_ms`; once a node answers, a
    subscribed private stream is resumed there from the last pseq received."""

    def __init__(self, endpoint: str | list[str], server_key: str, secret_key: str,
                 timeout_ms: int = 2000, context: zmq.Context | None = None,
                 failover_ms: int = 20_000):
        self.ctx = context or zmq.Context.instance()
        self.endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        self.at = 0                         # the node in use
        self.failover_ms = failover_ms
        self.failovers = 0
        self.keys = (server_key, secret_key)
        self.sock = self._connect()
        self.timeout_ms = timeout_ms
        # req_ids must not repeat within the server's retry window for the account (a repeat is
        # a retry and gets the first reply): number from the moment this client was made.
        self._ids = itertools.count(time.time_ns())
        self.pushed: list[dict] = []        # private-stream items that arrived between replies
        self.chain: Chain | None = None     # the private stream's, once subscribed

    def _connect(self):
        sock = curve_socket(self.ctx, zmq.DEALER, *self.keys)
        sock.connect(self.endpoints[self.at])
        return sock

    def send_raw(self, data: bytes) -> dict:
        if len(self.endpoints) == 1:
            self.sock.send(data)
            return self._receive()
        try:
            req_id = msgspec.msgpack.decode(data).get("req_id")
        except (msgspec.DecodeError, AttributeError):
            req_id = None
        return self._ask(data, req_id)

    def _ask(self, data: bytes, req_id) -> dict:
        """Send `data` and wait for its reply, failing over as the class says."""
        deadline = time.monotonic() + self.failover_ms / 1000
        tried = 0
        while True:
            self.sock.send(data)
            try:
                reply = self._receive(req_id)
            except Timeout:
                reply = None
            if reply is not None and reply.get("reason") != "unavailable":
                if tried and self.chain is not None:
                    self._resume()
                return reply
            if time.monotonic() >= deadline:
                if reply is not None:
                    return reply
                raise Timeout(f"no node answered within {self.failover_ms} ms")
            tried += 1
            if tried % len(self.endpoints) == 0:
                time.sleep(0.05)            # every node said no: a breath before the next round
            self.sock.close(linger=0)
            self.at = (self.at + 1) % len(self.endpoints)
            self.sock = self._connect()
            self.failovers += 1

    def _resume(self):
        """The private stream on the node now in use, from the last pseq received."""
        at = self.chain.pseq
        while True:                         # page by page (`more`: docs/protocol.md)
            reply = self._request_here("subscribe", resume_from=at)
            if not reply.get("ok"):
                raise RuntimeError(f"the private stream cannot resume on "
                                   f"{self.endpoints[self.at]}: {reply.get('reason')}: "
                                   f"{reply.get('detail')}")
            for item in reply["missed"]:
                self.pushed.append(self._item(item))
            if not reply.get("more"):
                break
            at = reply["pseq"]
        if self.chain.head is not None and self.chain.head != reply["hash"]:
            raise ChainError(f"the stream's hash at pseq {reply['pseq']} on "
                             f"{self.endpoints[self.at]} is not the one its items lead to")

    def subscribe(self, resume_from: int | None = None) -> dict:
        """Join this account's private stream (every connection of the account gets it)."""
        fields = {} if resume_from is None else {"resume_from": resume_from}
        reply = self.request("subscribe", **fields)
        if not reply.get("ok"):
            return reply
        if resume_from is None:
            self.chain = Chain(reply["hash"], reply["pseq"])
            return reply
        if self.chain is None or self.chain.pseq != resume_from:
            self.chain = Chain(None, resume_from)   # no history held up to there: trust the first
        for item in reply["missed"]:
            self._item(item)
        if self.chain.head is not None and self.chain.head != reply["hash"]:
            raise ChainError(f"the stream's hash at pseq {reply['pseq']} is not the one its "
                             f"items lead to")
        self.chain.head, self.chain.pseq = reply["hash"], reply["pseq"]
        if reply.get("more"):               # a page: ask again from where it got
            rest = self.subscribe(resume_from=reply["pseq"])
            if rest.get("ok"):
                rest["missed"] = reply["missed"] + rest["missed"]
            return rest
        return reply

    def _item(self, item: dict) -> dict:
        """Check a private-stream item against the chain (ChainError if it does not follow)."""
        if self.chain is not None:
            self.chain.check_item(item)
        return item

    def resume(self, item: dict) -> list[dict]:
        """After a `suspended` notice (this connection fell behind and left the stream; see
        docs/protocol.md, "Slow connections"): subscribe again from the notice's pseq and
        return what was missed, in order. A `resume_gap` reply raises RuntimeError."""
        reply = self.subscribe(resume_from=item["pseq"])
        if not reply["ok"]:
            raise RuntimeError(f"{reply['reason']}: {reply['detail']}")
        return reply["missed"]

    def drain(self) -> list[dict]:
        """Every private-stream item that has arrived (without waiting), in order."""
        while self.sock.poll(0):
            self.pushed.append(self._item(msgspec.msgpack.decode(self.sock.recv())))
        out, self.pushed = self.pushed, []
        return out

    def stream(self, n: int, timeout_ms: int | None = None) -> list[dict]:
        """The next `n` private-stream items, in order."""
        while len(self.pushed) < n:
            if not self.sock.poll(timeout_ms or self.timeout_ms):
                raise Timeout(f"{len(self.pushed)} of {n} stream items arrived")
            self.pushed.append(self._item(msgspec.msgpack.decode(self.sock.recv())))
        out, self.pushed = self.pushed[:n], self.pushed[n:]
        return out

    def request(self, type: str, **fields) -> dict:
        """Send one request; return its reply (`ok`, and `events` or `reason` and `detail`)."""
        req_id = next(self._ids)
        data = msgspec.msgpack.encode({"req_id": req_id, "type": type, **fields})
        if len(self.endpoints) > 1:
            return self._ask(data, req_id)
        self.sock.send(data)
        reply = self._receive()
        if reply.get("req_id") not in (req_id, None):
            raise RuntimeError(f"reply {reply.get('req_id')} to request {req_id}")
        return reply

    def request_retrying(self, type: str, **fields) -> dict:
        """`request`, sent again (the same req_id: answered once) while no reply comes or the
        reply is `unavailable`, to the next endpoint (the same one when there is one), for up
        to `failover_ms`; then the last reply, or Timeout."""
        req_id = next(self._ids)
        return self._ask(msgspec.msgpack.encode({"req_id": req_id, "type": type, **fields}),
                         req_id)

    def _request_here(self, type: str, **fields) -> dict:
        req_id = next(self._ids)
        self.sock.send(msgspec.msgpack.encode({"req_id": req_id, "type": type, **fields}))
        return self._receive(req_id)

    def _receive(self, req_id=None) -> dict:
        """The next reply (with `req_id`: the next reply to it; an earlier copy's is dropped)."""
        while True:
            if not self.sock.poll(self.timeout_ms):
                raise Timeout(f"no reply within {self.timeout_ms} ms")
            msg = msgspec.msgpack.decode(self.sock.recv())
            if isinstance(msg, dict) and msg.get("stream") == "private":
                self.pushed.append(self._item(msg))     # kept for stream(), in order
                continue
            if req_id is not None and isinstance(msg, dict) and msg.get("req_id") not in (
                    req_id, None):
                continue
            return msg

    def market_data(self, pub: str, markets, **kw):
        """A gateway.mirror.MarketData on the public feed at `pub`, with this client's keys and
        a book mirror of each of `markets` (snapshots through this client)."""
        from .mirror import MarketData
        return MarketData(self, pub, markets, *self.keys, **kw)

    def close(self):
        self.sock.close(linger=0)


class Units:
    """A market's decimal units. Conversions are exact: a price that is not a whole number of
    ticks (or a size not a whole number of lots) is a ValueError, never rounded in silence."""

    def __init__(self, spec: dict):
        self.market = spec["market"]
        self.tick = Decimal(spec["tick_size"])
        self.lot = Decimal(spec["lot_size"])

    def ticks(self, price: Decimal | str) -> int:
        return self._whole(Decimal(price) / self.tick, f"price {price}", self.tick)

    def lots(self, size: Decimal | str) -> int:
        return self._whole(Decimal(size) / self.lot, f"size {size}", self.lot)

    def price(self, ticks: int) -> Decimal:
        return ticks * self.tick

    def size(self, lots: int) -> Decimal:
        return lots * self.lot

    def _whole(self, x: Decimal, what: str, step: Decimal) -> int:
        if x != x.to_integral_value():
            raise ValueError(f"{self.market}: {what} is not a multiple of {step}")
        return int(x)


def units(reply: dict) -> dict[str, Units]:
    """The markets of a `markets` reply, by name."""
    return {m["market"]: Units(m) for m in reply["markets"]}


class AsyncClient:
    """The asyncio client: `await request(...)`, and `stream()` yielding private-stream items.

    One reader task routes what arrives: replies to their waiting request (by req_id), stream
    items to a queue, in order. Given a list of endpoints it fails over as `Client` does (within
    `failover_s`), and resumes a subscribed private stream on the node that answers from the
    last pseq it queued."""

    def __init__(self, endpoint: str | list[str], server_key: str, secret_key: str,
                 timeout: float = 2.0, failover_s: float = 20.0):
        self.ctx = zmq.asyncio.Context.instance()
        self.endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        self.at = 0
        self.failover_s = failover_s
        self.failovers = 0
        self.keys = (server_key, secret_key)
        self.sock = self._connect()
        self.timeout = timeout
        self._ids = itertools.count(time.time_ns())
        self._waiting: dict = {}
        self.items: asyncio.Queue = asyncio.Queue()
        self.pseq: int | None = None        # the last private-stream item queued, once subscribed
        self._reader = asyncio.ensure_future(self._read())

    def _connect(self):
        sock = curve_socket(self.ctx, zmq.DEALER, *self.keys)
        sock.connect(self.endpoints[self.at])
        return sock

    async def _read(self):
        while True:
            msg = msgspec.msgpack.decode(await self.sock.recv())
            if isinstance(msg, dict) and msg.get("stream") == "private":
                if "event" in msg:
                    self.pseq = msg["pseq"]
                await self.items.put(msg)
                continue
            fut = self._waiting.pop(msg.get("req_id") if isinstance(msg, dict) else None, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    async def _once(self, data: bytes, req_id):
        """Send and wait for the reply to `req_id` on the node in use; None on no reply."""
        fut = asyncio.get_running_loop().create_future()
        self._waiting[req_id] = fut
        await self.sock.send(data)
        try:
            return await asyncio.wait_for(fut, self.timeout)
        except asyncio.TimeoutError:
            self._waiting.pop(req_id, None)
            return None

    async def request(self, type: str, **fields) -> dict:
        req_id = next(self._ids)
        data = msgspec.msgpack.encode({"req_id": req_id, "type": type, **fields})
        if len(self.endpoints) == 1:
            reply = await self._once(data, req_id)
            if reply is None:
                raise Timeout(f"no reply within {self.timeout} s")
        else:
            reply = await self._ask(data, req_id)
        if type == "subscribe" and reply.get("ok"):
            self.pseq = reply["pseq"]
        return reply

    async def _ask(self, data: bytes, req_id) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.failover_s
        tried = 0
        while True:
            reply = await self._once(data, req_id)
            if reply is not None and reply.get("reason") != "unavailable":
                if tried and self.pseq is not None:
                    await self._resume()
                return reply
            if loop.time() >= deadline:
                if reply is not None:
                    return reply
                raise Timeout(f"no node answered within {self.failover_s} s")
            tried += 1
            if tried % len(self.endpoints) == 0:
                await asyncio.sleep(0.05)       # every node said no: a breath, then again
            self._reader.cancel()
            self.sock.close(linger=0)
            self.at = (self.at + 1) % len(self.endpoints)
            self.sock = self._connect()
            self._reader = asyncio.ensure_future(self._read())
            self.failovers += 1

    async def _resume(self):
        """The private stream on the node now in use, from the last pseq queued."""
        while True:                         # page by page (`more`: docs/protocol.md)
            req_id = next(self._ids)
            reply = await self._once(msgspec.msgpack.encode(
                {"req_id": req_id, "type": "subscribe", "resume_from": self.pseq}), req_id)
            if reply is None or not reply.get("ok"):
                raise RuntimeError(f"the private stream cannot resume on "
                                   f"{self.endpoints[self.at]}: {reply}")
            for item in reply["missed"]:
                self.pseq = item["pseq"]
                await self.items.put(item)
            if not reply.get("more"):
                break

    async def stream(self):
        while True:
            yield await self.items.get()

    def market_data(self, pub: str, markets, **kw):
        """A gateway.mirror.AsyncMarketData on the public feed at `pub` (await its start())."""
        from .mirror import AsyncMarketData
        return AsyncMarketData(self, pub, markets, *self.keys, **kw)

    def close(self):
        self._reader.cancel()
        self.sock.close(linger=0)
