"""`perpdex serve` tried as a hostile client would (issue 15): real server processes, real CURVE
sockets on loopback, random ports, linger 0 and timeouts everywhere, so nothing here can hang."""
import json
import os
import resource
import signal
import socket
import stat
import subprocess
import time

import msgspec
import pytest
import zmq
import zmq.auth

from perpdex.gateway.client import Client, Timeout
from tests.harness import HANG_S, PERPDEX, Served, fill_the_book, free_port, serve, slow_socket

enc = msgspec.msgpack.encode
dec = msgspec.msgpack.decode


@pytest.fixture
def srv(tmp_path):
    s = serve(tmp_path)
    yield s
    s.stop()


def alive(s: Served, name="mm-2"):
    """The server still answers, and the audit balances to the unit."""
    assert s.client(name).request("heartbeat")["ok"]
    audit = s.client("admin").request("audit")["events"][0]
    assert audit["deposits"] - audit["withdrawals"] == (
        audit["collateral"] + audit["unrealised_pnl"] + audit["insurance_fund"] + audit["fees"])


def raw(c: Client, msg) -> dict:
    return c.send_raw(msg if isinstance(msg, bytes) else enc(msg))


# ---- no request can raise out of the loop ---------------------------------------------------

@pytest.mark.parametrize("bad_type", [[1], {"a": 1}, 7, None, True])
def test_a_type_that_is_not_a_string_is_invalid_command_and_the_server_lives(srv, bad_type):
    reply = raw(srv.client("mm-1"), {"req_id": 5, "type": bad_type})
    assert (reply["ok"], reply["reason"], reply["req_id"]) == (False, "invalid_command", 5)
    alive(srv)


def test_a_batch_item_whose_type_is_a_list_is_answered_per_item(srv):
    reply = raw(srv.client("mm-1"), {"req_id": 1, "type": "batch",
                                     "items": [{"type": [1]}, {"type": "cancel_all"}]})
    bad, good = reply["results"]
    assert (bad["ok"], bad["reason"]) == (False, "invalid_command") and good["ok"]
    alive(srv)


def test_deeply_nested_msgpack_is_invalid_command_and_the_server_lives(srv):
    deep = b"\x91" * 20_000 + b"\x00"
    c = srv.client("mm-1")
    assert raw(c, deep)["reason"] == "invalid_command"
    nested_field = b"\x83\xa6req_id\x09\xa4type\xa9new_order\xa3qty" + deep
    reply = raw(c, nested_field)
    assert (reply["reason"], reply["req_id"]) == ("invalid_command", 9)
    nested_item = b"\x82\xa4type\xa5batch\xa5items\x91" + deep
    assert raw(c, nested_item)["reason"] == "invalid_command"
    alive(srv)


def test_a_deposit_beyond_the_documented_bound_is_refused_at_the_edge(srv):
    admin = srv.client("admin")
    for _ in range(2):
        reply = admin.request("deposit", account="whale", amount=2**63 - 1)
        assert (reply["ok"], reply["reason"]) == (False, "invalid_command")
        assert "amount" in reply["detail"]
    alive(srv)


def test_a_deposit_beyond_int64_balance_is_refused_by_the_engine_not_an_internal_error(tmp_path):
    # the engine used to raise OverflowError for a balance beyond int64; with the edge's bound
    # raised, the engine's own bound answers it
    s = serve(tmp_path, limits={"max_deposit": 2**62})
    try:
        admin = s.client("admin")
        reply = raw(admin, {"req_id": "big", "type": "deposit", "account": "whale",
                            "amount": 2**62})
        assert reply["req_id"] == "big" and reply.get("reason") != "internal_error", reply
        alive(s)
    finally:
        s.stop()


# ---- reasons and req_id -----------------------------------------------------------------

@pytest.mark.parametrize("msg", [{"req_id": 3, "type": "zzz"}, {"req_id": 3},
                                 {"req_id": 3, "type": "batch", "items": [{"cid": 1}]}])
def test_an_unknown_or_missing_type_is_invalid_command(srv, msg):
    reply = raw(srv.client("mm-1"), msg)
    if "results" in reply:
        reply = reply["results"][0]
    assert reply["reason"] == "invalid_command", reply


def test_req_ids_1_true_1_0_and_the_string_1_are_four_different_ids(srv):
    srv.client("oracle").request("oracle", market="BTC-PERP", price=650_000)
    c = srv.client("taker-1")
    order = {"type": "new_order", "market": "BTC-PERP", "side": "buy", "kind": "limit",
             "qty": 1, "price": 600_000}
    first = raw(c, dict(order, req_id=1, cid="id-int"))
    assert first["ok"] and first["req_id"] == 1
    for rid in (True, 1.0):
        reply = raw(c, dict(order, req_id=rid, cid="id-other"))
        assert (reply["ok"], reply["reason"]) == (False, "invalid_command")
        assert reply["req_id"] == rid and type(reply["req_id"]) is type(rid)
    text = raw(c, dict(order, req_id="1", cid="id-str"))
    assert text["ok"] and text["req_id"] == "1"
    assert text["events"][0]["cid"] == "id-str"
    cids = [o["cid"] for o in c.request("query_account")["events"][0]["open_orders"]]
    assert cids.count("id-int") == 1 and cids.count("id-str") == 1 and "id-other" not in cids


@pytest.mark.parametrize("rid", [[1, 2], {"k": 1}, 2.5])
def test_a_req_id_of_another_type_is_refused_and_echoed(srv, rid):
    reply = raw(srv.client("mm-1"), {"req_id": rid, "type": "heartbeat"})
    assert (reply["ok"], reply["reason"], reply["req_id"]) == (False, "invalid_command", rid)
    assert "req_id" in reply["detail"]


def test_an_unreadable_request_still_echoes_its_req_id(srv):
    reply = raw(srv.client("mm-1"), {"req_id": "abc", "type": "new_order", "qty": [[[]]]})
    assert (reply["reason"], reply["req_id"]) == ("invalid_command", "abc")


# ---- budgets ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, fields", [("book", {"market": "BTC-PERP", "depth": 100}),
                                          ("heartbeat", {}), ("markets", {})])
def test_every_request_type_has_a_budget(srv, kind, fields):
    c = srv.client("taker-2")
    replies = []
    for k in range(0, 3000, 100):           # 100 in flight at a time: a client that reads
        for i in range(k, k + 100):
            c.sock.send(enc({"req_id": i, "type": kind, **fields}))
        replies += [c._receive() for _ in range(100)]
    limited = [r for r in replies if not r["ok"]]
    assert limited and {r["reason"] for r in limited} == {"rate_limited"}
    assert all(r["retry_after_ms"] > 0 for r in limited)
    assert srv.client("mm-2").request("heartbeat")["ok"]      # another account is untouched


# ---- never wait for a peer ------------------------------------------------------------------


def test_a_client_that_never_reads_holds_up_nobody_and_nothing_after_it_leaves(srv):
    fill_the_book(srv)
    slow = slow_socket(srv, "taker-1")
    for k in range(20_000):          # 20,000 requests for big replies, none of them read
        slow.send(enc({"req_id": k, "type": "book", "market": "BTC-PERP", "depth": 100}))
    other = srv.client("mm-2", timeout_ms=3000)
    for _ in range(50):
        assert other.request("query_account")["ok"]
    slow.close(linger=0)
    time.sleep(0.2)
    for _ in range(20):
        assert other.request("heartbeat")["ok"]
    alive(srv)


def test_a_subscriber_that_cannot_keep_up_is_suspended_told_and_resumes(tmp_path):
    s = serve(tmp_path, limits={"send_hwm": 50, "sndbuf": 8192,
                                "order_rate": [100_000.0, 100_000.0],
                                "cancel_rate": [100_000.0, 100_000.0]})
    try:
        slow = slow_socket(s, "mm-1")
        slow.send(enc({"req_id": "sub", "type": "subscribe"}))
        assert slow.poll(3000)
        start = dec(slow.recv())["pseq"]
        mm = s.client("mm-1")
        fill_the_book(s, levels=100)             # 200 accepted events on mm-1's stream
        for _ in range(10):                      # and 2,000 more
            mm.request("cancel_all")
            fill_the_book(s, levels=50)
        other = s.client("mm-2")
        assert other.request("heartbeat")["ok"]
        deadline = time.monotonic() + HANG_S  # the server suspends it once its pipe is full
        while other.request("health")["suspended_streams"] < 1:
            assert time.monotonic() < deadline, "the slow stream was never suspended"
            time.sleep(0.05)
        items = []
        while slow.poll(500):
            items.append(dec(slow.recv()))
        notices = [i for i in items if i.get("suspended")]
        assert len(notices) == 1, items[-3:]
        last = notices[0]["pseq"]
        delivered = [i["pseq"] for i in items if "event" in i]
        assert delivered == list(range(start + 1, last + 1))
        slow.send(enc({"req_id": "again", "type": "subscribe", "resume_from": last}))
        while True:
            assert slow.poll(3000)
            reply = dec(slow.recv())
            if reply.get("req_id") == "again":
                break
        assert reply["ok"] and reply["missed"][0]["pseq"] == last + 1
        assert reply["missed"][-1]["pseq"] == reply["pseq"]
        slow.close(linger=0)
    finally:
        s.stop()


def test_sigterm_ends_the_server_within_seconds_even_with_a_client_that_never_reads(tmp_path):
    s = serve(tmp_path)
    fill_the_book(s)
    slow = slow_socket(s, "taker-1")
    for k in range(20_000):
        slow.send(enc({"req_id": k, "type": "book", "market": "BTC-PERP", "depth": 100}))
    time.sleep(0.5)
    s.proc.send_signal(signal.SIGTERM)
    try:
        rc = s.proc.wait(timeout=5)
    finally:
        slow.close(linger=0)
        s.stop()
    assert rc == 0
    assert b"perpdex stopped" in s.proc.stdout.read()


def test_sigint_ends_the_server_cleanly(tmp_path):
    s = serve(tmp_path)
    assert s.client("mm-1").request("heartbeat")["ok"]
    s.proc.send_signal(signal.SIGINT)
    try:
        assert s.proc.wait(timeout=5) == 0
    finally:
        s.stop()
    assert b"perpdex stopped" in s.proc.stdout.read()


def test_connections_that_never_finish_the_handshake_do_not_lock_clients_out(tmp_path):
    def low_fd_limit():                  # the common default soft limit, hard limit unchanged
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

    s = serve(tmp_path, limits={"handshake_ms": 1000}, preexec=low_fd_limit)
    port = int(s.router.rsplit(":", 1)[1])
    idle = []
    try:
        for _ in range(1100):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        c = s.client("mm-1", timeout_ms=8000)
        assert c.request("heartbeat")["ok"]
    finally:
        for sk in idle:
            sk.close()
        s.stop()


def test_a_thousand_connections_at_once_are_all_served(srv):
    from perpdex.gateway.client import curve_socket
    ctx = zmq.Context()
    keys = srv.data / "keys"
    names = ["mm-1", "mm-2", "taker-1", "taker-2", "lev-1"]
    socks = [curve_socket(ctx, zmq.DEALER, str(keys / "server.key"),
                          str(keys / f"{names[i % 5]}.key_secret")) for i in range(1000)]
    try:
        poller = zmq.Poller()
        for i, sk in enumerate(socks):
            sk.connect(srv.router)
            sk.send(enc({"req_id": i, "type": "heartbeat"}))
            poller.register(sk, zmq.POLLIN)
        answered: set = set()
        deadline = time.monotonic() + HANG_S
        while len(answered) < len(socks) and time.monotonic() < deadline:
            for sk, _ in poller.poll(1000):
                reply = dec(sk.recv())
                assert reply["ok"], reply
                answered.add(reply["req_id"])
                poller.unregister(sk)
        assert len(answered) == 1000, f"{1000 - len(answered)} connections starved"
    finally:
        ctx.destroy(linger=0)
    alive(srv)


def test_beyond_max_connections_handshakes_are_refused_and_room_comes_back(tmp_path):
    s = serve(tmp_path, limits={"max_connections": 2})
    try:
        first, second = s.client("mm-1"), s.client("mm-2")
        assert first.request("heartbeat")["ok"] and second.request("heartbeat")["ok"]
        third = s.client("taker-1", timeout_ms=700)
        with pytest.raises(Timeout):
            third.request("heartbeat")
        third.close()
        assert first.request("heartbeat")["ok"]         # those connected are served
        first.close()
        for _ in range(30):
            late = s.client("taker-2", timeout_ms=300)
            try:
                assert late.request("heartbeat")["ok"]
                break
            except Timeout:
                late.close()
        else:
            raise AssertionError("no room came back after a connection left")
    finally:
        s.stop()


# ---- sessions ---------------------------------------------------------------------------

def test_cancel_on_disconnect_cancels_only_what_that_session_placed(srv):
    srv.client("oracle").request("oracle", market="BTC-PERP", price=650_000)
    old = srv.client("lev-1")
    assert old.request("session", cancel_on_disconnect=True)["ok"]
    assert old.request("new_order", market="BTC-PERP", cid="old", side="buy", kind="limit",
                       qty=1, price=600_000)["events"][0]["type"] == "order_accepted"
    old.close()                                          # the client dies and restarts
    new = srv.client("lev-1")
    new.request("session", cancel_on_disconnect=True)
    assert new.request("new_order", market="BTC-PERP", cid="new", side="buy", kind="limit",
                       qty=1, price=600_000)["events"][0]["type"] == "order_accepted"
    for _ in range(30):
        time.sleep(0.1)
        cids = [o["cid"] for o in new.request("query_account")["events"][0]["open_orders"]]
        if "old" not in cids:
            break
    assert "old" not in cids and "new" in cids


# ---- secrets and boot -------------------------------------------------------------------

def test_key_files_are_0600_and_the_data_folder_0700(srv):
    assert stat.S_IMODE(srv.data.stat().st_mode) == 0o700
    files = list((srv.data / "keys").iterdir()) + list((srv.data / "authorized").iterdir())
    assert any(f.name == "server.key_secret" for f in files)
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    for d in ("keys", "authorized"):
        assert stat.S_IMODE((srv.data / d).stat().st_mode) == 0o700


def test_boot_refuses_a_configured_market_the_engine_rejects_with_its_reason(tmp_path):
    from perpdex.gateway.config import default_config
    market = msgspec.structs.asdict(default_config().markets[0])
    market.update(market="BAD-PERP", tick_size="abc")
    lines = [f"{k} = {json.dumps(v)}" for k, v in market.items()
             if k not in ("type", "ts", "tiers") and v is not None]
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f"""
[server]
router = "tcp://127.0.0.1:{free_port()}"
pub = "tcp://127.0.0.1:{free_port()}"
data_dir = "{tmp_path / 'data'}"
[[markets]]
""" + "\n".join(lines) + """
[accounts.a]
role = "admin"
""")
    done = subprocess.run([PERPDEX, "serve", "--config", str(cfg)], capture_output=True,
                          timeout=20)
    assert done.returncode == 2
    assert b"BAD-PERP" in done.stderr and b"invalid_market" in done.stderr


# ---- the fuzz -----------------------------------------------------------------------------

VALID = [
    {"type": "new_order", "market": "BTC-PERP", "cid": 1, "side": "buy", "kind": "limit",
     "qty": 1, "price": 600_000, "tif": "gtc", "reduce_only": False, "stp": "cancel_maker"},
    {"type": "cancel", "market": "BTC-PERP", "cid": 1},
    {"type": "cancel_all", "market": "BTC-PERP"},
    {"type": "amend", "market": "BTC-PERP", "cid": 1, "price": 600_001, "qty": 2},
    {"type": "query_account"}, {"type": "set_leverage", "market": "BTC-PERP", "leverage": 5},
    {"type": "set_margin_mode", "market": "ETH-PERP", "mode": "cross"},
    {"type": "transfer_margin", "market": "BTC-PERP", "amount": 1},
    {"type": "withdraw", "amount": 1}, {"type": "heartbeat"},
    {"type": "session", "cancel_on_disconnect": False},
    {"type": "schedule_cancel", "after_ms": None}, {"type": "subscribe", "resume_from": 0},
    {"type": "book", "market": "BTC-PERP", "depth": 5}, {"type": "markets"},
    {"type": "oracle", "market": "BTC-PERP", "price": 650_000},
    {"type": "deposit", "account": "x", "amount": 1}, {"type": "audit"},
]


def mutations(r):
    deep = lambda n: json.loads("[" * n + "]" * n)  # noqa: E731
    return [None, True, False, 0, -1, 2**63, -(2**63), 2**64 - 1, 1.5, float("nan"),
            "", "x" * r.choice([1, 37, 65, 5000]), b"\x00\xff", [], [1, "a"], {}, {"a": [1]},
            deep(r.choice([2, 50, 500])), r.randrange(-10**6, 10**6)]


def test_random_and_mutated_requests_leave_everyone_answered_and_the_audit_balanced(srv):
    import random
    seed = int(os.environ.get("FUZZ_SEED", "15"))
    r = random.Random(seed)
    srv.client("oracle").request("oracle", market="BTC-PERP", price=650_000)
    c = srv.client("mm-1", timeout_ms=5000)
    for n in range(1500):
        msg = dict(r.choice(VALID))
        for _ in range(r.randrange(1, 4)):
            field = r.choice(list(msg) + ["req_id", "extra", "type"])
            msg[field] = r.choice(mutations(r))
        if r.random() < 0.2:
            msg = {"type": "batch", "items": [msg] * r.randrange(0, 300)}
        msg["req_id"] = n
        data = intact = enc(msg)
        if r.random() < 0.1:          # cut, flipped or padded bytes
            k = r.randrange(len(data))
            data = r.choice([data[:k], data[:k] + bytes([r.randrange(256)]) + data[k + 1:],
                             data + b"\x00" * r.randrange(70_000)])
        if len(data) > 1024 * 1024:   # beyond the hard limit ZeroMQ resets the connection
            c.timeout_ms = 300
            with pytest.raises(Timeout):
                c.send_raw(data)
            c.close()
            c = srv.client("mm-1", timeout_ms=5000)
            continue
        reply = c.send_raw(data)
        assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), (seed, n, reply)
        assert reply.get("reason") != "internal_error", (seed, n, msg, reply)
        if data == intact and (reply["ok"] or reply.get("req_id") is not None):
            assert reply["req_id"] == n, (seed, n, msg, reply)
    for name in ("mm-1", "mm-2", "taker-1", "oracle", "admin"):
        assert srv.client(name).request("heartbeat")["ok"]
    alive(srv)


# ---- reading the req_id of an unreadable request is bounded work ---------------------------

def _late_req_id(values: int) -> bytes:
    """A map whose req_id follows an array of `values` small integers (not a request)."""
    return (b"\x82\xa1x\xdc" + values.to_bytes(2, "big") + b"\x01" * values
            + b"\xa6req_id\x07")


def test_the_req_id_of_an_unreadable_request_is_looked_for_among_its_first_values_only():
    from perpdex.gateway import protocol as P
    assert P.peek_req_id(_late_req_id(10)) == 7
    assert P.peek_req_id(_late_req_id(P.PEEK_VALUES)) is None
    assert P.peek_req_id(enc({"type": "new_order", "req_id": "abc", "qty": [[[]]]})) == "abc"


def test_looking_for_the_req_id_of_a_huge_request_walks_a_bounded_number_of_values(
        monkeypatch):
    """Each of these used to cost the loop about 8 ms in Python (a walk of all its 60,000
    values), before any budget: 400 of them held every other account's reply for seconds. The
    work is counted, not timed: the values walked, the same whatever the request's size."""
    from perpdex.gateway import protocol as P
    walked = []
    skip = P._skip

    def counting(data, pos, budget):
        before = budget[0]
        try:
            return skip(data, pos, budget)
        finally:
            walked[-1] += before - budget[0]
    monkeypatch.setattr(P, "_skip", counting)
    for values in (10, 1_000, 6_000, 65_535):
        walked.append(0)
        assert P.peek_req_id(_late_req_id(values)) == (7 if values < P.PEEK_VALUES else None)
        assert 0 < walked[-1] <= P.PEEK_VALUES + 1, (values, walked)
    assert walked[1] == walked[2] == walked[3]    # 1,000 or 65,535 values: the same work


def test_a_flood_of_requests_with_a_late_req_id_is_answered_and_holds_up_nobody(srv):
    """400 of them, each answered `invalid_command` (no req_id could be read), and the other
    account's request answered too. The timeouts only catch a hang (HANG_S); that each costs
    the loop bounded work is the test above."""
    flood = srv.client("taker-1", timeout_ms=HANG_S * 1000)
    other = srv.client("mm-2", timeout_ms=HANG_S * 1000)
    other.request("heartbeat")
    bad = _late_req_id(60_000)
    for _ in range(400):
        flood.sock.send(bad)
    assert other.request("heartbeat")["ok"]
    replies = [flood._receive() for _ in range(400)]
    assert {(r["ok"], r["reason"], r.get("req_id")) for r in replies} == \
        {(False, "invalid_command", None)}
    alive(srv)
