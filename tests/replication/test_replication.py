"""Replicated mode (docs/operations.md, "Replication"): three nats-server processes on loopback,
`perpdex serve` nodes on them, real clients. The primary acknowledges only what the log holds;
a standby takes over when the primary is killed; one NATS server down changes nothing, two make
new commands `unavailable` until one is back; an old primary cannot append and steps down; a
read replica's book is the primary's."""
from __future__ import annotations

import random
import signal
import socket
import time

import pytest

from perpdex.gateway.client import Client, Timeout
from perpdex.gateway.natslocal import LocalCluster
from tests.harness import HANG_S
from tests.replicated import (PLAN, STREAM, TAKEOVER_MS, Node, Trader, ask, check, enc,
                              log_of, needs_nats, replayed_hash, stream_leader)
from tests.harness import did_work, work_then_kill

pytestmark = needs_nats


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(tmp_path / "nats")
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def nodes():
    started = []
    yield started
    for n in started:
        n.stop()


def order(c, cid, side="buy", price=600_000, qty=1, kind="limit", patient=True):
    """A new order; `patient`: sent again (a retry) until it is answered and not
    `unavailable` (a JetStream leader election takes seconds, docs/operations.md)."""
    fields = {"price": price} if kind == "limit" else {}
    send = ask if patient else (lambda c, t, **f: c.request(t, **f))
    return send(c, "new_order", market="BTC-PERP", cid=cid, side=side, kind=kind, qty=qty,
                **fields)


def events(reply, kind):
    return [e for e in reply.get("events", []) if e["type"] == kind]


def primary(tmp_path, cluster, nodes, **kw) -> Node:
    """A primary, written, with an oracle price and a maker's wall to buy from."""
    p = Node(tmp_path, "primary", cluster, "primary", **kw).start()
    nodes.append(p)
    p.wait_writer()
    ask(p.client("oracle"), "oracle", market="BTC-PERP", price=650_000)
    wall = order(p.client("mm-1"), "wall", side="sell", price=651_000, qty=500_000)
    assert events(wall, "order_accepted"), wall
    return p


def test_the_primary_acknowledges_what_the_log_holds_and_a_replay_of_it_agrees(
        tmp_path, cluster, nodes):
    p = primary(tmp_path, cluster, nodes)
    c = p.client("mm-2")
    assert events(order(c, "a"), "order_accepted")
    said = p.client("admin").request("state_hash")["events"][0]["hash"]
    assert replayed_hash(cluster) == said
    assert p.replication()["stream_seq"] == len(log_of(cluster))


def test_the_writer_keeps_a_local_journal_of_what_it_appends(tmp_path, cluster, nodes):
    from perpdex.gateway import journal as J
    from perpdex.gateway import replication as R
    p = primary(tmp_path, cluster, nodes)
    assert events(order(p.client("mm-2"), "a"), "order_accepted")
    logged = [rec for _, data, _ in log_of(cluster) for rec in R.records(data)]
    kept, _ = J.read_all(p.data / "journal")       # from the record after its takeover
    assert kept and kept == [rec for rec in logged if rec[0] >= kept[0][0]]
    assert [k for _, k, _ in logged[:2]] == [J.TAKEOVER, J.TURN] and kept[0][0] == 3


def standby(tmp_path, cluster, nodes, name, keys_from: Node, role="standby") -> Node:
    n = Node(tmp_path, name, cluster, role, keys_from=keys_from.data).start()
    nodes.append(n)
    return n


def failover_loop(tmp_path, cluster, nodes, seed: int, cycles: int):
    """Under load from four traders, SIGKILL the writer `cycles` times; each time the standby
    takes over, the traders retry what they had in flight on it, and everything is checked.
    The killed node comes back on its own data folder as the next standby (its local journal
    is moved aside when it takes over again)."""
    r = random.Random(seed)
    writer = primary(tmp_path, cluster, nodes)
    spare = standby(tmp_path, cluster, nodes, "standby-0", writer)
    everyone = []
    for cycle in range(cycles):
        where = f"seed {seed}, cycle {cycle}"
        took_over = spare.wait(lambda f: f["stream_seq"] > 0, why="following")["takeovers"]
        traders = [Trader(writer, a, make, r.randrange(1 << 30)) for a, make in PLAN]
        work_then_kill(traders, writer.kill, r, where)
        # how fast is for `perpdex bench --suite replication`; here: it takes over, once
        facts = spare.wait_writer(timeout=HANG_S)
        assert facts["takeovers"] == took_over + 1, (facts, where)
        for t in traders:
            t.retry(spare)
        everyone += traders
        check(spare, cluster, everyone, where)
        did_work(everyone, where)
        assert spare.replication()["hash_mismatches"] == 0, where
        writer.role = "standby"                     # the killed node comes back on its
        writer, spare = spare, writer.start()       # own data folder, and follows


def test_the_standby_takes_over_when_the_primary_is_killed_under_load(tmp_path, cluster, nodes):
    failover_loop(tmp_path, cluster, nodes, seed=random.randrange(1 << 30), cycles=1)


@pytest.mark.slow
def test_the_writer_is_killed_again_and_again_and_nothing_acknowledged_is_lost(
        request, tmp_path, nodes):
    cluster = request.getfixturevalue("cluster")
    failover_loop(tmp_path, cluster, nodes, seed=random.randrange(1 << 30), cycles=6)


def until(what, timeout: float, why: str):
    """Call what() until it returns something true; that (`timeout`: HANG_S, a hang)."""
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < deadline, why
        time.sleep(0.05)


def test_trading_goes_on_when_one_nats_server_is_killed_even_the_streams_leader(
        tmp_path, cluster, nodes):
    p = primary(tmp_path, cluster, nodes)
    c = p.client("mm-2", timeout_ms=2000)
    assert events(order(c, "before"), "order_accepted")
    cluster.kill(stream_leader(cluster))        # the worst one: the others elect a leader
    cids = [f"after-{i}" for i in range(20)]
    for cid in cids:
        assert events(order(c, cid), "order_accepted"), cid
    open_ = {o["cid"] for o in c.request("query_account")["events"][0]["open_orders"]}
    assert {"before", *cids} <= open_
    assert p.replication()["writer"]
    said = p.client("admin").request("state_hash")["events"][0]["hash"]
    assert replayed_hash(cluster) == said


def test_new_commands_are_unavailable_without_a_quorum_and_trading_resumes_with_one(
        tmp_path, cluster, nodes):
    p = primary(tmp_path, cluster, nodes)
    c = p.client("mm-2", timeout_ms=1500)
    assert events(order(c, "before"), "order_accepted")
    cluster.kill(1)
    cluster.kill(2)
    sent = []

    def refused():
        msg = {"req_id": 10_000 + len(sent), "type": "new_order", "market": "BTC-PERP",
               "cid": f"during-{len(sent)}", "side": "buy", "kind": "limit", "qty": 1,
               "price": 600_000}
        sent.append(msg)
        try:
            reply = c.send_raw(enc(msg))
        except Timeout:
            return None                             # held: not durable, so not answered
        assert reply.get("reason") == "unavailable" or reply.get("ok"), reply
        return reply if reply.get("reason") == "unavailable" else None

    reply = until(refused, HANG_S, "no `unavailable` reply without a quorum")
    assert "quorum" in reply["detail"]
    assert p.replication()["unavailable"]
    cluster.start(1)
    c2 = p.client("mm-2", timeout_ms=3000)
    p.wait(lambda f: not f["unavailable"], HANG_S, "the log did not come back")
    assert events(order(c2, "after"), "order_accepted")
    # every request sent meanwhile is answered once now: retried, the same reply as before
    placed = []
    for msg in sent:
        reply = c2.send_raw(enc(msg))
        if reply.get("ok"):
            placed.append(msg["cid"])
            assert events(reply, "order_accepted"), reply
            assert c2.send_raw(enc(msg)) == reply       # a retry: the kept reply
    open_ = {o["cid"] for o in c2.request("query_account")["events"][0]["open_orders"]}
    assert {"before", "after", *placed} <= open_
    said = p.client("admin").request("state_hash")["events"][0]["hash"]
    assert replayed_hash(cluster) == said


def test_an_old_primary_that_comes_back_cannot_append_and_steps_down(tmp_path, cluster, nodes):
    p = primary(tmp_path, cluster, nodes)
    s = standby(tmp_path, cluster, nodes, "standby-0", p)
    s.wait(lambda f: f["stream_seq"] > 0, why="following")
    c = p.client("mm-2", timeout_ms=TAKEOVER_MS + 4000)
    p.signal(signal.SIGSTOP)                        # the old primary believes it still is
    c.sock.send(enc({"req_id": 1, "type": "new_order", "market": "BTC-PERP", "cid": "late",
                     "side": "buy", "kind": "limit", "qty": 1, "price": 600_000}))
    s.wait_writer(timeout=HANG_S)
    p.signal(signal.SIGCONT)                        # it runs `late`, cannot append it, and
    try:                                            # never acknowledges it
        reply = c._receive()
        assert reply.get("reason") == "unavailable", reply
    except Timeout:
        pass
    p.wait(lambda f: f["state"] == "following" and not f["writer"], HANG_S, "did not step down")
    assert order(c, "later", patient=False).get("reason") == "unavailable"
    sc = s.client("mm-2")
    assert events(order(sc, "new"), "order_accepted")
    messages = log_of(cluster)
    took = next(i for i, (_, _, mid) in enumerate(messages) if mid.startswith("standby-0:"))
    assert all(mid.startswith("standby-0:") for _, _, mid in messages[took:])
    cids = {o["cid"] for o in sc.request("query_account")["events"][0]["open_orders"]}
    assert "new" in cids and "late" not in cids and "later" not in cids
    last = s.replication()["stream_seq"]
    p.wait_caught_up(last)                          # it follows the new writer now
    assert p.replication()["hash_mismatches"] == 0


def mirrors_agree(a, b, market="BTC-PERP") -> bool:
    ma, mb = a.books[market], b.books[market]
    return (ma.seq is not None and ma.seq == mb.seq and ma.checksum() == mb.checksum()
            and ma.levels("bids") == mb.levels("bids") and ma.levels("asks") == mb.levels("asks"))


def test_a_read_replicas_book_is_the_primarys_at_every_checkpoint(tmp_path, cluster, nodes):
    p = primary(tmp_path, cluster, nodes)
    r = standby(tmp_path, cluster, nodes, "replica-0", p, role="replica")
    rnd = random.Random(7)
    mm, taker = p.client("mm-2"), p.client("taker-1")
    r.wait_caught_up(p.replication()["stream_seq"])    # it knows the markets
    on_p = p.client("mm-1").market_data(p.pub, ["BTC-PERP"])
    on_r = r.client("mm-1").market_data(r.pub, ["BTC-PERP"])
    try:
        for checkpoint in range(3):
            for i in range(15):
                cid = f"c{checkpoint}-{i}"
                order(mm, cid, price=640_000 + rnd.randrange(0, 5000, 10), qty=rnd.randint(1, 9))
                if rnd.random() < 0.3:
                    mm.request("cancel", market="BTC-PERP", cid=cid)
            order(taker, f"buy-{checkpoint}", kind="market", qty=rnd.randint(1, 5))
            order(taker, f"sell-{checkpoint}", side="sell", kind="market", qty=rnd.randint(1, 5))
            r.wait_caught_up(p.replication()["stream_seq"])
            snap_p = p.client("admin").request("snapshot", market="BTC-PERP")
            snap_r = r.client("admin").request("snapshot", market="BTC-PERP")
            assert {**snap_p, "req_id": 0} == {**snap_r, "req_id": 0}, checkpoint
            until(lambda: on_p.poll(50) >= 0 and on_r.poll(50) >= 0
                  and mirrors_agree(on_p, on_r)
                  and on_p.books["BTC-PERP"].seq == snap_p["seq"], HANG_S,
                  f"the mirrors differ at checkpoint {checkpoint}")
        book_p = p.client("admin").request("book", market="BTC-PERP")
        book_r = r.client("admin").request("book", market="BTC-PERP")
        assert {**book_p, "req_id": 0} == {**book_r, "req_id": 0}
        markets = [n.client("admin").request("markets")["markets"] for n in (p, r)]
        assert markets[0] == markets[1]
        refused = order(r.client("mm-2"), "to-the-replica", patient=False)
        assert refused["reason"] == "unavailable" and "read replica" in refused["detail"]
        assert r.replication()["hash_checks"] > 0 and r.replication()["hash_mismatches"] == 0
    finally:
        on_p.close()
        on_r.close()


def test_the_client_fails_over_by_itself_and_its_private_stream_resumes_from_its_pseq(
        tmp_path, cluster, nodes):
    p = primary(tmp_path, cluster, nodes)
    s = standby(tmp_path, cluster, nodes, "standby-0", p)
    c = Client([p.router, s.router], str(p.data / "keys" / "server.key"),
               str(p.data / "keys" / "mm-2.key_secret"), timeout_ms=1000, failover_ms=30_000)
    try:
        assert c.subscribe()["ok"]
        first = {"req_id": "first", "type": "new_order", "market": "BTC-PERP", "cid": "one",
                 "side": "buy", "kind": "limit", "qty": 1, "price": 600_000}
        before = c.send_raw(enc(first))
        assert events(before, "order_accepted")
        seen = c.stream(1)
        s.wait_caught_up(p.replication()["stream_seq"])
        p.kill()
        after = order(c, "two", patient=False)          # fails over to the standby, which
        assert events(after, "order_accepted"), after   # takes over meanwhile
        assert c.endpoints[c.at] == s.router and c.failovers >= 1
        assert c.send_raw(enc(first)) == before         # a retry across the failover: once
        items = c.stream(1)                             # the chain is checked as they come
        assert items[0]["pseq"] == seen[-1]["pseq"] + 1
        assert items[0]["event"]["cid"] == "two"
        opened = [o["cid"] for o in c.request("query_account")["events"][0]["open_orders"]]
        assert sorted(opened) == ["one", "two"]
    finally:
        c.close()


def test_a_new_replica_starts_from_the_newest_snapshot_and_the_log_is_trimmed_behind_it(
        tmp_path, cluster, nodes):
    p = primary(tmp_path, cluster, nodes, snapshot_every=40)
    mm, taker = p.client("mm-2"), p.client("taker-1")
    assert mm.subscribe()["ok"]
    for i in range(120):
        order(mm, f"s{i}", price=640_000 + 10 * (i % 50))
        if i % 3 == 0:
            mm.request("cancel", market="BTC-PERP", cid=f"s{i}")
        if i % 10 == 0:
            order(taker, f"m{i}", side="sell", kind="market", qty=1)
    first = until(lambda: log_of(cluster)[0][0] > 1 and log_of(cluster)[0][0], HANG_S,
                  "the log was not trimmed")
    r = standby(tmp_path, cluster, nodes, "replica-0", p, role="replica")
    facts = r.wait_caught_up(p.replication()["stream_seq"])
    assert facts["snapshot_from"] >= first - 1 > 0
    same_books(p, r)
    said = [n.client("mm-2").subscribe() for n in (p, r)]
    assert (said[0]["pseq"], said[0]["hash"]) == (said[1]["pseq"], said[1]["hash"])
    order(mm, "after", price=645_000)               # the replica follows on from there
    r.wait_caught_up(p.replication()["stream_seq"])
    same_books(p, r)
    assert r.replication()["hash_mismatches"] == 0


def same_books(p: Node, r: Node):
    """The feed's snapshot (its seq, levels and checksum) and the engine's book agree."""
    for what in ("snapshot", "book"):
        got = [n.client("admin").request(what, market="BTC-PERP") for n in (p, r)]
        assert {**got[0], "req_id": 0} == {**got[1], "req_id": 0}, what


def test_an_old_primary_that_gets_no_command_finds_out_by_itself_and_steps_down(
        tmp_path, cluster, nodes):
    p = primary(tmp_path, cluster, nodes)
    s = standby(tmp_path, cluster, nodes, "standby-0", p)
    s.wait(lambda f: f["stream_seq"] > 0, why="following")
    p.signal(signal.SIGSTOP)
    s.wait_writer(timeout=HANG_S)
    p.signal(signal.SIGCONT)                        # it hears the new writer's heartbeat,
    p.wait(lambda f: not f["writer"], HANG_S, "did not step down")  # appends an empty turn, is
    assert s.replication()["writer"]                # refused, and follows
    sc = s.client("mm-2")
    assert events(order(sc, "new"), "order_accepted")
    p.wait_caught_up(s.replication()["stream_seq"])


def test_the_asyncio_client_fails_over_too_and_its_stream_goes_on_from_its_pseq(
        tmp_path, cluster, nodes):
    import asyncio

    from perpdex.gateway.client import AsyncClient
    p = primary(tmp_path, cluster, nodes)
    s = standby(tmp_path, cluster, nodes, "standby-0", p)

    async def run():
        c = AsyncClient([p.router, s.router], str(p.data / "keys" / "server.key"),
                        str(p.data / "keys" / "mm-2.key_secret"), timeout=1.0, failover_s=30)
        try:
            assert (await c.request("subscribe"))["ok"]
            one = await c.request("new_order", market="BTC-PERP", cid="one", side="buy",
                                  kind="limit", qty=1, price=600_000)
            assert events(one, "order_accepted")
            first = await asyncio.wait_for(c.items.get(), 5)
            s.wait_caught_up(p.replication()["stream_seq"])
            p.kill()
            two = await c.request("new_order", market="BTC-PERP", cid="two", side="buy",
                                  kind="limit", qty=1, price=600_000)
            assert events(two, "order_accepted") and c.endpoints[c.at] == s.router
            nxt = await asyncio.wait_for(c.items.get(), 5)
            assert nxt["pseq"] == first["pseq"] + 1 and nxt["event"]["cid"] == "two"
        finally:
            c.close()
    asyncio.run(run())


def test_a_standby_whose_state_hash_differs_from_the_writers_never_takes_over(
        tmp_path, cluster, nodes):
    import asyncio

    import nats

    from perpdex.gateway import journal as J
    from perpdex.gateway import replication as R
    from perpdex.gateway.durability import StateHash
    p = primary(tmp_path, cluster, nodes)
    s = standby(tmp_path, cluster, nodes, "standby-0", p)
    s.wait_caught_up(p.replication()["stream_seq"])
    s.signal(signal.SIGSTOP)
    p.kill()
    sseq, data, _ = log_of(cluster)[-1]
    last = list(R.records(data))[-1][0]
    bogus, _, _ = J.turn(last, [StateHash(commands=1, state_hash="0" * 32)])

    async def append():                             # a hash that no replay can match
        nc = await nats.connect(servers=cluster.urls)
        try:
            await nc.jetstream().publish(f"{STREAM}.log", bogus, headers={
                "Nats-Msg-Id": f"test:{last + 1}", "Nats-Expected-Last-Sequence": str(sseq)})
        finally:
            await nc.close()
    asyncio.run(append())
    s.signal(signal.SIGCONT)
    s.wait(lambda f: f["hash_mismatches"] == 1, HANG_S, "the bogus hash was not seen")
    time.sleep(TAKEOVER_MS / 1000 * 2)
    facts = s.replication()
    assert not facts["writer"] and facts["takeovers"] == 0
    assert order(s.client("mm-2"), "x", patient=False)["reason"] == "unavailable"


def test_perpdex_nats_local_runs_a_cluster_until_told_to_stop(tmp_path):
    import subprocess

    from tests.harness import PERPDEX
    proc = subprocess.Popen([PERPDEX, "nats-local", str(tmp_path / "n")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("NATS JetStream cluster (sync_interval always): nats://"), \
            line + proc.stderr.read().decode()
        urls = line.split(": ", 1)[1].split(",")
        assert len(urls) == 3
        import asyncio

        import nats

        async def js_ready():
            nc = await nats.connect(servers=[u.strip() for u in urls], connect_timeout=2)
            try:
                return (await nc.jetstream().account_info()) is not None
            finally:
                await nc.close()
        assert asyncio.run(js_ready())
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    for url in urls:                                # its servers are gone with it
        host, port = url.strip().rsplit("/", 1)[1].split(":")
        with pytest.raises(OSError):
            socket.create_connection((host, int(port)), timeout=1).close()


def test_a_replica_paused_while_the_log_is_trimmed_catches_up_with_the_same_book(
        tmp_path, cluster, nodes):
    """What was delivered to it before the purge it applies; what it still needs and was purged
    it would take from the newest snapshot (`snapshot_from`; not reached here: the consumer had
    delivered everything into the paused process's socket)."""
    p = primary(tmp_path, cluster, nodes, snapshot_every=40)
    r = standby(tmp_path, cluster, nodes, "replica-0", p, role="replica")
    r.wait_caught_up(p.replication()["stream_seq"])
    r.signal(signal.SIGSTOP)                        # it falls behind
    mm = p.client("mm-2")
    before = log_of(cluster)[0][0]
    for i in range(120):
        order(mm, f"b{i}", price=640_000 + 10 * (i % 50))
    until(lambda: log_of(cluster)[0][0] > before + 1, HANG_S, "the log was not trimmed")
    r.signal(signal.SIGCONT)
    facts = r.wait_caught_up(p.replication()["stream_seq"])
    assert facts["hash_mismatches"] == 0 and facts["hash_checks"] > 0
    same_books(p, r)


def test_a_follower_that_cannot_apply_the_log_whole_stops_and_says_why(
        tmp_path, cluster, nodes):
    import asyncio

    import nats
    p = primary(tmp_path, cluster, nodes)           # no snapshots
    for i in range(5):
        order(p.client("mm-2"), f"g{i}")

    async def purge():                              # as if trimmed behind a snapshot now gone
        nc = await nats.connect(servers=cluster.urls)
        try:
            await nc.jetstream().purge_stream(STREAM, seq=4)
        finally:
            await nc.close()
    asyncio.run(purge())
    r = standby(tmp_path, cluster, nodes, "replica-0", p, role="replica")
    assert r.proc.wait(timeout=20) != 0
    assert "the log jumps from stream seq 0 to 4, and no snapshot covers the gap" in r.stderr()


def test_a_retried_append_is_taken_once_and_another_nodes_append_is_fenced(tmp_path, cluster):
    from perpdex.gateway import journal as J
    from perpdex.gateway import replication as R
    from perpdex.gateway.config import ReplicationSection
    from perpdex.gateway.durability import Takeover
    rc = ReplicationSection(enabled=True, servers=cluster.urls, stream="FENCE")
    links = [R.Link(rc, name) for name in ("a", "b")]
    try:
        for link in links:
            link.call(link.connect(), 30)
        a, b = links
        data, _, _ = J.turn(0, [Takeover("a", 1)])
        first = a.call(a.append(data, 0), 10)
        again = a.call(a.append(data, 0), 10)       # an ack lost, the same append sent again
        assert (first.seq, again.seq, again.duplicate) == (1, 1, True)
        theirs, _, _ = J.turn(0, [Takeover("b", 2)])
        with pytest.raises(R.Fenced, match="wrong last sequence"):
            b.call(b.append(theirs, 0), 10)         # b believed the log was empty
        assert a.call(a.last_seq(), 10) == 1
    finally:
        for link in links:
            link.close()
