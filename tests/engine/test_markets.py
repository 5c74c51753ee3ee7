"""create_market: decimal configuration in, integer market out, clear errors otherwise."""
import pytest

from perpdex.engine import Engine, messages as M
from perpdex.engine.markets import MarketConfigError, market_spec
from tests.conftest import Exchange, reason
from tests.flows import MARKET_FIELDS


def spec(**over):
    return market_spec(M.CreateMarket(market="X", **dict(MARKET_FIELDS, **over)))


def test_the_multiplier_is_tick_times_lot_in_quote_units():
    assert spec(tick_size="0.1", lot_size="0.001").multiplier == 100
    assert spec(tick_size="0.01", lot_size="0.01").multiplier == 100
    assert spec(tick_size="1", lot_size="1").multiplier == 1_000_000


def test_a_non_integer_multiplier_is_a_clear_error():
    with pytest.raises(MarketConfigError, match="positive whole number.*= 0.1"):
        spec(tick_size="0.0001", lot_size="0.001")


def test_a_tick_size_that_is_not_a_decimal_is_a_clear_error():
    with pytest.raises(MarketConfigError, match="tick_size must be a decimal"):
        spec(tick_size="ten cents")


def test_maintenance_above_initial_margin_is_refused():
    with pytest.raises(MarketConfigError, match="mmf_ppm 200000 is above imf_ppm 100000"):
        spec(mmf_ppm=200_000)


def test_a_maker_rebate_above_the_taker_fee_is_refused():
    with pytest.raises(MarketConfigError, match="venue would pay out"):
        spec(maker_fee_ppm=-500, taker_fee_ppm=400)


def test_tiers_get_deductions_so_requirements_are_continuous():
    s = spec(tiers=[M.Tier(max_notional=1_000_000_000, imf_ppm=20_000, mmf_ppm=10_000),
                    M.Tier(max_notional=5_000_000_000, imf_ppm=50_000, mmf_ppm=25_000)])
    t0, t1 = s.tiers
    assert (t1.imf_deduction, t1.mmf_deduction) == (30_000_000, 15_000_000)
    n = t0.max_notional            # at the boundary both tiers give the same requirement
    assert n * t0.imf_ppm // 10**6 - t0.imf_deduction == n * t1.imf_ppm // 10**6 - t1.imf_deduction


def test_tiers_must_rise():
    with pytest.raises(MarketConfigError, match=r"tiers\[1\]: max_notional"):
        spec(tiers=[M.Tier(max_notional=10**9, imf_ppm=20_000, mmf_ppm=10_000),
                    M.Tier(max_notional=10**8, imf_ppm=50_000, mmf_ppm=25_000)])


def test_a_bad_market_is_rejected_invalid_market_and_the_engine_goes_on():
    x = Exchange()
    events = x.run(M.CreateMarket(market="BAD", **dict(MARKET_FIELDS, lot_size="0.0000001")))
    assert reason(events) == "invalid_market"
    assert "multiplier" in events[0]["detail"]


def test_a_second_market_of_the_same_name_is_rejected_market_exists():
    x = Exchange()
    assert reason(x.run(M.CreateMarket(market="BTC-PERP", **MARKET_FIELDS))) == "market_exists"


def test_a_tick_size_given_as_a_json_number_is_read_by_its_decimal_repr():
    assert spec(tick_size=0.1, lot_size=0.001).multiplier == 100


def test_prices_are_a_markets_last_index_and_mark_or_none_before_its_first_oracle():
    eng = Engine()
    eng.execute(M.CreateMarket(market="X", **MARKET_FIELDS))
    assert eng.prices("X") == (None, None)
    eng.execute(M.Oracle(market="X", price=100_000))
    assert eng.prices("X") == (100_000, 100_000)
