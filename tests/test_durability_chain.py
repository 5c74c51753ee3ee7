"""The hash chains over the event streams (docs/protocol.md, "Hash chains"): every private item
and every public message carries blake2b-128 over the previous hash and its own event bytes, the
SDK checks them, and the chains go on across a restart. Real server processes."""
import time
from hashlib import blake2b

import msgspec
import pytest
import zmq

from gateway.client import CHAIN_START, Chain, ChainError, curve_socket
from tests.test_durability_restart import Venue


@pytest.fixture
def venue(tmp_path):
    v = Venue(tmp_path)
    v.start()
    v.client("oracle").request("oracle", market="BTC-PERP", price=650_000)
    yield v
    v.stop()


def sub(v, ctx):
    s = curve_socket(ctx, zmq.SUB, str(v.data / "keys" / "server.key"),
                     str(v.data / "keys" / "admin.key_secret"))
    s.setsockopt(zmq.SUBSCRIBE, b"BTC-PERP")
    s.connect(v.pub)
    time.sleep(0.3)                                 # the SUB joins before anything is sent
    return s


def cross(v, tag, n=3):
    mm, taker = v.client("mm-1"), v.client("taker-1")
    for k in range(n):
        mm.request("new_order", market="BTC-PERP", cid=f"{tag}a{k}", side="sell", kind="limit",
                   qty=1, price=651_000)
        taker.request("new_order", market="BTC-PERP", cid=f"{tag}b{k}", side="buy",
                      kind="limit", qty=1, price=651_000)


def messages(s, n):
    out = []
    while len(out) < n and s.poll(3000):
        out.append(s.recv_multipart())
    assert len(out) == n
    return out


def test_each_private_item_carries_the_hash_over_the_previous_hash_and_its_event_bytes(venue):
    c = venue.client("mm-2")
    head = c.subscribe()["hash"]
    assert head == CHAIN_START                      # nothing in mm-2's stream yet
    c.chain = None                                  # checked by hand here, not by the SDK
    for k in range(3):
        c.request("new_order", market="BTC-PERP", cid=k, side="buy", kind="limit", qty=1,
                  price=640_000)
    for item in c.stream(3):
        head = blake2b(head + msgspec.msgpack.encode(item["event"]), digest_size=16).digest()
        assert item["hash"] == head


def test_each_public_message_carries_the_chain_of_its_market_in_a_third_frame(venue):
    ctx = zmq.Context()
    try:
        s = sub(venue, ctx)
        cross(venue, "p")
        msgs = messages(s, 3)
        chain = Chain(None)                         # joined midway: trust the first
        for topic, body, h in msgs:
            assert topic == b"BTC-PERP" and len(h) == 16
            chain.check_public([topic, body, h])
        assert msgs[1][2] == blake2b(msgs[0][2] + msgs[1][1], digest_size=16).digest()
    finally:
        ctx.destroy(linger=0)


def test_the_sdk_refuses_an_event_that_does_not_follow_from_the_one_before():
    chain = Chain()
    good = b"\x81\xa4type\xa4fill"
    h = Chain.next(CHAIN_START, good)
    chain.check(good, h, pseq=1)
    with pytest.raises(ChainError, match="not the history"):
        chain.check(good + b"!", Chain.next(h, good), pseq=2)
    with pytest.raises(ChainError, match="missing"):
        Chain(h, 1).check(good, Chain.next(h, good), pseq=3)


def test_the_client_checks_its_private_stream_as_it_arrives(venue):
    c = venue.client("mm-2")
    c.subscribe()
    c.request("new_order", market="BTC-PERP", cid="a", side="buy", kind="limit", qty=1,
              price=640_000)
    c.stream(1)
    c.chain.head = bytes(16)                        # as if an item had been changed on the way
    c.request("new_order", market="BTC-PERP", cid="b", side="buy", kind="limit", qty=1,
              price=640_000)
    with pytest.raises(ChainError):
        c.stream(1)


def test_both_chains_go_on_across_a_restart(venue):
    ctx = zmq.Context()
    try:
        c = venue.client("mm-1")
        c.subscribe()
        s = sub(venue, ctx)
        cross(venue, "x")
        c.stream(6)                                 # 3 accepted, 3 fills
        public = Chain(None)
        for m in messages(s, 3):
            public.check_public(m)
        held = c.chain
        venue.kill()
        venue.start()
        c = venue.client("mm-1")
        c.chain = held                              # the history this client holds
        c.subscribe(resume_from=held.pseq)
        s = sub(venue, ctx)
        cross(venue, "y", n=1)
        assert len(c.stream(2)) == 2                # checked against the chain from before
        public.check_public(messages(s, 1)[0])
    finally:
        ctx.destroy(linger=0)
