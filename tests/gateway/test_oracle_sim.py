"""The simulated oracle (gateway/oracle_sim.py) is a client process: it prices every market of a
venue as the oracle account, walks on from the venue's last index, and, started by `perpdex
serve`, lives and dies with its server. Real processes and sockets."""
import ast
import signal
import subprocess
import time
from pathlib import Path

import msgspec

from perpdex.gateway.limits import Limits
from perpdex.gateway.logfile import COMMAND, REPLY, decode, read
from perpdex.gateway.oracle_sim import SIM_START
from perpdex.gateway.records import Records
from tests.harness import HANG_S, PERPDEX, ROOT, OperatorVenue, client, end

SOON_S = 10             # a venue given the simulated oracle has prices by then (a child's start)


def sim(server, *args) -> subprocess.Popen:
    """`perpdex oracle-sim` against the `server` fixture's venue, with its data folder's keys."""
    data, router = server
    return subprocess.Popen([PERPDEX, "oracle-sim", "--router", router, "--data", str(data),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def prices(c) -> dict:
    return {m["market"]: m["index"] for m in c.request("markets", prices=True)["markets"]}


def all_priced(c) -> dict | None:
    now = prices(c)
    return None if None in now.values() else now


def wait_for(what, check, within=SOON_S):
    deadline = time.monotonic() + within
    while not (got := check()):
        assert time.monotonic() < deadline, f"{what}: not within {within} s"
        time.sleep(0.05)
    return got


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def ended(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet (its parent was killed)."""
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def the_sim_of(v: OperatorVenue) -> int:
    """The pid of the simulated oracle that `perpdex serve` started."""
    def sim_child():                    # (a child just forked has its parent's cmdline still)
        kids = children(v.proc.pid)
        assert len(kids) <= 1
        return next((k for k in kids if b"perpdex.gateway.oracle_sim"
                     in Path(f"/proc/{k}/cmdline").read_bytes()), None)
    return wait_for("the simulated oracle's process", sim_child, HANG_S)


def test_the_simulated_oracle_prices_every_market_and_stops_on_sigterm(server):
    admin = client(server, "admin")
    sol = {"market": "SOL-PERP", "tick_size": "0.01", "lot_size": "0.1", "min_qty": 1,
           "imf_ppm": 100_000, "mmf_ppm": 50_000, "maker_fee_ppm": 0, "taker_fee_ppm": 500,
           "liquidation_fee_ppm": 10_000, "price_band_ppm": 50_000, "funding_interval_s": 3600,
           "funding_cap_ppm": 7500, "interest_ppm": 100}
    assert admin.request("create_market", **sol)["ok"]
    assert set(prices(admin).values()) == {None}
    p = sim(server)
    try:
        first = wait_for("every market priced", lambda: all_priced(admin))
        assert list(first) == ["BTC-PERP", "ETH-PERP", "SOL-PERP"]
        wait_for("every market walks on", lambda: all(
            a != b for a, b in zip(first.values(), prices(admin).values())))
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=HANG_S)
        assert p.returncode == 0 and err == ""
        assert "BTC-PERP, ETH-PERP, SOL-PERP" in out and "never for real money" in out
    finally:
        end(p)


def test_a_sim_walks_on_from_the_venues_last_index_not_from_its_start(server):
    """The venue's BTC index was set by another feeder: a (re)started walk goes on from it;
    ETH, never priced, starts where the walk starts."""
    oracle = client(server, "oracle")
    assert oracle.request("oracle", market="BTC-PERP", price=700_000)["ok"]
    p = sim(server)
    try:
        now = wait_for("a step", lambda: (x := prices(oracle))["BTC-PERP"] != 700_000 and x)
        assert abs(now["BTC-PERP"] - 700_000) < 7_000             # 1 %: steps are 0.05 %
        assert abs(now["ETH-PERP"] - SIM_START["ETH-PERP"]) < 3_000
    finally:
        end(p)


def test_a_venue_served_with_the_sim_is_priced_by_its_oracle_account_from_outside(tmp_path):
    v = OperatorVenue(tmp_path / "data")             # the embedded default: the sim is on
    try:
        the_sim_of(v)
        c = v.client("mm-1")
        wait_for("prices", lambda: all_priced(c))
    finally:
        code, out, _ = v.stop()
    assert code == 0 and "simulated oracle: a random walk" in out and "client process" in out
    oracles = kept = 0
    for _, kind, payload in read(v.data / "journal", 0, strict_start=False):
        rec = decode(kind, payload)
        if kind == COMMAND and type(rec).__name__ == "Oracle":
            oracles += 1
        elif kind == REPLY and rec.account == "oracle":
            kept += any(e["type"] == "mark" for e in msgspec.msgpack.decode(rec.data)["events"])
    assert oracles >= 2 and kept == oracles       # every price is a request of the account
    # and the server has no oracle of its own: only the commands that start the sim know it
    knows = sorted(p.stem for p in (ROOT / "gateway").glob("*.py")
                   if any(isinstance(n, ast.ImportFrom) and (n.module or "").endswith(
                       "oracle_sim") for n in ast.walk(ast.parse(p.read_text()))))
    assert knows == ["cli", "server"]            # `perpdex oracle-sim`, `perpdex serve`


def test_the_sim_child_stops_when_its_server_stops(tmp_path):
    v = OperatorVenue(tmp_path / "data")
    try:
        pid = the_sim_of(v)
    finally:
        v.stop()
    assert ended(pid)


def test_the_sim_child_ends_by_itself_when_its_server_is_killed(tmp_path):
    v = OperatorVenue(tmp_path / "data")
    try:
        pid = the_sim_of(v)
        v.proc.kill()
        v.proc.wait()
        wait_for("the orphan's end", lambda: ended(pid))
    finally:
        v.stop()


def test_a_snapshot_from_when_the_sim_ran_inside_the_server_still_restores():
    records = Records(Limits(), {}, msgspec.msgpack.encode)
    records.restore({"retries": {}, "streams": {}, "deadlines": {"mm-1": 5},
                     "sim_index": {"BTC-PERP": 650_123}, "public": {}})
    assert records.deadlines == {"mm-1": 5} and "sim_index" not in records.snapshot()
