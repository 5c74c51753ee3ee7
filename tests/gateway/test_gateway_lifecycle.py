"""A market's lifecycle through `perpdex serve` (docs/protocol.md): the admin's commands, the
status in `markets`, and the `status.<market>` topic of the public feed. A real process, real
CURVE sockets; this module has its own server."""
import time

import msgspec
import zmq

from perpdex.gateway.client import curve_socket
from tests.harness import PUB, client, events_of


def _status_topic(srv):
    """A SUB on status.ETH-PERP, with a trader's key."""
    data, router = srv
    sub = curve_socket(zmq.Context.instance(), zmq.SUB, str(data / "keys" / "server.key"),
                       str(data / "keys" / "mm-2.key_secret"))
    sub.setsockopt(zmq.SUBSCRIBE, b"status.ETH-PERP")
    sub.connect(PUB[router])
    time.sleep(0.3)                     # the subscription reaches the PUB
    return sub


def test_an_admin_halts_a_market_traders_are_refused_and_everyone_sees_it(server):
    sub = _status_topic(server)
    admin, oracle, trader = (client(server, n) for n in ("admin", "oracle", "mm-1"))
    assert oracle.request("oracle", market="ETH-PERP", price=300_000)["ok"]
    r = admin.request("set_market_status", market="ETH-PERP", status="halted")
    assert [e["status"] for e in events_of(r, "market_status")] == ["halted"]
    r = trader.request("new_order", market="ETH-PERP", cid="h1", side="buy", kind="limit",
                       qty=1, price=299_000)
    assert [e["reason"] for e in events_of(r, "rejected")] == ["market_halted"]
    [eth] = [m for m in admin.request("markets")["markets"] if m["market"] == "ETH-PERP"]
    assert eth["status"] == "halted"
    assert sub.poll(5000), "no status message"
    topic, body = sub.recv_multipart()
    msg = msgspec.msgpack.decode(body)
    assert (topic, msg["type"], msg["status"], msg["seq"]) == (
        b"status.ETH-PERP", "market_status", "halted", 1)
    admin.request("set_market_status", market="ETH-PERP", status="active")
    r = trader.request("new_order", market="ETH-PERP", cid="h2", side="buy", kind="limit",
                       qty=1, price=299_000)
    assert events_of(r, "order_accepted")
    sub.close(0)


def test_a_trader_may_not_change_a_markets_status_or_settle_it(server):
    trader = client(server, "mm-2")
    for req in (("set_market_status", dict(market="BTC-PERP", status="halted")),
                ("settle_market", dict(market="BTC-PERP", price=1)),
                ("update_market", dict(market="BTC-PERP", taker_fee_ppm=0))):
        r = trader.request(req[0], **req[1])
        assert not r["ok"], r


def test_perpdex_markets_shows_each_markets_status(server):
    import subprocess
    from tests.harness import PERPDEX
    data, router = server
    admin = client(server, "admin")
    admin.request("set_market_status", market="ETH-PERP", status="reduce_only")
    try:
        out = subprocess.run([PERPDEX, "markets", "--router", router, "--data", str(data)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        rows = {line.split()[0]: line.split()[1] for line in out.stdout.splitlines()[1:]}
        assert rows == {"BTC-PERP": "active", "ETH-PERP": "reduce_only"}
    finally:
        admin.request("set_market_status", market="ETH-PERP", status="active")
