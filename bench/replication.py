"""What replication costs and how fast a standby takes over: `perpdex serve` with its journal
(fsync per batch: the single-machine default) next to the same server in replicated mode, whose
loop turns are also appended to an R3 JetStream stream on three nats-server processes
(`sync_interval: always`, what docs/operations.md ships, and the NATS default of 2 minutes);
then the failover time.

    python -m bench.replication [--seconds 3] [--clients 3] [--rate 200] [--repeat 3]
                                [--failovers 3] [--json FILE]

Method. Every party is its own process, sockets are real (tcp on loopback, CURVE), and the
clients are bench/gateway.py's, as in bench/durability.py:

- Throughput: `--clients` processes each keep 4 batches of 256 commands in flight; commands
  per second is the items answered over the elapsed time. Loop turns queued while an append is
  in flight go out together in the next one (group commit).
- Latency: one client sends single commands open-loop at `--rate` a second and times each reply
  (HDR histogram, 10 % warm-up): most loop turns hold one command, so each pays one append (a
  round trip to the stream's leader, which waits for one more replica to store it).
- The floor: sequential appends of one 300-byte message to an R3 stream from nats-py alone (no
  perpdex), each awaited before the next, with each sync setting: what one append costs here.
- Failover: a primary and a standby (`takeover_ms` 1000, `heartbeat_ms` 100); a client with
  both endpoints sends an order every 10 ms; the primary is SIGKILLed; the time from the kill to
  the first order the standby acknowledges (detection + catching up + the fenced takeover
  record + the client's retry), `--failovers` times.

The three NATS servers, the perpdex servers and the clients share the machine: on loopback the
network costs nothing, so what is measured is the work of the append path (the NATS client in
its thread, JetStream's replication between local processes, their fsyncs with "always").
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import zmq

from .durability import _fs, gateway_runs, gateway_table
from .gateway import FAST, _client, _spawn, _stop, endpoint, throughput

SERVER = """
import json, sys
from perpdex.gateway.config import JournalSection, ReplicationSection, default_config
from perpdex.gateway.limits import Limits
from perpdex.gateway.server import run
cfg = default_config(sys.argv[1])
cfg.router, cfg.pub = sys.argv[2], sys.argv[3]
cfg.session_timeout_ms = 60_000
cfg.journal = JournalSection(fsync="batch", snapshot_every=0)
servers, role, node, stream = json.loads(sys.argv[5])
if servers:
    cfg.replication = ReplicationSection(enabled=True, role=role, node=node, servers=servers,
                                         stream=stream, heartbeat_ms=100, takeover_ms=1000)
for a in cfg.accounts.values():
    if a.role == "trader":
        a.deposit = 10**15
sys.exit(run(cfg, limits=Limits(**json.loads(sys.argv[4]))))
"""

MODES = ("single machine", "replicated, sync always", "replicated, sync 2m")


def _server(data: Path, tmp: Path, servers: list, role="primary", node="primary",
            stream="PERPDEX"):
    router, pub = endpoint("tcp", tmp, "r"), endpoint("tcp", tmp, "p")
    proc = _spawn([sys.executable, "-c", SERVER, str(data), router, pub, json.dumps(FAST),
                   json.dumps([servers, role, node, stream])], b"perpdex serving")
    return proc, router


def _client_of(router: str, keys: Path, account: str, **kw):
    from perpdex.gateway.client import Client
    return Client(router, str(keys / "server.key"), str(keys / f"{account}.key_secret"), **kw)


def _ready(router: str, keys: Path, timeout: float = 30.0) -> None:
    """Until the server takes commands (a replicated primary takes over first); then the
    oracle price the workload needs."""
    c = _client_of(router, keys, "oracle", timeout_ms=1000)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                r = c.request("oracle", market="BTC-PERP", price=650_000)
                if r.get("ok"):
                    return
            except Exception:           # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{router} did not take commands in {timeout} s")
            time.sleep(0.05)
    finally:
        c.close()


def _round(seconds, clients, rate, r, log) -> dict:
    from perpdex.gateway.natslocal import LocalCluster
    out: dict = {}
    with tempfile.TemporaryDirectory(dir=".", prefix="perpdex-bench-") as d:
        tmp = Path(d)
        for mode in MODES:
            cluster = None
            servers: list = []
            if mode != "single machine":
                cluster = LocalCluster(tmp / f"nats-{r}-{len(out)}",
                                       sync="always" if "always" in mode else "2m")
                cluster.start()
                servers = cluster.urls
            data = tmp / f"data-{r}-{len(out)}"
            srv, router = _server(data, tmp, servers)
            keys = data / "keys"
            try:
                _ready(router, keys)
                tp = throughput(router, str(keys), clients, seconds, tmp)
                lat = _client("latency", router, str(keys), "lev-1", rate, seconds)
                out[mode] = {"commands_per_s": tp["commands_per_s"], "errors": tp["errors"],
                             "latency": lat}
                log(f"{mode}: {out[mode]}")
            finally:
                _stop(srv)
                if cluster is not None:
                    cluster.stop()
    return out


def raw_appends(n: int = 500, log=print) -> dict:
    """Milliseconds per sequential R3 append from nats-py alone, p50 and p99, per sync."""
    import asyncio

    import nats
    from nats.js import api

    from perpdex.gateway.natslocal import LocalCluster

    async def appends(urls):
        nc = await nats.connect(servers=urls)
        try:
            js = nc.jetstream()
            await js.add_stream(api.StreamConfig(name="FLOOR", subjects=["floor"],
                                                 num_replicas=3))
            took = []
            for i in range(n):
                t0 = time.perf_counter()
                await js.publish("floor", b"x" * 300,
                                 headers={"Nats-Expected-Last-Sequence": str(i)})
                took.append(time.perf_counter() - t0)
            took.sort()
            return {"p50_ms": round(took[n // 2] * 1e3, 2),
                    "p99_ms": round(took[int(n * 0.99)] * 1e3, 2)}
        finally:
            await nc.close()
    out = {}
    with tempfile.TemporaryDirectory(dir=".", prefix="perpdex-bench-") as d:
        for sync in ("always", "2m"):
            cluster = LocalCluster(Path(d) / sync, sync=sync)
            cluster.start()
            try:
                out[sync] = asyncio.run(appends(cluster.urls))
                log(f"raw appends, sync {sync}: {out[sync]}")
            finally:
                cluster.stop()
    return out


def failovers(n: int, log=print) -> dict:
    """Seconds from a primary's SIGKILL to the first order its standby acknowledges."""
    from perpdex.gateway.natslocal import LocalCluster
    took = []
    with tempfile.TemporaryDirectory(dir=".", prefix="perpdex-bench-") as d:
        tmp = Path(d)
        cluster = LocalCluster(tmp / "nats")
        cluster.start()
        try:
            for i in range(n):
                took.append(_failover(tmp / f"f{i}", cluster, f"fo{i}"))
                log(f"failover {i}: {took[-1]:.2f} s")
        finally:
            cluster.stop()
    return {"runs_s": [round(t, 3) for t in took], "median_s": round(statistics.median(took), 3),
            "takeover_ms": 1000, "heartbeat_ms": 100}


def _failover(tmp: Path, cluster, stream: str) -> float:
    import shutil
    tmp.mkdir()
    servers = cluster.urls
    # one stream per run: each failover starts from a new venue
    prim, prouter = _server(tmp / "a", tmp, servers, "primary", f"{stream}-a", stream)
    keys = tmp / "a" / "keys"
    shutil.copytree(keys, tmp / "b" / "keys")
    stby, srouter = _server(tmp / "b", tmp, servers, "standby", f"{stream}-b", stream)
    try:
        _ready(prouter, keys)
        c = _client_of([prouter, srouter], keys, "mm-1", timeout_ms=200, failover_ms=30_000)
        n = 0

        def place():
            nonlocal n
            n += 1
            return c.request("new_order", market="BTC-PERP", cid=f"o{n}", side="buy",
                             kind="limit", qty=1, price=600_000)
        for _ in range(50):                 # the standby follows a venue in motion
            assert place().get("ok")
            time.sleep(0.01)
        prim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        prim.wait(timeout=10)
        reply = place()
        took = time.monotonic() - killed
        assert reply.get("ok") and c.endpoints[c.at] == srouter, reply
        c.close()
        return took
    finally:
        _stop(stby)
        if prim.poll() is None:
            _stop(prim)


def print_report(res: dict, out=sys.stdout) -> None:
    if "skipped" in res:
        out.write(f"skipped: {res['skipped']}\n")
        return
    g = res.get("gateway", {})
    if g:
        gateway_table(g, "single machine", "mode", out=out)
    raw = res.get("raw_appends")
    if raw:
        out.write("\nthe floor, sequential R3 appends from nats-py alone: " + "; ".join(
            f"sync {k}: p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms" for k, v in raw.items())
            + "\n")
    f = res.get("failover")
    if f:
        out.write(f"\nfailover (SIGKILL to the first order acknowledged by the standby, "
                  f"takeover_ms {f['takeover_ms']}): median {f['median_s']} s, runs "
                  f"{f['runs_s']}\n")
    out.write(f"\n{res['machine']}\n")


def run(seconds=3.0, clients=3, rate=200.0, repeat=3, failovers_=3, log=print) -> dict:
    """Every measurement of the module docstring; {"skipped": why} without a nats-server."""
    import subprocess

    from perpdex.gateway.natslocal import binary
    if binary() is None:
        return {"skipped": "nats-server is not installed: `make install` brings it"}
    res: dict = {"gateway": gateway_runs(seconds, clients, rate, repeat, log=log, modes=MODES,
                                         one_round=_round)}
    res["raw_appends"] = raw_appends(log=log)
    if failovers_:
        res["failover"] = failovers(failovers_, log)
    nats_version = subprocess.run([binary(), "--version"], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
    res["machine"] = {"python": sys.version.split()[0], "pyzmq": zmq.__version__,
                      "msgspec": msgspec.__version__, "nats-server": nats_version,
                      "platform": platform.platform(), "cpus": os.cpu_count(),
                      "file system": _fs(Path(".")), "seconds": seconds,
                      "clients": clients, "rate": rate, "repeat": repeat,
                      "load average": os.getloadavg()}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.replication")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--repeat", type=int, default=3, help="gateway runs per mode (median)")
    ap.add_argument("--failovers", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    res = run(a.seconds, a.clients, a.rate, a.repeat, a.failovers)
    if "skipped" in res:
        print(res["skipped"], file=sys.stderr)
        return 2
    print_report(res)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
