"""The simulated oracle: a client process that prices every market of a venue with a seeded
random walk, four `oracle` commands a second, as an account whose role is `oracle`. Never for
real money.

It starts each market from the index the venue has now (the `markets` reply with `prices`), so
a restarted walk goes on from the venue's last price; a market never priced starts at
SIM_START. The server keeps nothing of it: its prices are the oracle account's commands, in the
journal like any other client's.

    perpdex oracle-sim --router tcp://HOST:7701 --data perpdex-data     # keys from data/keys
    python -m perpdex.gateway.oracle_sim --secret-key oracle.key_secret --server-key server.key

`perpdex serve` with the simulated oracle on (the embedded default) starts it as a child once
its sockets are bound (`spawn`) and stops it when it stops (`stop`); the child also ends by
itself when its parent is gone. It stops on SIGTERM or SIGINT; when the server stops answering
it tries again for `--retry-s` seconds (a restarted server: it reads the prices again and walks
on), then stops, saying so.
"""
from __future__ import annotations

import argparse
import itertools
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import zmq

from .transport import curve_socket

SIM_START = {"BTC-PERP": 650_000, "ETH-PERP": 300_000}    # the first prices (ticks)
OTHER_START = 100_000                                     # any other market's first price
SIM_EVERY = 250_000_000                                   # ns between prices
SIGMA = 0.0005                                            # a step's relative deviation
ANSWER_S = 3.0                  # a request not answered by then: the server is gone
SLICE_S = 0.05                  # the longest sleep between looks at signals and the parent
STOP_S = 5.0                    # how long `stop` waits for the child after SIGTERM
RETRY_S = 10.0                  # how long a gone server is tried again (the default)
WAIT_S = 1.0                    # between looks at a server that takes no prices now


class Walk:
    """The walk: seeded, so that two runs from the same prices walk alike. O(markets) a step."""

    def __init__(self, seed: int = 1):
        self.rng = random.Random(seed)
        self.index: dict[str, int] = {}         # market -> its last price (ticks)

    def start(self, prices: dict) -> None:
        """Walk on from the venue's prices ({market: index or None}): a market the venue has
        no price for keeps this walk's (or starts at SIM_START)."""
        for market, idx in prices.items():
            if idx is not None:
                self.index[market] = idx

    def step(self, markets) -> list[tuple[str, int]]:
        """The next price of each of `markets`, in their order."""
        out = []
        for market in markets:
            idx = self.index.get(market) or SIM_START.get(market, OTHER_START)
            idx = max(1, round(idx * (1 + self.rng.gauss(0, SIGMA))))
            self.index[market] = idx
            out.append((market, idx))
        return out


class Gone(Exception):
    """The server did not answer within ANSWER_S."""


class Stop(Exception):
    """A signal, or the parent process is gone: the walk ends."""


class Feeder:
    """One DEALER to the server, as the oracle account: CURVE with its key pair, or (plain-text
    mode, loopback only) logged in by name."""

    def __init__(self, ctx, router: str, account: str, keys: tuple[str, str] | None, alive):
        self.alive = alive              # raises Stop when the walk must end
        if keys is None:
            self.sock = ctx.socket(zmq.DEALER)
            self.sock.linger = 0
        else:
            self.sock = curve_socket(ctx, zmq.DEALER, *keys)
        self.sock.connect(router)
        self.ids = itertools.count(time.time_ns())
        if keys is None:
            reply = self.ask([{"type": "login", "account": account}])[0]
            if not reply.get("ok"):
                raise SystemExit(f"perpdex oracle-sim: cannot log in as {account}: "
                                 f"{reply.get('detail') or reply.get('reason')}")

    def ask(self, requests: list[dict]) -> list[dict]:
        """Send every request, then wait for each reply (in any order). Raises Gone."""
        want = {}
        for req in requests:
            rid = next(self.ids)
            want[rid] = None
            self.sock.send(msgspec.msgpack.encode({"req_id": rid, **req}))
        deadline = time.monotonic() + ANSWER_S
        waiting = set(want)
        while waiting:
            self.alive()
            left = deadline - time.monotonic()
            if left <= 0:
                raise Gone()
            if not self.sock.poll(int(min(left, SLICE_S) * 1000) + 1):
                continue
            msg = msgspec.msgpack.decode(self.sock.recv())
            rid = msg.get("req_id") if isinstance(msg, dict) else None
            if rid in waiting:
                want[rid] = msg
                waiting.discard(rid)
        return list(want.values())

    def prices(self) -> dict:
        """{market: index or None} of the venue now, in its markets' order."""
        reply = self.ask([{"type": "markets", "prices": True}])[0]
        if reply.get("reason") == "invalid_command":
            raise SystemExit(f"perpdex oracle-sim: the server does not give its prices "
                             f"({reply.get('detail')}): it is older than this command")
        if not reply.get("ok"):         # rate_limited: as if it had not answered, for a while
            raise Gone()
        return {m["market"]: m.get("index") for m in reply["markets"]}

    def close(self) -> None:
        self.sock.close(linger=0)


def run(router: str, account: str, keys: tuple[str, str] | None, seed: int = 1,
        parent: int | None = None, retry_s: float = RETRY_S, out=sys.stdout,
        err=sys.stderr) -> int:
    """Walk until a signal (0), or the server gone for `retry_s` (1), or the parent gone (0)."""
    stopping: list[str] = []

    def signalled(signum, _frame):
        stopping.append(signal.Signals(signum).name)

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signalled)

    def alive():
        if stopping or (parent is not None and os.getppid() != parent):
            raise Stop()

    walk = Walk(seed)
    ctx = zmq.Context()
    said = False
    gone_since = None
    try:
        while True:
            feeder = None
            try:
                feeder = Feeder(ctx, router, account, keys, alive)
                while True:             # the venue's prices, then steps until it refuses
                    prices = feeder.prices()
                    walk.start(prices)
                    gone_since = None
                    if not said:
                        said = True
                        out.write(f"perpdex oracle-sim: {', '.join(prices) or 'no markets yet'} "
                                  f"at {router} as {account}, 4 prices a second (a random walk: "
                                  f"never for real money)\n")
                        out.flush()
                    feed(feeder, walk, list(prices), alive)
            except Gone:
                now = time.monotonic()
                gone_since = gone_since or now
                if now - gone_since >= retry_s:
                    err.write(f"perpdex oracle-sim: the server at {router} has not answered for "
                              f"{retry_s:g} s: stopping\n")
                    return 1
                pause(0.2, alive)
            finally:
                if feeder is not None:
                    feeder.close()
    except Stop:
        return 0
    finally:
        ctx.destroy(linger=0)


def feed(feeder: Feeder, walk: Walk, markets: list, alive) -> None:
    """One price a market every SIM_EVERY until the server refuses them (`unavailable`: a node
    of a replicated venue that is not the writer, or a log without a quorum) or has no markets
    yet: then, once it says it writes (its `health`, checked once a second), return, for the
    prices to be read again. Raises Gone when the server stops answering."""
    every = SIM_EVERY / 1e9
    due = time.monotonic()
    while markets:
        pause(due - time.monotonic(), alive)
        due = max(due + every, time.monotonic())
        replies = feeder.ask([{"type": "oracle", "market": m, "price": p}
                              for m, p in walk.step(markets)])
        if not any(r.get("reason") == "unavailable" for r in replies):
            continue
        while True:
            pause(WAIT_S, alive)
            health = feeder.ask([{"type": "health"}])[0]
            if health.get("replication", {}).get("writer", True):
                return
    pause(WAIT_S, alive)


def pause(seconds: float, alive) -> None:
    """Sleep, looking at signals and the parent every SLICE_S."""
    end = time.monotonic() + seconds
    while True:
        alive()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, SLICE_S))


# ---- the child of `perpdex serve` ------------------------------------------------------------

def connectable(endpoint: str) -> str:
    """A bound endpoint as a client on this machine reaches it (`tcp://0.0.0.0:P`,
    `tcp://*:P` -> loopback)."""
    for wild, local in (("tcp://0.0.0.0:", "tcp://127.0.0.1:"), ("tcp://*:", "tcp://127.0.0.1:"),
                        ("tcp://[::]:", "tcp://[::1]:")):
        if endpoint.startswith(wild):
            return local + endpoint[len(wild):]
    return endpoint


def oracle_account(cfg) -> str | None:
    """The first configured account whose role is `oracle`."""
    return next((name for name, a in cfg.accounts.items() if a.role == "oracle"), None)


def spawn(cfg, key_paths: dict, plaintext: bool) -> tuple[subprocess.Popen | None, str]:
    """The simulated oracle as a child of this process (same interpreter), against `cfg`'s
    request endpoint: (the process, what to say), or (None, why not)."""
    account = oracle_account(cfg)
    if account is None:
        return None, "no account has the role oracle"
    args = [sys.executable, "-m", "perpdex.gateway.oracle_sim", "--router",
            connectable(cfg.router), "--account", account, "--parent-pid", str(os.getpid())]
    if plaintext:
        args.append("--plaintext-loopback")
    else:
        secret = key_paths.get(account)
        if secret is None:
            return None, (f"account {account} has a configured public key, so its secret key is "
                          f"not in {cfg.data_dir}/keys: run `perpdex oracle-sim --secret-key "
                          f"FILE` yourself")
        args += ["--server-key", str(key_paths["server"]), "--secret-key", str(secret)]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return proc, f"a client process (pid {proc.pid}) as account {account}"


def stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM to the child, SIGKILL if it has not ended STOP_S later."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---- the command ---------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="perpdex oracle-sim",
        description="Price every market of a venue with a seeded random walk, 4 oracle "
        "updates a second, as an oracle account, starting from the venue's last prices. A "
        "simulation: never for real money.")
    p.add_argument("--router", default=os.environ.get("PERPDEX_ROUTER", "tcp://127.0.0.1:7701"),
                   help="the server's request endpoint (default $PERPDEX_ROUTER, else "
                   "tcp://127.0.0.1:7701)")
    p.add_argument("--account", default="oracle", help="the account, its role oracle "
                   "(default: oracle)")
    p.add_argument("--data", default=os.environ.get("PERPDEX_DATA", "perpdex-data"),
                   help="the server's data folder, where keys/ has server.key and "
                   "ACCOUNT.key_secret (default $PERPDEX_DATA, else ./perpdex-data)")
    p.add_argument("--server-key", help="the server's public key file (default: DATA/keys/"
                   "server.key)")
    p.add_argument("--secret-key", help="the account's key pair file (default: DATA/keys/"
                   "ACCOUNT.key_secret)")
    p.add_argument("--plaintext-loopback", action="store_true",
                   help="a server in plain-text mode: log in by name, no keys")
    p.add_argument("--seed", type=int, default=1, help="the walk's seed (default 1)")
    p.add_argument("--retry-s", type=float, default=RETRY_S,
                   help=f"how long a server that stopped answering is tried again (default "
                   f"{RETRY_S:g})")
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)   # `perpdex serve`'s child
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    keys = None
    if not args.plaintext_loopback:
        keys = (args.server_key or str(Path(args.data) / "keys" / "server.key"),
                args.secret_key or str(Path(args.data) / "keys" / f"{args.account}.key_secret"))
        for path in keys:
            if not Path(path).exists():
                print(f"perpdex oracle-sim: {path}: no such key file (give --data, or "
                      f"--server-key and --secret-key)", file=sys.stderr)
                return 2
    return run(args.router, args.account, keys, seed=args.seed, parent=args.parent_pid,
               retry_s=args.retry_s)


if __name__ == "__main__":
    sys.exit(main())
