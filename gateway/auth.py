"""Who may connect: the key pairs of the server and the accounts, the directory of authorised
public keys, and the ZAP handler that admits them, refusing a handshake beyond the gate's
connection caps (the counts: gateway/gate.py). A request's account is the one whose key
authenticated its connection; in plain-text mode (loopback only) it is the one it logged in as.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .config import Config

log = logging.getLogger("perpdex.gateway")
LOOPBACK = ("tcp://127.", "tcp://localhost:", "tcp://[::1]:", "ipc://")


def check_loopback(cfg: Config) -> None:
    """Plain-text mode serves only loopback and ipc endpoints: ValueError otherwise."""
    for ep in (cfg.router, cfg.pub):
        if not ep.startswith(LOOPBACK):
            raise ValueError(f"plain-text mode serves only loopback and ipc endpoints, not {ep}")


class Accounts:
    """The account of a connection: by the key that authenticated it (the frame's User-Id),
    or in plain-text mode by the name it logged in with. O(1)."""

    def __init__(self, cfg: Config, plaintext: bool):
        self.cfg = cfg
        self.plaintext = plaintext
        self.logins: dict[bytes, object] = {}       # plain-text mode: connection -> account
        if plaintext:
            check_loopback(cfg)
            self.key_paths: dict = {}
            self.by_key: dict = {}
        else:
            self.key_paths = ensure_keys(cfg)
            self.by_key = {a.public_key.encode(): a for a in cfg.accounts.values()}

    def of(self, identity: bytes, body):
        """The account of a request (None: nobody's)."""
        if self.plaintext:
            return self.logins.get(identity)
        user = body.get("User-Id")
        return self.by_key.get(user.encode() if isinstance(user, str) else user)

    def login(self, identity: bytes, name: str):
        """Plain-text mode: `identity` is `name`'s from now on; its account, or None."""
        acct = self.cfg.accounts.get(name)
        if acct is not None:
            self.logins[identity] = acct
        return acct


def start_zap(ctx, cfg: Config, gate):
    """The ZAP authenticator of both sockets, started: (authenticator, server public key,
    server secret key). `gate()` gives the gate once the sockets exist."""
    auth = GatedAuthenticator(ctx, gate)
    auth.start()
    for domain in ("requests", "public"):       # the ZAP domains of the two sockets
        auth.configure_curve(domain=domain, location=str(
            (cfg.data_dir / "authorized").resolve()))
    pub, sec = zmq.auth.load_certificate(str(cfg.data_dir / "keys" / "server.key_secret"))
    return auth, pub, sec


def private_dir(path: Path) -> None:
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
        private_dir(cfg.data_dir)
        private_dir(keys)
        if allowed.exists():
            shutil.rmtree(allowed)
        private_dir(allowed)
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
            said = why.decode(errors="replace")
            log.warning("handshake refused: %s (from %s)", said, self.peer[1] or "?",
                        extra={"event": "auth_failed", "why": said, "socket": self.peer[0],
                               "address": self.peer[1] or None})
        return ok, why
