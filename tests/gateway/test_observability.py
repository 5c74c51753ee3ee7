"""What an operator watches (docs/observability.md), on a real server process: the Prometheus
endpoint with the documented names after some trading, the `health` request, and JSON log lines
for start, liquidations and disconnects."""
import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from perpdex.gateway.client import Client
from tests.conftest import open_orders
from tests.harness import HANG_S, PERPDEX, free_port

DOCUMENTED = ["perpdex_requests_total", "perpdex_request_seconds_bucket", "perpdex_errors_total",
              "perpdex_rejections_total", "perpdex_orders_total", "perpdex_fills_total",
              "perpdex_commit_seconds_count", "perpdex_connections", "perpdex_sessions",
              "perpdex_queue_replies", "perpdex_queue_stream_items", "perpdex_engine_seq",
              "perpdex_engine_commands", "perpdex_dropped", "perpdex_suspended",
              "perpdex_internal_errors"]


@pytest.fixture
def venue(tmp_path):
    yield from serving(tmp_path)


def serving(tmp_path, *more):
    data = tmp_path / "data"
    router, pub, metrics = (f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}",
                            f"127.0.0.1:{free_port()}")
    proc = subprocess.Popen([PERPDEX, "serve", "--data", str(data), "--router", router, "--pub",
                             pub, "--oracle-sim", "off", "--metrics", metrics,
                             "--log-format", "json", *more],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + HANG_S
    while b"perpdex serving" not in proc.stdout.readline():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline

    def client(name):
        return Client(router, str(data / "keys" / "server.key"),
                      str(data / "keys" / f"{name}.key_secret"), timeout_ms=3000)
    try:
        yield client, metrics, proc
    finally:
        proc.terminate()
        proc.wait(10)


def scrape(address) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        return r.read().decode()


def trade(client):
    client("oracle").request("oracle", market="BTC-PERP", price=650_000)
    mm, taker = client("mm-1"), client("taker-1")
    mm.request("new_order", market="BTC-PERP", cid=1, side="sell", kind="limit", qty=5,
               price=650_000)
    taker.request("new_order", market="BTC-PERP", cid=1, side="buy", kind="limit", qty=5,
                  price=650_000)
    taker.request("cancel", market="BTC-PERP", cid=999)                 # rejected: unknown_order
    taker.request("cancel_all", market="NOPE")                          # rejected: unknown_market
    taker.request("withdraw", account="mm-1", amount=1)                 # an error: forbidden


def test_the_metrics_endpoint_answers_with_the_documented_names_after_trading(venue):
    client, metrics, _ = venue
    trade(client)
    text = scrape(metrics)
    for name in DOCUMENTED:
        assert re.search(rf"^{name}(\{{| )", text, re.M), name
    assert re.search(r'^perpdex_fills_total\{market="BTC-PERP"\} 1\.0$', text, re.M)
    assert re.search(r'^perpdex_rejections_total\{reason="unknown_order"\} 1\.0$', text, re.M)
    assert re.search(r'^perpdex_requests_total\{type="new_order"\} 2\.0$', text, re.M)
    assert re.search(r'^perpdex_errors_total\{reason="invalid_command"\} ', text, re.M)


def test_the_journal_lag_is_measured_for_every_turn_that_waits_for_the_journal(venue):
    """The default server journals with fsync = "batch" (pipelined): the time each turn's
    replies wait for its fsync is what perpdex_commit_seconds measures."""
    client, metrics, _ = venue
    trade(client)
    count = re.search(r"^perpdex_commit_seconds_count (\S+)$", scrape(metrics), re.M)
    assert count and float(count.group(1)) >= 5, count


def test_health_says_how_far_along_the_server_is(venue):
    client, _, _ = venue
    trade(client)
    reply = client("mm-2").request("health")
    assert reply["ok"] and reply["seq"] > 0 and reply["commands"] > 0
    assert reply["markets"] == ["BTC-PERP", "ETH-PERP"] and reply["connections"] >= 1


def test_log_lines_are_json_objects_with_the_documented_events(tmp_path):
    """start, a liquidation (lev-1 long at 8x, the index 9 % lower and no bids) and a
    disconnect (a session with cancel-on-disconnect that falls silent), each with the fields
    docs/observability.md gives it."""
    server = serving(tmp_path, "--session-timeout-ms", "500")
    client, _, proc = next(server)
    try:
        trade(client)
        mm, lev = client("mm-1"), client("lev-1")
        assert mm.request("new_order", market="BTC-PERP", cid=2, side="sell", kind="limit",
                          qty=2500, price=650_000)["ok"]
        bought = lev.request("new_order", market="BTC-PERP", cid=1, side="buy", kind="market",
                             qty=2500)
        assert [e["qty"] for e in bought["events"] if e["type"] == "fill"] == [2500], bought
        crash = client("oracle").request("oracle", market="BTC-PERP", price=590_000)
        assert any(e["type"] == "liquidation" for e in crash["events"]), crash
        quitter = client("taker-2")
        quitter.session(cancel_on_disconnect=True)
        assert quitter.request("new_order", market="BTC-PERP", cid="cod", side="buy",
                               kind="limit", qty=1, price=580_000)["ok"]
        quitter.close()                            # silent from now on: the session ends
        watcher = client("taker-2")                # another connection: not that session
        deadline = time.monotonic() + HANG_S
        while open_orders(watcher.request("query_account")):
            assert time.monotonic() < deadline, "the silent session was never ended"
            time.sleep(0.1)
    finally:
        server.close()                             # the server stops: its log is whole
    lines = [json.loads(x) for x in proc.stderr.read().decode().splitlines() if x.strip()]
    assert all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)
    by_event: dict = {}
    for x in lines:
        by_event.setdefault(x.get("event"), []).append(x)
    (start,) = by_event["start"]
    assert start["markets"] == ["BTC-PERP", "ETH-PERP"]
    assert {"router", "pub", "accounts", "metrics"} <= set(start)
    liquidations = by_event["liquidation"]
    assert {x["account"] for x in liquidations} == {"lev-1"}
    for x in liquidations:
        assert (x["market"], x["side"]) == ("BTC-PERP", "sell")
        assert {"qty", "price", "kind", "fee"} <= set(x) and x["kind"] in ("book", "backstop",
                                                                            "adl")
    assert sum(x["qty"] for x in liquidations) == 2500      # the whole position, no bids
    assert [(x["account"], x["cancel_on_disconnect"], x["orders"])
            for x in by_event["disconnect"] if x["account"] == "taker-2"] == [("taker-2", True, 1)]
