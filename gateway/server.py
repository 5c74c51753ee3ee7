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
import shutil
import signal
import sys
import time
from pathlib import Path

import msgspec
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from engine import Engine, messages as M

from .config import Config

MAX_MESSAGE = 64 * 1024                 # bytes; a larger request is refused
DRAIN = 1024                            # requests taken per loop turn at most

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


class Server:
    def __init__(self, cfg: Config, engine: Engine | None = None):
        self.cfg = cfg
        self.engine = engine if engine is not None else Engine()
        self.key_paths = ensure_keys(cfg)
        self.by_key = {a.public_key.encode(): a for a in cfg.accounts.values()}
        self.ctx = zmq.Context()
        self.auth = ThreadAuthenticator(self.ctx)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str((cfg.data_dir / "authorized").resolve()))
        pub, sec = zmq.auth.load_certificate(str(cfg.data_dir / "keys" / "server.key_secret"))
        self.router = self._socket(zmq.ROUTER, pub, sec)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        self.router.bind(cfg.router)
        self.pub = self._socket(zmq.PUB, pub, sec)
        self.pub.bind(cfg.pub)
        self.running = True
        self._boot()

    def _socket(self, kind, pub, sec):
        s = self.ctx.socket(kind)
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
        while self.running:
            if not poller.poll(200):
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
                try:
                    self.router.send_multipart([identity, _encode.encode(reply)])
                except zmq.ZMQError:        # the peer left: its reply has nowhere to go
                    pass
                for topic, ev in public:
                    self.pub.send_multipart([topic, _encode.encode(ev)])

    def _make_durable(self, batch):
        """The journal goes here (the durability issue): the batch's commands are written and
        synced before any of its replies or events leave the process. Nothing is journaled yet,
        so nothing is durable yet; the order of the loop is already the one it needs."""

    def _handle(self, frames):
        identity = frames[0].bytes
        body = frames[-1]
        user = body.get("User-Id")
        acct = self.by_key.get(user.encode() if isinstance(user, str) else user)
        req_id = None
        try:
            msg = _decode_any.decode(body.bytes)
        except (msgspec.DecodeError, ValueError) as e:
            return identity, _error(None, "invalid_command", f"not msgpack: {e}"), []
        if not isinstance(msg, dict):
            return identity, _error(None, "invalid_command", "a request is a msgpack map"), []
        req_id = msg.pop("req_id", None)
        if acct is None:
            return identity, _error(req_id, "forbidden", "this key belongs to no account"), []
        kind = msg.get("type")
        if kind not in ALLOWED[acct.role]:
            return identity, _error(req_id, "forbidden",
                                    f"a {acct.role} may not send {kind!r}; it may send "
                                    f"{', '.join(sorted(ALLOWED[acct.role]))}"), []
        if acct.role == "trader":
            if "account" in msg:
                return identity, _error(req_id, "invalid_command",
                                        "`account` comes from your key; leave it out"), []
            msg["account"] = acct.name
        msg["ts"] = time.time_ns()
        try:
            cmd = msgspec.convert(msg, M.AnyCommand)
        except msgspec.ValidationError as e:
            return identity, _error(req_id, "invalid_command", str(e)), []
        events = self.engine.execute(cmd)
        public = [(ev.market.encode(), ev) for ev in events
                  if ev.__struct_config__.tag in PUBLIC]
        return identity, {"req_id": req_id, "ok": True, "events": events}, public

    def close(self):
        self.auth.stop()
        self.ctx.destroy(linger=0)


def _error(req_id, reason, detail):
    return {"req_id": req_id, "ok": False, "reason": reason, "detail": detail}


def run(cfg: Config, out=sys.stdout) -> int:
    server = Server(cfg)

    def stop(*_):
        server.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    out.write(f"perpdex serving: requests {cfg.router}, public events {cfg.pub}\n")
    out.write(f"server public key: {server.key_paths['server']}\n")
    for name, path in server.key_paths.items():
        if name != "server":
            out.write(f"  {name} ({cfg.accounts[name].role}): {path}\n")
    out.flush()
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0
