"""`perpdex serve`: the engine behind ZeroMQ, one process, one engine loop.

Sockets (docs/protocol.md): a ROUTER for requests (clients use DEALER) and a PUB for public
events, both CURVE servers. A ZAP authenticator (pyzmq's, in its own thread) admits the public
keys of the configured accounts; the account of a request is the one whose key authenticated the
connection (the frame's User-Id), never a field of the message.

The loop drains what has arrived, runs it through the engine as one batch, makes the batch
durable (`_make_durable`: the one place the journal will go) and only then sends the replies and
publishes the events. The wall clock is read here, and only here: each command is stamped as it
is sequenced.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import msgspec
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from collections import deque

from engine import Engine, messages as M

from .config import Config

MAX_MESSAGE = 64 * 1024                 # bytes; a larger request is answered with an error
HARD_LIMIT = 1024 * 1024                # bytes; ZeroMQ drops a connection sending more
DRAIN = 1024                            # requests taken per loop turn at most
RETRY_WINDOW = 4096                     # an account's last requests whose replies are kept
STREAM_BUFFER = 10_000                  # an account's last private events kept for resume
SIM_START = {"BTC-PERP": 650_000, "ETH-PERP": 300_000}    # the simulated oracle's first prices
MAX_BATCH = 256                         # items in one batch request
# Token buckets per account (requests per second, burst): cancels have their own, so a flood of
# new orders never starves them.
ORDER_RATE = (500.0, 1000.0)
CANCEL_RATE = (2000.0, 4000.0)
CANCELS = {"cancel", "cancel_all"}

# What each role may send. The account of trader commands comes from the key.
TRADER = {"new_order", "cancel", "cancel_all", "amend", "query_account", "set_leverage",
          "set_margin_mode", "transfer_margin", "withdraw"}
ORACLE = {"oracle"}
ADMIN = {"create_market", "deposit", "audit", "state_hash", "clock"}
ALLOWED = {"trader": TRADER, "oracle": ORACLE, "admin": ADMIN}
PUBLIC = {"mark", "fill", "funding", "liquidation", "order_triggered"}

_decode_any = msgspec.msgpack.Decoder()
_encode = msgspec.msgpack.Encoder()


def ensure_keys(cfg: Config) -> dict[str, Path]:
    """Make the server key pair and any missing account key pairs in data_dir/keys, and the
    directory of authorised public keys. Returns the secret-key path of each generated key."""
    keys = cfg.data_dir / "keys"
    allowed = cfg.data_dir / "authorized"
    keys.mkdir(parents=True, exist_ok=True)
    if allowed.exists():
        shutil.rmtree(allowed)
    allowed.mkdir()
    paths = {}
    if not (keys / "server.key_secret").exists():
        zmq.auth.create_certificates(str(keys), "server")
    paths["server"] = keys / "server.key"
    for name, acct in cfg.accounts.items():
        if acct.public_key is None:
            if not (keys / f"{name}.key_secret").exists():
                zmq.auth.create_certificates(str(keys), name)
            acct.public_key = zmq.auth.load_certificate(str(keys / f"{name}.key"))[0].decode()
            paths[name] = keys / f"{name}.key_secret"
        (allowed / f"{name}.key").write_text(
            f'metadata\ncurve\n    public-key = "{acct.public_key}"\n')
    return paths


class Bucket:
    """A token bucket: `rate` tokens a second up to `burst`; time from the gateway's clock."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.burst, self.tokens, self.at = rate, burst, burst, now

    def take(self, n: int, now: float) -> float:
        """Take `n` tokens; 0.0 if granted, else the seconds until they would be."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


class Stream:
    """An account's private stream: its events numbered 1, 2, 3, ... (`pseq`), the last
    STREAM_BUFFER of them kept for clients that resume, and the connections subscribed."""

    __slots__ = ("pseq", "buffer", "subscribers")

    def __init__(self):
        self.pseq = 0
        self.buffer: deque = deque(maxlen=STREAM_BUFFER)
        self.subscribers: set[bytes] = set()


class Session:
    """What the server knows of one connection: whose it is, when it last spoke, and whether its
    account's orders go when it falls silent."""

    __slots__ = ("account", "last_seen", "cancel_on_disconnect")

    def __init__(self, account: str, now: int):
        self.account = account
        self.last_seen = now
        self.cancel_on_disconnect = False


def _accounts_of(ev) -> tuple:
    """The accounts an event belongs to (a fill to both sides, once each)."""
    tag = ev.__struct_config__.tag
    if tag == "fill":
        if ev.taker_account == ev.maker_account:
            return (ev.taker_account,)
        return (ev.taker_account, ev.maker_account)
    account = getattr(ev, "account", None)
    return () if account is None else (account,)


class Server:
    def __init__(self, cfg: Config, engine: Engine | None = None, plaintext_loopback=False,
                 oracle_sim=False):
        self.cfg = cfg
        self.engine = engine if engine is not None else Engine()
        self.plaintext = plaintext_loopback
        if self.plaintext:
            for ep in (cfg.router, cfg.pub):
                if not ep.startswith(("tcp://127.", "tcp://localhost:", "tcp://[::1]:", "ipc://")):
                    raise ValueError(f"plain-text mode serves only loopback and ipc endpoints, "
                                     f"not {ep}")
            self.key_paths = {}
            self.by_key = {}
        else:
            self.key_paths = ensure_keys(cfg)
            self.by_key = {a.public_key.encode(): a for a in cfg.accounts.values()}
        self.logins: dict[bytes, object] = {}       # plain-text mode: connection -> account
        self.sim = random.Random(1) if oracle_sim else None
        self.sim_index: dict[str, int] = {}
        self.sim_next = 0
        self.ctx = zmq.Context()
        self.auth = None
        pub = sec = None
        if not self.plaintext:
            self.auth = ThreadAuthenticator(self.ctx)
            self.auth.start()
            self.auth.configure_curve(domain="*",
                                      location=str((cfg.data_dir / "authorized").resolve()))
            pub, sec = zmq.auth.load_certificate(str(cfg.data_dir / "keys" / "server.key_secret"))
        self.router = self._socket(zmq.ROUTER, pub, sec)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.MAXMSGSIZE, HARD_LIMIT)
        self.router.bind(cfg.router)
        self.pub = self._socket(zmq.PUB, pub, sec)
        self.pub.bind(cfg.pub)
        self.running = True
        self.replies: dict[str, dict] = {}          # account -> {req_id: reply}, oldest first
        self.buckets: dict[tuple, Bucket] = {}
        self.streams: dict[str, Stream] = {}        # account -> its private stream
        self.sessions: dict[bytes, Session] = {}    # connection -> its session
        self.deadlines: dict[str, int] = {}         # account -> schedule_cancel time (ns)
        self.outbox: list = []                      # this batch's events, for the streams
        self._boot()

    def _socket(self, kind, pub, sec):
        s = self.ctx.socket(kind)
        if pub is not None:
            s.curve_publickey = pub
            s.curve_secretkey = sec
            s.curve_server = True
        s.linger = 0
        return s

    def _boot(self):
        """The configured markets and opening deposits, as sequenced commands."""
        for mk in self.cfg.markets:
            self.engine.execute(msgspec.structs.replace(mk, ts=time.time_ns()))
        for acct in self.cfg.accounts.values():
            if acct.deposit:
                self.engine.execute(M.Deposit(account=acct.name, amount=acct.deposit,
                                              ts=time.time_ns()))

    # ---- the loop ----------------------------------------------------------------------------

    def serve_forever(self):
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        tick = max(10, min(200, self.cfg.session_timeout_ms // 4))
        while self.running:
            if not poller.poll(tick):
                self._timers()
                continue
            batch = []
            for _ in range(DRAIN):
                try:
                    frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                batch.append(self._handle(frames))
            self._make_durable(batch)
            for identity, reply, public in batch:
                self._send(identity, reply)
                for topic, ev in public:
                    self.pub.send_multipart([topic, _encode.encode(ev)])
            self._stream_out()
            self._timers()

    def _timers(self):
        """Sessions that fell silent, and dead-man's switches that ran out: cancel_all, as
        sequenced commands of the server's own."""
        now = time.time_ns()
        timeout = self.cfg.session_timeout_ms * 1_000_000
        gone = []
        for identity, sess in list(self.sessions.items()):
            if now - sess.last_seen > timeout:
                del self.sessions[identity]
                for st in self.streams.values():
                    st.subscribers.discard(identity)
                if sess.cancel_on_disconnect:
                    gone.append(sess.account)
        if self.sim is not None and now >= self.sim_next:
            self.sim_next = now + 250_000_000           # a simulated oracle, 4 updates a second
            for spec in self.engine.specs:
                idx = self.sim_index.get(spec.name) or SIM_START.get(spec.name, 100_000)
                idx = max(1, round(idx * (1 + self.sim.gauss(0, 0.0005))))
                self.sim_index[spec.name] = idx
                self.outbox.extend(self.engine.execute(
                    M.Oracle(market=spec.name, price=idx, ts=now)))
        due = [a for a, t in self.deadlines.items() if now >= t]
        for account in due:
            del self.deadlines[account]
        for account in sorted(set(gone) | set(due)):
            events = self.engine.execute(M.CancelAll(account=account, ts=now))
            self.outbox.extend(events)
        if self.outbox:
            self._make_durable([])
            for topic, ev in _public(self.outbox):
                self.pub.send_multipart([topic, _encode.encode(ev)])
            self._stream_out()

    def _send(self, identity: bytes, message) -> bool:
        try:
            self.router.send_multipart([identity, _encode.encode(message)])
            return True
        except zmq.ZMQError:            # the peer left (ROUTER_MANDATORY says so)
            return False

    def _stream_out(self):
        """Number this batch's events per account and push them to its subscribed connections."""
        for ev in self.outbox:
            for account in _accounts_of(ev):
                st = self.streams.get(account)
                if st is None:
                    if account not in self.cfg.accounts:
                        continue
                    st = self.streams[account] = Stream()
                st.pseq += 1
                item = {"stream": "private", "pseq": st.pseq, "event": ev}
                st.buffer.append(item)
                for identity in list(st.subscribers):
                    if not self._send(identity, item):
                        st.subscribers.discard(identity)
        self.outbox.clear()

    def _subscribe(self, acct, identity, req_id, msg):
        """Join the account's private stream; with `resume_from`, first get what came after it."""
        st = self.streams.setdefault(acct.name, Stream())
        since = msg.get("resume_from")
        missed = []
        if since is not None:
            if not isinstance(since, int) or since < 0 or since > st.pseq:
                return _error(req_id, "invalid_command",
                              f"resume_from must be an integer from 0 to {st.pseq}")
            oldest = st.buffer[0]["pseq"] if st.buffer else st.pseq + 1
            if since + 1 < oldest and since < st.pseq:
                return _error(req_id, "resume_gap",
                              f"events after {since} are no longer kept (the oldest kept is "
                              f"{oldest}); subscribe afresh and ask query_account")
            missed = [item for item in st.buffer if item["pseq"] > since]
        st.subscribers.add(identity)
        return {"req_id": req_id, "ok": True, "pseq": st.pseq, "missed": missed}

    def _make_durable(self, batch):
        """The journal goes here (the durability issue): the batch's commands are written and
        synced before any of its replies or events leave the process. Nothing is journaled yet,
        so nothing is durable yet; the order of the loop is already the one it needs."""

    def _handle(self, frames):
        identity = frames[0].bytes
        body = frames[-1]
        if self.plaintext:
            acct = self.logins.get(identity)
        else:
            user = body.get("User-Id")
            acct = self.by_key.get(user.encode() if isinstance(user, str) else user)
        req_id = None
        if len(frames) != 2:
            return identity, _error(None, "invalid_command",
                                    f"a request is one frame, got {len(frames) - 1}"), []
        if len(body) > MAX_MESSAGE:
            return identity, _error(None, "too_large",
                                    f"a request is at most {MAX_MESSAGE} bytes, got {len(body)}"), []
        try:
            msg = _decode_any.decode(body.bytes)
        except (msgspec.DecodeError, ValueError) as e:
            return identity, _error(None, "invalid_command", f"not msgpack: {e}"), []
        if not isinstance(msg, dict):
            return identity, _error(None, "invalid_command", "a request is a msgpack map"), []
        req_id = msg.pop("req_id", None)
        if self.plaintext and msg.get("type") == "login":
            acct = self.cfg.accounts.get(msg.get("account"))
            if acct is None:
                return identity, _error(req_id, "forbidden", "no such account"), []
            self.logins[identity] = acct
            return identity, {"req_id": req_id, "ok": True, "account": acct.name}, []
        if acct is None:
            return identity, _error(req_id, "forbidden",
                                    "log in first (plain-text mode)" if self.plaintext
                                    else "this key belongs to no account"), []
        seen = self.replies.setdefault(acct.name, {})
        if req_id is not None:
            try:
                if req_id in seen:                  # a retry: the original reply, nothing redone
                    return identity, seen[req_id], []
            except TypeError:
                return identity, _error(None, "invalid_command",
                                        "req_id must be a number or a string"), []
        now = time.time_ns()
        sess = self.sessions.get(identity)
        if sess is None:
            sess = self.sessions[identity] = Session(acct.name, now)
        sess.last_seen = now
        kind = msg.get("type")
        if kind == "heartbeat":
            return identity, {"req_id": req_id, "ok": True, "ts": now}, []
        if kind == "session":
            cod = msg.get("cancel_on_disconnect")
            if not isinstance(cod, bool):
                return identity, _error(req_id, "invalid_command",
                                        "cancel_on_disconnect must be true or false"), []
            sess.cancel_on_disconnect = cod
            return identity, {"req_id": req_id, "ok": True,
                              "heartbeat_ms": self.cfg.heartbeat_ms,
                              "session_timeout_ms": self.cfg.session_timeout_ms}, []
        if kind == "schedule_cancel":
            after = msg.get("after_ms")
            if after is None:
                self.deadlines.pop(acct.name, None)
                return identity, {"req_id": req_id, "ok": True, "at": None}, []
            if not isinstance(after, int) or not 0 < after <= 86_400_000:
                return identity, _error(req_id, "invalid_command",
                                        "after_ms must be 1 to 86400000 (or null to disarm)"), []
            self.deadlines[acct.name] = now + after * 1_000_000
            return identity, {"req_id": req_id, "ok": True,
                              "at": self.deadlines[acct.name]}, []
        if kind == "subscribe":
            return identity, self._subscribe(acct, identity, req_id, msg), []
        if kind == "book":
            market, depth = msg.get("market"), msg.get("depth", 5)
            if market not in self.engine.market_names() or not isinstance(depth, int) \
                    or not 1 <= depth <= 100:
                return identity, _error(req_id, "invalid_command",
                                        "book takes a known `market` and a `depth` of 1 to 100"), []
            return identity, {"req_id": req_id, "ok": True, "market": market,
                              **self.engine.book(market, depth)}, []
        if kind == "markets":
            return identity, {"req_id": req_id, "ok": True, "markets": [
                {"market": sp.name, "tick_size": str(sp.tick_size), "lot_size": str(sp.lot_size),
                 "min_qty": sp.min_qty, "multiplier": sp.multiplier}
                for sp in self.engine.specs]}, []
        if msg.get("type") == "batch":
            reply, public = self._batch(acct, req_id, msg)
        else:
            reply, public = self._one(acct, req_id, msg)
        if req_id is not None and reply.get("reason") != "rate_limited":
            seen[req_id] = reply
            if len(seen) > RETRY_WINDOW:
                del seen[next(iter(seen))]
        return identity, reply, public

    def _limited(self, acct, cancels: int, others: int, req_id):
        """None, or the `rate_limited` reply saying when to retry."""
        now = time.monotonic()
        waits = []
        for kind, n, (rate, burst) in (("cancel", cancels, CANCEL_RATE),
                                       ("order", others, ORDER_RATE)):
            if n:
                b = self.buckets.get((acct.name, kind))
                if b is None:
                    b = self.buckets[(acct.name, kind)] = Bucket(rate, burst, now)
                waits.append(b.take(n, now))
        wait = max(waits, default=0.0)
        if wait <= 0:
            return None
        reply = _error(req_id, "rate_limited",
                       f"over the request rate; retry in {wait * 1000:.0f} ms")
        reply["retry_after_ms"] = int(wait * 1000) + 1
        return reply

    def _command(self, acct, msg):
        """The command of one request item, or the reason and detail it cannot be one."""
        if not isinstance(msg, dict):
            return None, ("invalid_command", "a command is a msgpack map")
        kind = msg.get("type")
        if kind not in ALLOWED[acct.role]:
            return None, ("forbidden", f"a {acct.role} may not send {kind!r}; it may send "
                                       f"{', '.join(sorted(ALLOWED[acct.role]))}")
        if acct.role == "trader":
            if "account" in msg:
                return None, ("invalid_command", "`account` comes from your key; leave it out")
            msg["account"] = acct.name
        msg["ts"] = time.time_ns()
        try:
            return msgspec.convert(msg, M.AnyCommand), None
        except msgspec.ValidationError as e:
            return None, ("invalid_command", str(e))

    def _one(self, acct, req_id, msg):
        limited = self._limited(acct, msg.get("type") in CANCELS,
                                msg.get("type") not in CANCELS, req_id)
        if limited:
            return limited, []
        cmd, why = self._command(acct, msg)
        if cmd is None:
            return _error(req_id, *why), []
        events = self.engine.execute(cmd)
        self.outbox.extend(events)
        return {"req_id": req_id, "ok": True, "events": events}, _public(events)

    def _batch(self, acct, req_id, msg):
        """Several commands in one request: cancels run first, then the rest, each in request
        order; one status per item, in request order."""
        items = msg.get("items")
        if not isinstance(items, list) or not 0 < len(items) <= MAX_BATCH:
            return _error(req_id, "invalid_command",
                          f"a batch has `items`: a list of 1 to {MAX_BATCH} commands"), []
        cancels = [i for i, it in enumerate(items)
                   if isinstance(it, dict) and it.get("type") in CANCELS]
        limited = self._limited(acct, len(cancels), len(items) - len(cancels), req_id)
        if limited:
            return limited, []
        first = set(cancels)
        results: list = [None] * len(items)
        public = []
        for i in cancels + [i for i in range(len(items)) if i not in first]:
            cmd, why = self._command(acct, items[i])
            if cmd is None:
                results[i] = {"ok": False, "reason": why[0], "detail": why[1]}
                continue
            events = self.engine.execute(cmd)
            self.outbox.extend(events)
            results[i] = {"ok": True, "events": events}
            public.extend(_public(events))
        return {"req_id": req_id, "ok": True, "results": results}, public

    def close(self):
        if self.auth is not None:
            self.auth.stop()
        self.ctx.destroy(linger=0)


def _public(events):
    return [(ev.market.encode(), ev) for ev in events if ev.__struct_config__.tag in PUBLIC]


def _error(req_id, reason, detail):
    return {"req_id": req_id, "ok": False, "reason": reason, "detail": detail}


def run(cfg: Config, out=sys.stdout, plaintext_loopback=False, oracle_sim=False) -> int:
    server = Server(cfg, plaintext_loopback=plaintext_loopback, oracle_sim=oracle_sim)

    def stop(*_):
        server.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    out.write(f"perpdex serving: requests {cfg.router}, public events {cfg.pub}\n")
    if plaintext_loopback:
        out.write("PLAIN-TEXT mode (loopback only): no encryption, accounts log in by name\n")
    else:
        out.write(f"server public key: {server.key_paths['server']}\n")
    if oracle_sim:
        out.write("simulated oracle: a random walk, 4 updates a second\n")
    for name, path in server.key_paths.items():
        if name != "server":
            out.write(f"  {name} ({cfg.accounts[name].role}): {path}\n")
    out.flush()
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0
