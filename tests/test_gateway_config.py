"""The server's TOML configuration: clear errors that name the bad key."""
import pytest

from gateway.config import ConfigError, default_config, load_config


def write(tmp_path, text):
    p = tmp_path / "perpdex.toml"
    p.write_text(text)
    return p


def test_the_embedded_default_has_two_markets_and_every_role():
    cfg = default_config()
    assert [m.market for m in cfg.markets] == ["BTC-PERP", "ETH-PERP"]
    assert {a.role for a in cfg.accounts.values()} == {"admin", "oracle", "trader"}


def test_a_config_file_is_read(tmp_path):
    cfg = load_config(write(tmp_path, """
[server]
router = "tcp://127.0.0.1:9001"
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
[accounts.mm]
role = "trader"
deposit = 5
"""))
    assert cfg.router == "tcp://127.0.0.1:9001" and cfg.markets[0].market == "SOL-PERP"
    assert cfg.accounts["mm"].deposit == 5


@pytest.mark.parametrize("text, where", [
    ('[accounts.mm]\nrole = "boss"\n', "accounts.mm.role"),
    ('[accounts.mm]\nrole = "trader"\ncolour = 1\n', "accounts.mm.colour"),
    ('[server]\nport = 1\n[accounts.a]\nrole = "admin"\n', "server.port"),
    ('[[markets]]\nmarket = "X"\n[accounts.a]\nrole = "admin"\n', "markets[0]"),
    ('[accounts.mm]\nrole = "trader"\npublic_key = "short"\n', "accounts.mm.public_key"),
    ("not toml = = =", "not valid TOML"),
])
def test_a_bad_config_names_the_bad_key(tmp_path, text, where):
    with pytest.raises(ConfigError, match=where.replace("[", r"\[").replace("]", r"\]")):
        load_config(write(tmp_path, text))
