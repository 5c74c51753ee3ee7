"""The hash chains over the event streams (docs/protocol.md, "Hash chains"): every private item
and every public message carries blake2b-128 over the previous hash and its own event bytes, the
SDK checks them, and the chains go on across a restart. Real server processes."""
from hashlib import blake2b

import msgspec
import pytest

from perpdex.gateway.client import CHAIN_START, Chain, ChainError
from tests.harness import Venue


@pytest.fixture
def venue(tmp_path):
    v = Venue(tmp_path)
    v.start()
    v.client("oracle").request("oracle", market="BTC-PERP", price=650_000)
    yield v
    v.stop()


def cross(v, tag, n=3):
    mm, taker = v.client("mm-1"), v.client("taker-1")
    for k in range(n):
        mm.request("new_order", market="BTC-PERP", cid=f"{tag}a{k}", side="sell", kind="limit",
                   qty=1, price=651_000)
        taker.request("new_order", market="BTC-PERP", cid=f"{tag}b{k}", side="buy",
                      kind="limit", qty=1, price=651_000)


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


def test_the_private_chain_goes_on_across_a_restart(venue):
    c = venue.client("mm-1")
    c.subscribe()
    cross(venue, "x")
    c.stream(6)                                 # 3 accepted, 3 fills
    held = c.chain
    venue.kill()
    venue.start()
    c = venue.client("mm-1")
    c.chain = held                              # the history this client holds
    c.subscribe(resume_from=held.pseq)
    cross(venue, "y", n=1)
    assert len(c.stream(2)) == 2                # checked against the chain from before
