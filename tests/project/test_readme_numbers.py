"""The README's gateway and public-feed numbers are those of the stored benchmark results
(bench/results/gateway.json, bench/results/marketdata.json): a new run means a new README."""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def results(name):
    return json.loads((ROOT / "bench" / "results" / f"{name}.json").read_text())


def us(x):
    return f"{x:,.0f}"


def test_the_readme_gives_every_gateway_path_next_to_its_echo_with_the_ratios():
    lat = results("gateway")["latency"]
    for path, label in (("tcp curve", "tcp, CURVE"), ("ipc curve", "ipc, CURVE"),
                        ("tcp plain", "tcp, plain text")):
        srv, echo = lat[f"server {path}"], lat[f"echo {path}"]
        row = next(line for line in README.splitlines() if line.startswith(f"| {label}"))
        for h in (srv, echo):
            assert f"{us(h['p50_us'])} / {us(h['p99_us'])} / {us(h['p999_us'])}" in row, row
        assert f"| {srv['p50_us'] / echo['p50_us']:.2f} | {srv['p99_us'] / echo['p99_us']:.2f} |" \
            in row, row
    assert f"{results('gateway')['throughput']['commands_per_s']:,} commands/s" in README


def test_the_readme_gives_the_order_to_delta_latency_and_the_feeds_cost_a_turn():
    md = results("marketdata")
    delta = md["latency"]["order_to_delta"]
    assert (f"p50 {us(delta['p50_us'])} us,\np99 {us(delta['p99_us'])} us, p99.9 "
            f"{us(delta['p999_us'])} us") in README
    first = {r["orders_a_batch"]: r for r in md["publishing"] if r["levels_a_side"] == 25}
    assert (f"{first[1]['feed_us_median']:.1f} us for a turn of one order, "
            f"{first[10]['feed_us_median']:.1f} us for 10") in README


def test_the_readme_gives_the_throughput_with_and_without_the_journal():
    gw = results("durability")["gateway"]
    for mode in ("none", "off", "batch"):
        assert f"{gw[mode]['commands_per_s']:,}" in README, mode
    ratio = gw["batch"]["commands_per_s"] / gw["none"]["commands_per_s"]
    assert f"fsync per batch ({ratio:.2f})" in " ".join(README.split())
    assert f"{min(gw['batch']['runs']):,}" in README and f"{max(gw['batch']['runs']):,}" in README
