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
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections import deque
from itertools import islice
from hashlib import blake2b
from pathlib import Path

import msgspec
import zmq
import zmq.auth
import zmq.utils.garbage
from msgspec import Raw
from zmq.auth.thread import ThreadAuthenticator

from perpdex.engine import Engine, messages as M

from . import protocol as P
from .config import Config
from . import journal
from .durability import Deadline, Durability, Reply, Sequencer
from .feed import Feed
from .gate import Gate, Listener, open_descriptors
from .gate import fit as fit_descriptors
from .limits import Limits
from .observability import BindError, Endpoints, Metrics, configure_logging, stop_logging

log = logging.getLogger("perpdex.gateway")

SIM_START = {"BTC-PERP": 650_000, "ETH-PERP": 300_000}    # the simulated oracle's first prices
SIM_EVERY = 250_000_000                                   # ns between simulated oracle prices
STOP_WITHIN_S = 10                      # a server whose thread failed exits (code 3) by then
BOOT_DESCRIPTORS = 32                   # what boot opens besides connections (the ZeroMQ
                                        # context and sockets, the journal; gateway/gate.py)
FEED_HEARTBEAT = 1_000_000_000          # ns between the public feed's heartbeats
LIVE_WITHIN_S = 10.0                    # /healthz: the loop turned within this


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


def check_endpoints(cfg: Config) -> None:
    """Before anything is made on disk: bind each of the server's endpoints once, on a scratch
    context, and let go. A taken, malformed or foreign endpoint stops the start here
    (BindError naming it), so that a failed start leaves no data folder behind."""
    if cfg.router == cfg.pub:
        raise BindError(f"cannot serve: requests and public events are both given {cfg.router}; "
                        f"they need an endpoint each")
    ctx = zmq.Context()
    try:
        for ep in (cfg.router, cfg.pub):
            s = ctx.socket(zmq.PUB)
            try:
                s.bind(ep)
            except zmq.ZMQError as e:       # its text names the endpoint: (addr='tcp://...')
                raise BindError(f"cannot serve: {e}") from None
            finally:
                s.close(linger=0)
    finally:
        ctx.term()


def _holds_a_venue(data_dir: Path) -> bool:
    """Whether a data folder holds a venue already (a journal segment or a snapshot)."""
    return bool(journal.segments(data_dir / "journal")) or any(
        (data_dir / "snapshots").glob("*.snapshot"))


def _boot_deposits(jdir: Path) -> dict | None:
    """{account: amount} of the deposits in a journal's first turn (the configured ones, made
    when the data folder was new); None when that turn is no longer there. O(first segment)."""
    out: dict = {}
    n = -1
    try:
        for n, (seq, kind, payload) in enumerate(journal.read(jdir, 0, strict_start=False)):
            if n == 0 and seq != 1:
                return None
            if kind == journal.TURN:
                return out
            if kind == journal.COMMAND:
                cmd = journal.decode(kind, payload)
                if type(cmd) is M.Deposit:
                    out[cmd.account] = out.get(cmd.account, 0) + cmd.amount
    except journal.JournalError:
        return None
    return out if n >= 0 else None                # an empty journal: that turn is gone


class GatedAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP authenticator, refusing a handshake on a socket that holds its most
    connections, or from an address that holds its most on that socket (ZAP status 400, "too
    many connections ..."; the counts are the gate's, gateway/gate.py). The sockets' ZAP
    domains name them: `requests`, `public`."""

    def __init__(self, ctx, gate):
        super().__init__(ctx)
        self.gate = gate
        self.peer = ("", "")                # (domain, address) of the request being handled
        self.failure: BaseException | None = None

    async def handle_zap_message(self, msg):
        self.peer = (msg[2].decode(errors="replace") if len(msg) > 3 else "",
                     msg[3].decode(errors="replace") if len(msg) > 3 else "")
        try:
            await super().handle_zap_message(msg)
        except BaseException as e:      # the thread ends; the server sees why and stops
            self.failure = e
            raise

    async def _authenticate_curve(self, domain, client_key):
        gate = self.gate()
        why = gate.over(*self.peer) if gate is not None else None
        if why is not None:
            log.warning("handshake refused: %s", why,
                        extra={"event": "auth_refused", "why": why, "socket": self.peer[0],
                               "address": self.peer[1]})
            return False, why.encode()
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
    """An account's retry cache: the last `keep` req_ids of its commands and batches, and the
    replies of the newest of them, encoded (bytes: nothing for the garbage collector to walk),
    at most `max_bytes` in all. Over the bytes, the oldest replies drop first; their ids stay
    (`replies[rid]` is None) until `keep` newer ids pass, so that a retry of one is answered
    `reply_dropped`, never run twice. A reply larger than `max_bytes` is not kept at all.
    O(1) a lookup, an insert, an eviction (amortised)."""

    __slots__ = ("keep", "max_bytes", "replies", "order", "kept", "bytes")

    def __init__(self, keep: int, max_bytes: int | None = None):
        self.keep = keep
        self.max_bytes = max_bytes if max_bytes is not None else Limits.retry_bytes
        self.replies: dict = {}             # req_id -> reply bytes, or None: dropped
        self.order: deque = deque()         # every req_id kept, oldest first
        self.kept: deque = deque()          # the req_ids whose reply is kept, oldest first
        self.bytes = 0                      # the bytes of the kept replies

    def add(self, req_id, reply: bytes | None):
        old = self.replies.get(req_id, False)
        if old is False:
            self.order.append(req_id)
            if len(self.order) > self.keep:
                gone = self.order.popleft()
                data = self.replies.pop(gone)
                if data is not None:
                    self.bytes -= len(data)
                    self.kept.popleft()         # the oldest kept is the oldest id
        elif old is not None:                   # replaced (a journal replayed twice)
            self.bytes -= len(old)
            self.kept.remove(req_id)
        if reply is None or len(reply) > self.max_bytes:
            self.replies[req_id] = None
        else:
            self.replies[req_id] = reply
            self.kept.append(req_id)
            self.bytes += len(reply)
        self.trim()

    def trim(self):
        """Drop the oldest replies until the kept ones fit `max_bytes`."""
        while self.bytes > self.max_bytes:
            rid = self.kept.popleft()
            self.bytes -= len(self.replies[rid])
            self.replies[rid] = None


class _RetryBooks(dict):
    """account -> Retries, each held to the server's byte bound whoever made it (recovery in
    gateway/journal.py makes them too)."""

    def __init__(self, max_bytes: int):
        super().__init__()
        self.max_bytes = max_bytes

    def __setitem__(self, account, retries):
        retries.max_bytes = self.max_bytes
        retries.trim()
        super().__setitem__(account, retries)


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


class OwnFill(msgspec.Struct, tag_field="type", tag="fill", frozen=True, gc=False):
    """A fill as one side sees it (docs/protocol.md, "Fills"): the private stream's and a
    trader's replies'. Its own order's side, cid, oid, remaining and fee, and nothing of the
    counterparty's: no account, cid, oid, remaining or fee. `trade_id` is the engine's seq of
    the fill, the public trade's `trade_id`; `liquidity` says whether this side was the maker
    or the taker."""
    seq: int
    ts: int
    account: M.AccountId
    market: str
    side: str
    cid: M.Cid
    oid: int
    price: int
    qty: int
    remaining: int
    fee: int
    liquidity: str
    liquidation: bool
    trade_id: int


def own_fills(ev) -> tuple:
    """A fill's two sides, each as its own account sees it: ((account, OwnFill), ...), the
    taker's first (a self-match gives the account both, as two fills). O(1)."""
    maker_side = "sell" if ev.taker_side == "buy" else "buy"
    return ((ev.taker_account, OwnFill(
                ev.seq, ev.ts, ev.taker_account, ev.market, ev.taker_side, ev.taker_cid,
                ev.taker_oid, ev.price, ev.qty, ev.taker_remaining, ev.taker_fee, "taker",
                ev.liquidation, ev.seq)),
            (ev.maker_account, OwnFill(
                ev.seq, ev.ts, ev.maker_account, ev.market, maker_side, ev.maker_cid,
                ev.maker_oid, ev.price, ev.qty, ev.maker_remaining, ev.maker_fee, "maker",
                ev.liquidation, ev.seq)))


def private_views(ev, encode) -> tuple:
    """What of one engine event goes to which private stream, encoded: ((account, bytes),
    ...). A fill goes to each side as that side's `OwnFill`; any other event to the account
    it names, as the engine wrote it; an event naming no account to none. O(1)."""
    if type(ev) is M.Fill:
        return tuple((account, encode(view)) for account, view in own_fills(ev))
    account = getattr(ev, "account", None)
    return () if account is None else ((account, encode(ev)),)


# A private-stream item, {"stream": "private", "pseq": n, "hash": h, "event": {...}}, built from
# the event's bytes (encoded once for every destination) without decoding them again; `hash` is
# the stream's hash chain at pseq n (docs/protocol.md, "Hash chains").
_ITEM_HEAD = b"\x84\xa6stream\xa7private\xa4pseq"
_ITEM_HASH = b"\xa4hash\xc4\x10"          # 16 bytes of binary follow
_ITEM_EVENT = b"\xa5event"
OK, FULL, GONE = 0, 1, 2
TRACK = 64 * 1024                       # bytes: a message this large, or the first after this
                                        # many untracked bytes to a connection, is tracked
CHAIN_START = bytes(16)                 # the head of a hash chain before its first event


def _item_hash(item: bytes, pseq: int) -> bytes:
    """The `hash` of a private-stream item (its chain's head at `pseq`), read from its bytes."""
    at = len(_ITEM_HEAD) + len(msgspec.msgpack.encode(pseq)) + len(_ITEM_HASH)
    return item[at:at + 16]


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
        self.turned = time.monotonic()              # the loop's last turn (`liveness`)
        self.serving = False                        # the loop runs (`readiness`)
        self.limits = lim = limits if limits is not None else cfg.limits
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
        # The descriptors it may need at most, checked against RLIMIT_NOFILE before anything
        # is opened (gateway/gate.py; DescriptorBudget stops the start with a sentence).
        self.descriptors = fit_descriptors(lim, max(0, open_descriptors()) + BOOT_DESCRIPTORS)
        self.max_connections = lim.max_connections
        self.logins: dict[bytes, object] = {}       # plain-text mode: connection -> account
        self.sim = random.Random(1) if oracle_sim else None
        self.sim_index: dict[str, int] = {}
        self.sim_next = 0
        self.running = True
        self.writer = True                          # runs commands (a follower of the
                                                    # replicated log does not)
        self.poll_ms = 0                            # the loop's longest wait (0: the tick)
        self.replies = _RetryBooks(lim.retry_bytes)  # account -> its kept replies
        self.buckets: dict[str, dict] = {"request": {}, "order": {}, "cancel": {}}
        self.streams: dict[str, Stream] = {}        # account -> its private stream
        self.sessions: dict[bytes, Session] = {}    # connection -> its session
        self.spends: dict[str, Spend] = {}          # account -> the bytes its connections hold
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
        self.stats = {"internal_errors": 0, "dropped": 0, "suspended": 0, "over_bytes": 0,
                      "replies_dropped": 0}
        self.failed: tuple | None = None            # (thread, error): the server stops
        self.log_listener = None                    # the log writer thread's (run() sets it)
        self.gate = None                            # gateway/gate.py, once the sockets exist
        self._fd_at, self._fd_open = -1.0, -1       # descriptors open, counted then
        self.started = time.monotonic()
        self.tag = "unreadable"                     # the type of the request being handled
        self.metrics = None                         # gateway/observability.py, when configured
        self.handlers = {P.Heartbeat: self._heartbeat, P.Session: self._session,
                         P.ScheduleCancel: self._schedule_cancel, P.Subscribe: self._subscribe,
                         P.Book: self._book, P.Markets: self._markets,
                         P.Snapshot: self._snapshot, P.Health: self._health}
        folder = durability is None and cfg.journal.enabled and not cfg.replication.enabled
        existing = folder and _holds_a_venue(cfg.data_dir)
        self.recovered = self._start(durability is None)
        if existing:
            self._against_config()
        self.snapshot_asked = False
        # The feed starts from the books as recovered; recovery from a journal made it already
        # (its topics' seq and hash chains go on, gateway/journal.py).
        if self.feed is None:
            self.feed = Feed(self.engine, self.encode)
        self.ctx = zmq.Context()
        self.auth = None
        pub = sec = None
        if not self.plaintext:
            self.auth = GatedAuthenticator(self.ctx, lambda: self.gate)
            self.auth.start()
            for domain in ("requests", "public"):   # the ZAP domains of the two sockets
                self.auth.configure_curve(domain=domain, location=str(
                    (cfg.data_dir / "authorized").resolve()))
            pub, sec = zmq.auth.load_certificate(str(cfg.data_dir / "keys" / "server.key_secret"))
        self.router = self._socket(zmq.ROUTER, pub, sec, b"requests")
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.MAXMSGSIZE, lim.hard_limit)
        self.router.setsockopt(zmq.SNDHWM, lim.send_hwm)
        self.pub = self._socket(zmq.PUB, pub, sec, b"public")
        self.pub.setsockopt(zmq.SNDHWM, lim.pub_hwm)
        self.pub.setsockopt(zmq.MAXMSGSIZE, 4096)   # subscriptions: topics are short
        listeners = {"requests": Listener("requests", self.router, lim.max_connections,
                                          lim.max_per_address),
                     "public": Listener("public", self.pub, lim.max_subscribers,
                                        lim.max_per_address)}
        self.router.bind(cfg.router)
        self.pub.bind(cfg.pub)
        self.gate = Gate(listeners)
        self.gate.start()
        # pyzmq's garbage-collector thread (which tells trackers that ZeroMQ is done with a
        # message, `_send`) starts with the first zero-copy frame: at boot, not mid-turn.
        zmq.Frame(b"boot", track=True, copy=False)
        self.descriptors["held_after_boot"] = open_descriptors()
        gc.freeze()             # what boot made (engine, config, decoders) is never collected

    def _socket(self, kind, pub, sec, domain: bytes):
        """A server socket: CURVE (unless plain text), its ZAP domain naming it, the handshake
        deadline, the listen backlog and the kernel send buffer of the limits."""
        s = self.ctx.socket(kind)
        if pub is not None:
            s.curve_publickey = pub
            s.curve_secretkey = sec
            s.curve_server = True
            s.zap_domain = domain
        s.linger = 0
        lim = self.limits
        s.setsockopt(zmq.HANDSHAKE_IVL, lim.handshake_ms)
        s.setsockopt(zmq.BACKLOG, lim.backlog)
        if lim.sndbuf:
            s.setsockopt(zmq.SNDBUF, lim.sndbuf)
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

    def config_differences(self) -> tuple[list, str | None]:
        """How the configuration's markets and deposits differ from the recovered state: the
        markets the engine has (every parameter a client sees, `market_info`), and the deposits
        the data folder was booted with (its journal's first turn); and a note when those
        deposits cannot be read (that turn's segment was deleted). O(markets + accounts)."""
        from perpdex.engine.markets import market_spec
        diffs = []
        have = {sp.name: market_info(sp) for sp in self.engine.specs}
        want = {mk.market: market_info(market_spec(mk)) for mk in self.cfg.markets}
        for name, spec in want.items():
            if name not in have:
                diffs.append(f"market {name} is configured but not in the data folder")
                continue
            for key, value in spec.items():
                if have[name][key] != value:
                    diffs.append(f"market {name}: {key} is {value!r} in the configuration, "
                                 f"{have[name][key]!r} in the data folder")
        diffs += [f"the data folder has market {name}, which the configuration does not"
                  for name in have if name not in want]
        booted = _boot_deposits(self.cfg.data_dir / "journal")
        if booted is None:
            return diffs, ("the deposits were not compared: the journal's first turn is no "
                           "longer in the data folder")
        wanted = {a.name: a.deposit for a in self.cfg.accounts.values() if a.deposit}
        for name in sorted(set(wanted) | set(booted), key=str):
            if wanted.get(name, 0) != booted.get(name, 0):
                diffs.append(f"accounts.{name}.deposit is {wanted.get(name, 0)} in the "
                             f"configuration, {booted.get(name, 0)} when the data folder was "
                             f"booted")
        return diffs, None

    def _against_config(self):
        """A data folder that holds a venue is that venue: a configuration whose markets or
        deposits differ stops the start (BootError naming each difference), unless told that
        the state wins (`--state-wins`: then it is said, and served as recovered)."""
        diffs, note = self.config_differences()
        if note is not None:
            self.recovered = f"{self.recovered}\nperpdex: {note}"
        if not diffs:
            return
        said = (f"the configuration differs from the data folder {self.cfg.data_dir}: "
                + "; ".join(diffs))
        if self.cfg.state_wins:
            log.warning("%s; serving the data folder's state (--state-wins)", said,
                        extra={"event": "config_differs", "differences": diffs})
            self.recovered = (f"{self.recovered}\nperpdex: {said}; serving the data folder's "
                              f"state, as --state-wins asks")
            return
        close = getattr(self.seq.durability, "close", None)
        if close is not None:
            close()                     # its thread and its lock go before the refusal
        raise BootError(f"{said}. A data folder keeps the venue it holds (deposits are "
                        f"credited once, when it is new): make the configuration match it, "
                        f"ask an admin (deposit, create_market, update_market), or serve the "
                        f"folder as it is with --state-wins (docs/config.md)")

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
        tick = max(10, min(200, self.cfg.session_timeout_ms // 4))
        tick_ns = tick * 1_000_000
        next_timers = 0
        drain = self.limits.drain
        recv = self.router.recv_multipart
        idle = self.poll_ms or tick
        self.serving = True
        while self.running:
            self.turned = time.monotonic()
            if self._watch():           # a thread of the server failed: it stops, loudly
                break
            self._between()
            ready = dict(poller.poll(1 if self.held else idle))   # held turns: check soon
            if self.router in ready:
                for _ in range(drain):
                    try:
                        frames = recv(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._guarded(frames)
            now = self.seq.now()
            if now >= next_timers:
                next_timers = now + tick_ns
                try:
                    self._timers(now)
                except Exception:       # noqa: BLE001 - the guard of the server's own work
                    self.stats["internal_errors"] += 1
                    log.exception("the server's own commands failed; serving on")
            try:
                self._flush()           # a failing Durability.sync() stops the server: nothing
                                        # may leave that is not durable
                self._maybe_snapshot()
            except Exception:
                if self._watch():       # a failed thread explains it: the loud stop
                    break
                raise
        if self.failed is not None:     # nothing more can be made durable, or watched: what
            return                      # is held stays unsent (it was never acknowledged)
        self._flush()
        if self.held:
            self._release(self.seq.durability, wait=True)

    def threads(self) -> dict:
        """Each thread of the server: name -> the exception that stopped it, "dead" when it
        ended without one, or None while it runs. O(threads)."""
        out = {}
        j = self.seq.durability
        failure = getattr(j, "failure", None) or getattr(j, "error", None)
        t = getattr(j, "thread", None)
        if failure is not None:
            out["journal"] = failure
        elif t is not None and not t.is_alive() and not getattr(j, "closed", False):
            out["journal"] = "dead"
        elif t is not None or type(j) is journal.Journal:
            out["journal"] = None
        if self.auth is not None:
            t = self.auth.thread
            out["zap"] = None if t is not None and t.is_alive() else (self.auth.failure or
                                                                      "dead")
        if self.gate is not None:
            out["gate"] = self.gate.failure or (None if self.gate.is_alive() else "dead")
        if self.log_listener is not None:
            t = getattr(self.log_listener, "_thread", None)
            out["log"] = None if t is not None and t.is_alive() else "dead"
        link = getattr(self, "link", None)     # replicated mode: the NATS client's thread
        t = getattr(link, "thread", None)
        if t is not None:
            out["nats"] = None if t.is_alive() else "dead"
        zgc = getattr(zmq.utils.garbage.gc, "thread", None)
        if zgc is not None:             # pyzmq's: trackers are told through it
            out["zmq_gc"] = None if zgc.is_alive() else "dead"
        if self.metrics is not None and self.metrics.thread is not None:
            out["metrics"] = None if self.metrics.thread.is_alive() else "dead"
        return out

    def _watch(self) -> bool:
        """Every loop turn: has a thread of the server failed? Then the server stops, loudly
        (a `thread_failed` line at level critical, the metric, exit code 3): a process that
        answers `health` while it cannot make anything durable, or keep its connections
        bounded, helps nobody. O(threads)."""
        if self.failed is not None:
            return True
        for name, why in self.threads().items():
            if why is None or (name == "gate" and self.gate.stopping):
                continue
            error = why if isinstance(why, str) else f"{type(why).__name__}: {why}"
            self.failed = (name, error)
            self.running = False
            if self.metrics is not None:
                self.metrics.thread_failures.labels(name).inc()
            log.critical("the %s thread failed (%s): the server stops", name, error,
                         extra={"event": "thread_failed", "failed_thread": name,
                                "error": error})
            if name == "log":           # nobody writes the line above: say it on stderr
                sys.stderr.write(f"perpdex: the log thread failed ({error}): the server "
                                 f"stops\n")
            return True
        return False

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
        """One message to one connection, never waiting. FULL when its pipe holds `send_hwm`
        messages, or when what it may still hold in this process is over `send_bytes`, or what
        all its account's connections may hold is over `account_send_bytes` (the connection is
        then slow: the message is dropped and its stream suspended); GONE when the peer left.
        A message always goes when nothing (at most TRACK bytes) is queued. A message of TRACK bytes or more, or the first after TRACK untracked
        bytes, is sent tracked: ZeroMQ says when it is done with it, and so with everything
        before it (`Session.queued`). O(1) amortised."""
        sess = self.sessions.get(identity)
        router = self.router
        try:                            # two frames; ROUTER decides on the first (the identity)
            if sess is None:            # no session: only short error replies go here
                router.send(identity, _MORE)
                router.send(data, zmq.NOBLOCK)
                return OK
            n = len(data)
            lim = self.limits
            queued = sess.recount()
            spend = sess.spend
            if (queued > TRACK and queued + n > lim.send_bytes) or (
                    spend.total + n > lim.account_send_bytes           # stale, never low:
                    and TRACK < spend.refresh()                         # count them again
                    and spend.total + n > lim.account_send_bytes):
                self.stats["dropped"] += 1
                self.stats["over_bytes"] += 1
                self._suspend(identity)
                return FULL
            router.send(identity, _MORE)
            if n >= TRACK or sess.sent - sess.mark >= TRACK:
                tracker = router.send(zmq.Frame(data, track=True, copy=False), zmq.NOBLOCK,
                                      copy=False, track=True)
                sess.sent += n
                sess.mark = sess.sent
                sess.trackers.append((tracker, sess.sent))
            else:
                router.send(data, zmq.NOBLOCK)
                sess.sent += n
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

    def _timers(self, now: int):
        """Sessions that fell silent (the orders they placed go, if they asked), the simulated
        oracle, and dead-man's switches that ran out: commands of the server's own."""
        timeout = self.cfg.session_timeout_ms * 1_000_000
        for identity, sess in list(self.sessions.items()):
            if now - sess.last_seen <= timeout:
                continue
            del self.sessions[identity]
            sess.end()
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
            spend = self.spends.get(acct.name)
            if spend is None:
                spend = self.spends[acct.name] = Spend()
            sess = self.sessions[identity] = Session(acct.name, now, spend)
        sess.last_seen = now
        if cls.command is not None or cls is P.Batch or cls is P.ScheduleCancel:
            why = self._refuse(cls)
            if why is not None:
                seen = self.replies.get(acct.name)
                kept = seen.replies.get(rid, False) if seen is not None and rid is not None \
                    else False
                if kept is None:                # a retry whose reply was dropped
                    self._reply(identity, self._dropped(rid))
                elif kept is not False:         # a retry: its reply leaves once it is durable
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
            seen = self.replies[acct.name] = Retries(self.limits.retry_window,
                                                     self.limits.retry_bytes)
        if rid is not None:
            kept = seen.replies.get(rid, False)
            if kept is None:            # a retry whose reply was dropped: nothing redone either
                self._reply(identity, self._dropped(rid))
                return
            if kept is not False:       # a retry: the original reply, nothing redone
                self._reply(identity, kept)
                return
        reply = self._batch(acct, sess, req) if cls is P.Batch else self._one(acct, sess, req)
        data = self._reply(identity, reply)
        if rid is not None and reply.get("reason") != "rate_limited":
            seen.add(rid, data)
            self.seq.note(Reply(acct.name, rid, data))

    def _dropped(self, rid) -> dict:
        """The answer to a retry whose reply the retry cache no longer holds (its bytes went
        to newer replies); the request ran once and is not run again."""
        self.stats["replies_dropped"] += 1
        lim = self.limits
        return P.error(rid, "reply_dropped",
                       f"req_id {rid!r} was run once, but its reply is no longer kept (an "
                       f"account's last {lim.retry_window:,} req_ids are remembered, their "
                       f"replies up to {lim.retry_bytes:,} bytes, the oldest dropped first); "
                       f"it is not run again: your private stream and query_account tell what "
                       f"it did")

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
        after = math.ceil(wait * 1000)         # whole ms, never 0: by then the tokens are there
        reply = P.error(rid, "rate_limited", f"over the request rate; retry in {after} ms")
        reply["retry_after_ms"] = after
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
        """Join the account's private stream; with `resume_from`, first get what came after it,
        a page of at most `resume_bytes` (and at least one item) a reply. A reply with `more`
        leaves the connection out of the stream: `pseq` and `hash` are those of its last item,
        and the client asks again from there (docs/protocol.md). O(page)."""
        st = self._stream(acct.name)
        since = req.resume_from
        missed = []
        pseq, head = st.pseq, st.head
        more = False
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
            budget = self.limits.resume_bytes
            size = 0
            last = b""
            for item in islice(st.buffer, len(st.buffer) - n, None):
                if missed and size + len(item) > budget:
                    break
                missed.append(Raw(item))
                size += len(item)
                last = item
            if len(missed) < n:
                more = True
                pseq = since + len(missed)
                head = _item_hash(last, pseq)
        if more:                        # not in the stream until the last page
            st.subscribers.discard(identity)
            self.notices.discard(identity)
            return {"req_id": req.req_id, "ok": True, "pseq": pseq, "hash": head,
                    "missed": missed, "more": True}
        st.subscribers.add(identity)
        sess.suspended = False
        sess.delivered = st.pseq
        self.notices.discard(identity)
        return {"req_id": req.req_id, "ok": True, "pseq": pseq, "hash": head,
                "missed": missed, "more": False}

    def _book(self, acct, sess, identity, req, now):
        if req.market not in self.engine.market_names():
            return P.error(req.req_id, "invalid_command",
                           f"book takes a known `market`, not {req.market!r}")
        return {"req_id": req.req_id, "ok": True, "market": req.market,
                **self.engine.book(req.market, req.depth)}

    def health_facts(self) -> dict:
        """What `health` answers and the metrics' gauges read (docs/observability.md).
        O(markets + threads); the process's descriptors are counted at most once a second."""
        gate = self.gate
        gates = gate.facts() if gate is not None else {}
        now = time.monotonic()
        if now - self._fd_at >= 1.0:
            self._fd_at, self._fd_open = now, open_descriptors()
        d = self.descriptors
        return {"seq": self.engine.seq, "clock": self.engine.clock,
                "commands": self.engine.n_commands,
                "uptime_s": round(now - self.started, 3),
                "connections": gates.get("requests", {}).get("connections", 0),
                "subscribers": gates.get("public", {}).get("connections", 0),
                "sessions": len(self.sessions),
                "markets": self.engine.market_names(), "internal_errors":
                    self.stats["internal_errors"], "suspended_streams": self.stats["suspended"],
                "dropped_messages": self.stats["dropped"],
                "over_send_bytes": self.stats["over_bytes"],
                "descriptors": {"open": self._fd_open, "budget": d["total"],
                                "limit": d["limit"]},
                "gates": gates,
                "threads": {name: "alive" if why is None else
                            (why if isinstance(why, str) else f"failed: {why!r}")
                            for name, why in self.threads().items()},
                "journal": self.journal_health()}

    def liveness(self) -> tuple[bool, list]:
        """`/healthz`: the process is alive, its loop turning (a loop turn waits at most 200
        ms for requests). O(1)."""
        idle = time.monotonic() - self.turned
        if idle > LIVE_WITHIN_S:
            return False, [f"the loop has not turned for {idle:.1f} s"]
        return True, []

    def readiness(self) -> tuple[bool, list]:
        """`/readyz`: the server serves: its loop runs, nothing failed, every thread is alive
        and the journal (if any) can make things durable; else why not. O(threads)."""
        why = []
        if not self.serving:
            why.append("starting")
        elif not self.running:
            why.append("stopping")
        if self.failed is not None:
            why.append(f"the {self.failed[0]} thread failed ({self.failed[1]})")
        for name, state in self.threads().items():
            if state is not None:
                why.append(f"thread {name}: {state if isinstance(state, str) else repr(state)}")
        j = self.journal_health()
        if j is not None and j.get("failure") is not None:
            why.append(f"the journal cannot make commands durable: {j['failure']}")
        live, idle = self.liveness()
        return live and not why, why + idle

    def journal_health(self) -> dict | None:
        """The journal's own health (`Journal.health()` when it has one), or what the server
        sees of it; None without a journal."""
        j = self.seq.durability
        own = getattr(j, "health", None)
        if callable(own):
            facts = dict(own())
        elif type(j) is journal.Journal:
            facts = {"policy": j.policy, "seq": j.seq, "synced": j.synced, "fsyncs": j.fsyncs}
        else:
            return None
        failure = getattr(j, "failure", None) or getattr(j, "error", None)
        facts.setdefault("failure", failure)
        return {k: v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)
                for k, v in facts.items()}

    def _health(self, acct, sess, identity, req, now):
        return {"req_id": req.req_id, "ok": True, **self.health_facts()}

    def _markets(self, acct, sess, identity, req, now):
        return {"req_id": req.req_id, "ok": True,
                "markets": [dict(market_info(sp), status=self.engine.market_status(sp.name))
                            for sp in self.engine.specs]}

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

    def _run(self, cmd, sess: Session | None = None, view=None) -> list:
        """Sequence one command and route its events, each encoded once (a fill once a side):
        to the reply (the returned Raw list), to the private streams of its accounts and to
        the PUB. With `view` (a trader's account), the reply holds what that account may see:
        its own events, its side of its fills, and the events naming no account; without, the
        engine's events as they are (an operator's). Tracks the orders a session placed, for
        cancel-on-disconnect. O(events * subscribers)."""
        events = self.seq.run(cmd)
        if self.metrics is not None:
            self.metrics.events(events)
        return self._route(events, sess, view)

    def _route(self, events, sess: Session | None, view=None) -> list:
        """`_run` after the engine: the events to the reply, the streams and the PUB (recovery
        replays the journal through this too, before the feed exists)."""
        encode = self.encode
        feed = self.feed.event if self.feed is not None else None
        raws = []
        for ev in events:
            views = private_views(ev, encode)
            if view is None:
                raws.append(Raw(encode(ev) if type(ev) is M.Fill or not views
                                else views[0][1]))
            elif not views:
                raws.append(Raw(encode(ev)))
            else:
                raws.extend(Raw(data) for account, data in views if account == view)
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
            for account, data in views:
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
        return {"req_id": req.req_id, "ok": True,
                "events": self._run(cmd, sess, _view(acct))}

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
            results[i] = {"ok": True, "events": self._run(cmd, sess, _view(acct))}
        return {"req_id": req.req_id, "ok": True, "results": results}

    def close(self):
        """Stop: the last turn made durable (unless the journal failed), the threads and the
        sockets closed. Each step is tried even when one before it fails."""
        steps = []
        if self.failed is None or self.failed[0] != "journal":
            steps.append(self.seq.commit)
        if hasattr(self.seq.durability, "close"):
            steps.append(self.seq.durability.close)
        if self.gate is not None:
            steps.append(self.gate.stop)
        if self.metrics is not None and self.metrics.http is not None:
            steps.append(self.metrics.http.close)
        if self.auth is not None:
            if self.auth.is_alive():
                steps.append(self.auth.stop)
            else:                       # its pipe has no reader: stop() would wait for ever
                steps.append(lambda: self.auth.pipe.close(linger=0))
        steps.append(lambda: self.ctx.destroy(linger=0))
        for step in steps:
            try:
                step()
            except Exception:           # noqa: BLE001 - the others must still run
                if self.failed is None:
                    raise
                log.exception("while stopping after the %s thread failed", self.failed[0])


def _view(acct):
    """Whose view a reply to this account's command holds: a trader's own (docs/protocol.md,
    "Fills"); None for an operator (admin, oracle), who sees the engine's events."""
    return acct.name if acct.role == "trader" else None


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


def run(cfg: Config, out=sys.stdout, plaintext_loopback=False, oracle_sim=False,
        limits: Limits | None = None, durability: Durability | None = None) -> int:
    logs = configure_logging(cfg.log_format, sys.stderr)
    make = Server
    if cfg.replication.enabled:
        from .replication import ReplicatedServer as make
    http = None
    try:                                # every port first: a start that cannot bind makes nothing
        http = Endpoints(cfg.metrics) if cfg.metrics else None
        check_endpoints(cfg)
        server = make(cfg, plaintext_loopback=plaintext_loopback, oracle_sim=oracle_sim,
                      limits=limits, durability=durability)
    except BaseException:
        if http is not None:
            http.close()
        stop_logging(logs)
        raise
    server.log_listener = logs
    if http is not None:
        server.metrics = Metrics(server)
        server.metrics.serve(http)
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
    elif cfg.markets and not cfg.embedded:
        out.write("simulated oracle: off (with --config; --oracle-sim on, or [server] "
                  "oracle_sim = true, runs the embedded default's random walk): until an oracle "
                  "account sends prices, every order is refused no_mark_price\n")
    for name, path in server.key_paths.items():
        if name != "server":
            out.write(f"  {name} ({cfg.accounts[name].role}): {path}\n")
    if cfg.metrics:
        out.write(f"metrics: http://{cfg.metrics}/metrics (and /healthz, /readyz)\n")
    if server.recovered:
        out.write(server.recovered + "\n")
    out.flush()
    d = server.descriptors
    log.info("started", extra={"event": "start", "router": cfg.router, "pub": cfg.pub,
                               "markets": server.engine.market_names(),
                               "accounts": len(cfg.accounts), "metrics": cfg.metrics or None,
                               "descriptor_budget": d["total"], "descriptor_limit": d["limit"]})
    try:
        server.serve_forever()
    finally:
        if server.failed is not None:   # stopping must not hang on what failed: exit 3 by then
            stop_logging(logs)          # the thread_failed line is out before anything else
            watchdog = threading.Timer(STOP_WITHIN_S, os._exit, (3,))
            watchdog.daemon = True
            watchdog.start()
        server.close()
        stop_logging(logs)               # what is queued is written (for 2 s at most)
    st = server.stats
    if server.failed is not None:
        name, error = server.failed
        out.write(f"perpdex stopped: the {name} thread failed ({error}); "
                  f"{server.seq.n_commands} commands sequenced, what was not durable was "
                  f"never acknowledged; restart it (the journal recovers every acknowledged "
                  f"command)\n")
        out.flush()
        return 3
    out.write(f"perpdex stopped ({', '.join(signals) or 'asked'}): "
              f"{server.seq.n_commands} commands sequenced, the last batch made durable, "
              f"sockets closed; {st['internal_errors']} internal errors, {st['dropped']} "
              f"messages dropped for slow connections, {st['suspended']} streams suspended\n")
    out.flush()
    return 0
