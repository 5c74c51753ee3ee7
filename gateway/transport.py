"""The SDK's wire: CURVE sockets, request frames, where a venue and its keys are, and `Link`, the
synchronous client's connection (one DEALER, failover across a replicated venue's nodes, the
heartbeat thread). The asyncio client's connection is in gateway/aio.py."""
from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path

import msgspec
import zmq
import zmq.auth

from .errors import InvalidRequest, Timeout


def curve_socket(ctx, kind: int, server_key: str, secret_key: str):
    """A socket of `kind` that speaks CURVE to the server, with this account's key pair."""
    sock = ctx.socket(kind)
    sock.linger = 0
    pub, sec = zmq.auth.load_certificate(secret_key)
    sock.curve_publickey = pub
    sock.curve_secretkey = sec
    sock.curve_serverkey = zmq.auth.load_certificate(server_key)[0]
    return sock


def frame(req_id, type: str, fields: dict) -> bytes:
    """One request's bytes (docs/protocol.md, "Requests")."""
    return msgspec.msgpack.encode({"req_id": req_id, "type": type, **fields})


def locate(account, router, pub, data, server_key, secret_key):
    """Endpoints and key files from the arguments, else the environment, else the defaults of
    `perpdex serve` run in this folder (docs/sdk.md, "Connecting"): (router or the list of
    routers, pub, server_key, secret_key)."""
    data = Path(data or os.environ.get("PERPDEX_DATA") or "perpdex-data")
    account = account or os.environ.get("PERPDEX_ACCOUNT")
    router = router or os.environ.get("PERPDEX_ROUTER") or "tcp://127.0.0.1:7701"
    routers = router.split(",") if isinstance(router, str) else list(router)
    pub = pub or os.environ.get("PERPDEX_PUB") or "tcp://127.0.0.1:7702"
    server_key = Path(server_key or data / "keys" / "server.key")
    if secret_key is None:
        if not account:
            raise InvalidRequest("invalid_command", "name the account (connect('mm-1')), its "
                                 "secret_key file, or set $PERPDEX_ACCOUNT")
        secret_key = data / "keys" / f"{account}.key_secret"
    for path in (server_key, Path(secret_key)):
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no such key file. `perpdex serve` writes the server's public key and "
                f"one key pair per configured account to its data folder's keys/ "
                f"({data}/keys here): run from the folder it was started in, or give "
                f"data=... (or $PERPDEX_DATA)")
    return (routers[0] if len(routers) == 1 else routers), pub, str(server_key), str(secret_key)


def unreachable(e: Timeout, router, secret_key) -> Timeout:
    """The Timeout of a first request that got no answer, saying the two likely causes."""
    return Timeout(f"{e.detail}: is `perpdex serve` running at {router}, and is {secret_key} "
                   f"the key of one of its accounts? (a key the server does not know gets no "
                   f"answer at all)")


def last_word(reply: dict | None, within: str) -> dict:
    """Failover's answer once its time is up: the last reply (`unavailable`), else Timeout."""
    if reply is None:
        raise Timeout(f"no node answered within {within}")
    return reply


SLICE_S = 0.05          # the longest a wait holds the socket, so that heartbeats get their turn
BREATH_S = 0.05         # the pause after every node of a replicated venue said no


class Link:
    """The synchronous client's connection. `endpoint` is one request endpoint, or the list of
    a replicated venue's nodes (docs/operations.md, "Replication"): then a request that gets no
    reply within `timeout_ms`, or `unavailable`, is sent again, the same bytes and req_id (a
    retry, answered once), to the next node, round and round for up to `failover_ms`; once a
    node answers, `_rejoin()` (the client's) restores what the connection had there.

    After `_keep_alive` a thread sends a heartbeat whenever nothing was sent for an interval.
    Every use of the socket holds `self._lock`, and no wait holds it for more than SLICE_S."""

    def __init__(self, endpoint: str | list[str], server_key: str, secret_key: str,
                 timeout_ms: int = 2000, context: zmq.Context | None = None,
                 failover_ms: int = 20_000):
        self.ctx = context or zmq.Context.instance()
        self.endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        self.at = 0                         # the node in use
        self.failover_ms = failover_ms
        self.failovers = 0
        self.keys = (server_key, secret_key)
        self._lock = threading.RLock()
        self.sock = self._connect()
        self.timeout_ms = timeout_ms
        # req_ids must not repeat within the server's retry window for the account (a repeat is
        # a retry and gets the first reply): number from the moment this client was made.
        self._ids = itertools.count(time.time_ns())
        self._last_sent = time.monotonic()
        self._beat_ids: set = set()         # req_ids of heartbeats whose replies are dropped
        self._beat: threading.Thread | None = None
        self._stop = threading.Event()
        self.beat_every: float | None = None   # seconds between heartbeats, once kept alive
        self.heartbeats = 0                 # heartbeats sent by the thread

    def _connect(self):
        sock = curve_socket(self.ctx, zmq.DEALER, *self.keys)
        sock.connect(self.endpoints[self.at])
        return sock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _send(self, data: bytes) -> None:
        with self._lock:
            self.sock.send(data)
            self._last_sent = time.monotonic()

    def _next(self, timeout_s: float | None):
        """The next message (decoded), waiting up to `timeout_s` (None: for ever); None if
        nothing came. The socket is held for at most SLICE_S at a time."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait = SLICE_S if deadline is None else max(0.0, min(SLICE_S,
                                                                 deadline - time.monotonic()))
            with self._lock:
                if self.sock.poll(int(wait * 1000)):
                    return msgspec.msgpack.decode(self.sock.recv())
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _route(self, msg) -> bool:
        """Take a message that is not the reply awaited (True): here a heartbeat's reply,
        dropped; the client keeps its private-stream items too."""
        rid = msg.get("req_id") if isinstance(msg, dict) else None
        if isinstance(rid, int) and rid in self._beat_ids:
            self._beat_ids.discard(rid)
            return True
        return False

    def _pump(self, timeout_s: float | None) -> None:
        """Wait up to `timeout_s` for a message, then take every one that has arrived."""
        msg = self._next(timeout_s)
        while msg is not None:
            self._route(msg)                # a stray reply here belongs to nobody: dropped
            msg = self._next(0)

    def _rejoin(self) -> None:
        """After a failover, on the node now in use: what the connection had (the client's)."""

    def send_raw(self, data: bytes) -> dict:
        if len(self.endpoints) == 1:
            self._send(data)
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
            self._send(data)
            try:
                reply = self._receive(req_id)
            except Timeout:
                reply = None
            if reply is not None and reply.get("reason") != "unavailable":
                if tried:
                    self._rejoin()
                return reply
            if time.monotonic() >= deadline:
                return last_word(reply, f"{self.failover_ms} ms")
            tried += 1
            if tried % len(self.endpoints) == 0:
                time.sleep(BREATH_S)        # every node said no: a breath before the next round
            with self._lock:
                self.sock.close(linger=0)
                self.at = (self.at + 1) % len(self.endpoints)
                self.sock = self._connect()
            self.failovers += 1

    def request(self, type: str, **fields) -> dict:
        """Send one request; return its reply (`ok`, and `events` or `reason` and `detail`), as
        the server sent it: a refusal is not raised here (the front door's methods raise)."""
        req_id = next(self._ids)
        data = frame(req_id, type, fields)
        if len(self.endpoints) > 1:
            return self._ask(data, req_id)
        self._send(data)
        reply = self._receive()
        if reply.get("req_id") not in (req_id, None):
            raise RuntimeError(f"reply {reply.get('req_id')} to request {req_id}")
        return reply

    def request_retrying(self, type: str, **fields) -> dict:
        """`request`, sent again (the same req_id: answered once) while no reply comes or the
        reply is `unavailable`, to the next endpoint (the same one when there is one), for up
        to `failover_ms`; then the last reply, or Timeout."""
        req_id = next(self._ids)
        return self._ask(frame(req_id, type, fields), req_id)

    def _request_here(self, type: str, **fields) -> dict:
        req_id = next(self._ids)
        self._send(frame(req_id, type, fields))
        return self._receive(req_id)

    def _receive(self, req_id=None) -> dict:
        """The next reply (with `req_id`: the next reply to it; an earlier copy's is dropped).
        Timeout when nothing at all arrives for `timeout_ms`."""
        while True:
            msg = self._next(self.timeout_ms / 1000)
            if msg is None:
                raise Timeout(f"no reply within {self.timeout_ms} ms")
            if self._route(msg):
                continue
            if req_id is not None and isinstance(msg, dict) and msg.get("req_id") not in (
                    req_id, None):
                continue
            return msg

    def _keep_alive(self, every_s: float) -> None:
        """Heartbeats from now until close(): the thread's, started once."""
        self.beat_every = every_s
        if self._beat is None:
            self._beat = threading.Thread(target=self._beats, name="perpdex-heartbeats",
                                          daemon=True)
            self._beat.start()

    def _beats(self):
        """The heartbeat thread: a heartbeat whenever nothing was sent for an interval. It only
        sends (never waits for a reply: `_route` drops those), and never blocks."""
        while not self._stop.wait(self.beat_every / 2):
            if time.monotonic() - self._last_sent < self.beat_every:
                continue
            req_id = next(self._ids)
            data = frame(req_id, "heartbeat", {})
            with self._lock:
                if len(self._beat_ids) > 10_000:    # replies that never came (a dead node)
                    self._beat_ids.clear()
                self._beat_ids.add(req_id)
                try:
                    self.sock.send(data, zmq.NOBLOCK)
                except zmq.ZMQError:
                    continue                # no peer now: the next request fails over
                self._last_sent = time.monotonic()
            self.heartbeats += 1

    def close(self):
        self._stop.set()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join(timeout=2)
        with self._lock:
            self.sock.close(linger=0)
