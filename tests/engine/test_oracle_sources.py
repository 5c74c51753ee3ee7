"""A multi-source index (docs/contract.md, "A multi-source index", an extension): the index is
the weighted median of the fresh, sane sources; with too few of them it is stale."""
from perpdex.engine import Engine, messages as M

PLAIN = dict(tick_size="0.01", lot_size="0.001", min_qty=1, imf_ppm=100_000, mmf_ppm=50_000,
             maker_fee_ppm=0, taker_fee_ppm=0, liquidation_fee_ppm=10_000,
             price_band_ppm=100_000, funding_interval_s=3600, funding_cap_ppm=7500,
             interest_ppm=0)
S = 10**9
THREE = [M.OracleSource("a"), M.OracleSource("b"), M.OracleSource("c")]


def venue(**over):
    eng = Engine()
    spec = dict(PLAIN, oracle_sources=THREE, oracle_min_sources=2, oracle_max_age_s=10,
                oracle_max_deviation_ppm=100_000)
    spec.update(over)
    assert eng.execute(M.CreateMarket(market="X", **spec)) == []
    eng.execute(M.Deposit(account="a", amount=10**12))
    return eng


def price(eng, source, p, ts):
    return eng.execute(M.Oracle(market="X", price=p, source=source, ts=ts))


def marks(events):
    return [(e.index, e.mark) for e in events if type(e) is M.Mark]


def test_the_index_is_the_weighted_median_of_the_sources():
    eng = venue(oracle_sources=[M.OracleSource("a", 1), M.OracleSource("b", 1),
                                M.OracleSource("c", 3)], oracle_max_deviation_ppm=0)
    price(eng, "a", 100_000, 1)
    price(eng, "b", 101_000, 2)
    assert marks(price(eng, "c", 99_000, 3)) == [(99_000, 99_000)]     # c outweighs a and b


def test_until_enough_sources_have_spoken_the_index_is_stale_and_an_event_says_so():
    eng = venue()
    [ev] = price(eng, "a", 100_000, 1)
    assert (type(ev), ev.source, ev.sources, ev.needed) == (M.IndexStale, "a", 1, 2)
    assert marks(price(eng, "b", 100_200, 2)) == [(100_000, 100_000)]


def test_a_source_that_lies_by_half_is_ignored():
    eng = venue()
    price(eng, "a", 100_000, 1)
    price(eng, "b", 100_100, 2)
    assert marks(price(eng, "c", 150_000, 3)) == [(100_000, 100_000)]


def test_a_source_that_lags_past_the_age_limit_no_longer_counts():
    eng = venue(oracle_min_sources=1)
    price(eng, "a", 100_000, 1 * S)
    price(eng, "b", 100_200, 1 * S)
    assert marks(price(eng, "c", 100_400, 20 * S)) == [(100_400, 100_400)]   # a, b too old


def test_two_of_three_stale_refuse_growing_positions_but_not_reducing_ones():
    eng = venue()
    price(eng, "a", 100_000, 1 * S)
    price(eng, "b", 100_000, 1 * S)
    eng.execute(M.Deposit(account="b", amount=10**12))
    eng.execute(M.NewOrder(account="b", market="X", cid=1, side="sell", kind="limit", qty=10,
                           price=100_000))
    eng.execute(M.NewOrder(account="a", market="X", cid=1, side="buy", kind="limit", qty=10,
                           price=100_000))
    [ev] = price(eng, "c", 100_000, 30 * S)                     # a and b are 29 s old now
    assert type(ev) is M.IndexStale and ev.sources == 1
    [ev] = eng.execute(M.NewOrder(account="a", market="X", cid=2, side="buy", kind="limit",
                                  qty=1, price=99_000, ts=30 * S))
    assert ev.reason == "oracle_stale" and "sources" in ev.detail
    [ev] = eng.execute(M.NewOrder(account="a", market="X", cid=3, side="sell", kind="limit",
                                  qty=1, price=101_000, ts=30 * S, reduce_only=True))
    assert type(ev) is M.OrderAccepted


def test_a_price_from_an_unknown_source_or_with_no_source_is_refused():
    eng = venue()
    assert price(eng, "d", 100_000, 1)[0].reason == "unknown_source"
    assert price(eng, None, 100_000, 1)[0].reason == "unknown_source"


def test_a_single_source_market_takes_no_source_and_is_the_contracts():
    eng = Engine()
    eng.execute(M.CreateMarket(market="X", **PLAIN))
    assert price(eng, "a", 100_000, 1)[0].reason == "unknown_source"
    assert marks(price(eng, None, 100_000, 1)) == [(100_000, 100_000)]


def test_the_sources_settings_are_checked():
    eng = Engine()
    for bad in (dict(oracle_sources=THREE, oracle_min_sources=4),
                dict(oracle_sources=[M.OracleSource("a"), M.OracleSource("a")]),
                dict(oracle_min_sources=2)):
        [ev] = eng.execute(M.CreateMarket(market="X", **dict(PLAIN, **bad)))
        assert ev.reason == "invalid_market", bad


def test_a_snapshot_keeps_what_each_source_said():
    eng = venue()
    price(eng, "a", 100_000, 1)
    copy = Engine.from_snapshot(eng.snapshot())
    assert copy.state() == eng.state()
    assert price(copy, "b", 100_200, 2) == price(eng, "b", 100_200, 2)
