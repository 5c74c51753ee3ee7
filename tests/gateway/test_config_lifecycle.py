"""A market's lifecycle in the configuration (docs/config.md, `[[markets]]`): a `status` other
than active and one `[[markets.updates]]` table, checked as the engine would take them and
applied when the venue boots, after the markets and before the deposits (issue 24)."""
import subprocess

import pytest

from perpdex.engine import Engine, messages as M
from perpdex.engine.markets import market_spec
from perpdex.gateway import boot
from perpdex.gateway.config import ConfigError, parse_config
from tests.harness import PERPDEX

MARKET = """
[[markets]]
market = "SOL-PERP"
tick_size = "0.001"
lot_size = "0.1"
min_qty = 1
imf_ppm = 100000
mmf_ppm = 50000
maker_fee_ppm = 0
taker_fee_ppm = 500
liquidation_fee_ppm = 10000
price_band_ppm = 50000
funding_interval_s = 3600
funding_cap_ppm = 7500
interest_ppm = 100
"""
ACCOUNTS = '\n[accounts.mm]\nrole = "trader"\ndeposit = 5\n'
JAN = 1767225600000000000


def config(extra: str):
    return parse_config(MARKET + extra + ACCOUNTS)


def test_a_status_and_a_scheduled_update_boot_with_the_venue():
    cfg = config(f'status = "post_only"\n[[markets.updates]]\neffective_ts = {JAN}\n'
                 f'imf_ppm = 200000\nmmf_ppm = 100000\n')
    cmds = boot.commands(cfg)
    assert [type(c) for c in cmds] == [M.CreateMarket, M.SetMarketStatus, M.UpdateMarket,
                                       M.Deposit]
    eng = Engine()
    events = [e for c in cmds for e in eng.execute(c)]
    assert not any(type(e) is M.Rejected for e in events)
    assert eng.market_status("SOL-PERP") == "post_only"
    updated = [e for e in events if type(e) is M.MarketUpdated]
    assert (updated[0].effective_ts, updated[0].imf_ppm) == (JAN, 200_000)


def test_active_is_the_default_and_sends_nothing():
    cmds = boot.commands(config('status = "active"\n'))
    assert [type(c) for c in cmds] == [M.CreateMarket, M.Deposit]


@pytest.mark.parametrize("extra, says", [
    ('status = "closed"\n', "status: 'closed' is not one of active, post_only"),
    ('[[markets.updates]]\nimf_ppm = 1\n[[markets.updates]]\nimf_ppm = 2\n', "at most one"),
    ('[[markets.updates]]\nmarket = "X"\n', "without `market`"),
    ('[[markets.updates]]\nmmf_ppm = 900000\n', "invalid_market"),
    ('[[markets.updates]]\ncolour = 1\n', "colour"),
])
def test_a_status_or_update_the_engine_would_refuse_is_a_config_error(extra, says):
    with pytest.raises(ConfigError, match=says) as e:
        config(extra)
    assert "markets[0] (SOL-PERP)" in str(e.value)


def test_config_check_refuses_a_bad_status_in_a_sentence(tmp_path):
    path = tmp_path / "venue.toml"
    path.write_text(MARKET + 'status = "later"\n' + ACCOUNTS)
    r = subprocess.run([PERPDEX, "config", "--check", str(path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and "status: 'later' is not one of" in r.stderr


def test_the_markets_reply_names_the_sources_the_mark_and_the_guard():
    text = MARKET + ('oracle_min_sources = 2\nmark_ema_updates = 30\nvelocity_max_ppm = 50000\n'
                     'velocity_pause_s = 30\n[[markets.oracle_sources]]\nname = "a"\nweight = 2\n'
                     '[[markets.oracle_sources]]\nname = "b"\n') + ACCOUNTS
    info = boot.market_info(market_spec(parse_config(text).markets[0]))
    assert info["oracle_sources"] == [{"name": "a", "weight": 2}, {"name": "b", "weight": 1}]
    assert (info["oracle_min_sources"], info["mark_ema_updates"], info["velocity_max_ppm"],
            info["velocity_pause_s"]) == (2, 30, 50_000, 30)
