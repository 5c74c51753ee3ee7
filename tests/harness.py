"""The process harness of the tests: `perpdex serve` processes on free loopback ports, the
clients that talk to them, the `perpdex` command run as a process, and the kills and crashes of
those processes. Test modules import what they share from here (or from tests.flows,
tests.crashes, tests.replicated, tests.markets, tests.pages), never from one another; fixtures
that several files share are in a conftest.py. No tests here.

- ROOT (the checkout), HANG_S, PERPDEX, free_port; `perpdex(*args)`: the command to its end;
  `end(proc)`: SIGTERM, then SIGKILL.
- Served, serve(): a server started from a Python snippet on the embedded default with the
  given limits (hardening and feed tests); slow_socket(), fill_the_book().
- LimitedVenue: `perpdex serve` with `[limits]` (and any TOML) appended (availability tests).
- Venue: a data folder and the servers started on it one after the other (durability tests);
  state(), trade(), orders().
- OperatorVenue: `perpdex serve` on two free ports, all its output kept (operator tests);
  written().
- Trader, taking(), resting(), events(), check_accounts(), work_then_kill(), did_work(): clients
  under load while a server is killed (crash and replication tests).
- The feed: MARKETS, INDEX, TRADERS, FAST, raw_sub(), Flow, engine_book(), caught_up().
- Replies: PUB (router -> PUB endpoint of the `server` fixture), client(), events_of(); the
  SDK's near().
"""
from __future__ import annotations

import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import msgspec
import zmq
import zmq.auth

from perpdex.gateway import journal as J
from perpdex.gateway.client import Client, Timeout, curve_socket
from perpdex.gateway.config import DEFAULT_TOML
from perpdex.gateway.natslocal import free_port  # noqa: F401  (the tests import it from here)

ROOT = Path(__file__).resolve().parent.parent
# Seconds: how long a test waits for something a real process does before it calls it a hang.
# A bound so loose it only catches a hang, never a claim about speed (speed is for bench/).
HANG_S = 60
PERPDEX = shutil.which("perpdex", path=str(Path(sys.executable).parent)) or "perpdex"
enc = msgspec.msgpack.encode


def end(proc: subprocess.Popen, timeout: float = 10):
    """SIGTERM to a process still running, SIGKILL if it has not ended `timeout` s later."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def perpdex(*args, cwd=None, timeout=60, **kw) -> subprocess.CompletedProcess:
    """`perpdex ARGS` to its end (a loose hang guard), its output as text."""
    return subprocess.run([PERPDEX, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kw)


# ---- a server from a Python snippet (hardening and feed tests) ------------------------------

# A server with the embedded default configuration, its limits given as JSON (gateway.limits).
SERVE = """
import json, sys
from perpdex.gateway.config import default_config
from perpdex.gateway.server import run
cfg = default_config(sys.argv[1])
cfg.router, cfg.pub = sys.argv[2], sys.argv[3]
cfg.session_timeout_ms = int(sys.argv[5])
kw = {}
if sys.argv[4] != "{}":
    from perpdex.gateway.limits import Limits
    kw["limits"] = Limits(**json.loads(sys.argv[4]))
sys.exit(run(cfg, oracle_sim=sys.argv[6] == "on", **kw))
"""


class Served:
    """A server process and what a test needs to talk to it."""

    def __init__(self, data: Path, router: str, pub: str, proc):
        self.data, self.router, self.pub, self.proc = data, router, pub, proc

    def client(self, name, timeout_ms=3000) -> Client:
        return Client(self.router, str(self.data / "keys" / "server.key"),
                      str(self.data / "keys" / f"{name}.key_secret"), timeout_ms=timeout_ms)

    def stop(self):
        end(self.proc)


def serve(tmp_path, limits=None, session_timeout_ms=800, oracle_sim="off", preexec=None):
    data = tmp_path / "data"
    router = f"tcp://127.0.0.1:{free_port()}"
    pub = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(data), router, pub,
                             json.dumps(limits or {}), str(session_timeout_ms), oracle_sim],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=preexec)
    s = Served(data, router, pub, proc)
    deadline = time.monotonic() + HANG_S
    while b"perpdex serving" not in proc.stdout.readline():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the server did not start"
    return s


def slow_socket(s: Served, name: str):
    """A DEALER that reads nothing: tiny receive buffers, so its pipe fills at once."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvhwm = 1
    sock.rcvbuf = 4096
    pub, sec = zmq.auth.load_certificate(str(s.data / "keys" / f"{name}.key_secret"))
    sock.curve_publickey, sock.curve_secretkey = pub, sec
    sock.curve_serverkey = zmq.auth.load_certificate(str(s.data / "keys" / "server.key"))[0]
    sock.connect(s.router)
    return sock


def fill_the_book(s: Served, market="BTC-PERP", levels=100):
    s.client("oracle").request("oracle", market=market, price=650_000)
    mm = s.client("mm-1")
    items = [{"type": "new_order", "market": market, "cid": f"lvl-{side}-{k}", "side": side,
              "kind": "limit", "qty": 1, "price": 650_000 + (k + 1) * (1 if side == "sell" else -1)}
             for side in ("buy", "sell") for k in range(levels)]
    for k in range(0, len(items), 100):
        assert mm.request("batch", items=items[k:k + 100])["ok"]


# ---- a server with limits (availability tests) ----------------------------------------------

class LimitedVenue(Served):
    """A `perpdex serve` process on the embedded default markets and accounts, with `limits`
    (and any other TOML) appended to its configuration."""

    def __init__(self, tmp_path: Path, limits: dict | None = None, extra: str = "",
                 argv: list[str] | None = None, preexec=None, wait=True, log_json=True):
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.data = tmp_path / "data"
        self.router = f"tcp://127.0.0.1:{free_port()}"
        self.pub = f"tcp://127.0.0.1:{free_port()}"
        text = DEFAULT_TOML.read_text() + "\n" + extra + "\n"
        if limits:
            text += "[limits]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in limits.items())
        self.config = tmp_path / "perpdex.toml"
        self.config.write_text(text)
        cmd = argv or [PERPDEX, "serve"]
        cmd = cmd + ["--config", str(self.config), "--data", str(self.data), "--router",
                     self.router, "--pub", self.pub]
        if log_json:
            cmd += ["--log-format", "json"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     preexec_fn=preexec)
        if wait:
            deadline = time.monotonic() + HANG_S
            while b"perpdex serving" not in self.proc.stdout.readline():
                assert self.proc.poll() is None, self.proc.stderr.read().decode()
                assert time.monotonic() < deadline, "the server did not start"

    def client(self, name: str, timeout_ms: int = 5000) -> Client:
        return super().client(name, timeout_ms)

    def health(self, name: str = "mm-2") -> dict:
        c = self.client(name)
        try:
            reply = c.request("health")
        finally:
            c.close()
        assert reply["ok"], reply
        return reply

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def log_lines(self) -> list[dict]:
        out = []
        for line in self.proc.stderr.read().decode(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


# ---- a data folder and its servers, one after the other (durability tests) ------------------

class Venue:
    """A data folder, and the server processes started on it one after the other."""

    def __init__(self, tmp_path: Path, **journal):
        self.tmp = tmp_path
        self.data = tmp_path / "data"
        self.conf = tmp_path / "perpdex.toml"
        text = DEFAULT_TOML.read_text()
        for key, value in journal.items():
            value = f'"{value}"' if isinstance(value, str) else str(value).lower()
            text, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.M)
            assert n == 1, key
        self.conf.write_text(text)
        self.proc = None
        self.starts = 0

    def start(self, ok=True):
        """Start a server; return its recovery line (or, with ok=False, its exit and stderr)."""
        self.starts += 1
        self.router = f"tcp://127.0.0.1:{free_port()}"
        self.pub = f"tcp://127.0.0.1:{free_port()}"
        self.log = self.tmp / f"stderr-{self.starts}.log"
        self.proc = subprocess.Popen(
            [PERPDEX, "serve", "--config", str(self.conf), "--data", str(self.data),
             "--router", self.router, "--pub", self.pub, "--session-timeout-ms", "2000"],
            stdout=subprocess.PIPE, stderr=open(self.log, "wb"))
        if not ok:
            rc = self.proc.wait(timeout=30)
            return rc, self.log.read_text()
        deadline = time.monotonic() + HANG_S
        while True:
            line = self.proc.stdout.readline().decode()
            assert line or self.proc.poll() is None, self.log.read_text()
            if line.startswith("perpdex: "):
                return line.strip()
            assert time.monotonic() < deadline, "the server did not start"

    def stderr(self) -> str:
        return self.log.read_text()

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc is not None:
            Served(self.data, self.router, self.pub, self.proc).stop()

    def client(self, name, timeout_ms=5000) -> Client:
        return Served(self.data, self.router, self.pub, self.proc).client(name, timeout_ms)

    def snapshot(self, timeout=HANG_S):
        """Ask for a snapshot (SIGUSR1) and wait for its file."""
        before = set(J.snapshots(self.data / "snapshots"))
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while set(J.snapshots(self.data / "snapshots")) == before:
            self.client("admin").request("heartbeat")       # a loop turn
            assert time.monotonic() < deadline, "no snapshot"
            time.sleep(0.02)
        return sorted(set(J.snapshots(self.data / "snapshots")) - before)[-1]


def state(v: Venue) -> dict:
    """What the venue says of itself: the audit and every trader's account (the state hash has
    the clock in it, which each query moves: `replayed` compares it)."""
    audit = v.client("admin").request("audit")["events"][0]
    out = {"audit": {k: x for k, x in audit.items() if k not in ("seq", "ts")}}
    for name in ("mm-1", "mm-2", "taker-1", "taker-2", "lev-1"):
        ev = v.client(name).request("query_account")["events"][0]
        out[name] = {k: ev[k] for k in ("collateral", "positions", "open_orders")}
    return out


def trade(v: Venue) -> dict:
    """An oracle price, a resting order, a fill: what the replies acknowledged."""
    assert v.client("oracle").request("oracle", market="BTC-PERP", price=650_000)["ok"]
    mm, taker = v.client("mm-1"), v.client("taker-1")
    rest = mm.request("new_order", market="BTC-PERP", cid="rest", side="buy", kind="limit",
                      qty=3, price=640_000)
    ask = mm.request("new_order", market="BTC-PERP", cid="ask", side="sell", kind="limit",
                     qty=2, price=651_000)
    hit = taker.request("new_order", market="BTC-PERP", cid="hit", side="buy", kind="limit",
                        qty=2, price=651_000)
    assert [e["type"] for e in hit["events"]][:2] == ["order_accepted", "fill"]
    return {"rest": rest, "ask": ask, "hit": hit}


def orders(v, who, n, tag):
    c = v.client(who)
    for k in range(n):
        c.request("new_order", market="BTC-PERP", cid=f"{tag}{k}", side="buy", kind="limit",
                  qty=1, price=600_000 + k)
        c.request("cancel", market="BTC-PERP", cid=f"{tag}{k}")


# ---- an operator's server (operator tests) --------------------------------------------------

class OperatorVenue:
    """`perpdex serve --data DATA` on two free loopback ports (`args` added), started and
    waited for (its `perpdex serving` line); `stop()` ends it with SIGTERM."""

    def __init__(self, data: Path, *args, cwd=None):
        self.data = Path(data)
        self.router = f"tcp://127.0.0.1:{free_port()}"
        self.pub = f"tcp://127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [PERPDEX, "serve", "--data", str(self.data), "--router", self.router,
             "--pub", self.pub, *map(str, args)], cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        deadline = time.monotonic() + 30
        while True:
            line = self.proc.stdout.readline().decode()
            self.lines.append(line)
            if "perpdex serving" in line:
                break
            if not line and self.proc.poll() is not None:
                raise AssertionError(f"the server did not start: {self.proc.stderr.read()!r}")
            assert time.monotonic() < deadline, "the server did not start"
        self.errors: list[bytes] = []          # stderr, read all along (it never fills)
        self.reader = threading.Thread(target=lambda: self.errors.extend(self.proc.stderr),
                                       daemon=True)
        self.reader.start()

    def client(self, name: str, timeout_ms: int = 3000) -> Client:
        keys = self.data / "keys"
        return Client(self.router, str(keys / "server.key"), str(keys / f"{name}.key_secret"),
                      timeout_ms=timeout_ms)

    def stop(self) -> tuple[int, str, str]:
        """SIGTERM, then its exit code, all its output (from the start) and its errors."""
        end(self.proc, timeout=15)
        out = "".join(self.lines) + self.proc.stdout.read().decode()
        self.reader.join(5)
        return self.proc.returncode, out, b"".join(self.errors).decode()


def written(tmp_path, old: str, new: str):
    """The file `config --write-default` writes, in tmp_path, with `old` made `new`."""
    conf = tmp_path / "x.toml"
    assert perpdex("config", "--write-default", conf).returncode == 0
    text = conf.read_text()
    assert old in text
    conf.write_text(text.replace(old, new))
    return conf


# ---- traders under load while a server is killed (crash and replication tests) --------------

ids = itertools.count(1)


class Trader(threading.Thread):
    """A client that sends requests one at a time until the server stops answering, keeping
    every acknowledged (request, reply) and the one request in flight."""

    def __init__(self, venue: Venue, account: str, make, seed: int):
        super().__init__(daemon=True)
        self.venue, self.account, self.make = venue, account, make
        self.r = random.Random(seed)
        self.acked: list = []
        self.inflight = None

    def run(self):
        # no reply for 5 s: the server was killed (a loaded machine answers well within it)
        c = self.venue.client(self.account, timeout_ms=5000)
        try:
            while True:
                msg = self.inflight or self.make(self)
                self.inflight = msg
                try:
                    reply = c.send_raw(enc(msg))
                except Timeout:
                    return                          # killed: `inflight` is unacknowledged
                if reply.get("reason") == "rate_limited":
                    time.sleep(reply["retry_after_ms"] / 1000)
                    continue
                self.acked.append((msg, reply))
                self.inflight = None
        finally:
            c.close()

    def retry(self):
        """After the restart: send the request in flight again, the same bytes, same req_id."""
        if self.inflight is None:
            return
        c = self.venue.client(self.account)
        while True:
            reply = c.send_raw(enc(self.inflight))
            if reply.get("reason") != "rate_limited":
                break
            time.sleep(reply["retry_after_ms"] / 1000)
        self.acked.append((self.inflight, reply))
        self.inflight = None
        c.close()


def taking(t: Trader) -> dict:
    """A market buy (IOC) against the maker's wall: retried twice, it would fill twice."""
    return {"req_id": next(ids), "type": "new_order", "market": "BTC-PERP",
            "cid": f"t{next(ids)}", "side": "buy", "kind": "market", "qty": t.r.randint(1, 3)}


def resting(t: Trader) -> dict:
    """A resting buy far from the market, or a cancel of one placed before."""
    mine = [m["cid"] for m, rep in t.acked if m["type"] == "new_order"]
    if mine and t.r.random() < 0.4:
        return {"req_id": next(ids), "type": "cancel", "market": "BTC-PERP",
                "cid": t.r.choice(mine)}
    return {"req_id": next(ids), "type": "new_order", "market": "BTC-PERP",
            "cid": f"r{next(ids)}", "side": "buy", "kind": "limit", "qty": 1,
            "price": 600_000 + t.r.randint(0, 1000)}


def events(reply, kind):
    return [e for e in reply.get("events", []) if e["type"] == kind]


def check_accounts(venue, traders: list[Trader], where: str):
    """Every acknowledged order is there or its fate is: positions are the acknowledged fills
    (a market order applied twice would fill twice), the maker holds the other side, the open
    orders are those accepted and not cancelled (by account, over every trader of it), and the
    audit balances."""
    bought = {}
    for t in traders:
        if t.make is taking:
            bought[t.account] = bought.get(t.account, 0) + sum(
                f["qty"] for _, rep in t.acked for f in events(rep, "fill"))
    for account, qty in bought.items():
        pos = venue.client(account).request("query_account")["events"][0]["positions"]
        size = sum(p["size"] for p in pos if p["market"] == "BTC-PERP")
        assert size == qty, f"{account}: position {size}, acknowledged fills {qty} ({where})"
    maker = venue.client("mm-1").request("query_account")["events"][0]["positions"]
    assert sum(p["size"] for p in maker) == -sum(bought.values()), where
    for account in {t.account for t in traders if t.make is resting}:
        acked = [rep for t in traders if t.account == account for _, rep in t.acked]
        accepted = {e["cid"] for rep in acked for e in events(rep, "order_accepted")}
        gone = {e["cid"] for rep in acked for e in events(rep, "order_cancelled")}
        orders = venue.client(account).request("query_account")["events"][0]["open_orders"]
        assert {o["cid"] for o in orders} == accepted - gone, f"{account} ({where})"
    audit = venue.client("admin").request("audit")["events"][0]
    assert audit["deposits"] - audit["withdrawals"] == (
        audit["collateral"] + audit["unrealised_pnl"] + audit["insurance_fund"]
        + audit["fees"]), where


def work_then_kill(traders: list[Trader], kill, r: random.Random, where: str):
    """Start the traders, let each have 1 to 40 requests answered (a random moment counted in
    work, not in time; HANG_S only catches a hang), then `kill()` while they are at it. Every
    trader did something this cycle before the kill: asserted, not hoped."""
    before = [len(t.acked) for t in traders]
    want = r.randint(1, 40)
    for t in traders:
        t.start()
    deadline = time.monotonic() + HANG_S
    while not all(len(t.acked) - b >= want for t, b in zip(traders, before)):
        assert all(t.is_alive() for t in traders), f"a trader stopped before the kill ({where})"
        assert time.monotonic() < deadline, (
            f"no {want} replies each in {HANG_S} s (a hang): "
            f"{[len(t.acked) - b for t, b in zip(traders, before)]} ({where})")
        time.sleep(0.005)
    kill()
    for t in traders:
        t.join(timeout=HANG_S)
        assert not t.is_alive(), where
    assert all(len(t.acked) - b >= want for t, b in zip(traders, before)), where


def did_work(traders: list[Trader], where: str):
    """What the loop did, in counts: fills for the takers, orders accepted for the others."""
    fills = sum(len(events(rep, "fill")) for t in traders if t.make is taking
                for _, rep in t.acked)
    accepted = sum(len(events(rep, "order_accepted")) for t in traders if t.make is resting
                   for _, rep in t.acked)
    assert fills > 0 and accepted > 0, (fills, accepted, where)


# ---- the public feed (market-data tests) ----------------------------------------------------

MARKETS = ("BTC-PERP", "ETH-PERP")
INDEX = {"BTC-PERP": 650_000, "ETH-PERP": 300_000}
TRADERS = ("mm-1", "mm-2", "taker-1", "taker-2")
FAST = {"request_rate": [100_000, 100_000], "order_rate": [100_000, 100_000],
        "cancel_rate": [100_000, 100_000]}


def raw_sub(s, prefixes=(b"",), name="taker-2", rcvhwm=1_000_000):
    sock = curve_socket(zmq.Context.instance(), zmq.SUB, str(s.data / "keys" / "server.key"),
                        str(s.data / "keys" / f"{name}.key_secret"))
    sock.rcvhwm = rcvhwm
    for p in prefixes:
        sock.setsockopt(zmq.SUBSCRIBE, p)
    sock.connect(s.pub)
    time.sleep(0.3)                     # the subscription reaches the PUB
    return sock


class Flow:
    """A seeded random order flow from the four traders over both markets, in batches: limits
    on both sides (some crossing), cancels, amends, market orders, IOCs."""

    def __init__(self, s, seed: int, tag: str):
        self.rng = random.Random(seed)
        self.clients = {n: s.client(n) for n in TRADERS}
        self.open: dict[str, list] = {n: [] for n in TRADERS}
        self.tag, self.n = tag, 0
        self.sent = 0

    def item(self, name: str) -> dict:
        r, m = self.rng, self.rng.choice(MARKETS)
        self.n += 1
        mine = self.open[name]
        roll = r.random()
        if roll < 0.2 and mine:
            market, cid = mine.pop(r.randrange(len(mine)))
            return {"type": "cancel", "market": market, "cid": cid}
        if roll < 0.3 and mine:
            market, cid = r.choice(mine)
            return {"type": "amend", "market": market, "cid": cid, "qty": r.randint(1, 30)}
        if roll < 0.37:
            return {"type": "new_order", "market": m, "cid": f"{self.tag}-{self.n}",
                    "side": r.choice(("buy", "sell")), "kind": "market", "qty": r.randint(1, 40)}
        side = r.choice(("buy", "sell"))
        sign = -1 if side == "buy" else 1
        price = INDEX[m] + sign * r.randint(-3, 60)         # a few cross
        cid = f"{self.tag}-{self.n}"
        tif = "ioc" if r.random() < 0.05 else "gtc"
        if tif == "gtc":
            mine.append((m, cid))
        return {"type": "new_order", "market": m, "cid": cid, "side": side, "kind": "limit",
                "qty": r.randint(1, 30), "price": price, "tif": tif}

    def run(self, orders: int, batch: int = 20, between=None):
        while orders > 0:
            name = self.rng.choice(TRADERS)
            k = min(batch, orders)
            reply = self.clients[name].request("batch", items=[self.item(name)
                                                               for _ in range(k)])
            assert reply["ok"], reply
            orders -= k
            self.sent += k
            if between is not None:
                between()
        for name in TRADERS:                # cap the books: cancel what piled up, now and then
            if len(self.open[name]) > 400:
                assert self.clients[name].request("cancel_all")["ok"]
                self.open[name].clear()


def engine_book(s, market):
    """The engine's book now, every level, through a snapshot (what was last published) and
    the `book` request (the engine itself, at most 100 levels a side)."""
    c = s.client("admin")
    live = c.request("book", market=market, depth=100)
    snap = c.request("snapshot", market=market)
    assert live["bids"] == snap["bids"][:100] and live["asks"] == snap["asks"][:100]
    return snap


def caught_up(md, s, markets=MARKETS, timeout=HANG_S):
    """Poll the mirror until each of its books has the last published seq (the timeout only
    catches a hang)."""
    want = {m: s.client("admin").request("snapshot", market=m)["seq"] for m in markets}
    deadline = time.monotonic() + timeout
    while any(md.books[m].seq != want[m] for m in markets):
        assert time.monotonic() < deadline, {m: (md.books[m].seq, want[m]) for m in markets}
        md.poll(20)


# ---- replies --------------------------------------------------------------------------------

PUB = {}          # router endpoint -> the same server's PUB endpoint (the `server` fixture)


def client(server, name, timeout_ms=3000):
    data, router = server
    return Client(router, str(data / "keys" / "server.key"),
                  str(data / "keys" / f"{name}.key_secret"), timeout_ms=timeout_ms)


def events_of(reply, type_):
    return [e for e in reply["events"] if e["type"] == type_]


def near(c, market, factor) -> Decimal:
    """A price `factor` times the current mark, on a tick."""
    return c.markets()[market].round_price(c.mark(market).mark * Decimal(factor))
