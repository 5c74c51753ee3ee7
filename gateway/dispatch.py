"""The server that dispatches: the engine behind ZeroMQ, one process, one engine loop.

Sockets (docs/protocol.md): a ROUTER for requests (clients use DEALER) and a PUB for public
events, both CURVE servers; who may connect is gateway/auth.py's, how many gateway/gate.py's.
The account of a request is the one whose key authenticated the connection (the frame's
User-Id), never a field of the message.

One loop turn: drain what has arrived (at most `Limits.drain` requests), decode each straight
into its typed request (gateway/protocol.py), run its commands through the `Sequencer` (which
stamps them with the one clock), then `Sequencer.commit()` hands the turn's commands to the
durability seam, and only then do the replies, the private-stream items and the public events
leave the process (gateway/outbox.py). One guard answers any failure of a request with
`internal_error`, logs it and goes on. The rooms it calls: the venue's records
(gateway/records.py: retry caches, private streams, deadlines, the feed), sessions
(gateway/sessions.py), budgets (gateway/limits.py), the answers to the gateway's own requests
(gateway/handlers.py), health (gateway/health.py). What makes it plain or replicated is its
`role` (gateway/writer.py `Writer`, the plain one by default; gateway/replicated.py
`Replicated`): the role starts the venue (recovery or boot, or following the log) and is called
between loop turns, before a command runs (`refuse`), for `health` and at the close.

What a role may use of the server (its public face, and nothing else): `cfg`, `seq` (the
Sequencer: its durability, notes, clock), `records`, `engine`, `use(engine)` (serve another
engine from now on), `boot()` (the configured markets and deposits, as commands), `flush()`
(this turn durable, then sent), `outputs()` (this turn's public and private-stream lists) and
`drop_turns()` (what was not sent is never sent: a writer that was fenced).
"""
from __future__ import annotations

import gc
import logging
import time
from collections import deque

import msgspec
import zmq

from perpdex.engine import Engine, messages as M

from . import boot
from . import protocol as P
from .auth import Accounts, start_zap
from .commands import Commands
from .config import Config
from .durability import Deadline, Durability, Reply, Sequencer
from .gate import Gate, Listener, open_descriptors
from .gate import fit as fit_descriptors
from .handlers import Handlers
from .health import Health
from .limits import Budgets, Limits
from .outbox import Outbox
from .records import Records
from .sessions import Sessions, due
from .writer import Role, Writer

log = logging.getLogger("perpdex.gateway")

BOOT_DESCRIPTORS = 32                   # what boot opens besides connections (the ZeroMQ
                                        # context and sockets, the journal; gateway/gate.py)
FEED_HEARTBEAT = 1_000_000_000          # ns between the public feed's heartbeats


class Server(Commands, Handlers, Health):
    """One venue behind its two sockets: started by its role (recovering or booting its data
    folder, by default), served by `serve_forever` until `running` is false, then `close`d."""

    def __init__(self, cfg: Config, engine: Engine | None = None, plaintext_loopback=False,
                 limits: Limits | None = None, durability: Durability | None = None,
                 role: Role | None = None):
        self.cfg = cfg
        self.turned = time.monotonic()              # the loop's last turn (`liveness`)
        self.serving = False                        # the loop runs (`readiness`)
        self.limits = lim = limits if limits is not None else cfg.limits
        self.engine = engine if engine is not None else Engine()
        self.codec = P.Codec(lim.max_deposit)
        self.encode = self.codec.encode
        self.seq = Sequencer(self.engine, durability)
        self.plaintext = plaintext_loopback
        self.accounts = Accounts(cfg, plaintext_loopback)
        self.key_paths = self.accounts.key_paths
        # The descriptors it may need at most, checked against RLIMIT_NOFILE before anything
        # is opened (gateway/gate.py; DescriptorBudget stops the start with a sentence).
        self.descriptors = fit_descriptors(lim, max(0, open_descriptors()) + BOOT_DESCRIPTORS)
        self.records = Records(lim, cfg.accounts, self.encode)
        self.budgets = Budgets(lim)
        self.sessions = Sessions()                  # connection -> its session
        self.running = True
        self.role = role if role is not None else Writer(journaled=durability is None)
        self.out: list = []                         # (connection, reply bytes), this turn
        self.held: deque = deque()                  # (seq, out, stream_out, pub_out, when
                                                    # written): turns written, not yet durable
                                                    # (pipelined)
        self.stream_out: list = []                  # (connection, item bytes, pseq), this turn
        self.pub_out: list = []                     # (topic, message bytes), this turn
        self.feed_beat = 0                          # when the feed's next heartbeat is due (ns)
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
        self.recovered = self.role.start(self)     # what it says of the venue it started
        if self.records.feed is None:               # recovery made it (its chains go on)
            self.records.attach(self.engine)
        self.ctx = zmq.Context()
        self.auth = None
        pub = sec = None
        if not self.plaintext:
            self.auth, pub, sec = start_zap(self.ctx, cfg, lambda: self.gate)
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
        self.outbox = Outbox(self.router, self.pub, self.sessions, self.records.streams, lim,
                             self.stats, self.encode)
        self.gate = Gate(listeners)
        self.gate.start()
        # pyzmq's garbage-collector thread (which tells trackers that ZeroMQ is done with a
        # message, `Outbox.send`) starts with the first zero-copy frame: at boot, not mid-turn.
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

    # ---- what a role may use (see the module's docstring) -----------------------------------

    def boot(self):
        """The configured markets and opening deposits, as sequenced commands. A market or a
        deposit that the engine refuses stops the boot with the engine's reason."""
        for cmd in boot.commands(self.cfg):
            for ev in self.seq.run(self.seq.stamp(cmd)):
                if type(ev) is M.Rejected:
                    raise boot.refusal(cmd, ev)
        self.seq.commit()

    def use(self, engine: Engine) -> None:
        """Serve `engine` from now on (recovered, or a follower's)."""
        self.engine = self.seq.engine = engine

    def outputs(self) -> tuple[list, list]:
        """This turn's public messages and private-stream items, for what a role applies."""
        return self.pub_out, self.stream_out

    def drop_turns(self) -> None:
        """Nothing of this turn or of the turns held for durability is sent, and the sessions
        forget the orders they placed: a writer that lost the log (they were never
        acknowledged)."""
        self.sessions.forget_orders()
        self.held.clear()
        self.out, self.stream_out, self.pub_out = [], [], []

    # ---- the loop ----------------------------------------------------------------------------

    def serve_forever(self):
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        tick = max(10, min(200, self.cfg.session_timeout_ms // 4))
        tick_ns = tick * 1_000_000
        next_timers = 0
        drain = self.limits.drain
        recv = self.router.recv_multipart
        idle = self.role.poll_ms or tick
        self.serving = True
        while self.running:
            self.turned = time.monotonic()
            if self.watch():            # a thread of the server failed: it stops, loudly
                break
            self.role.between()
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
                self.flush()            # a failing Durability.sync() stops the server: nothing
                                        # may leave that is not durable
                self.role.maybe_snapshot()
            except Exception:
                if self.watch():        # a failed thread explains it: the loud stop
                    break
                raise
        if self.failed is not None:     # nothing more can be made durable, or watched: what
            return                      # is held stays unsent (it was never acknowledged)
        self.flush()
        if self.held:
            self._release(self.seq.durability, wait=True)

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

    def flush(self):
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
            self.outbox.send_turn(self.out, self.stream_out, self.pub_out)
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
        if self.outbox.notices:
            self.outbox.tell_suspended()

    def _release(self, d, wait: bool = False):
        """Send the held turns that are durable now (with `wait`, all of them, once durable)."""
        held = self.held
        if wait and held:
            d.sync()
        while held and d.durable(held[0][0]):
            _, out, stream_out, pub_out, written = held.popleft()
            if self.metrics is not None:    # the journal lag this turn's messages waited
                self.metrics.commit.observe(time.perf_counter() - written)
            self.outbox.send_turn(out, stream_out, pub_out)

    def _feed_turn(self):
        """The turn's public messages (and, once a second, the feed's heartbeat) join pub_out."""
        now = self.seq.now()
        feed = self.records.feed
        if now >= self.feed_beat:
            self.feed_beat = now + FEED_HEARTBEAT
            feed.heartbeat(now)
        self.pub_out.extend(feed.flush())

    def _timers(self, now: int):
        """Sessions that fell silent (the orders they placed go, if they asked) and dead-man's
        switches that ran out: commands of the server's own."""
        for identity, sess in self.sessions.silent(now, self.cfg.session_timeout_ms * 1_000_000):
            log.info("%s's session ended: no word for %d ms%s", sess.account,
                     self.cfg.session_timeout_ms,
                     " (its orders are cancelled)" if sess.cancel_on_disconnect else "",
                     extra={"event": "disconnect", "account": sess.account,
                            "cancel_on_disconnect": sess.cancel_on_disconnect,
                            "orders": len(sess.orders)})
            self.outbox.notices.discard(identity)
            st = self.records.streams.get(sess.account)
            if st is not None:
                st.subscribers.discard(identity)
            if sess.cancel_on_disconnect and self.role.writer:
                for market, cid in list(sess.orders.values()):
                    self._run(M.Cancel(account=sess.account, market=market, cid=cid, ts=now))
        if not self.role.writer:        # a follower runs no commands of its own
            return
        for account in due(self.records.deadlines, now):
            self.seq.note(Deadline(account, None))
            self._run(M.CancelAll(account=account, ts=now))

    # ---- one request -------------------------------------------------------------------------

    def _handle(self, identity: bytes, frames):
        body = frames[-1]
        acct = self.accounts.of(identity, body)
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
                wait = self.budgets.wait(acct.name, self.seq.now(), 1)
                if wait:
                    self._reply(identity, self._rate_limited(rid, wait))
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
            wait = self.budgets.wait(acct.name, now, 1, int(is_cancel), int(not is_cancel))
        else:
            wait = self.budgets.wait(acct.name, now, P.weight(req))
        if wait:
            self._reply(identity, self._rate_limited(rid, wait))
            return
        sess = self.sessions.get(identity) or self.sessions.open(identity, acct.name, now)
        sess.last_seen = now
        if cls.command is not None or cls is P.Batch or cls is P.ScheduleCancel:
            why = self.role.refuse(cls)
            if why is not None:
                seen = self.records.retries.get(acct.name)
                kept = seen.replies.get(rid, False) if seen is not None and rid is not None \
                    else False
                if kept is None:                # a retry whose reply was dropped
                    self._reply(identity, self._dropped(rid))
                elif kept is not False:         # a retry: its reply leaves once it is durable
                    self._reply(identity, kept)
                else:                           # nothing ran: it need not wait for held turns
                    self.outbox.send(identity, self.encode(P.error(rid, "unavailable", why)))
                return
        handler = self.handlers.get(cls)
        if cls is P.Health:             # at once, even while turns wait to be durable: what
            self.outbox.send(identity, self.encode(handler(acct, sess, identity, req, now)))
            return                      # an operator asks when the log is unavailable
        if handler is not None:
            self._reply(identity, handler(acct, sess, identity, req, now))
            return
        retries = self.records.retries
        seen = retries.get(acct.name) or retries.of(acct.name)
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

    def close(self):
        """Stop: the last turn made durable (unless the journal failed), the threads and the
        sockets closed, the role last. Each step is tried even when one before it fails."""
        try:
            self._close()
        finally:
            self.role.close()

    def _close(self):
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

