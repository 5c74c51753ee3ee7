"""What durability costs: `perpdex serve` with the journal (fsync per batch, every 10 ms, off)
next to the same server with no journal; snapshot and restore of a big engine; the restart time.

    python -m bench.durability [--seconds 3] [--clients 3] [--orders 1000000]
                               [--accounts 100000] [--skip-big] [--json FILE]

Method. Every party is its own process, sockets are real (tcp on loopback, CURVE), as in
bench/gateway.py, whose clients this reuses:

- Throughput: `--clients` processes each keep 4 batches of 256 commands in flight (128 new_order
  + 128 cancel) for `--seconds`; commands per second is the items answered over the elapsed
  time. A loop turn then holds several batches: the group commit of a busy venue.
- Latency: one client sends single commands open-loop at `--rate` a second (a new_order, then
  its cancel, alternately) and times each reply (HDR histogram, 10 % warm-up): here most loop
  turns hold one command, so each pays a whole fsync with `fsync = "batch"`.
- Big state (in this process, no sockets): `--accounts` accounts with a deposit each and
  `--orders` resting orders spread over them, in one market; then `Engine.snapshot()`, the
  snapshot file written atomically (with its state hash), `Engine.from_snapshot`, and the
  restart of a server on that data folder: from the snapshot plus a short journal tail, and from
  the journal alone (every command replayed through the gateway's routing).

Budgets are raised for the run (gateway.limits.Limits). The numbers depend on the disk: the
report names the file system of the data folder. Run it once, with a memory cap, e.g.
`ulimit -v 6000000; timeout 1200 python -m bench.durability`.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import zmq

from .gateway import (FAST, _client, _spawn, _stop, endpoint, oracle_price,
                           throughput)

SERVER = """
import json, sys
from perpdex.gateway.config import JournalSection, default_config
from perpdex.gateway.limits import Limits
from perpdex.gateway.server import run
cfg = default_config(sys.argv[1])
cfg.router, cfg.pub = sys.argv[2], sys.argv[3]
cfg.session_timeout_ms = 60_000
mode = sys.argv[5]
cfg.journal = JournalSection(enabled=mode != "none", fsync=mode if mode != "none" else "batch",
                             snapshot_every=0)
for a in cfg.accounts.values():
    if a.role == "trader":
        a.deposit = 10**15
sys.exit(run(cfg, limits=Limits(**json.loads(sys.argv[4]))))
"""

MODES = ("none", "off", "interval", "batch")


def gateway_runs(seconds: float, clients: int, rate: float, repeat: int = 1,
                 log=print, modes=MODES, one_round=None) -> dict:
    """Each mode `repeat` times, round-robin (a shared machine drifts): the median run of each
    by throughput, with every run's throughput. `one_round(seconds, clients, rate, r, log)`
    runs every mode once (bench/replication.py brings its own)."""
    runs: dict = {m: [] for m in modes}
    for r in range(repeat):
        for mode, res in (one_round or _gateway_round)(seconds, clients, rate, r, log).items():
            runs[mode].append(res)
    out = {}
    for mode, rs in runs.items():
        rs.sort(key=lambda x: x["commands_per_s"])
        out[mode] = dict(rs[len(rs) // 2], runs=[x["commands_per_s"] for x in rs])
    return out


def _gateway_round(seconds, clients, rate, r, log) -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory(dir=".", prefix="perpdex-bench-") as d:
        tmp = Path(d)
        for mode in MODES:
            data = tmp / f"data-{mode}-{r}"
            router, pub = endpoint("tcp", tmp, "r"), endpoint("tcp", tmp, "p")
            srv = _spawn([sys.executable, "-c", SERVER, str(data), router, pub,
                          json.dumps(FAST), mode], b"perpdex serving")
            keys = data / "keys"
            try:
                oracle_price(router, keys)
                tp = throughput(router, str(keys), clients, seconds, tmp)
                lat = _client("latency", router, str(keys), "lev-1", rate, seconds)
                jbytes = sum(f.stat().st_size for f in (data / "journal").glob("*.journal")) \
                    if (data / "journal").is_dir() else 0
                out[mode] = {"commands_per_s": tp["commands_per_s"], "errors": tp["errors"],
                             "latency": lat, "journal_bytes": jbytes}
                log(f"fsync {mode}: {out[mode]}")
            finally:
                _stop(srv)
    return out


# ---- big state -------------------------------------------------------------------------------

def big_state(n_orders: int, n_accounts: int, data: Path, log=print) -> dict:
    """An engine with n_accounts funded accounts and n_orders resting orders, journaled in
    `data` as a server would have it; snapshot, restore and restart times."""
    from perpdex.engine import Engine, messages as M
    from perpdex.gateway import journal as J
    from perpdex.gateway.config import default_config
    res: dict = {"orders": n_orders, "accounts": n_accounts}
    cfg = default_config(data)
    cfg.state_wins = True               # the folder is built here, not booted from `cfg`
    jr = J.Journal(data / "journal", fsync="off")
    eng = Engine()
    ts = time.time_ns()
    turn: list = []

    def run(cmd):
        eng.execute(cmd)
        turn.append(cmd)
        if len(turn) >= 1000:
            jr.append(turn)
            turn.clear()

    t0 = time.perf_counter()
    for mk in cfg.markets:
        run(msgspec.structs.replace(mk, ts=ts, max_orders_per_account=1000))
    run(M.Oracle(market="BTC-PERP", price=650_000, ts=ts))
    for a in range(n_accounts):
        run(M.Deposit(account=f"u{a}", amount=10**12, ts=ts))
    per = max(1, n_orders // n_accounts)
    k = 0
    for a in range(n_accounts):
        for j in range(per):
            if k >= n_orders:
                break
            side = "buy" if (a + j) % 2 == 0 else "sell"
            price = (600_000 + (k % 20_000)) if side == "buy" else (660_000 + (k % 20_000))
            run(M.NewOrder(account=f"u{a}", market="BTC-PERP", cid=j, side=side, kind="limit",
                           qty=1, price=price, ts=ts))
            k += 1
    if turn:
        jr.append(turn)
        turn.clear()
    res["build_s"] = round(time.perf_counter() - t0, 2)
    res["commands"] = eng.n_commands
    log(f"built {k:,} resting orders over {n_accounts:,} accounts in {res['build_s']} s")
    gc.collect()
    t0 = time.perf_counter()
    image = eng.snapshot()
    res["snapshot_s"] = round(time.perf_counter() - t0, 3)
    res["snapshot_bytes"] = len(image)
    t0 = time.perf_counter()
    h = J.state_hash(eng)
    res["state_hash_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    J.write_snapshot(data / "snapshots", J.Snapshot(
        seq=jr.seq, commands=eng.n_commands, state_hash=h, engine=image, gateway={}))
    res["snapshot_write_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    twin = Engine.from_snapshot(image)
    res["restore_s"] = round(time.perf_counter() - t0, 3)
    assert J.state_hash(twin) == h
    del twin
    jr.append([M.Oracle(market="BTC-PERP", price=650_001, ts=ts)])     # a short tail
    jr.close()
    del eng
    gc.collect()
    log(f"snapshot {res['snapshot_s']} s ({res['snapshot_bytes']:,} bytes), state hash "
        f"{res['state_hash_s']} s, written {res['snapshot_write_s']} s, restore "
        f"{res['restore_s']} s")
    res["restart_from_snapshot_s"] = _restart(cfg)
    for s in J.snapshots(data / "snapshots"):
        s.unlink()
    res["restart_from_journal_s"] = _restart(cfg)
    log(f"restart: from the snapshot {res['restart_from_snapshot_s']} s, from the journal "
        f"alone {res['restart_from_journal_s']} s")
    return res


def _restart(cfg) -> float:
    """Seconds for a Server to come up on cfg.data_dir (recovery included)."""
    from perpdex.gateway.server import Server
    cfg.router = f"tcp://127.0.0.1:{_port()}"
    cfg.pub = f"tcp://127.0.0.1:{_port()}"
    t0 = time.perf_counter()
    srv = Server(cfg)
    took = time.perf_counter() - t0
    srv.close()
    gc.unfreeze()
    del srv
    gc.collect()
    return round(took, 2)


def _port() -> int:
    from .gateway import free_port
    return free_port()


def _fs(path: Path) -> str:
    try:
        return subprocess.run(["df", "-T", str(path)], capture_output=True, text=True,
                              timeout=10).stdout.splitlines()[1].split()[1]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def gateway_table(g: dict, base: str, what: str, name=str, extra=None, out=sys.stdout):
    """The markdown table of `gateway_runs`: a row per mode (`name(mode)`), throughput next to
    mode `base`'s, the latency percentiles, and an `extra` column (title, value of a run)."""
    b = g[base]["commands_per_s"]
    out.write(f"| {what} | commands/s (batches), median | vs {name(base)} | every run | p50 us "
              f"(single) | p99 us | p99.9 us |{f' {extra[0]} |' if extra else ''}\n"
              f"|---|---|---|---|---|---|---|{'---|' if extra else ''}\n")
    for mode, r in g.items():
        lat = r["latency"]
        out.write(f"| {name(mode)} | {r['commands_per_s']:,} | {r['commands_per_s'] / b:.2f} | "
                  f"{', '.join(f'{x:,}' for x in r.get('runs', []))} | "
                  f"{lat['p50_us']:.0f} | {lat['p99_us']:.0f} | {lat['p999_us']:.0f} |"
                  f"{f' {extra[1](r)} |' if extra else ''}\n")


def print_report(res: dict, out=sys.stdout) -> None:
    g = res.get("gateway", {})
    if g:
        gateway_table(g, "none", "journal",
                      lambda m: "no journal" if m == "none" else "fsync " + m,
                      ("journal bytes", lambda r: f"{r['journal_bytes']:,}"), out)
    b = res.get("big")
    if b:
        out.write(f"\nbig state: {b['orders']:,} resting orders, {b['accounts']:,} accounts "
                  f"({b['commands']:,} commands, built in {b['build_s']} s)\n")
        for k in ("snapshot_s", "snapshot_bytes", "state_hash_s", "snapshot_write_s",
                  "restore_s", "restart_from_snapshot_s", "restart_from_journal_s"):
            out.write(f"  {k}: {b[k]:,}\n")
    m = res["machine"]
    out.write(f"\n{m}\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.durability")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--repeat", type=int, default=3, help="gateway runs per mode (median)")
    ap.add_argument("--orders", type=int, default=1_000_000)
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--skip-gateway", action="store_true")
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    res: dict = {}
    if not a.skip_gateway:
        res["gateway"] = gateway_runs(a.seconds, a.clients, a.rate, a.repeat)
    if not a.skip_big:
        with tempfile.TemporaryDirectory(dir=".", prefix="perpdex-bench-") as d:
            res["big"] = big_state(a.orders, a.accounts, Path(d) / "data")
    res["machine"] = {"python": sys.version.split()[0], "pyzmq": zmq.__version__,
                      "msgspec": msgspec.__version__, "platform": platform.platform(),
                      "cpus": os.cpu_count(), "data folder file system": _fs(Path(".")),
                      "seconds": a.seconds, "clients": a.clients, "rate": a.rate,
                      "repeat": a.repeat, "load average": os.getloadavg()}
    print_report(res)
    if a.json:                      # the same numbers, for the benchmark suite
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
