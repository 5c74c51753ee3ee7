"""`perpdex serve`: the engine behind ZeroMQ, one process, one engine loop.

Sockets (docs/protocol.md): a ROUTER for requests (clients use DEALER) and a PUB for public
events, both CURVE servers. A ZAP authenticator (pyzmq's, in its own thread) admits the public
keys of the configured accounts; the account of a request is the one whose key authenticated the
connection (the frame's User-Id), never a field of the message.

One loop turn: drain what has arrived (at most `Limits.drain` requests), decode each straight
into its typed request (gateway/protocol.py), run its commands through the `Sequencer` (which
stamps them with the one clock), then `Sequencer.commit()` hands the turn's commands to the
durability seam, and only then do the replies, the private-stream items and the public events
leave the process. Nothing waits for a peer: every send is non-blocking, and a connection whose
pipe is full loses that message and its stream (it is told, and resumes: docs/protocol.md,
"Slow connections"). One guard answers any failure of a request with `internal_error`, logs it
and goes on.
"""
from __future__ import annotations

import gc
import logging
import os
import random
import resource
import shutil
import signal
import sys
import time
from collections import deque
from hashlib import blake2b
from pathlib import Path

import msgspec
import zmq
import zmq.auth
from msgspec import Raw
from zmq.auth.thread import ThreadAuthenticator

from perpdex.engine import Engine, messages as M

from . import protocol as P
from .config import Config
from . import journal
from .durability import Deadline, Durability, Reply, Sequencer
from .feed import Feed
from .limits import Limits
from .observability import Metrics, configure_logging, stop_logging

log = logging.getLogger("perpdex.gateway")

SIM_START = {"BTC-PERP": 650_000, "ETH-PERP": 300_000}    # the simulated oracle's first prices
SIM_EVERY = 250_000_000                                   # ns between simulated oracle prices
FD_SPARE = 256                          # descriptors kept beyond max_connections
FEED_HEARTBEAT = 1_000_000_000          # ns between the public feed's heartbeats


class BootError(ValueError):
    """The configuration names something the engine refuses; the message gives its reason."""


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def ensure_keys(cfg: Config) -> dict[str, Path]:
    """Make the server key pair and any missing account key pairs in data_dir/keys, and the
    directory of authorised public keys. The data folder and both directories are 0700 and
    every key file is 0600 (made so, never briefly readable: the umask is 077 meanwhile).
    Returns the secret-key path of each generated key."""
    keys = cfg.data_dir / "keys"
    allowed = cfg.data_dir / "authorized"
    old = os.umask(0o077)
    try:
        _private_dir(cfg.data_dir)
        _private_dir(keys)
        if allowed.exists():
            shutil.rmtree(allowed)
        _private_dir(allowed)
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
        for d in (keys, allowed):
            for f in d.iterdir():
                os.chmod(f, 0o600)
    finally:
        os.umask(old)
    return paths


class GatedAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP authenticator, refusing every handshake while the server holds
    `Limits.max_connections` connections (ZAP status 400, "too many connections")."""

    def __init__(self, ctx, full):
        super().__init__(ctx)
        self.full = full

    async def _authenticate_curve(self, domain, client_key):
        if self.full():
            log.warning("handshake refused: too many connections",
                        extra={"event": "auth_refused", "why": "too many connections"})
            return False, b"too many connections"
        ok, why = await super()._authenticate_curve(domain, client_key)
        if not ok:
            log.warning("handshake refused: %s", why.decode(errors="replace"),
                        extra={"event": "auth_failed", "why": why.decode(errors="replace")})
        return ok, why


class Bucket:
    """A token bucket: `rate` tokens a second up to `burst`; time from the gateway's clock."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.burst, self.tokens, self.at = rate, burst, burst, now

    def take(self, n: int, now: float) -> float:
        """Take `n` tokens; 0.0 if granted, else the seconds until they would be. O(1)."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


class Retries:
    """An account's last `keep` replies by req_id, encoded (bytes: nothing for the garbage
    collector to walk), the oldest forgotten first. O(1) a lookup, an insert, an eviction."""

    __slots__ = ("keep", "replies", "order")

    def __init__(self, keep: int):
        self.keep = keep
        self.replies: dict = {}
        self.order: deque = deque()

    def add(self, req_id, reply: bytes):
        if req_id not in self.replies:
            self.order.append(req_id)
            if len(self.order) > self.keep:
                del self.replies[self.order.popleft()]
        self.replies[req_id] = reply


class Stream:
    """An account's private stream: its events numbered 1, 2, 3, ... (`pseq`), the last
    `stream_buffer` of them kept, encoded, for clients that resume (bytes: nothing for the
    garbage collector to walk), and the connections subscribed. buffer[i] has pseq
    `pseq - len(buffer) + 1 + i`."""

    __slots__ = ("pseq", "buffer", "subscribers", "head")

    def __init__(self, keep: int):
        self.pseq = 0
        self.head = CHAIN_START           # the hash chain's head at pseq (docs/protocol.md)
        self.buffer: deque[bytes] = deque(maxlen=keep)
        self.subscribers: set[bytes] = set()


class Session:
    """What the server knows of one connection: whose it is, when it last spoke, whether the
    orders it placed go when it falls silent (`orders`: oid -> (market, cid), those still open),
    the last stream item it was sent, and whether its stream is suspended."""

    __slots__ = ("account", "last_seen", "cancel_on_disconnect", "orders", "delivered",
                 "suspended")

    def __init__(self, account: str, now: int):
        self.account = account
        self.last_seen = now
        self.cancel_on_disconnect = False
        self.orders: dict[int, tuple] = {}
        self.delivered = 0
        self.suspended = False


def _accounts_of(ev) -> tuple:
    """The accounts an event belongs to (a fill to both sides, once each)."""
    if type(ev) is M.Fill:
        if ev.taker_account == ev.maker_account:
            return (ev.taker_account,)
        return (ev.taker_account, ev.maker_account)
    account = getattr(ev, "account", None)
    return () if account is None else (account,)


# A private-stream item, {"stream": "private", "pseq": n, "hash": h, "event": {...}}, built from
# the event's bytes (encoded once for every destination) without decoding them again; `hash` is
# the stream's hash chain at pseq n (docs/protocol.md, "Hash chains").
_ITEM_HEAD = b"\x84\xa6stream\xa7private\xa4pseq"
_ITEM_HASH = b"\xa4hash\xc4\x10"          # 16 bytes of binary follow
_ITEM_EVENT = b"\xa5event"
OK, FULL, GONE = 0, 1, 2
CHAIN_START = bytes(16)                 # the head of a hash chain before its first event


def _chain(head: bytes, data: bytes) -> bytes:
    """The next head of a hash chain: blake2b-128 over the previous head and the event's bytes.
    O(len(data))."""
    return blake2b(head + data, digest_size=16).digest()
_MORE = zmq.NOBLOCK | zmq.SNDMORE


class Server:
    def __init__(self, cfg: Config, engine: Engine | None = None, plaintext_loopback=False,
                 oracle_sim=False, limits: Limits | None = None,
                 durability: Durability | None = None):
        self.cfg = cfg
        self.limits = lim = limits if limits is not None else Limits()
        self.engine = engine if engine is not None else Engine()
        self.codec = P.Codec(lim.max_deposit)
        self.encode = self.codec.encode
        self.seq = Sequencer(self.engine, durability)
        self.plaintext = plaintext_loopback
        if self.plaintext:
            for ep in (cfg.router, cfg.pub):
                if not ep.startswith(("tcp://127.", "tcp://localhost:", "tcp://[::1]:", "ipc://")):
                    raise ValueError(f"plain-text mode serves only loopback and ipc endpoints, "
                                     f"not {ep}")
        if self.plaintext:
            self.key_paths = {}
            self.by_key = {}
        else:
            self.key_paths = ensure_keys(cfg)
            self.by_key = {a.public_key.encode(): a for a in cfg.accounts.values()}
        self.max_connections = _raise_fd_limit(lim.max_connections)
        self.logins: dict[bytes, object] = {}       # plain-text mode: connection -> account
        self.sim = random.Random(1) if oracle_sim else None
        self.sim_index: dict[str, int] = {}
        self.sim_next = 0
        self.running = True
        self.writer = True                          # runs commands (a follower of the
                                                    # replicated log does not)
        self.poll_ms = 0                            # the loop's longest wait (0: the tick)
        self.replies: dict[str, Retries] = {}       # account -> its kept replies
        self.buckets: dict[str, dict] = {"request": {}, "order": {}, "cancel": {}}
        self.streams: dict[str, Stream] = {}        # account -> its private stream
        self.sessions: dict[bytes, Session] = {}    # connection -> its session
        self.owners: dict[int, Session] = {}        # open oid -> the session that placed it
        self.deadlines: dict[str, int] = {}         # account -> schedule_cancel time (ns)
        self.out: list = []                         # (connection, reply bytes), this turn
        self.held: deque = deque()                  # (seq, out, stream_out, pub_out, when
                                                    # written): turns written, not yet durable
                                                    # (pipelined)
        self.stream_out: list = []                  # (connection, item bytes, pseq), this turn
        self.pub_out: list = []                     # (topic, message bytes), this turn
        self.feed = None                            # the public feed (gateway/feed.py), made
                                                    # once the state is recovered
        self.feed_beat = 0                          # when the feed's next heartbeat is due (ns)
        self.notices: set[bytes] = set()            # suspended connections not yet told
        self.stats = {"internal_errors": 0, "dropped": 0, "suspended": 0}
        self.started = time.monotonic()
        self.tag = "unreadable"                     # the type of the request being handled
        self.metrics = None                         # gateway/observability.py, when configured
        self.handlers = {P.Heartbeat: self._heartbeat, P.Session: self._session,
                         P.ScheduleCancel: self._schedule_cancel, P.Subscribe: self._subscribe,
                         P.Book: self._book, P.Markets: self._markets,
                         P.Snapshot: self._snapshot, P.Health: self._health}
        self.recovered = self._start(durability is None)
        self.snapshot_asked = False
        # The feed starts from the books as recovered; recovery from a journal made it already
        # (its topics' seq and hash chains go on, gateway/journal.py).
        if self.feed is None:
            self.feed = Feed(self.engine, self.encode)
        self.ctx = zmq.Context()
        self.auth = None
        pub = sec = None
        if not self.plaintext:
            self.auth = GatedAuthenticator(self.ctx, self._full)
            self.auth.start()
            self.auth.configure_curve(domain="*",
                                      location=str((cfg.data_dir / "authorized").resolve()))
            pub, sec = zmq.auth.load_certificate(str(cfg.data_dir / "keys" / "server.key_secret"))
        self.router = self._socket(zmq.ROUTER, pub, sec)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.MAXMSGSIZE, lim.hard_limit)
        self.router.setsockopt(zmq.SNDHWM, lim.send_hwm)
        self.router.setsockopt(zmq.HANDSHAKE_IVL, lim.handshake_ms)
        if lim.sndbuf:
            self.router.setsockopt(zmq.SNDBUF, lim.sndbuf)
        self.connected: set[int] = set()            # fds of open connections (handshaking too)
        self.monitor = self.router.get_monitor_socket(
            zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self.router.bind(cfg.router)
        self.pub = self._socket(zmq.PUB, pub, sec)
        self.pub.setsockopt(zmq.SNDHWM, lim.pub_hwm)
        if lim.sndbuf:
            self.pub.setsockopt(zmq.SNDBUF, lim.sndbuf)
        self.pub.bind(cfg.pub)
        gc.freeze()             # what boot made (engine, config, decoders) is never collected

    def _socket(self, kind, pub, sec):
        s = self.ctx.socket(kind)
        if pub is not None:
            s.curve_publickey = pub
            s.curve_secretkey = sec
            s.curve_server = True
        s.linger = 0
        return s

    def _boot(self):
        """The configured markets and opening deposits, as sequenced commands. A market or a
        deposit that the engine refuses stops the boot with the engine's reason."""
        cmds = list(self.cfg.markets) + [M.Deposit(account=a.name, amount=a.deposit)
                                         for a in self.cfg.accounts.values() if a.deposit]
        for cmd in cmds:
            for ev in self.seq.run(self.seq.stamp(cmd)):
                if type(ev) is M.Rejected:
                    what = (f"market {ev.market}" if type(cmd) is M.CreateMarket
                            else f"the deposit of account {ev.account}")
                    raise BootError(f"{what}: the engine refuses it: {ev.reason}: {ev.detail}")
        self.seq.commit()

    def _start(self, journaled: bool) -> str | None:
        """With the journal (`[journal] enabled`, and no Durability given): recover the data
        folder, or boot it when it is new; returns what was recovered (gateway/journal.py).
        Otherwise boot."""
        if journaled and self.cfg.journal.enabled:
            return journal.recover(self)
        self._boot()
        return None

    def _maybe_snapshot(self):
        """Between turns: a snapshot every `snapshot_every` commands, or when asked (SIGUSR1)."""
        j = self.seq.durability
        if type(j) is journal.Journal and (self.snapshot_asked or journal.snapshot_due(self)):
            self.snapshot_asked = False
            journal.take_snapshot(self)

    # ---- the loop ----------------------------------------------------------------------------

    def serve_forever(self):
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        tick = max(10, min(200, self.cfg.session_timeout_ms // 4))
        tick_ns = tick * 1_000_000
        next_timers = 0
        drain = self.limits.drain
        recv = self.router.recv_multipart
        idle = self.poll_ms or tick
        while self.running:
            self._between()
            ready = dict(poller.poll(1 if self.held else idle))   # held turns: check soon
            if self.router in ready:
                for _ in range(drain):
                    try:
                        frames = recv(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._guarded(frames)
            if self.monitor in ready:
                self._connections()
            now = self.seq.now()
            if now >= next_timers:
                next_timers = now + tick_ns
                try:
                    self._timers(now)
                except Exception:       # noqa: BLE001 - the guard of the server's own work
                    self.stats["internal_errors"] += 1
                    log.exception("the server's own commands failed; serving on")
            self._flush()               # a failing Durability.sync() stops the server: nothing
                                        # may leave that is not durable
            self._maybe_snapshot()
        self._flush()
        if self.held:
            self._release(self.seq.durability, wait=True)

    def _between(self):
        """Between two loop turns (nothing of a turn is pending): the replicated mode's hook."""

    def _refuse(self, cls) -> str | None:
        """Why this server does not take commands now (the detail of an `unavailable` reply),
        or None: the replicated mode's hook."""
        return None

    def _guarded(self, frames):
        """The one guard: a request that fails in any unforeseen way is answered
        `internal_error`, logged with its traceback, and the loop goes on."""
        identity = frames[0].bytes
        started = time.perf_counter()
        self.tag = "unreadable"
        try:
            self._handle(identity, frames)
            if self.metrics is not None:
                self.metrics.requests.labels(self.tag).inc()
                self.metrics.latency.labels(self.tag).observe(time.perf_counter() - started)
        except Exception as e:          # noqa: BLE001 - this is the guard
            self.stats["internal_errors"] += 1
            log.exception("request from connection %s failed", identity.hex())
            rid = P.peek_req_id(frames[-1].bytes) if len(frames[-1]) <= self.limits.max_message \
                else None
            self._reply(identity, P.error(
                rid if isinstance(rid, (int, str)) else None, "internal_error",
                f"the server failed on this request ({type(e).__name__}) and logged it; what "
                f"it did before is in your private stream, and query_account tells your state"))

    def _reply(self, identity: bytes, message) -> bytes:
        if (self.metrics is not None and type(message) is dict
                and message.get("ok") is False):
            self.metrics.errors.labels(str(message.get("reason"))).inc()
        data = message if type(message) is bytes else self.encode(message)
        self.out.append((identity, data))
        return data

    def _flush(self):
        """Durable first (the seam), then everything of this turn leaves, none of it waiting.

        A pipelined Durability (the journal with fsync = "batch") makes a turn durable in its
        own thread: the turn's messages are held, with the journal seq they need, and the loop
        takes the next turn meanwhile; held turns leave in order, each once its seq is durable
        (`_release`). Nothing leaves before it is durable either way."""
        d = self.seq.durability
        self._feed_turn()               # the turn's public messages, before it is held
        if not getattr(d, "pipelined", False):
            if self.metrics is not None:
                with self.metrics.commit.time():
                    self.seq.commit()
            else:
                self.seq.commit()
            self._send_turn(self.out, self.stream_out, self.pub_out)
            self.out.clear()
            self.stream_out.clear()
            self.pub_out.clear()
        else:
            self.seq.write()
            if self.out or self.stream_out or self.pub_out:
                self.held.append((d.seq, self.out, self.stream_out, self.pub_out,
                                  time.perf_counter()))
                self.out, self.stream_out, self.pub_out = [], [], []
            self._release(d)
        if self.notices:
            self._tell_suspended()

    def _release(self, d, wait: bool = False):
        """Send the held turns that are durable now (with `wait`, all of them, once durable)."""
        held = self.held
        if wait and held:
            d.sync()
        while held and d.durable(held[0][0]):
            _, out, stream_out, pub_out, written = held.popleft()
            if self.metrics is not None:    # the journal lag this turn's messages waited
                self.metrics.commit.observe(time.perf_counter() - written)
            self._send_turn(out, stream_out, pub_out)

    def _send_turn(self, out, stream_out, pub_out):
        send = self._send
        for identity, data in out:
            send(identity, data)
        sessions = self.sessions
        for identity, data, pseq in stream_out:
            sess = sessions.get(identity)
            if sess is None or sess.suspended:
                continue
            if send(identity, data) == OK:
                sess.delivered = pseq
        for topic, data in pub_out:
            try:
                self.pub.send_multipart([topic, data], zmq.NOBLOCK)
            except zmq.Again:           # PUB drops at its bound; subscribers see the seq gap
                self.stats["dropped"] += 1

    def _send(self, identity: bytes, data: bytes) -> int:
        try:                            # two frames; ROUTER decides on the first (the identity)
            self.router.send(identity, _MORE)
            self.router.send(data, zmq.NOBLOCK)
            return OK
        except zmq.Again:               # its pipe is full: it is slow, and nobody waits for it
            self.stats["dropped"] += 1
            self._suspend(identity)
            return FULL
        except zmq.ZMQError:            # the peer left (ROUTER_MANDATORY says so)
            for st in self.streams.values():
                st.subscribers.discard(identity)
            self.notices.discard(identity)
            return GONE

    def _suspend(self, identity: bytes):
        """A connection that cannot keep up leaves its stream; it is told (`suspended`, with the
        last pseq it was sent) as soon as its pipe has room, and resumes with `subscribe`."""
        sess = self.sessions.get(identity)
        if sess is None or sess.suspended:
            return
        st = self.streams.get(sess.account)
        if st is None or identity not in st.subscribers:
            return
        st.subscribers.discard(identity)
        sess.suspended = True
        self.notices.add(identity)
        self.stats["suspended"] += 1
        log.warning("slow consumer: %s's private stream suspended", sess.account,
                    extra={"event": "slow_consumer", "account": sess.account})

    def _tell_suspended(self):
        for identity in list(self.notices):
            sess = self.sessions.get(identity)
            if sess is None:
                self.notices.discard(identity)
                continue
            notice = self.encode({
                "stream": "private", "suspended": True, "pseq": sess.delivered,
                "detail": "this connection fell behind and left the private stream after "
                          f"pseq {sess.delivered}; subscribe with resume_from to go on"})
            try:
                self.router.send_multipart([identity, notice], zmq.NOBLOCK)
            except zmq.Again:
                continue                # still full: try again next turn
            except zmq.ZMQError:
                pass
            self.notices.discard(identity)

    def _connections(self):
        """Count connections from the router's monitor (the ZAP gate reads the count). O(events)."""
        while True:
            try:
                frames = self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            event = int.from_bytes(frames[0][:2], "little")
            fd = int.from_bytes(frames[0][2:6], "little")
            if event == zmq.EVENT_ACCEPTED:
                self.connected.add(fd)
            elif event == zmq.EVENT_DISCONNECTED:
                self.connected.discard(fd)

    def _full(self) -> bool:
        """Whether the connection handshaking now is one too many (asked by the ZAP thread;
        it is counted already)."""
        return len(self.connected) > self.max_connections

    def _timers(self, now: int):
        """Sessions that fell silent (the orders they placed go, if they asked), the simulated
        oracle, and dead-man's switches that ran out: commands of the server's own."""
        timeout = self.cfg.session_timeout_ms * 1_000_000
        for identity, sess in list(self.sessions.items()):
            if now - sess.last_seen <= timeout:
                continue
            del self.sessions[identity]
            log.info("%s's session ended: no word for %d ms%s", sess.account,
                     self.cfg.session_timeout_ms,
                     " (its orders are cancelled)" if sess.cancel_on_disconnect else "",
                     extra={"event": "disconnect", "account": sess.account,
                            "cancel_on_disconnect": sess.cancel_on_disconnect,
                            "orders": len(sess.orders)})
            self.notices.discard(identity)
            st = self.streams.get(sess.account)
            if st is not None:
                st.subscribers.discard(identity)
            for oid, (market, cid) in list(sess.orders.items()):
                self.owners.pop(oid, None)
                if sess.cancel_on_disconnect and self.writer:
                    self._run(M.Cancel(account=sess.account, market=market, cid=cid, ts=now))
        if not self.writer:             # a follower runs no commands of its own
            return
        if self.sim is not None and now >= self.sim_next:
            self.sim_next = now + SIM_EVERY
            for spec in self.engine.specs:
                idx = self.sim_index.get(spec.name) or SIM_START.get(spec.name, 100_000)
                idx = max(1, round(idx * (1 + self.sim.gauss(0, 0.0005))))
                self.sim_index[spec.name] = idx
                self._run(M.Oracle(market=spec.name, price=idx, ts=now))
        for account in sorted(a for a, t in self.deadlines.items() if now >= t):
            del self.deadlines[account]
            self.seq.note(Deadline(account, None))
            self._run(M.CancelAll(account=account, ts=now))

    # ---- one request -------------------------------------------------------------------------

    def _handle(self, identity: bytes, frames):
        body = frames[-1]
        if self.plaintext:
            acct = self.logins.get(identity)
        else:
            user = body.get("User-Id")
            acct = self.by_key.get(user.encode() if isinstance(user, str) else user)
        if len(frames) != 2:
            self._reply(identity, P.error(None, "invalid_command",
                                          f"a request is one frame, got {len(frames) - 1}"))
            return
        if len(body) > self.limits.max_message:
            self._reply(identity, P.error(
                None, "too_large",
                f"a request is at most {self.limits.max_message} bytes, got {len(body)}"))
            return
        data = body.bytes
        try:
            req = self.codec.request.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as e:
            rid = P.peek_req_id(data)
            if acct is not None:
                limited = self._limited(acct.name, rid, self.seq.now(), request=1)
                if limited:
                    self._reply(identity, limited)
                    return
            self._reply(identity, P.error(rid, "invalid_command", P.invalid_detail(e)))
            return
        rid = req.req_id
        cls = type(req)
        self.tag = cls.tag
        if cls is P.Login:
            self._reply(identity, self._login(identity, req))
            return
        if acct is None:
            self._reply(identity, P.error(rid, "forbidden", "log in first (plain-text mode)"
                                          if self.plaintext else "this key belongs to no account"))
            return
        now = self.seq.now()
        if cls.command is not None:     # a command: its request token and its order or cancel
            is_cancel = cls.tag in P.CANCELS
            limited = self._limited(acct.name, rid, now, request=1, cancels=int(is_cancel),
                                    others=int(not is_cancel))
        else:
            limited = self._limited(acct.name, rid, now, request=P.weight(req))
        if limited:
            self._reply(identity, limited)
            return
        sess = self.sessions.get(identity)
        if sess is None:
            sess = self.sessions[identity] = Session(acct.name, now)
        sess.last_seen = now
        if cls.command is not None or cls is P.Batch or cls is P.ScheduleCancel:
            why = self._refuse(cls)
            if why is not None:
                seen = self.replies.get(acct.name)
                kept = seen.replies.get(rid) if seen is not None and rid is not None else None
                if kept is not None:            # a retry: its reply leaves once it is durable
                    self._reply(identity, kept)
                else:                           # nothing ran: it need not wait for held turns
                    self._send(identity, self.encode(P.error(rid, "unavailable", why)))
                return
        handler = self.handlers.get(cls)
        if cls is P.Health:             # at once, even while turns wait to be durable: what
            self._send(identity, self.encode(handler(acct, sess, identity, req, now)))
            return                      # an operator asks when the log is unavailable
        if handler is not None:
            self._reply(identity, handler(acct, sess, identity, req, now))
            return
        seen = self.replies.get(acct.name)
        if seen is None:
            seen = self.replies[acct.name] = Retries(self.limits.retry_window)
        if rid is not None:
            kept = seen.replies.get(rid)
            if kept is not None:        # a retry: the original reply, nothing redone
                self._reply(identity, kept)
                return
        reply = self._batch(acct, sess, req) if cls is P.Batch else self._one(acct, sess, req)
        data = self._reply(identity, reply)
        if rid is not None and reply.get("reason") != "rate_limited":
            seen.add(rid, data)
            self.seq.note(Reply(acct.name, rid, data))

    def _limited(self, account: str, rid, now_ns: int, request: int = 0, cancels: int = 0,
                 others: int = 0):
        """None, or the `rate_limited` reply saying when to retry. Tokens are taken only when
        every bucket asked has them. O(1)."""
        now = now_ns / 1e9
        lim = self.limits
        wait = 0.0
        taken = []
        for kind, n, (rate, burst) in (("request", request, lim.request_rate),
                                       ("cancel", cancels, lim.cancel_rate),
                                       ("order", others, lim.order_rate)):
            if n:
                b = self.buckets[kind].get(account)
                if b is None:
                    b = self.buckets[kind][account] = Bucket(rate, burst, now)
                w = b.take(n, now)
                if w:
                    wait = max(wait, w)
                else:
                    taken.append((b, n))
        if wait <= 0:
            return None
        for b, n in taken:
            b.tokens += n
        reply = P.error(rid, "rate_limited",
                        f"over the request rate; retry in {wait * 1000:.0f} ms")
        reply["retry_after_ms"] = int(wait * 1000) + 1
        return reply

    def _login(self, identity, req):
        if not self.plaintext:
            return P.error(req.req_id, "invalid_command",
                           "login exists only in plain-text mode; your key names your account")
        acct = self.cfg.accounts.get(req.account)
        if acct is None:
            return P.error(req.req_id, "forbidden", "no such account")
        self.logins[identity] = acct
        return {"req_id": req.req_id, "ok": True, "account": acct.name}

    def _heartbeat(self, acct, sess, identity, req, now):
        return {"req_id": req.req_id, "ok": True, "ts": now}

    def _session(self, acct, sess, identity, req, now):
        sess.cancel_on_disconnect = req.cancel_on_disconnect
        return {"req_id": req.req_id, "ok": True, "heartbeat_ms": self.cfg.heartbeat_ms,
                "session_timeout_ms": self.cfg.session_timeout_ms}

    def _schedule_cancel(self, acct, sess, identity, req, now):
        if req.after_ms is None:
            if self.deadlines.pop(acct.name, None) is not None:
                self.seq.note(Deadline(acct.name, None))
            return {"req_id": req.req_id, "ok": True, "at": None}
        self.deadlines[acct.name] = now + req.after_ms * 1_000_000
        self.seq.note(Deadline(acct.name, self.deadlines[acct.name]))
        return {"req_id": req.req_id, "ok": True, "at": self.deadlines[acct.name]}

    def _stream(self, account: str) -> Stream:
        st = self.streams.get(account)
        if st is None:
            st = self.streams[account] = Stream(self.limits.stream_buffer)
        return st

    def _subscribe(self, acct, sess, identity, req, now):
        """Join the account's private stream; with `resume_from`, first get what came after it."""
        st = self._stream(acct.name)
        since = req.resume_from
        missed = []
        if since is not None:
            if since > st.pseq:
                return P.error(req.req_id, "invalid_command",
                               f"resume_from must be an integer from 0 to {st.pseq}")
            oldest = st.pseq - len(st.buffer) + 1
            if since + 1 < oldest:
                return P.error(req.req_id, "resume_gap",
                               f"events after {since} are no longer kept (the oldest kept is "
                               f"{oldest}); subscribe afresh and ask query_account")
            n = st.pseq - since
            missed = [Raw(item) for item in list(st.buffer)[len(st.buffer) - n:]] if n else []
        st.subscribers.add(identity)
        sess.suspended = False
        sess.delivered = st.pseq
        self.notices.discard(identity)
        return {"req_id": req.req_id, "ok": True, "pseq": st.pseq, "hash": st.head,
                "missed": missed}

    def _book(self, acct, sess, identity, req, now):
        if req.market not in self.engine.market_names():
            return P.error(req.req_id, "invalid_command",
                           f"book takes a known `market`, not {req.market!r}")
        return {"req_id": req.req_id, "ok": True, "market": req.market,
                **self.engine.book(req.market, req.depth)}

    def health_facts(self) -> dict:
        """What `health` answers and the metrics' gauges read. O(markets)."""
        return {"seq": self.engine.seq, "clock": self.engine.clock,
                "commands": self.engine.n_commands,
                "uptime_s": round(time.monotonic() - self.started, 3),
                "connections": len(self.connected), "sessions": len(self.sessions),
                "markets": self.engine.market_names(), "internal_errors":
                    self.stats["internal_errors"], "suspended_streams": self.stats["suspended"],
                "dropped_messages": self.stats["dropped"]}

    def _health(self, acct, sess, identity, req, now):
        return {"req_id": req.req_id, "ok": True, **self.health_facts()}

    def _markets(self, acct, sess, identity, req, now):
        return {"req_id": req.req_id, "ok": True,
                "markets": [market_info(sp) for sp in self.engine.specs]}

    # ---- the public feed (gateway/feed.py) ----------------------------------------------------

    def _snapshot(self, acct, sess, identity, req, now):
        """The book as the last published `book` delta left it, with that delta's seq."""
        if req.market not in self.engine.market_names():
            return P.error(req.req_id, "invalid_command",
                           f"snapshot takes a known `market`, not {req.market!r}")
        return {"req_id": req.req_id, "ok": True, **self.feed.snapshot(req.market, req.depth)}

    def _feed_turn(self):
        """The turn's public messages (and, once a second, the feed's heartbeat) join pub_out."""
        now = self.seq.now()
        if now >= self.feed_beat:
            self.feed_beat = now + FEED_HEARTBEAT
            self.feed.heartbeat(now)
        self.pub_out.extend(self.feed.flush())

    # ---- commands ------------------------------------------------------------------------

    def _command(self, acct, req):
        """The engine command of one request (stamped now), or the reason and detail it is not
        one. O(fields)."""
        cls = type(req)
        if cls.command is None or cls.tag not in P.ROLES[acct.role]:
            allowed = P.ROLES[acct.role]
            return None, ("forbidden", f"a {acct.role} may not send {cls.tag!r}; it may send "
                                       f"{', '.join(sorted(allowed))}")
        fields = msgspec.structs.astuple(req)[:-1]              # less req_id, the last
        if cls.trader:
            return cls.command(acct.name, *fields, ts=self.seq.now()), None
        return cls.command(*fields, ts=self.seq.now()), None

    def _run(self, cmd, sess: Session | None = None) -> list:
        """Sequence one command and route its events, each encoded once: to the reply (the
        returned Raw list), to the private streams of its accounts and to the PUB. Tracks the
        orders a session placed, for cancel-on-disconnect. O(events * subscribers)."""
        events = self.seq.run(cmd)
        if self.metrics is not None:
            self.metrics.events(events)
        return self._route(events, sess)

    def _route(self, events, sess: Session | None) -> list:
        """`_run` after the engine: the events to the reply, the streams and the PUB (recovery
        replays the journal through this too, before the feed exists)."""
        encode = self.encode
        feed = self.feed.event if self.feed is not None else None
        raws = []
        for ev in events:
            data = encode(ev)
            raws.append(Raw(data))
            t = type(ev)
            if t is M.OrderAccepted:
                if sess is not None and ev.account == sess.account:
                    sess.orders[ev.oid] = (ev.market, ev.cid)
                    self.owners[ev.oid] = sess
            elif t is M.OrderCancelled:
                self._closed(ev.oid)
            elif t is M.LiquidationEvent:
                log.info("liquidation: %s %s %s %d at %d (%s)", ev.account, ev.market, ev.side,
                         ev.qty, ev.price, ev.kind,
                         extra={"event": "liquidation", "account": ev.account,
                                "market": ev.market, "side": ev.side, "qty": ev.qty,
                                "price": ev.price, "kind": ev.kind, "fee": ev.fee})
            elif t is M.Fill:
                if ev.taker_remaining == 0:
                    self._closed(ev.taker_oid)
                if ev.maker_remaining == 0:
                    self._closed(ev.maker_oid)
            if feed is not None:
                feed(ev)
            for account in _accounts_of(ev):
                st = self.streams.get(account)
                if st is None:
                    if account not in self.cfg.accounts:
                        continue
                    st = self._stream(account)
                st.pseq += 1
                st.head = _chain(st.head, data)
                item = b"".join((_ITEM_HEAD, encode(st.pseq), _ITEM_HASH, st.head, _ITEM_EVENT,
                                 data))
                st.buffer.append(item)
                for identity in st.subscribers:
                    self.stream_out.append((identity, item, st.pseq))
        return raws

    def _closed(self, oid: int):
        sess = self.owners.pop(oid, None)
        if sess is not None:
            sess.orders.pop(oid, None)

    def _one(self, acct, sess, req):
        """One command (its budget was taken in `_handle`)."""
        cmd, why = self._command(acct, req)
        if cmd is None:
            return P.error(req.req_id, *why)
        return {"req_id": req.req_id, "ok": True, "events": self._run(cmd, sess)}

    def _batch(self, acct, sess, req):
        """Several commands in one request: cancels run first, then the rest, each in request
        order; one status per item, in request order. O(items)."""
        n = len(req.items)
        if not 0 < n <= self.limits.max_batch:
            return P.error(req.req_id, "invalid_command",
                           f"a batch has `items`: a list of 1 to {self.limits.max_batch} commands")
        decoded: list = [None] * n
        results: list = [None] * n
        cancels, rest = [], []
        for i, item in enumerate(req.items):
            try:
                it = decoded[i] = self.codec.item.decode(item)
            except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as e:
                results[i] = {"ok": False, "reason": "invalid_command",
                              "detail": P.invalid_detail(e)}
                continue
            if it.req_id is not None:
                results[i] = {"ok": False, "reason": "invalid_command",
                              "detail": "a batch item has no req_id of its own"}
                continue
            (cancels if it.tag in P.CANCELS else rest).append(i)
        limited = self._limited(acct.name, req.req_id, self.seq.now(), cancels=len(cancels),
                                others=len(rest))
        if limited:
            return limited
        for i in cancels + rest:
            cmd, why = self._command(acct, decoded[i])
            if cmd is None:
                results[i] = {"ok": False, "reason": why[0], "detail": why[1]}
                continue
            results[i] = {"ok": True, "events": self._run(cmd, sess)}
        return {"req_id": req.req_id, "ok": True, "results": results}

    def close(self):
        self.seq.commit()
        if hasattr(self.seq.durability, "close"):
            self.seq.durability.close()
        if self.auth is not None:
            self.auth.stop()
        self.ctx.destroy(linger=0)


def market_info(sp) -> dict:
    """What a client needs to trade in a market and to compute its own margin (the `markets`
    reply; docs/protocol.md)."""
    tiers = [{"max_notional": t.max_notional, "imf_ppm": t.imf_ppm, "mmf_ppm": t.mmf_ppm,
              "imf_deduction": t.imf_deduction, "mmf_deduction": t.mmf_deduction}
             for t in sp.tiers]
    return {"market": sp.name, "tick_size": str(sp.tick_size), "lot_size": str(sp.lot_size),
            "min_qty": sp.min_qty, "max_price": sp.max_price, "max_qty": sp.max_qty,
            "multiplier": sp.multiplier, "maker_fee_ppm": sp.maker_fee_ppm,
            "taker_fee_ppm": sp.taker_fee_ppm, "liquidation_fee_ppm": sp.liquidation_fee_ppm,
            "imf_ppm": sp.imf_ppm, "mmf_ppm": sp.mmf_ppm, "tiers": tiers,
            "max_leverage": 1_000_000 // (sp.tiers[0].imf_ppm if sp.tiers else sp.imf_ppm),
            "price_band_ppm": sp.price_band_ppm, "funding_interval_s": sp.funding_interval_s,
            "funding_cap_ppm": sp.funding_cap_ppm, "interest_ppm": sp.interest_ppm,
            "oracle_max_age_s": sp.oracle_max_age_s,
            "max_orders_per_account": sp.max_orders_per_account}


def _raise_fd_limit(max_connections: int) -> int:
    """Raise the soft limit on open files to what `max_connections` needs (within the hard
    limit); returns the number of connections the process can really hold."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + FD_SPARE
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft != resource.RLIM_INFINITY and soft - FD_SPARE < max_connections:
        log.warning("open-file limit %d: at most %d connections", soft, soft - FD_SPARE)
        return max(1, soft - FD_SPARE)
    return max_connections


def run(cfg: Config, out=sys.stdout, plaintext_loopback=False, oracle_sim=False,
        limits: Limits | None = None, durability: Durability | None = None) -> int:
    logs = configure_logging(cfg.log_format, sys.stderr)
    make = Server
    if cfg.replication.enabled:
        from .replication import ReplicatedServer as make
    server = make(cfg, plaintext_loopback=plaintext_loopback, oracle_sim=oracle_sim,
                    limits=limits, durability=durability)
    if cfg.metrics:
        server.metrics = Metrics(server)
        server.metrics.serve(cfg.metrics)
    signals = []

    def stop(signum, _frame):
        signals.append(signal.Signals(signum).name)
        server.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, lambda *_: setattr(server, "snapshot_asked", True))
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
    if cfg.metrics:
        out.write(f"metrics: http://{cfg.metrics}/metrics\n")
    if server.recovered:
        out.write(server.recovered + "\n")
    out.flush()
    log.info("started", extra={"event": "start", "router": cfg.router, "pub": cfg.pub,
                               "markets": server.engine.market_names(),
                               "accounts": len(cfg.accounts), "metrics": cfg.metrics or None})
    try:
        server.serve_forever()
    finally:
        server.close()
        stop_logging(logs)               # what is queued is written (for 2 s at most)
    st = server.stats
    out.write(f"perpdex stopped ({', '.join(signals) or 'asked'}): "
              f"{server.seq.n_commands} commands sequenced, the last batch made durable, "
              f"sockets closed; {st['internal_errors']} internal errors, {st['dropped']} "
              f"messages dropped for slow connections, {st['suspended']} streams suspended\n")
    out.flush()
    return 0
