"""`perpdex demo`: the exchange, live. The server, market makers, takers and leveraged traders
run as separate processes talking ZeroMQ; this process feeds the oracle (a random walk, then a
crash), watches the public stream, and prints the market once a second; at the end, the audit.
"""
from __future__ import annotations

import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import msgspec
import zmq

from gateway.client import Client, curve_socket

ROOT = Path(__file__).resolve().parent.parent
USD = 1_000_000


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(seconds: float = 40.0, out=sys.stdout) -> int:
    w = out.write
    data = Path(tempfile.mkdtemp(prefix="perpdex-demo-"))
    router, pub = f"tcp://127.0.0.1:{_port()}", f"tcp://127.0.0.1:{_port()}"
    py = sys.executable
    procs = []

    def spawn(*args):
        procs.append(subprocess.Popen([py, *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, cwd=ROOT))

    spawn("-m", "gateway.cli", "serve", "--data", str(data), "--router", router, "--pub", pub,
          "--oracle-sim", "off")
    try:
        deadline = time.monotonic() + 20
        while not (data / "keys" / "admin.key_secret").exists():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                w("the server did not start\n")
                return 1
            time.sleep(0.05)
        time.sleep(0.3)
        keys = data / "keys"

        def client(name):
            return Client(router, str(keys / "server.key"), str(keys / f"{name}.key_secret"))

        admin, oracle = client("admin"), client("oracle")
        admin.request("deposit", account="insurance", amount=100_000 * USD)
        index = {"BTC-PERP": 650_000, "ETH-PERP": 300_000}
        for m, p in index.items():
            oracle.request("oracle", market=m, price=p)

        sub = curve_socket(zmq.Context.instance(), zmq.SUB, str(keys / "server.key"),
                           str(keys / "admin.key_secret"))
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(pub)

        life = f"{seconds + 5:.0f}"
        common = ["--data", str(data), "--router", router]
        spawn(str(ROOT / "examples" / "market_maker.py"), *common, "--pub", pub, "--account",
              "mm-1", "--market", "BTC-PERP", "--size", "0.5", "--seconds", life)
        spawn(str(ROOT / "examples" / "market_maker.py"), *common, "--pub", pub, "--account",
              "mm-2", "--market", "ETH-PERP", "--size", "5", "--seconds", life)
        spawn("-m", "gateway.bots", "taker", *common, "--account", "taker-1", "--seed", "1",
              "--seconds", life)
        spawn("-m", "gateway.bots", "taker", *common, "--account", "taker-2", "--seed", "2",
              "--seconds", life, "--sell-bias", "0.7")
        spawn("-m", "gateway.bots", "leveraged", *common, "--account", "lev-1", "--seconds",
              life)

        w(f"perpdex exchange demo: server and 5 client processes over ZeroMQ (CURVE), "
          f"{seconds:.0f} s, the oracle crashes at one third\n\n")
        w(f"{'t':>4}  {'BTC bid':>9} {'BTC ask':>9} {'BTC mark':>10} {'ETH mark':>9} "
          f"{'fills':>6} {'liquidations':>13} {'insurance USD':>14}\n")
        rng = random.Random(7)
        counts: Counter = Counter()
        marks = {}
        t0 = time.monotonic()
        crash_at, crash_end = seconds / 3, seconds / 3 + seconds / 4
        last_print = 0.0
        while (now := time.monotonic() - t0) < seconds:
            crash = crash_at <= now < crash_end
            for m in index:
                drift = -0.004 if crash else rng.gauss(0, 0.0005)
                index[m] = max(1, round(index[m] * (1 + drift)))
                oracle.request("oracle", market=m, price=index[m])
            stop = time.monotonic() + 0.2
            while time.monotonic() < stop:
                if sub.poll(20):
                    topic, body = sub.recv_multipart()
                    ev = msgspec.msgpack.decode(body)
                    counts[ev["type"]] += 1
                    if ev["type"] == "mark":
                        marks[ev["market"]] = ev["mark"]
                    elif ev["type"] == "liquidation":
                        w(f"      LIQUIDATED ({ev['kind']}): {ev['account']} {ev['side']}s "
                          f"{ev['qty']} lots of {ev['market']} at {ev['price']} "
                          f"(mark {ev['mark']})\n")
            if now - last_print >= 1.0:
                last_print = now
                fund = admin.request("audit")["events"][0]["insurance_fund"]
                book = admin.request("book", market="BTC-PERP", depth=1)
                bid = book["bids"][0][0] / 10 if book["bids"] else 0
                ask = book["asks"][0][0] / 10 if book["asks"] else 0
                tag = "  <- crash" if crash else ""
                w(f"{now:>4.0f}  {bid:>9,.1f} {ask:>9,.1f} {marks.get('BTC-PERP', 0) / 10:>10,.1f} "
                  f"{marks.get('ETH-PERP', 0) / 100:>9,.2f} {counts['fill']:>6} "
                  f"{counts['liquidation']:>13} {fund / USD:>14,.2f}{tag}\n")
                out.flush()
        audit = admin.request("audit")["events"][0]
        lhs = audit["deposits"] - audit["withdrawals"]
        rhs = audit["collateral"] + audit["unrealised_pnl"] + audit["insurance_fund"] + audit["fees"]
        w(f"\n{counts['fill']} fills, {counts['liquidation']} liquidation steps, "
          f"{counts['funding']} funding events\n")
        w(f"audit: deposits - withdrawals = {lhs / USD:,.2f} USD = collateral "
          f"{audit['collateral'] / USD:,.2f} + unrealised {audit['unrealised_pnl'] / USD:,.2f} + "
          f"insurance {audit['insurance_fund'] / USD:,.2f} + fees {audit['fees'] / USD:,.2f}: "
          f"{'balanced' if lhs == rhs else 'NOT BALANCED'}\n")
        w("open interest: " + ", ".join(f"{m} long {oi['long']} / short {oi['short']}"
                                        for m, oi in audit["open_interest"].items()) + "\n")
        return 0 if lhs == rhs else 1
    finally:
        for p in procs[1:] + procs[:1]:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
