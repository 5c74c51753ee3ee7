"""The market-data benchmark still runs (its in-process part, briefly): a benchmark that rots
measures nothing."""
from bench.marketdata import _order, publishing_cost


def test_the_publishing_cost_benchmark_runs_and_reports_the_feed_next_to_its_baseline():
    r = publishing_cost(levels=30, k=5, turns=20)
    assert r["feed_us_median"] > 0 and r["baseline_us_median"] > 0


def test_the_latency_benchmark_cancels_each_order_250_orders_later_at_its_own_level():
    price, qty, order = _order(2 * 300)
    assert (qty, order["type"], order["price"]) == (1, "new_order", price)
    price_c, qty_c, cancel = _order(2 * 550 + 1)
    assert (price_c, qty_c, cancel["type"], cancel["cid"]) == (price, 0, "cancel", order["cid"])
