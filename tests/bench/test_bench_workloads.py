"""The benchmark workloads are seeded and deterministic (the same seed gives the same command
bytes, in this process and in another), have the mixes bench/workloads.py states, and name only
live orders in their cancels and amends."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import workloads as W
from bench.plain_book import PlainBook

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"deep": {"n": 3000, "depth": 1000}, "thin": {"n": 3000}, "mm": {"n": 3000, "depth": 500}}


def small(name, seed):
    return W.GENERATORS[name](seed=seed, **SMALL[name])


def resting_counts(wl):
    """The number of resting orders after each operation, and what each cancel/amend returned."""
    book = wl.fresh_plain()
    counts, answers = [], []
    for (f, a), op in zip(wl.plain_calls(book), wl.ops):
        r = f(*a)
        if op[0] in ("cancel", "amend"):
            answers.append(r)
        counts.append(len(book.orders))
    return counts, answers


@pytest.mark.parametrize("name", sorted(W.GENERATORS))
def test_the_same_seed_gives_the_same_bytes(name):
    a, b = small(name, 7), small(name, 7)
    assert a.msgpack_setup() + a.msgpack() == b.msgpack_setup() + b.msgpack(), f"{name} seed 7"
    assert a.jsonl() == b.jsonl(), f"{name} seed 7"
    assert small(name, 8).digest() != a.digest(), f"{name}: seeds 7 and 8 gave the same workload"


def test_the_same_seed_gives_the_same_bytes_in_another_process():
    code = ("import sys; sys.path.insert(0, %r); from bench import workloads as W; "
            "print(*(W.GENERATORS[n](seed=11, **%r[n]).digest() for n in sorted(W.GENERATORS)))"
            % (str(ROOT), SMALL))
    here = " ".join(small(n, 11).digest() for n in sorted(W.GENERATORS))
    env = dict(os.environ, PYTHONHASHSEED="12345")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, timeout=120, check=True).stdout.strip()
    assert there == here, "seed 11: another process generated other bytes"


@pytest.mark.parametrize("seed", [1, 2])
def test_the_deep_mix_is_the_standard_one_over_a_deep_book(seed):
    wl = W.deep(seed=seed, n=6000, depth=2000)
    assert len(wl.fresh_plain().orders) == 2000, f"seed {seed}"
    share = {k: v / len(wl.ops) for k, v in wl.mix().items()}
    assert 0.57 < share["passive"] < 0.63 and 0.27 < share["cancel"] < 0.33, (seed, share)
    assert 0.06 < share["cross"] < 0.10 and 0.01 < share["market"] < 0.03, (seed, share)
    assert set(share) == {"passive", "cancel", "cross", "market"}, (seed, share)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_thin_mix_keeps_50_to_300_orders_resting_and_sweeps(seed):
    wl = small("thin", seed)
    counts, _ = resting_counts(wl)
    assert 50 <= min(counts) and max(counts) <= 300, (seed, min(counts), max(counts))
    share = {k: v / len(wl.ops) for k, v in wl.mix().items()}
    assert share["sweep"] > 0.12 and share["sweep"] + share["cross"] + share["market"] > 0.2, \
        (seed, share)


@pytest.mark.parametrize("seed", [1, 2])
def test_the_market_maker_mix_is_heavy_in_amends_and_cancels(seed):
    share = {k: v / len(small("mm", seed).ops) for k, v in small("mm", seed).mix().items()}
    assert share["amend"] > 0.35 and share["amend"] + share["cancel"] > 0.55, (seed, share)


@pytest.mark.parametrize("name", sorted(W.GENERATORS))
def test_cancels_and_amends_name_live_orders(name):
    _, answers = resting_counts(small(name, 5))
    assert answers and all(answers), f"{name} seed 5: a cancel or amend of an order not resting"


@pytest.mark.parametrize("name", sorted(W.GENERATORS))
def test_buyers_and_sellers_are_different_accounts_so_no_self_trade_can_happen(name):
    wl = small(name, 6)
    for kind, oid, acct, buy, price, qty in wl.setup + wl.ops:
        if buy is not None:
            assert (acct < W.BUYERS) == buy, (name, "seed 6", oid, acct, buy)
