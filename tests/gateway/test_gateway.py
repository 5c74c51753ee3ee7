"""`perpdex serve` as market makers meet it: a real process, real CURVE sockets on loopback."""
import types
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
import zmq
import zmq.auth

from perpdex.gateway.client import Client, Timeout
from tests.conftest import open_orders
from tests.harness import HANG_S, PERPDEX, PUB, client, events_of, free_port


def test_a_trader_places_an_order_and_gets_its_events_under_its_own_account(server):
    oracle = client(server, "oracle")
    assert oracle.request("oracle", market="BTC-PERP", price=650_000)["ok"]
    mm = client(server, "mm-1")
    reply = mm.request("new_order", market="BTC-PERP", cid=1, side="buy", kind="limit",
                       qty=10, price=649_000)
    assert reply["ok"] and isinstance(reply["req_id"], int)
    (acc,) = events_of(reply, "order_accepted")
    assert acc["account"] == "mm-1" and acc["cid"] == 1


def test_one_account_cannot_cancel_another_accounts_order(server):
    client(server, "oracle").request("oracle", market="ETH-PERP", price=300_000)
    client(server, "mm-1").request("new_order", market="ETH-PERP", cid=7, side="buy",
                                   kind="limit", qty=10, price=299_000)
    reply = client(server, "mm-2").request("cancel", market="ETH-PERP", cid=7)
    (rej,) = events_of(reply, "rejected")
    assert rej["reason"] == "unknown_order" and rej["account"] == "mm-2"
    mine = client(server, "mm-1").request("query_account")
    assert any(o["cid"] == 7 for o in mine["events"][0]["open_orders"])


def test_the_account_comes_from_the_key_not_the_message(server):
    reply = client(server, "mm-2").request("cancel_all", account="mm-1")
    assert not reply["ok"] and "from your key" in reply["detail"]


def test_a_trader_may_not_move_the_oracle(server):
    reply = client(server, "taker-1").request("oracle", market="BTC-PERP", price=1)
    assert (reply["ok"], reply["reason"]) == (False, "forbidden")


def test_an_unknown_key_is_refused_at_the_handshake(server, tmp_path):
    data, router = server
    zmq.auth.create_certificates(str(tmp_path), "stranger")
    stranger = Client(router, str(data / "keys" / "server.key"),
                      str(tmp_path / "stranger.key_secret"), timeout_ms=700)
    with pytest.raises(Timeout):
        stranger.request("query_account")


def test_garbage_gets_an_error_and_the_server_keeps_serving(server):
    mm = client(server, "mm-1")
    assert mm.send_raw(b"\xc1\xc1 not msgpack")["reason"] == "invalid_command"
    assert mm.send_raw(msgspec.msgpack.encode([1, 2]))["reason"] == "invalid_command"
    bad = mm.request("new_order", market="BTC-PERP", cid="x", side="up", kind="limit", qty=1)
    assert bad["reason"] == "invalid_command" and "side" in bad["detail"]
    assert mm.request("query_account")["ok"]


def test_a_retried_request_gets_the_original_reply_and_places_nothing_twice(server):
    client(server, "oracle").request("oracle", market="BTC-PERP", price=650_000)
    mm = client(server, "mm-2")
    req = {"req_id": "retry-1", "type": "new_order", "market": "BTC-PERP", "cid": 42,
           "side": "sell", "kind": "limit", "qty": 5, "price": 651_000}
    first = mm.send_raw(msgspec.msgpack.encode(req))
    again = mm.send_raw(msgspec.msgpack.encode(req))
    assert first == again and first["ok"]
    orders = mm.request("query_account")["events"][0]["open_orders"]
    assert [o["cid"] for o in orders].count(42) == 1


def test_a_batch_runs_its_cancels_first_and_answers_each_item_in_order(server):
    client(server, "oracle").request("oracle", market="BTC-PERP", price=650_000)
    mm = client(server, "taker-2")
    mm.request("new_order", market="BTC-PERP", cid="old", side="buy", kind="limit", qty=2,
               price=640_000)
    reply = mm.request("batch", items=[
        {"type": "new_order", "market": "BTC-PERP", "cid": "old", "side": "buy",
         "kind": "limit", "qty": 3, "price": 641_000},        # its cid is free once cancelled
        {"type": "cancel", "market": "BTC-PERP", "cid": "old"},
        {"type": "oracle", "market": "BTC-PERP", "price": 1},  # not a trader's
    ])
    new, cancel, oracle = reply["results"]
    assert cancel["ok"] and cancel["events"][0]["type"] == "order_cancelled"
    assert new["ok"] and new["events"][0]["type"] == "order_accepted"
    assert (oracle["ok"], oracle["reason"]) == (False, "forbidden")
    assert new["events"][0]["seq"] > cancel["events"][0]["seq"]


def test_a_flood_of_orders_is_rate_limited_and_told_when_to_retry(server):
    flooder = client(server, "lev-1")
    item = {"type": "new_order", "market": "BTC-PERP", "side": "buy", "kind": "limit",
            "qty": 1, "price": 1}
    limited = None
    for k in range(8):
        reply = flooder.request("batch", items=[dict(item, cid=f"{k}-{i}") for i in range(256)])
        if not reply["ok"]:
            limited = reply
            break
    assert limited is not None and limited["reason"] == "rate_limited"
    assert limited["retry_after_ms"] > 0
    # cancels have their own budget: they still go through
    assert flooder.request("cancel_all")["ok"]


def test_fills_reach_both_sides_once_in_order_with_no_gaps(server):
    client(server, "oracle").request("oracle", market="ETH-PERP", price=300_000)
    maker, taker = client(server, "mm-1"), client(server, "taker-1")
    m0 = maker.subscribe()["pseq"]
    t0 = taker.subscribe()["pseq"]
    maker.request("new_order", market="ETH-PERP", cid="s1", side="sell", kind="limit",
                  qty=3, price=300_100)
    maker.request("new_order", market="ETH-PERP", cid="s2", side="sell", kind="limit",
                  qty=3, price=300_200)
    taker.request("new_order", market="ETH-PERP", cid="t", side="buy", kind="limit", qty=6,
                  price=300_200, tif="ioc")
    mine = maker.stream(4)          # two accepted, two fills
    assert [i["pseq"] for i in mine] == list(range(m0 + 1, m0 + 5))
    fills = [i["event"] for i in mine if i["event"]["type"] == "fill"]
    assert [(f["cid"], f["liquidity"]) for f in fills] == [("s1", "maker"), ("s2", "maker")]
    theirs = taker.stream(3)        # accepted, two fills
    assert [i["pseq"] for i in theirs] == list(range(t0 + 1, t0 + 4))
    assert [i["event"]["seq"] for i in theirs if i["event"]["type"] == "fill"] == \
        [f["seq"] for f in fills]


def test_a_reconnecting_client_resumes_from_its_last_pseq(server):
    client(server, "oracle").request("oracle", market="BTC-PERP", price=620_000)
    first = client(server, "mm-2")
    start = first.subscribe()["pseq"]
    first.request("new_order", market="BTC-PERP", cid="r1", side="buy", kind="limit", qty=1,
                  price=600_000)
    first.request("cancel", market="BTC-PERP", cid="r1")
    first.close()
    again = client(server, "mm-2")
    reply = again.subscribe(resume_from=start)
    assert [i["event"]["type"] for i in reply["missed"]] == ["order_accepted", "order_cancelled"]
    assert reply["pseq"] == start + 2


def test_resuming_from_beyond_the_stream_is_a_clear_error(server):
    reply = client(server, "mm-2").subscribe(resume_from=10**9)
    assert (reply["ok"], reply["reason"]) == (False, "invalid_command")


def test_a_dead_mans_switch_cancels_the_orders_unless_renewed(server):
    client(server, "oracle").request("oracle", market="BTC-PERP", price=650_000)
    c = client(server, "taker-2")
    c.request("cancel_all")
    accepted = c.request("new_order", market="BTC-PERP", cid="dms", side="buy", kind="limit",
                         qty=1, price=600_000)
    assert accepted["events"][0]["type"] == "order_accepted"
    assert c.request("schedule_cancel", after_ms=300)["ok"]
    c.subscribe()
    ev = c.stream(1, timeout_ms=3000)[0]["event"]
    assert (ev["type"], ev["cid"], ev["reason"]) == ("order_cancelled", "dms", "user")


def test_a_disarmed_switch_cancels_nothing(server):
    client(server, "oracle").request("oracle", market="BTC-PERP", price=650_000)
    c = client(server, "mm-1")
    placed = c.request("new_order", market="BTC-PERP", cid="keep", side="buy", kind="limit",
                       qty=1, price=600_000)
    assert placed["events"][0]["type"] == "order_accepted"
    c.request("schedule_cancel", after_ms=200)
    c.request("schedule_cancel", after_ms=None)
    time.sleep(0.5)
    orders = c.request("query_account")["events"][0]["open_orders"]
    assert "keep" in [o["cid"] for o in orders]


def test_cancel_on_disconnect_cancels_when_the_session_times_out(server):
    client(server, "oracle").request("oracle", market="BTC-PERP", price=650_000)
    c = client(server, "lev-1")
    reply = c.request("session", cancel_on_disconnect=True)
    assert reply["session_timeout_ms"] == 800
    placed = c.request("new_order", market="BTC-PERP", cid="cod", side="buy", kind="limit",
                       qty=1, price=600_000)
    assert placed["events"][0]["type"] == "order_accepted"
    c.close()                                      # silence: no heartbeat any more
    watcher = client(server, "lev-1")
    deadline = time.monotonic() + HANG_S
    while "cod" in [o["cid"] for o in open_orders(watcher.request("query_account"))]:
        assert time.monotonic() < deadline, "the silent session's order was never cancelled"
        time.sleep(0.1)


def test_heartbeats_keep_a_session_alive(server):
    client(server, "oracle").request("oracle", market="BTC-PERP", price=650_000)
    c = client(server, "mm-2")
    c.request("session", cancel_on_disconnect=True)
    placed = c.request("new_order", market="BTC-PERP", cid="hb", side="buy", kind="limit",
                       qty=1, price=600_000)
    assert placed["events"][0]["type"] == "order_accepted"
    for _ in range(12):                            # 1.2 s, beyond the 0.8 s timeout
        assert c.request("heartbeat")["ok"]
        time.sleep(0.1)
    orders = c.request("query_account")["events"][0]["open_orders"]
    assert "hb" in [o["cid"] for o in orders]
    c.request("session", cancel_on_disconnect=False)


def test_an_oversized_request_gets_an_error_and_the_session_goes_on(server):
    c = client(server, "mm-1")
    reply = c.send_raw(msgspec.msgpack.encode({"type": "query_account", "pad": "x" * 70_000}))
    assert reply["reason"] == "too_large"
    assert c.request("query_account")["ok"]


def test_random_and_malformed_frames_leave_the_server_answering_and_the_audit_balanced(server):
    import random
    r = random.Random(7)
    c = client(server, "mm-2")
    for _ in range(300):
        kind = r.random()
        if kind < 0.3:
            data = bytes(r.randrange(256) for _ in range(r.randrange(1, 40)))
        elif kind < 0.6:
            data = msgspec.msgpack.encode({"type": r.choice(["new_order", "cancel", "amend",
                                                              "batch", "oracle", "zzz"]),
                                           "qty": r.choice([1, -1, "x", None]),
                                           "items": r.choice([[], [1], None])})
        else:
            data = msgspec.msgpack.encode(r.choice([1, "s", [1, {}], None, {"req_id": [1]}]))
        reply = c.send_raw(data)
        assert isinstance(reply, dict) and "ok" in reply
    c.sock.send_multipart([b"two", b"frames"])
    assert c._receive()["reason"] == "invalid_command"
    audit = client(server, "admin").request("audit")["events"][0]
    assert audit["deposits"] - audit["withdrawals"] == (
        audit["collateral"] + audit["unrealised_pnl"] + audit["insurance_fund"] + audit["fees"])


def test_the_sdk_converts_decimals_exactly_and_refuses_what_is_not_a_tick():
    from decimal import Decimal

    from perpdex.gateway.client import Units
    btc = Units({"market": "BTC-PERP", "tick_size": "0.1", "lot_size": "0.001"})
    assert btc.ticks(Decimal("65000.1")) == 650_001 and btc.lots("1.5") == 1_500
    assert btc.price(650_001) == Decimal("65000.1") and btc.size(1) == Decimal("0.001")
    with pytest.raises(ValueError, match="not a multiple of 0.1"):
        btc.ticks("65000.05")


def test_the_async_client_trades_and_streams(server):
    import asyncio

    from perpdex.gateway.client import AsyncClient, units

    data, router = server

    async def session():
        c = AsyncClient(router, str(data / "keys" / "server.key"),
                        str(data / "keys" / "taker-1.key_secret"))
        try:
            btc = units(await c.request("markets"))["BTC-PERP"]
            await c.request("subscribe")
            reply = await c.request("new_order", market="BTC-PERP", cid="async-1", side="buy",
                                    kind="limit", qty=btc.lots("0.002"),
                                    price=btc.ticks("60000.0"))
            item = await asyncio.wait_for(c.items.get(), 2)
            return reply, item
        finally:
            c.close()

    client(server, "oracle").request("oracle", market="BTC-PERP", price=650_000)
    reply, item = asyncio.run(session())
    assert reply["events"][0]["qty"] == 2 and reply["events"][0]["price"] == 600_000
    assert item["event"]["cid"] == "async-1"


def test_the_example_market_maker_quotes_both_sides_and_requotes_on_fills(server):
    data, router = server
    client(server, "oracle").request("oracle", market="ETH-PERP", price=300_000)
    root = Path(__file__).resolve().parents[2]
    mm = subprocess.Popen([sys.executable, str(root / "examples" / "market_maker.py"),
                           "--data", str(data), "--router", router, "--pub", PUB[router],
                           "--account", "mm-2", "--market", "ETH-PERP", "--size", "0.1",
                           "--seconds", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        oracle = client(server, "oracle")
        taker = client(server, "taker-1")
        quotes = []
        for k in range(25):
            oracle.request("oracle", market="ETH-PERP", price=300_000 + k)
            time.sleep(0.08)
            book = client(server, "mm-2").request("query_account")["events"][0]["open_orders"]
            quotes = [o for o in book if o["market"] == "ETH-PERP"]
            if len(quotes) >= 6:
                break
        assert {o["side"] for o in quotes} == {"buy", "sell"}
        hit = taker.request("new_order", market="ETH-PERP", cid="hit", side="buy",
                            kind="market", qty=5)
        assert any(e["type"] == "fill" for e in hit["events"])
        out, err = mm.communicate(timeout=20)
        assert mm.returncode == 0, err.decode()
        assert b"fills" in out and not out.startswith(b"mm-2: quoted ETH-PERP for 3 s, 0 fills")
    finally:
        if mm.poll() is None:
            mm.kill()


def test_plain_text_mode_serves_loopback_only_and_accounts_log_in_by_name(tmp_path):
    router = f"tcp://127.0.0.1:{free_port()}"
    refused = subprocess.run([PERPDEX, "serve", "--plaintext-loopback", "--data", str(tmp_path),
                              "--router", "tcp://0.0.0.0:1", "--pub", "tcp://0.0.0.0:2"],
                             capture_output=True, timeout=20)
    assert refused.returncode == 2 and b"loopback" in refused.stderr
    proc = subprocess.Popen([PERPDEX, "serve", "--plaintext-loopback", "--data", str(tmp_path),
                             "--router", router, "--pub", f"tcp://127.0.0.1:{free_port()}",
                             "--oracle-sim", "on"], stdout=subprocess.PIPE)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(router)
    try:
        assert b"PLAIN-TEXT" in proc.stdout.readline() + proc.stdout.readline()

        def ask(**msg):
            sock.send(msgspec.msgpack.encode(msg))
            assert sock.poll(5000)
            return msgspec.msgpack.decode(sock.recv())

        assert ask(type="query_account")["reason"] == "forbidden"
        assert ask(type="login", account="mm-1")["ok"]
        deadline = time.monotonic() + 10       # the simulated oracle (a client process, logged
        while any(m["index"] is None for m in ask(type="markets", prices=True)["markets"]):
            assert time.monotonic() < deadline, "the simulated oracle priced nothing in 10 s"
            time.sleep(0.05)                   # in by name) has priced the markets
        reply = ask(type="new_order", market="BTC-PERP", cid=1, side="buy", kind="limit",
                    qty=1, price=600_000)
        assert reply["events"][0]["type"] == "order_accepted"
        assert reply["events"][0]["account"] == "mm-1"
    finally:
        sock.close()
        proc.terminate()
        proc.wait(timeout=10)


def test_the_book_request_gives_the_best_levels(server):
    client(server, "oracle").request("oracle", market="ETH-PERP", price=300_000)
    c = client(server, "mm-1")
    c.request("new_order", market="ETH-PERP", cid="bk", side="sell", kind="limit", qty=4,
              price=305_000)
    book = c.request("book", market="ETH-PERP", depth=50)
    assert [305_000, 4] in book["asks"] or any(p == 305_000 for p, _ in book["asks"])
    assert book["asks"] == sorted(book["asks"])
    assert c.request("book", market="NOPE")["reason"] == "invalid_command"


def test_ipc_endpoints_work_and_resuming_beyond_the_buffer_is_a_clear_error(tmp_path):
    import threading

    import perpdex.gateway.server as gs
    from perpdex.gateway.config import default_config
    from perpdex.gateway.limits import Limits

    cfg = default_config(tmp_path / "data")
    cfg.router, cfg.pub = f"ipc://{tmp_path}/req", f"ipc://{tmp_path}/pub"
    srv = gs.Server(cfg, limits=Limits(stream_buffer=3))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        keys = tmp_path / "data" / "keys"
        c = Client(cfg.router, str(keys / "server.key"), str(keys / "mm-1.key_secret"))
        c.subscribe()
        Client(cfg.router, str(keys / "server.key"),
               str(keys / "oracle.key_secret")).request("oracle", market="BTC-PERP",
                                                         price=650_000)
        for k in range(5):
            c.request("new_order", market="BTC-PERP", cid=k, side="buy", kind="limit", qty=1,
                      price=600_000)
        reply = c.subscribe(resume_from=0)
        assert (reply["ok"], reply["reason"]) == (False, "resume_gap")
        assert "query_account" in reply["detail"]
        assert [i["pseq"] for i in c.subscribe(resume_from=3)["missed"]] == [4, 5]
    finally:
        srv.running = False
        t.join(timeout=5)
        srv.close()


def test_free_port_never_gives_one_process_the_same_port_twice(monkeypatch):
    """bind(0) may hand out the port it just gave: a server's ROUTER and PUB endpoints then
    collide ('Address already in use', seen once in CI)."""
    from perpdex.gateway import natslocal
    ports = iter([41_001, 41_001, 41_002])

    class OneSocket:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def bind(self, address):
            self.port = next(ports)

        def getsockname(self):
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(natslocal, "socket", types.SimpleNamespace(socket=OneSocket))
    monkeypatch.setattr(natslocal, "_GIVEN", set())
    assert [natslocal.free_port(), natslocal.free_port()] == [41_001, 41_002]
