"""A synchronous client for `perpdex serve` (docs/protocol.md).

    c = Client("tcp://127.0.0.1:7701", server_key="perpdex-data/keys/server.key",
               secret_key="perpdex-data/keys/mm-1.key_secret")
    reply = c.request("new_order", market="BTC-PERP", cid=1, side="buy", kind="limit",
                      qty=10, price=649_000)
"""
from __future__ import annotations

import itertools
import time

import msgspec
import zmq
import zmq.auth


class Timeout(RuntimeError):
    """No reply in time (the server is down, or refused the key at the CURVE handshake)."""


class Client:
    def __init__(self, endpoint: str, server_key: str, secret_key: str, timeout_ms: int = 2000,
                 context: zmq.Context | None = None):
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        pub, sec = zmq.auth.load_certificate(secret_key)
        self.sock.curve_publickey = pub
        self.sock.curve_secretkey = sec
        self.sock.curve_serverkey = zmq.auth.load_certificate(server_key)[0]
        self.sock.connect(endpoint)
        self.timeout_ms = timeout_ms
        # req_ids must not repeat within the server's retry window for the account (a repeat is
        # a retry and gets the first reply): number from the moment this client was made.
        self._ids = itertools.count(time.time_ns())
        self.pushed: list[dict] = []        # private-stream items that arrived between replies

    def send_raw(self, data: bytes) -> dict:
        self.sock.send(data)
        return self._receive()

    def subscribe(self, resume_from: int | None = None) -> dict:
        """Join this account's private stream (every connection of the account gets it)."""
        fields = {} if resume_from is None else {"resume_from": resume_from}
        return self.request("subscribe", **fields)

    def stream(self, n: int, timeout_ms: int | None = None) -> list[dict]:
        """The next `n` private-stream items, in order."""
        while len(self.pushed) < n:
            if not self.sock.poll(timeout_ms or self.timeout_ms):
                raise Timeout(f"{len(self.pushed)} of {n} stream items arrived")
            self.pushed.append(msgspec.msgpack.decode(self.sock.recv()))
        out, self.pushed = self.pushed[:n], self.pushed[n:]
        return out

    def request(self, type: str, **fields) -> dict:
        """Send one request; return its reply (`ok`, and `events` or `reason` and `detail`)."""
        req_id = next(self._ids)
        self.sock.send(msgspec.msgpack.encode({"req_id": req_id, "type": type, **fields}))
        reply = self._receive()
        if reply.get("req_id") not in (req_id, None):
            raise RuntimeError(f"reply {reply.get('req_id')} to request {req_id}")
        return reply

    def _receive(self) -> dict:
        while True:
            if not self.sock.poll(self.timeout_ms):
                raise Timeout(f"no reply within {self.timeout_ms} ms")
            msg = msgspec.msgpack.decode(self.sock.recv())
            if isinstance(msg, dict) and msg.get("stream") == "private":
                self.pushed.append(msg)         # kept for stream(), in order
                continue
            return msg

    def close(self):
        self.sock.close(linger=0)
