"""Issue 20, finding 1: nobody can wedge the venue with connections, and no internal thread can
die quietly. Real `perpdex serve` processes, real sockets on loopback, small caps from the
configuration's `[limits]`; bounds on counts and descriptors, never on timings (a loose bound
that only catches a hang is named so)."""
from __future__ import annotations

import errno
import os
import resource
import socket
import sys
import time

import pytest

from tests.harness import HANG_S, PERPDEX, LimitedVenue as Venue, free_port

HANG = HANG_S               # seconds: a loose bound that only catches a hang


def silent_connections(port: int, n: int, source: str = "") -> list[socket.socket]:
    """`n` TCP connections to `port` that never say anything (non-blocking connects: those
    the server does not take stay pending, and nothing here waits for them), from `source`
    (another loopback address than the clients' 127.0.0.1, say)."""
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source:
            s.bind((source, 0))
        s.setblocking(False)
        err = s.connect_ex(("127.0.0.1", port))
        assert err in (0, errno.EINPROGRESS), os.strerror(err)
        socks.append(s)
    return socks


def close_all(socks):
    for s in socks:
        s.close()


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


@pytest.fixture
def venue_factory(tmp_path):
    made = []

    def make(*args, sub: str = "v", **kw):
        v = Venue(tmp_path / f"{sub}{len(made)}", *args, **kw)
        made.append(v)
        return v

    yield make
    for v in made:
        v.stop()


# ---- connections ---------------------------------------------------------------------------

def test_silent_connections_beyond_the_public_cap_are_not_taken_and_traders_are_served(
        venue_factory):
    cap, backlog = 8, 8
    v = venue_factory({"max_subscribers": cap, "backlog": backlog, "handshake_ms": 5000})
    before = v.descriptors()
    flood = []
    for _ in range(15):                             # 300 in waves, as a sustained flood comes
        flood += silent_connections(port_of(v.pub), 20)
        time.sleep(0.05)
    try:
        deadline = time.monotonic() + HANG
        while v.health()["gates"]["public"]["gate"] != "closed":
            assert time.monotonic() < deadline, "the public socket never reached its cap"
            time.sleep(0.2)
        time.sleep(1.0)                             # the kernel retries the dropped SYNs
        c = v.client("mm-1")
        assert c.request("heartbeat")["ok"]
        assert c.request("query_account")["ok"]
        h = v.health()
        subs = h["subscribers"]
        assert 1 <= subs <= cap + backlog + 128, h  # the cap, plus what got past the gate
        assert v.descriptors() - before <= cap + backlog + 128 + 8
        assert h["descriptors"]["open"] <= h["descriptors"]["budget"] <= \
            h["descriptors"]["limit"]
        assert h["gates"]["public"]["gate"] == "closed"
    finally:
        close_all(flood)


def test_the_public_socket_closes_connections_that_never_finish_the_handshake(venue_factory):
    v = venue_factory({"handshake_ms": 300})
    flood = silent_connections(port_of(v.pub), 5)
    try:
        deadline = time.monotonic() + HANG
        closed = set()
        while len(closed) < len(flood):
            assert time.monotonic() < deadline, f"{len(flood) - len(closed)} still open (hang)"
            for i, s in enumerate(flood):
                if i in closed:
                    continue
                try:
                    if s.recv(4096) == b"":
                        closed.add(i)
                except BlockingIOError:
                    pass
                except OSError:
                    closed.add(i)
            time.sleep(0.05)
        assert v.health()["subscribers"] == 0
    finally:
        close_all(flood)


def test_health_counts_both_sockets_connections_and_they_go_back_to_zero(venue_factory):
    v = venue_factory({"max_subscribers": 50, "handshake_ms": 60_000})
    flood = silent_connections(port_of(v.pub), 20)
    time.sleep(0.5)
    assert v.health()["subscribers"] == 20
    close_all(flood)
    deadline = time.monotonic() + HANG
    while (h := v.health())["subscribers"] != 0:
        assert time.monotonic() < deadline, h
        time.sleep(0.1)
    assert h["connections"] >= 1 and h["gates"]["public"]["gate"] == "open"


def test_an_address_at_its_cap_waits_while_the_socket_has_room(venue_factory):
    v = venue_factory({"max_connections": 200, "max_per_address": 10, "backlog": 64,
                       "handshake_ms": 60_000})
    flood = silent_connections(port_of(v.router), 120, source="127.0.0.2")
    try:
        deadline = time.monotonic() + HANG
        while (h := v.health())["gates"]["requests"]["addresses_at_cap"] != 1:   # from
            assert time.monotonic() < deadline, h["gates"]  # 127.0.0.1: it gets in
            time.sleep(0.2)
        time.sleep(1.0)                                 # the kernel retries the dropped SYNs
        h = v.health()
        assert 10 <= h["connections"] <= 10 + 64 + 64 + 1, h   # the health client itself
        assert h["gates"]["requests"]["gate"] == "open"
    finally:
        close_all(flood)


def test_the_public_socket_is_counted_in_the_metrics(venue_factory):
    import urllib.request
    mport = free_port()
    v = venue_factory({"max_subscribers": 50},
                      argv=[PERPDEX, "serve", "--metrics", f"127.0.0.1:{mport}"])
    flood = silent_connections(port_of(v.pub), 3)
    try:
        time.sleep(0.5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read()
        lines = dict(line.rsplit(" ", 1) for line in text.decode().splitlines()
                     if line and not line.startswith("#"))
        assert float(lines["perpdex_subscribers"]) == 3
        assert float(lines["perpdex_descriptor_budget"]) >= 50
        assert float(lines["perpdex_descriptors_open"]) > 0
    finally:
        close_all(flood)


# ---- the descriptor budget ---------------------------------------------------------------

def test_a_budget_beyond_the_hard_open_file_limit_refuses_to_start_with_a_sentence(tmp_path):
    def low_hard_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))

    v = Venue(tmp_path, {"max_connections": 4096, "max_subscribers": 1024},
              preexec=low_hard_limit, wait=False)
    try:
        rc = v.proc.wait(timeout=HANG)
        err = v.proc.stderr.read().decode()
    finally:
        v.stop()
    assert rc != 0
    assert "descriptors" in err and "512" in err and "max_connections" in err, err


def test_the_soft_open_file_limit_is_raised_to_the_budget(venue_factory):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 3000:
        pytest.skip("the hard open-file limit here is below the budget")

    def low_soft_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    v = venue_factory({"max_connections": 1500, "max_subscribers": 500}, preexec=low_soft_limit)
    d = v.health()["descriptors"]
    assert d["budget"] >= 2000 and d["limit"] >= d["budget"]
    limit = int(open(f"/proc/{v.proc.pid}/limits").read().split("Max open files")[1].split()[0])
    assert limit >= d["budget"]


# ---- internal threads ---------------------------------------------------------------------

# `perpdex serve` with one of its threads made to fail (the fault injected before main runs).
FAULTY = """
import sys, threading
from perpdex.gateway import auth, journal
which = sys.argv[1]
if which == "journal":                  # the fsync thread's os.dup fails once the venue serves
    import os

    class Os:
        calls = 0

        def __getattr__(self, name):
            return getattr(os, name)

        def dup(self, fd):
            Os.calls += 1
            if Os.calls > 3:
                raise OSError(24, "Too many open files (injected)")
            return os.dup(fd)
    journal.os = Os()
elif which == "zap":
    async def broken(self, domain, client_key):
        raise RuntimeError("the ZAP handler broke (injected)")
    auth.GatedAuthenticator._authenticate_curve = broken
elif which == "gate":
    from perpdex.gateway import gate
    def broken(self, frames):
        raise RuntimeError("the gate broke (injected)")
    gate.Listener.event = broken
from perpdex.gateway.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("thread", ["journal", "zap", "gate"])
def test_an_internal_thread_that_dies_stops_the_server_loudly(tmp_path, thread):
    v = Venue(tmp_path, argv=[sys.executable, "-c", FAULTY, thread, "serve"], wait=False)
    try:
        deadline = time.monotonic() + HANG
        while v.proc.poll() is None and time.monotonic() < deadline:
            if thread != "journal":         # a handshake (zap) or a connection (gate) trips it
                try:
                    c = v.client("mm-1", timeout_ms=300)
                    c.request("heartbeat")
                    c.close()
                except Exception:   # noqa: BLE001 - the server is going down
                    pass
            else:
                try:
                    c = v.client("mm-1", timeout_ms=300)
                    c.request("new_order", market="BTC-PERP", cid=1, side="buy", kind="limit",
                              qty=1, price=600_000)
                    c.close()
                except Exception:   # noqa: BLE001
                    pass
            time.sleep(0.1)
        rc = v.proc.wait(timeout=HANG)      # a hang here is the bug
        lines = v.log_lines()
    finally:
        v.stop()
    assert rc not in (0, None)
    failed = [x for x in lines if x.get("event") == "thread_failed"]
    assert failed and failed[0]["failed_thread"] == thread and failed[0]["level"] == "critical", lines
    assert "injected" in failed[0]["error"]


def test_health_reports_the_journal_and_every_thread(venue_factory):
    v = venue_factory()
    h = v.health()
    assert set(h["threads"]) >= {"journal", "zap", "gate", "log"}
    assert all(state == "alive" for state in h["threads"].values()), h["threads"]
    assert h["journal"]["failure"] is None
