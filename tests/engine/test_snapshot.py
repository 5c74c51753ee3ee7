"""Snapshots: an engine built from `snapshot()` is the engine it was written from: the same state
hash, and the same events, byte for byte, for whatever comes next."""
import random
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from perpdex.engine import Engine, messages as M
from tests import flows as F

enc = msgspec.msgpack.encode


def leveraged_flow(seed, n):
    """Orders, money, margin modes, clock jumps over funding boundaries and oracle moves."""
    r0 = random.Random(seed)
    mids = {m: F.MID for m in F.MARKETS}
    cmds = F.create_markets(F.MARKETS)
    cmds += [M.Deposit(account=a, amount=r0.choice([10**6, 10**8, 10**10]), ts=0)
             for a in F.ACCOUNTS]
    cmds += [M.Oracle(market=m, price=F.MID, ts=1) for m in F.MARKETS]
    hour = 0
    for i in range(n):
        r = random.Random(r0.getrandbits(32))
        if r.random() < 0.03:
            hour += 1
            cmds.append(M.Clock(ts=hour * F.HOUR))
        ts = hour * F.HOUR + 1 + i
        if r.random() < 0.1:
            m = r.choice(F.MARKETS)
            mids[m] = max(100, mids[m] + r.randint(-800, 600))
            cmds.append(M.Oracle(market=m, price=mids[m], ts=ts))
        cmds.append(F.account_command(r, ts) if r.random() < 0.15
                    else F.random_command(r, ts, mids))
    return cmds


@pytest.mark.parametrize("seed", range(8))
def test_an_engine_from_a_snapshot_continues_byte_for_byte(seed):
    flow = leveraged_flow(seed, 600)
    cut = random.Random(seed).randint(1, len(flow) - 1)
    first, rest = flow[:cut], flow[cut:] + [M.Audit(ts=10**15), M.StateHash(ts=10**15)]
    whole = Engine()
    whole.execute_batch(b"".join(enc(c) for c in first))
    copy = Engine.from_snapshot(whole.snapshot())
    copy.check_integrity()
    assert copy.state() == whole.state()
    assert (copy.seq, copy.clock, copy.next_oid, copy.n_fills) == \
        (whole.seq, whole.clock, whole.next_oid, whole.n_fills)
    data = b"".join(enc(c) for c in rest)
    assert copy.execute_batch(data) == whole.execute_batch(data), f"seed {seed}, cut {cut}"
    copy.check_integrity()


def test_a_snapshot_of_a_restored_engine_restores_the_same_state():
    eng = Engine()
    eng.execute_batch(b"".join(enc(c) for c in leveraged_flow(99, 300)))
    twice = Engine.from_snapshot(Engine.from_snapshot(eng.snapshot()).snapshot())
    assert twice.state() == eng.state() and twice.seq == eng.seq


def test_an_engine_without_margin_checks_snapshots_as_itself():
    eng = Engine(margin=False)
    eng.execute_batch(b"".join(enc(c) for c in F.random_flow(3, 400)))
    copy = Engine.from_snapshot(eng.snapshot())
    assert copy.margin is False and copy.state() == eng.state()


@pytest.mark.parametrize("data", [b"", b"\x00", b"not msgpack at all", enc({"layout": [0]}),
                                  enc({"margin": True, "layout": [1, 2, 3]})])
def test_bytes_that_are_no_snapshot_are_refused_with_a_sentence(data):
    with pytest.raises(ValueError, match="snapshot"):
        Engine.from_snapshot(data)


def test_a_truncated_snapshot_is_refused():
    eng = Engine()
    eng.execute_batch(b"".join(enc(c) for c in leveraged_flow(5, 200)))
    data = eng.snapshot()
    with pytest.raises(ValueError):
        Engine.from_snapshot(data[: len(data) // 2])


_SNAPSHOT_OF_A_FLOW = """
import hashlib, random, sys
from perpdex.engine import Engine, messages as M
from tests.flows import create_markets, margin_flow
eng = Engine()
for cmd in margin_flow(random.Random(3), 200):
    getattr(eng, sys.argv[1])(cmd) if sys.argv[1] != "execute_many" else eng.execute_many([cmd])
# past the first capacity of the order pool and of a book's levels, with string cids, half
# of them cancelled: grown arrays and freed slots
big = Engine(margin=False)
for cmd in create_markets(["BTC-PERP"]):
    big.execute(cmd)
big.execute(M.Oracle(market="BTC-PERP", price=10_000, ts=1))
for i in range(6_000):
    big.execute(M.NewOrder(account=f"a{i % 7}", market="BTC-PERP", cid=f"c-{i}" * (1 + i % 5),
                           side="buy", kind="limit", qty=2, price=9_900 - i % 150, ts=2))
for i in range(0, 6_000, 2):
    big.execute(M.Cancel(account=f"a{i % 7}", market="BTC-PERP", cid=f"c-{i}" * (1 + i % 5),
                         ts=3))
print(hashlib.sha256(eng.snapshot() + big.snapshot()).hexdigest())
"""


def test_a_snapshot_is_a_function_of_the_state_alone():
    """The same commands, through each entry point, in separate processes (so with other heap
    addresses and other leftover bytes), give the same snapshot bytes: no address, no padding
    byte of whatever the memory held before."""
    root = Path(__file__).resolve().parents[2]
    digests = {subprocess.run([sys.executable, "-c", _SNAPSHOT_OF_A_FLOW, way], cwd=root,
                              capture_output=True, text=True, check=True).stdout
               for way in ("execute", "route", "execute_many")}
    assert len(digests) == 1, digests
