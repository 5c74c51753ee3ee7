"""The feed's delta logic against the engine itself, in one process: every rule of the random
flows (stops and take-profits that trigger, amends that move a level, STP, FOK, ALO, margin
cancels, liquidations) and random loop-turn boundaries. After every turn the deltas, applied to
a book of the test's own, give exactly the engine's book, level for level, and each checksum is
the test's own."""
import binascii
import random
from collections import Counter

import msgspec
from hypothesis import HealthCheck, given, settings

from perpdex.engine import Engine, messages as M
from perpdex.gateway.feed import ALL, Feed
from tests.conftest import Reached
from tests.crashes import crash_after
from tests.flows import ACCOUNTS, create_markets, leveraged_flows, random_flow

dec = msgspec.msgpack.decode


def crc(bids, asks) -> int:
    def side(levels):
        return b",".join(b"%d:%d" % (p, q) for p, q in levels[:25])
    return binascii.crc32(side(bids) + b"|" + side(asks)) & 0xFFFFFFFF


def replay(engine: Engine, cmds, seed: int):
    """Run `cmds`, cutting them into turns of 1 to 40 commands; after each turn check every
    book the deltas built against the engine's. The feed, with `feed.events`: how many events
    of each type the engine made, and `feed.published`: how many messages of each type it
    published."""
    rng = random.Random(seed)
    feed = Feed(engine, msgspec.msgpack.Encoder().encode)
    feed.events, feed.published = Counter(), Counter()
    books: dict = {}
    seqs: dict = {}
    turn = 0
    i = 0
    while i < len(cmds):
        n = rng.randint(1, 40)
        for cmd in cmds[i:i + n]:
            for ev in engine.execute(cmd):
                feed.events[type(ev).__name__] += 1
                if type(ev) is M.LiquidationEvent and ev.account in ACCOUNTS:
                    feed.events["the flow's own accounts liquidated"] += 1
                feed.event(ev)
        i += n
        turn += 1
        for topic, body in feed.flush():
            msg = dec(body)
            feed.published[msg["type"]] += 1
            assert seqs.get(topic, 0) + 1 == msg["seq"], (topic, msg)
            seqs[topic] = msg["seq"]
            assert not {"account", "cid", "oid", "taker_account", "maker_cid", "fee",
                        "taker_remaining"} & set(msg)
            if msg["type"] != "book":
                continue
            bids, asks = books.setdefault(msg["market"], ({}, {}))
            for side, levels in ((bids, msg["bids"]), (asks, msg["asks"])):
                for p, q in levels:
                    assert q != side.get(p, 0), "a level that did not change"
                    if q:
                        side[p] = q
                    else:
                        del side[p]
            assert crc(sorted(bids.items(), reverse=True), sorted(asks.items())) == \
                msg["checksum"]
        for market in engine.market_names():
            want = engine.book(market, ALL)
            bids, asks = books.get(market, ({}, {}))
            got = ([[p, q] for p, q in sorted(bids.items(), reverse=True)],
                   [[p, q] for p, q in sorted(asks.items())])
            assert got == (want["bids"], want["asks"]), (seed, turn, market)
            snap = feed.snapshot(market, None)
            assert (snap["bids"], snap["asks"]) == got
    return feed


def test_the_deltas_of_long_random_flows_rebuild_the_engines_books_turn_by_turn():
    for seed in range(4):
        feed = replay(Engine(margin=False), random_flow(seed, 3000), seed)
        assert feed.stats["book"] > 100
        assert feed.stats["full_reads"] < feed.stats["reads"] / 10   # reads stay shallow


def deep_flow(seed: int, n: int) -> list:
    """Books hundreds of levels deep: orders anywhere within 400 ticks of the mid, cancels and
    amends of any of them (far down the book too), and sweeps by market orders."""
    r = random.Random(seed)
    cmds = create_markets(["BTC-PERP"], price_band_ppm=100_000)
    cmds.append(M.Oracle(market="BTC-PERP", price=10_000, ts=1))
    live = []
    for k in range(n):
        x = r.random()
        if x < 0.2 and live:
            acct, cid = live.pop(r.randrange(len(live)))
            cmds.append(M.Cancel(account=acct, market="BTC-PERP", cid=cid, ts=2))
        elif x < 0.35 and live:
            acct, cid = r.choice(live)
            cmds.append(M.Amend(account=acct, market="BTC-PERP", cid=cid, ts=2,
                                price=10_000 + r.choice((-1, 1)) * r.randint(1, 400),
                                qty=r.randint(2, 9)))
        elif x < 0.38:
            cmds.append(M.NewOrder(account="t", market="BTC-PERP", cid=f"m{k}", ts=2,
                                   side=r.choice(("buy", "sell")), kind="market",
                                   qty=r.randint(2, 40)))
        else:
            side = r.choice(("buy", "sell"))
            acct = f"a{r.randrange(20)}"
            price = 10_000 + (-1 if side == "buy" else 1) * r.randint(-2, 400)
            cmds.append(M.NewOrder(account=acct, market="BTC-PERP", cid=k, side=side,
                                   kind="limit", qty=r.randint(2, 9), price=price, ts=2))
            live.append((acct, k))
    return cmds


def test_the_deltas_of_books_hundreds_of_levels_deep_rebuild_them():
    for seed in range(3):
        feed = replay(Engine(margin=False), deep_flow(seed, 4000), seed)
        assert len(feed.snapshot("BTC-PERP", None)["bids"]) > 100


def test_the_deltas_of_leveraged_flows_with_liquidations_rebuild_the_books():
    """Leveraged flows and a crash sized to their positions (tests.crashes): every case
    liquidates (the flow's own accounts in 20 % to 60 % of them), margin cancels and all."""
    seen = Reached()

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(leveraged_flows())
    def case(cmds):
        feed = replay(Engine(margin=True), cmds + crash_after(cmds, len(cmds)), len(cmds))
        seen.case(liquidated=feed.events["LiquidationEvent"] > 0,
                  flow_liquidated=feed.events["the flow's own accounts liquidated"] > 0,
                  traded=feed.events["Fill"] > 0,
                  liquidation_published=feed.published["liquidation"] > 0)

    case()
    assert seen.share("liquidated") >= 0.9 and seen.share("traded") >= 0.9, seen
    assert seen.share("flow_liquidated") >= 0.1, seen
    assert seen["liquidation_published"] == seen["liquidated"], seen


def test_a_feed_started_on_an_engine_with_books_publishes_from_them():
    engine = Engine(margin=False)
    cmds = deep_flow(9, 1600)
    for cmd in cmds[:800]:
        engine.execute(cmd)
    feed = Feed(engine, msgspec.msgpack.Encoder().encode)
    before = {m: feed.snapshot(m, None) for m in engine.market_names()}
    for m, snap in before.items():
        want = engine.book(m, ALL)
        assert (snap["bids"], snap["asks"]) == (want["bids"], want["asks"])
        assert snap["checksum"] == crc(want["bids"], want["asks"])
    for cmd in cmds[800:]:                  # and its deltas carry the right checksums
        for ev in engine.execute(cmd):
            feed.event(ev)
        for topic, body in feed.flush():
            msg = dec(body)
            if msg["type"] == "book":
                want = engine.book(msg["market"], ALL)
                assert msg["checksum"] == crc(want["bids"], want["asks"])
