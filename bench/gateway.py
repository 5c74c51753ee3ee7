"""The gateway benchmark: order-to-ack latency and sustained throughput of `perpdex serve`, next
to a bare pyzmq echo measured in the same run (ratios are what count on a shared machine).

    python -m bench.gateway [--seconds 3] [--rate 10000] [--clients 3] [--json FILE]

Method. Every party is its own process: the server (or the echo), and each client. Sockets are
real: tcp on loopback and ipc, CURVE (the server's keys, as in production) and, to measure the
cost of CURVE apart, plain text (the server's --plaintext-loopback mode). The echo is a ROUTER
with the same options (ROUTER_MANDATORY, CURVE server) that answers every request with a reply of
the same size as the server's ack, doing no other work: the floor of the machine.

- Latency: one client sends at a fixed rate (open loop, default 10,000 a second) a `new_order`
  (a resting limit buy) and then its `cancel`, alternately, each with its own req_id, and times
  each reply from the moment its request was sent (time.perf_counter_ns) into an HDR histogram.
  The first 10 % of the run is warm-up and not recorded.
- Throughput: `--clients` processes each keep 4 batches of 256 commands in flight (128
  new_order + 128 cancel) for the run, on their own accounts; commands per second is the number
  of items answered over the elapsed time.

Budgets are raised for the run (gateway.limits.Limits): it measures the gateway, not its limits.
"""
from __future__ import annotations

import argparse
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
import zmq.auth

from perpdex.gateway.natslocal import free_port  # also bench.marketdata's

enc = msgspec.msgpack.encode
dec = msgspec.msgpack.decode
FAST = {"request_rate": [1e9, 1e9], "order_rate": [1e9, 1e9], "cancel_rate": [1e9, 1e9],
        "send_hwm": 100_000}
TRADERS = ("mm-1", "mm-2", "taker-1", "taker-2", "lev-1")

SERVER = """
import json, sys
from perpdex.gateway.config import default_config
from perpdex.gateway.limits import Limits
from perpdex.gateway.server import run
cfg = default_config(sys.argv[1])
cfg.router, cfg.pub = sys.argv[2], sys.argv[3]
cfg.session_timeout_ms = 60_000
for a in cfg.accounts.values():
    if a.role == "trader":
        a.deposit = 10**15
sys.exit(run(cfg, limits=Limits(**json.loads(sys.argv[4])),
             plaintext_loopback=sys.argv[5] == "plain"))
"""


def endpoint(transport: str, tmp: Path, name: str) -> str:
    if transport == "ipc":
        return f"ipc://{tmp}/{name}"
    return f"tcp://127.0.0.1:{free_port()}"


# ---- the processes ---------------------------------------------------------------------------

def echo_main(router: str, secret: str | None, reply_size: int):
    """A bare ROUTER echo: the same socket type and options; it sends each request back with
    padding in a second frame, so the reply carries the req_id and has the ack's size."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.linger = 0
    s.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if secret:
        pub, sec = zmq.auth.load_certificate(secret)
        s.curve_publickey, s.curve_secretkey, s.curve_server = pub, sec, True
    s.bind(router)
    assert 0 < reply_size <= 65536, reply_size
    pads = [b"x" * max(0, reply_size - n) for n in range(reply_size + 1)]
    print("ready", flush=True)
    while True:
        frames = s.recv_multipart(copy=False)
        try:
            n = len(frames[1])
            s.send_multipart([frames[0], frames[1], pads[min(n, reply_size)]], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass


def _dealer(ctx, router: str, keys: Path | None, account: str):
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    if keys is not None:
        from perpdex.gateway.client import curve_socket
        s.close()
        s = curve_socket(ctx, zmq.DEALER, str(keys / "server.key"),
                         str(keys / f"{account}.key_secret"))
    s.connect(router)
    if keys is None:            # plain text: log in (the echo answers anything)
        s.send(enc({"type": "login", "account": account}))
        assert s.poll(5000), "no answer to login"
        s.recv_multipart()
    return s


def _order(k: int, account: str):
    cid = f"{account}-{k >> 1}"
    if k & 1 == 0:
        return {"req_id": k, "type": "new_order", "market": "BTC-PERP", "cid": cid,
                "side": "buy", "kind": "limit", "qty": 1, "price": 600_000 + (k >> 1) % 1000}
    return {"req_id": k, "type": "cancel", "market": "BTC-PERP", "cid": cid}


def latency_main(router: str, keys: str, account: str, rate: float, seconds: float, out: str):
    from hdrh.histogram import HdrHistogram
    ctx = zmq.Context()
    s = _dealer(ctx, router, Path(keys) if keys else None, account)
    msgs = [enc(_order(k, account)) for k in range(int(rate * seconds) + 2)]
    hist = HdrHistogram(1, 10_000_000_000, 3)
    sent: dict[int, int] = {}
    pc = time.perf_counter_ns
    period = int(1e9 / rate)
    start = pc()
    warm = start + int(seconds * 1e9 * 0.1)
    end = start + int(seconds * 1e9)
    k = received = 0
    next_send = start
    while True:
        now = pc()
        if now >= end and not sent:
            break
        if now >= next_send and now < end:
            s.send(msgs[k], copy=True)
            sent[k] = pc()
            k += 1
            next_send += period
            continue
        wait_ms = max(0, (next_send - now) // 1_000_000) if now < end else 1000
        if not s.poll(wait_ms):
            if now >= end:
                break
            continue
        while True:
            try:
                data = s.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            t = pc()
            rid = dec(data[0]).get("req_id")        # the echo's first frame is the request
            t0 = sent.pop(rid, None)
            if t0 is not None and t0 >= warm:
                hist.record_value(max(1, t - t0))
            received += 1
    Path(out).write_text(json.dumps({
        "sent": k, "received": received, "count": hist.get_total_count(),
        "p50_us": hist.get_value_at_percentile(50) / 1000,
        "p99_us": hist.get_value_at_percentile(99) / 1000,
        "p999_us": hist.get_value_at_percentile(99.9) / 1000,
        "max_us": hist.get_max_value() / 1000}))


def throughput_main(router: str, keys: str, account: str, seconds: float, out: str):
    ctx = zmq.Context()
    s = _dealer(ctx, router, Path(keys) if keys else None, account)
    sets = []                   # two sets of cids: each batch cancels the one before
    for half in range(2):
        orders = [_order(2 * (half * 128 + i), account) for i in range(128)]
        sets.append([msgspec.Raw(enc({k: v for k, v in o.items() if k != "req_id"}))
                     for o in orders])
    cancels = [[msgspec.Raw(enc({"type": "cancel", "market": "BTC-PERP", "cid": o["cid"]}))
                for o in (dec(r) for r in half)] for half in sets]
    inflight = done = items_done = errors = 0
    start = time.perf_counter()
    end = start + seconds
    b = 0
    while True:
        now = time.perf_counter()
        while inflight < 4 and now < end:
            s.send(enc({"req_id": 10**12 + b, "type": "batch",      # not the latency run's ids
                        "items": sets[b % 2] + cancels[(b + 1) % 2]}))
            b += 1
            inflight += 1
        if inflight == 0:
            break
        if not s.poll(5000):
            break
        reply = dec(s.recv())
        inflight -= 1
        done += 1
        if reply.get("ok"):
            items_done += len(reply["results"])
        else:
            errors += 1
    elapsed = time.perf_counter() - start
    Path(out).write_text(json.dumps({"batches": done, "items": items_done, "errors": errors,
                                     "seconds": elapsed}))


# ---- the run ---------------------------------------------------------------------------------

def _spawn(args, wait_line: bytes, env=None):
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 30
    while wait_line not in p.stdout.readline():
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{args[:3]} did not start (exit {p.poll()}): "
                               f"{p.stderr.read().decode()[-2000:]}")
    return p


def _stop(p):
    p.terminate()
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()


def _client(kind: str, *args) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    subprocess.run([sys.executable, "-m", "perpdex.bench.gateway", f"--{kind}", json.dumps(
        [str(a) for a in args] + [out])], check=True, timeout=600)
    res = json.loads(Path(out).read_text())
    os.unlink(out)
    return res


def throughput(router: str, keys: str, clients: int, seconds: float, tmp: Path) -> dict:
    """`clients` throughput processes (one account each) against `router`, together."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "perpdex.bench.gateway", "--throughput", json.dumps(
            [router, keys, TRADERS[i], seconds, str(tmp / f"tp{i}.json")])])
        for i in range(clients)]
    for p in procs:
        p.wait(timeout=600)
    tp = [json.loads((tmp / f"tp{i}.json").read_text()) for i in range(clients)]
    items = sum(t["items"] for t in tp)
    elapsed = max(t["seconds"] for t in tp)
    return {"clients": clients, "items": items, "errors": sum(t["errors"] for t in tp),
            "seconds": round(elapsed, 2), "commands_per_s": round(items / elapsed),
            "wall_s": round(time.perf_counter() - t0, 2)}


def _ack_size(tmp: Path) -> int:
    """The size of the server's ack to a new_order, to give the echo's replies that size."""
    from perpdex.engine import Engine, messages as M
    from perpdex.gateway.config import default_config
    e = Engine()
    now = time.time_ns()            # one time for all: a jump would settle years of funding
    for mk in default_config().markets:
        e.execute(msgspec.structs.replace(mk, ts=now))
    e.execute(M.Oracle(market="BTC-PERP", price=650_000, ts=now))
    e.execute(M.Deposit(account="mm-1", amount=10**15, ts=now))
    ev = e.execute(M.NewOrder(account="mm-1", market="BTC-PERP", cid="mm-1-0", side="buy",
                              kind="limit", qty=1, price=600_000, ts=now))
    assert len(ev) == 1, ev
    return len(enc({"req_id": 10**18, "ok": True, "events": ev}))


def run(seconds: float, rate: float, clients: int, log=print) -> dict:
    results: dict = {"latency": {}, "throughput": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        size = _ack_size(tmp)
        for transport, mode in (("tcp", "curve"), ("ipc", "curve"), ("tcp", "plain")):
            data = tmp / f"data-{transport}-{mode}"
            router = endpoint(transport, tmp, f"req-{mode}")
            pub = endpoint(transport, tmp, f"pub-{mode}")
            srv = _spawn([sys.executable, "-c", SERVER, str(data), router, pub, json.dumps(FAST),
                          mode], b"perpdex serving")
            keys = str(data / "keys") if mode == "curve" else ""
            try:
                oracle_price(router, data / "keys" if mode == "curve" else None)
                res = _client("latency", router, keys, "mm-1", rate, seconds)
                results["latency"][f"server {transport} {mode}"] = res
                log(f"server {transport} {mode}: {res}")
                if (transport, mode) == ("tcp", "curve"):
                    results["throughput"] = throughput(router, keys, clients, seconds, tmp)
                    log(f"throughput: {results['throughput']}")
            finally:
                _stop(srv)
            secret = str(data / "keys" / "server.key_secret") if mode == "curve" else ""
            erouter = endpoint(transport, tmp, f"echo-{mode}")
            echo = _spawn([sys.executable, "-m", "perpdex.bench.gateway", "--echo", json.dumps(
                [erouter, secret, size])], b"ready")
            try:
                # the echo does not need a login: send one anyway to keep the client the same
                res = _client("latency", erouter, keys, "mm-1", rate, seconds)
                results["latency"][f"echo {transport} {mode}"] = res
                log(f"echo {transport} {mode}: {res}")
            finally:
                _stop(echo)
    results["machine"] = {"python": sys.version.split()[0], "pyzmq": zmq.__version__,
                          "libzmq": zmq.zmq_version(), "msgspec": msgspec.__version__,
                          "platform": platform.platform(), "cpus": os.cpu_count(),
                          "ack_bytes": size, "rate": rate, "seconds": seconds}
    return results


def oracle_price(router: str, keys: Path | None):
    ctx = zmq.Context.instance()
    s = _dealer(ctx, router, keys, "oracle")
    s.send(enc({"type": "oracle", "market": "BTC-PERP", "price": 650_000}))
    assert s.poll(5000)
    s.recv()
    s.close()


def print_report(res: dict, out=sys.stdout):
    lat = res["latency"]
    out.write("| path | p50 us | p99 us | p99.9 us | max us | samples | p50 / echo "
              "| p99 / echo |\n")
    out.write("|---|---|---|---|---|---|---|---|\n")
    for name, r in lat.items():
        echo = lat.get("echo " + name.split(" ", 1)[1]) if name.startswith("server") else None
        ratio = (f"{r['p50_us'] / echo['p50_us']:.2f} | {r['p99_us'] / echo['p99_us']:.2f}"
                 if echo else "1 | 1")
        out.write(f"| {name} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['p999_us']:.0f} | "
                  f"{r['max_us']:.0f} | {r['count']} | {ratio} |\n")
    tp = res["throughput"]
    if tp:
        out.write(f"\nthroughput, batches of 256 (128 new_order + 128 cancel), {tp['clients']} "
                  f"clients, tcp CURVE: {tp['commands_per_s']:,} commands/s "
                  f"({tp['items']:,} in {tp['seconds']} s, {tp['errors']} errors)\n")
    m = res["machine"]
    out.write(f"\n{m['platform']}, {m['cpus']} CPUs, Python {m['python']}, pyzmq {m['pyzmq']}, "
              f"libzmq {m['libzmq']}, msgspec {m['msgspec']}; ack {m['ack_bytes']} bytes, "
              f"{m['rate']:.0f} orders/s for {m['seconds']} s a path\n")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rate", type=float, default=10_000.0)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--echo", help=argparse.SUPPRESS)
    ap.add_argument("--latency", help=argparse.SUPPRESS)
    ap.add_argument("--throughput", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.echo:
        router, secret, size = json.loads(a.echo)
        return echo_main(router, secret or None, int(size))
    if a.latency:
        router, keys, account, rate, seconds, out = json.loads(a.latency)
        return latency_main(router, keys, account, float(rate), float(seconds), out)
    if a.throughput:
        router, keys, account, seconds, out = json.loads(a.throughput)
        return throughput_main(router, keys, account, float(seconds), out)
    res = run(a.seconds, a.rate, a.clients, log=lambda *x: print(*x, file=sys.stderr))
    print_report(res)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
