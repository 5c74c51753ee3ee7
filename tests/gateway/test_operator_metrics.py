"""Issue 23: the metrics by Prometheus's conventions, scraped from a real server before anything
happened: counters end in `_total` and have no `_created`, labelled series are there from the
start, process and build-info metrics, latency buckets with no gap where the p99 lives."""
from __future__ import annotations

import re
import urllib.request
from importlib.metadata import version

import pytest

from perpdex.gateway.natslocal import free_port
from tests.harness import OperatorVenue as Venue


@pytest.fixture(scope="module")
def scraped(tmp_path_factory):
    metrics = f"127.0.0.1:{free_port()}"
    v = Venue(tmp_path_factory.mktemp("metrics") / "data", "--oracle-sim", "off",
              "--metrics", metrics)
    try:
        with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as r:
            yield r.read().decode()
    finally:
        v.stop()


def families(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def test_counters_end_in_total_and_have_no_created(scraped):
    assert "_created" not in scraped
    counters = [name for name, kind in families(scraped).items() if kind == "counter"]
    assert len(counters) >= 10
    for name in counters:
        assert name.endswith("_total"), name
        samples = re.findall(rf"^({name[:-len('_total')]}\S*?)[{{ ]", scraped, re.M)
        assert samples and set(samples) == {name}, (name, samples)


def test_cumulative_counts_are_counters(scraped):
    kinds = families(scraped)
    for name in ("perpdex_dropped_messages", "perpdex_suspended_streams",
                 "perpdex_unforeseen_failures", "perpdex_replies_dropped"):
        assert kinds.get(f"{name}_total") == "counter", name
        assert re.search(rf"^{name}_total 0\.0$", scraped, re.M), name


@pytest.mark.parametrize("series", [
    'perpdex_requests_total{type="new_order"} 0.0',
    'perpdex_requests_total{type="health"} 0.0',
    'perpdex_errors_total{reason="rate_limited"} 0.0',
    'perpdex_rejections_total{reason="insufficient_margin"} 0.0',
    'perpdex_orders_total{market="BTC-PERP"} 0.0',
    'perpdex_fills_total{market="ETH-PERP"} 0.0',
    'perpdex_liquidations_total{kind="adl"} 0.0',
    'perpdex_thread_failures_total{thread="journal"} 0.0',
    'perpdex_request_seconds_count{type="cancel"} 0.0'])
def test_labelled_series_are_there_before_their_first_event(scraped, series):
    assert re.search(rf"^{re.escape(series)}$", scraped, re.M), series


def test_process_and_build_info(scraped):
    kinds = families(scraped)
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes",
            "process_open_fds", "python_info"} <= set(kinds)
    assert f'perpdex_build_info{{version="{version("perpdex")}"}} 1.0' in scraped


def test_latency_buckets_leave_no_decade_gap_below_a_second(scraped):
    bounds = sorted({float(b) for b in re.findall(
        r'^perpdex_request_seconds_bucket\{le="([0-9.e+-]+)",type="new_order"\}', scraped,
        re.M)})
    assert bounds[0] <= 5e-5 and bounds[-1] >= 1.0
    assert all(b / a <= 2.5 for a, b in zip(bounds, bounds[1:])), bounds
    assert {0.02, 0.05} <= set(bounds)
