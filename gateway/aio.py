"""The asyncio client: `AsyncClient` has `Client`'s methods, awaited (`await c.place(...)`), and
`connect_async` makes one ready to trade (docs/sdk.md)."""
from __future__ import annotations

import asyncio
import itertools
import time

import msgspec
import zmq
import zmq.asyncio

from .errors import InvalidRequest, Timeout, check, error_for
from .front import Front, awaited, install
from .mirror import AsyncMarketData
from .replies import Fill, Mark, Session, typed_event
from .transport import BREATH_S, curve_socket, frame, last_word, locate, unreachable


@install(awaited)
class AsyncClient(Front):
    """The asyncio client: the same methods as `Client`, awaited, and `request(...)`,
    `stream()` yielding raw private-stream items, `events()` typed ones.

    One reader task routes what arrives: replies to their waiting request (by req_id), stream
    items to a queue, in order. Given a list of endpoints it fails over as `Client` does (within
    `failover_s`), opens the session again and resumes a subscribed private stream on the node
    that answers from the last pseq it queued. After `session()` a task sends the heartbeats;
    a strategy that blocks the event loop for longer than the session timeout starves it."""

    def __init__(self, endpoint: str | list[str], server_key: str, secret_key: str,
                 timeout: float = 2.0, failover_s: float = 20.0, *, pub: str | None = None):
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
        self._beat: asyncio.Task | None = None
        self.heartbeats = 0                 # heartbeats sent by the task
        self._filled = asyncio.Event()      # set whenever a fill is noted
        self._last_sent = 0.0
        self._init_front(pub)

    def _connect(self):
        sock = curve_socket(self.ctx, zmq.DEALER, *self.keys)
        sock.connect(self.endpoints[self.at])
        return sock

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.close()

    async def _read(self):
        while True:
            msg = msgspec.msgpack.decode(await self.sock.recv())
            if isinstance(msg, dict) and msg.get("stream") == "private":
                if "event" in msg:
                    self._queued(msg)
                await self.items.put(msg)
                continue
            fut = self._waiting.pop(msg.get("req_id") if isinstance(msg, dict) else None, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    def _queued(self, item: dict) -> None:
        """Note a private-stream item about to be queued: its pseq, its fill."""
        self.pseq = item["pseq"]
        if self.fill_log.add(item["event"]):
            self._filled.set()

    async def _once(self, data: bytes, req_id):
        """Send and wait for the reply to `req_id` on the node in use; None on no reply."""
        fut = asyncio.get_running_loop().create_future()
        self._waiting[req_id] = fut
        await self.sock.send(data)
        self._last_sent = asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(fut, self.timeout)
        except asyncio.TimeoutError:
            self._waiting.pop(req_id, None)
            return None

    async def request(self, type: str, **fields) -> dict:
        """One request; its reply as the server sent it (a refusal is not raised here)."""
        req_id = next(self._ids)
        data = frame(req_id, type, fields)
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
                if tried and self._cod is not None:
                    rid = next(self._ids)
                    await self._once(frame(rid, "session",
                                           {"cancel_on_disconnect": self._cod}), rid)
                if tried and self.pseq is not None:
                    await self._resume()
                return reply
            if loop.time() >= deadline:
                return last_word(reply, f"{self.failover_s} s")
            tried += 1
            if tried % len(self.endpoints) == 0:
                await asyncio.sleep(BREATH_S)   # every node said no: a breath, then again
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
            reply = await self._once(frame(req_id, "subscribe", {"resume_from": self.pseq}),
                                     req_id)
            if reply is None or not reply.get("ok"):
                raise error_for((reply or {}).get("reason") or "timeout",
                                f"the private stream cannot resume on "
                                f"{self.endpoints[self.at]}: {reply}", "subscribe", "gateway",
                                reply)
            for item in reply["missed"]:
                self._queued(item)
                await self.items.put(item)
            if not reply.get("more"):
                break

    def _subscribed(self) -> bool:
        return self.pseq is not None

    async def stream(self):
        while True:
            yield await self.items.get()

    async def session(self, cancel_on_disconnect: bool = False) -> Session:
        """Open this connection's session and start the heartbeat task (see `Client.session`)."""
        info = await self._open_session(cancel_on_disconnect)
        if self._beat is None:
            self._beat = asyncio.ensure_future(self._beats())
        return info

    async def _beats(self):
        loop = asyncio.get_running_loop()
        while True:
            every = self.session_info.beat_every
            await asyncio.sleep(every / 2)
            if loop.time() - self._last_sent < every:
                continue
            try:                            # the reply finds no waiter and is dropped
                await self.sock.send(frame(next(self._ids), "heartbeat", {}), zmq.NOBLOCK)
            except zmq.ZMQError:
                continue
            self._last_sent = loop.time()
            self.heartbeats += 1

    async def events(self, timeout: float | None = None):
        """`Client.events`, as an async iterator (`timeout` None: for ever)."""
        if self.pseq is None:
            raise self._not_subscribed()
        me, ms = await self._me(), await self.markets()
        while True:
            try:
                item = await asyncio.wait_for(self.items.get(), timeout)
            except asyncio.TimeoutError:
                return
            if "event" not in item:         # `suspended`: resume from the last item queued
                await self._resume()
                continue
            if item["event"].get("market") not in (None, *ms):
                ms = await self.markets(refresh=True)
            yield typed_event(item["event"], ms, me)

    async def wait_fills(self, market, cid=None, *, size=None,
                         timeout: float = 5.0) -> list[Fill]:
        """`Client.wait_fills`, awaited."""
        market, cid, me, u, want = await self._fill_order(market, cid, size)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._filled.clear()
            fills, enough = self._fills_seen(me, u, market, cid, want)
            if enough:
                return fills
            try:
                await asyncio.wait_for(self._filled.wait(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise self._too_late(market, cid, fills, want, timeout) from None

    async def mark(self, market: str, timeout: float = 5.0) -> Mark:
        """`Client.mark`, awaited."""
        sub = self._mark_feed(market)
        try:
            u = await self._market(market)

            async def first():
                while True:
                    found = self._mark(market, u, (await sub.recv_multipart())[1])
                    if found is not None:
                        return found
            return await asyncio.wait_for(first(), timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"no mark of {market} on {self.pub} within {timeout} s") from None
        finally:
            sub.close(linger=0)

    def market_data(self, pub: str | None = None, markets=None, **kw) -> AsyncMarketData:
        """A gateway.mirror.AsyncMarketData on the public feed (await its start())."""
        if markets is None:
            if self._markets is None:
                raise InvalidRequest("invalid_command", "name the markets (or await "
                                                        "markets() first)")
            markets = list(self._markets)
        return AsyncMarketData(self, pub or self.pub, markets, *self.keys, **kw)

    def close(self):
        if self._beat is not None:
            self._beat.cancel()
        self._reader.cancel()
        self.sock.close(linger=0)


async def connect_async(account: str | None = None, *, router=None, pub: str | None = None,
                        data=None, server_key=None, secret_key=None,
                        cancel_on_disconnect: bool = False, timeout: float = 2.0,
                        failover_s: float = 20.0) -> AsyncClient:
    """`connect`, for asyncio: an `AsyncClient` ready to trade."""
    router, pub, server_key, secret_key = locate(account, router, pub, data, server_key,
                                                 secret_key)
    c = AsyncClient(router, server_key, secret_key, timeout=timeout, failover_s=failover_s,
                    pub=pub)
    try:
        try:
            await c.markets()
        except Timeout as e:
            raise unreachable(e, router, secret_key) from None
        await c.session(cancel_on_disconnect)
        check(await c.request("subscribe"), "subscribe")
        await c.account()
    except BaseException:
        c.close()
        raise
    return c
