"""`perpdex demo` as a user runs it: real processes, real ports, real signals.

The exchange demo tells its story (a margin call, liquidations into the book, a backstop by the
insurance fund, auto-deleveraging) with every amount in USD, and the audit balances. However it
ends (the end of the run, SIGTERM, Ctrl-C, a server that cannot start) no child process and no
port is left behind, its temporary folder of secret keys is removed, and it says so in a line,
not a traceback."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import HANG_S

ROOT = Path(__file__).resolve().parents[2]
PERPDEX = shutil.which("perpdex", path=str(Path(sys.executable).parent)) or "perpdex"


def perpdex(*args, timeout=120):
    return subprocess.run([PERPDEX, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def children_of(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def port_free(port: int) -> bool:
    """Nothing listens on it: a new server could bind it. (SO_REUSEADDR, as ZeroMQ binds: the
    closed connections of the old server may linger in TIME_WAIT, which is not a leak.)"""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def the_header(text: str):
    m = re.search(r"server: requests tcp://127\.0\.0\.1:(\d+), public events "
                  r"tcp://127\.0\.0\.1:(\d+); keys in (\S+) ", text)
    assert m, text
    return int(m.group(1)), int(m.group(2)), Path(m.group(3))


# ---- the story ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def a_demo_run():
    return perpdex("demo", "--seconds", "10")


def test_the_exchange_demo_runs_its_processes_and_ends_with_a_balanced_audit(a_demo_run):
    r = a_demo_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert "client processes over ZeroMQ" in r.stdout and ": balanced" in r.stdout


@pytest.mark.parametrize("what", ["MARGIN CALL: lev-", "LIQUIDATION (book): lev-1",
                                  "LIQUIDATION (backstop): lev-", "LIQUIDATION (adl): lev-"])
def test_the_story_shows_margin_calls_book_liquidation_backstop_and_adl(a_demo_run, what):
    assert what in a_demo_run.stdout, a_demo_run.stdout[-3000:]


def test_liquidation_lines_are_in_usd_with_their_fees(a_demo_run):
    book = [ln for ln in a_demo_run.stdout.splitlines() if "LIQUIDATION (book)" in ln]
    assert book
    for ln in book:
        assert re.search(r"sells [\d.]+ BTC at [\d,.]+ USD \([\d,.]+ USD, mark [\d,.]+\); "
                         r"fees [\d,.]+ USD to the insurance fund, [\d,.]+ USD taker$", ln), ln


def test_each_row_shows_a_mark_that_is_the_median_of_its_index_bid_and_ask(a_demo_run):
    """One snapshot per refresh: the book shown is the one the mark was computed from."""
    rows = re.findall(r"^\s*\d+\s+([\d,.]+)\s+([\d,.]+)\s+([\d,.]+)\s+([\d,.]+)\s{3}",
                      a_demo_run.stdout, re.M)
    assert len(rows) >= 5
    inconsistent = []
    for row in rows:
        index, bid, ask, mark = (float(x.replace(",", "")) for x in row)
        if mark != sorted((index, bid, ask))[1]:
            inconsistent.append(row)
    # a request of another client may slip in between the two of one snapshot: allow one
    assert len(inconsistent) <= 1, inconsistent


def test_the_demo_leaves_no_temporary_folder(a_demo_run):
    _, _, tmp = the_header(a_demo_run.stdout)
    assert not tmp.exists()


def test_the_in_process_demo_runs_and_shows_the_markets():
    r = perpdex("demo", "--in-process")
    assert r.returncode == 0, r.stderr
    assert "BTC-PERP" in r.stdout and "ETH-PERP" in r.stdout and "state hash" in r.stdout
    assert "balanced" in r.stdout and "issue" not in r.stdout


# ---- ending it ---------------------------------------------------------------------------------

def start_demo(seconds="60"):
    p = subprocess.Popen([PERPDEX, "demo", "--seconds", seconds], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    seen = ""
    deadline = time.monotonic() + HANG_S
    while "   t   BTC index" not in seen:          # every child has been started
        line = p.stdout.readline()
        assert line and time.monotonic() < deadline, seen + p.stderr.read()
        seen += line
    time.sleep(1.0)
    return p, seen


@pytest.mark.parametrize("sig, status, name", [(signal.SIGTERM, 143, "SIGTERM"),
                                               (signal.SIGINT, 130, "SIGINT")])
def test_a_signal_ends_every_child_and_frees_the_ports(sig, status, name):
    """SIGTERM, or Ctrl-C (SIGINT to the demo's process group, as a terminal sends it)."""
    p, head = start_demo()
    router, pub, tmp = the_header(head)
    kids = children_of(p.pid)
    assert len(kids) == 8, kids                   # the server and seven clients
    assert tmp.exists() and not port_free(router)
    os.killpg(p.pid, sig)
    out, err = p.communicate(timeout=30)
    assert p.returncode == status, out[-2000:] + err
    assert "Traceback" not in out + err
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"perpdex demo: stopped by {name}; 8 processes stopped"), last
    assert not [k for k in kids if alive(k)]
    assert port_free(router) and port_free(pub)
    assert not tmp.exists()


def test_a_server_that_fails_to_start_shows_its_own_output():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = perpdex("demo", "--seconds", "5", "--router", f"tcp://127.0.0.1:{port}", timeout=60)
    assert r.returncode == 1
    assert "the server did not start" in r.stderr and "--- its output ---" in r.stderr
    assert "Address already in use" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "did not start" not in r.stdout


def test_a_server_that_dies_midway_ends_the_demo_with_its_output_and_no_process_left():
    p, _ = start_demo()
    kids = children_of(p.pid)
    server = next(k for k in kids if b"serve" in Path(f"/proc/{k}/cmdline").read_bytes())
    os.kill(server, signal.SIGKILL)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 1, out[-2000:] + err
    assert "perpdex demo: the server stopped answering" in err and "exited with status -9" in err
    assert "--- its output ---\nperpdex serving" in err
    assert "Traceback" not in err and "stopped answering" not in out
    assert not [k for k in kids if alive(k)]


@pytest.mark.parametrize("args", [["--in-process"], ["--seconds", "30"]],
                         ids=["in-process", "exchange"])
def test_a_demo_piped_into_head_ends_without_a_traceback(args):
    r = subprocess.run(f"{PERPDEX} demo {' '.join(args)} | head -n 2", shell=True,
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert len(r.stdout.splitlines()) == 2
    assert "Traceback" not in r.stderr and "Exception" not in r.stderr, r.stderr


def test_the_demo_takes_its_ports_from_the_one_free_port():
    """Its ROUTER and PUB endpoints are picked in a row: never the same port (CI flake class)."""
    from perpdex.gateway import exchange_demo, natslocal
    assert exchange_demo.free_port is natslocal.free_port
