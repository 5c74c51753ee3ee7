"""pytest-benchmark microbenchmarks of the core paths (`make bench` runs them after bench.run).

Run alone: .venv/bin/python -m pytest bench/ --benchmark-only
Each starts from the standard workload's book of 20,000 resting orders.
"""
import itertools

import msgspec
import pytest

from bench.workload import MARKET, generate
from engine import Engine, messages as M
from bench.reference import ReferenceEngine

WL = generate(seed=1, n=8192, depth=20_000)
FLOW_MP = [msgspec.msgpack.encode(c) for c in WL.flow]
CHUNK = b"".join(FLOW_MP[:4096])


def fresh(factory=Engine):
    eng = factory()
    for c in WL.setup:
        eng.execute(c)
    return eng


@pytest.mark.parametrize("factory", [Engine, ReferenceEngine], ids=["core", "python"])
def test_place_and_cancel_a_passive_order(benchmark, factory):
    eng = fresh(factory)
    cids = itertools.count(10**9)

    def place_and_cancel():
        cid = next(cids)
        eng.execute(M.NewOrder(account=7, market=MARKET, cid=cid, side="buy", kind="limit",
                               qty=10, price=649_990))
        eng.execute(M.Cancel(account=7, market=MARKET, cid=cid))

    benchmark(place_and_cancel)


def test_batch_of_4096_workload_commands(benchmark):
    def setup():
        return (fresh(),), {}

    def run(eng):
        eng.execute_batch(CHUNK, "msgpack")

    benchmark.pedantic(run, setup=setup, rounds=15)


def test_single_command_request_through_the_batch_entry_point(benchmark):
    eng = fresh()
    cids = itertools.count(10**9)

    def request():
        cid = next(cids)
        eng.execute_batch(msgspec.msgpack.encode(M.NewOrder(
            account=7, market=MARKET, cid=cid, side="sell", kind="limit", qty=10,
            price=650_010)), "msgpack")

    benchmark(request)
