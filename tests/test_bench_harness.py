"""The benchmark harness runs end to end on a tiny workload (no timing is asserted)."""
import io

from bench import run as bench_run
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


def test_the_benchmark_reports_every_path():
    rep = bench_run.run(commands=1500, depth=500, seed=2, log=lambda *_: None)
    assert set(rep["results"]) == {"core per-command", "core batch", "core batch, no margin",
                                   "replay jsonl",
                                   "replay msgpack", "python per-command", "python replay jsonl"}
    out = io.StringIO()
    bench_run.print_report(rep, out)
    assert "| core batch |" in out.getvalue()


def test_the_liquidation_benchmark_liquidates_exactly_the_ten_risky_accounts():
    from bench.liquidation import run
    r = run(200, updates=5)                 # asserts the ten, and no one in the quiet updates
    assert r["accounts"] == 200 and r["events_of_ten"] > 10
