"""The standard workload generator and the liquidation benchmark, on tiny runs (no timing is
asserted). The suite itself is tests/bench/test_bench_suite.py."""
from bench.workload import generate, kind_of


def test_the_workload_has_the_standard_mix_and_a_deep_book():
    wl = generate(seed=3, n=4000, depth=2000)
    kinds = [kind_of(c) for c in wl.flow]
    share = {k: kinds.count(k) / len(kinds) for k in set(kinds)}
    assert 0.55 < share["passive"] < 0.65 and 0.25 < share["cancel"] < 0.35
    assert 0.05 < share["cross"] < 0.11 and 0.01 < share["market"] < 0.04
    assert len(wl.setup) >= 2000


def test_the_same_seed_gives_the_same_workload():
    assert generate(seed=5, n=500, depth=300).flow == generate(seed=5, n=500, depth=300).flow


def test_the_liquidation_benchmark_liquidates_exactly_the_ten_risky_accounts():
    from bench.liquidation import run
    r = run(200, updates=5)                 # asserts the ten, and no one in the quiet updates
    assert r["accounts"] == 200 and r["events_of_ten"] > 10
