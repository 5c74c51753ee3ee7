"""The server's TOML configuration: a schema of msgspec Structs, errors that name the bad key and
its line, a reference page that matches the schema, and the default written out to start from."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from perpdex.engine import messages as M
from perpdex.gateway.config import (DEFAULT_TOML, AccountSection, ConfigError, ReplicationSection,
                            ServerSection, default_config, load_config)
from tests.pages import documented_defaults


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


# ---- the schema, its reference page and the default written out ----------------------------

ROOT = Path(__file__).resolve().parents[2]
PERPDEX = shutil.which("perpdex", path=str(Path(sys.executable).parent)) or "perpdex"


def perpdex(*args, cwd=ROOT):
    return subprocess.run([PERPDEX, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_the_default_written_out_loads_as_the_same_config(tmp_path):
    out = tmp_path / "perpdex.toml"
    r = perpdex("config", "--write-default", str(out))
    assert r.returncode == 0, r.stderr
    assert load_config(out) == default_config()


def test_writing_the_default_keeps_an_existing_file_unless_forced(tmp_path):
    out = tmp_path / "perpdex.toml"
    out.write_text("mine")
    r = perpdex("config", "--write-default", str(out))
    assert r.returncode == 2 and "exists" in r.stderr and out.read_text() == "mine"
    assert perpdex("config", "--write-default", str(out), "--force").returncode == 0
    assert load_config(out) == default_config()


def test_a_bad_key_is_named_with_its_line(tmp_path):
    text = DEFAULT_TOML.read_text().replace("[accounts.lev-1]\n",
                                            "[accounts.lev-1]\nlevrage = 10\n")
    line = text.splitlines().index("levrage = 10") + 1
    p = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf":{line}: accounts\.lev-1\.levrage: unknown key"):
        load_config(p)
    r = perpdex("config", "--check", str(p))
    assert r.returncode == 2 and f":{line}: accounts.lev-1.levrage: unknown key" in r.stderr


def test_a_value_of_the_wrong_type_is_named_with_its_line(tmp_path):
    p = write(tmp_path, '[server]\nheartbeat_ms = "1s"\n[accounts.a]\nrole = "admin"\n')
    with pytest.raises(ConfigError, match=r":2: server\.heartbeat_ms: Expected `int`, got `str`"):
        load_config(p)


def test_a_market_the_engine_would_refuse_stops_the_config(tmp_path):
    text = DEFAULT_TOML.read_text().replace('lot_size = "0.01"', 'lot_size = "0.0000001"')
    with pytest.raises(ConfigError, match=r"markets\[1\] \(ETH-PERP\): the engine refuses it: "
                                          r"invalid_market: tick_size \* lot_size"):
        load_config(write(tmp_path, text))


def test_a_market_configured_twice_is_refused(tmp_path):
    text = DEFAULT_TOML.read_text().replace('market = "ETH-PERP"', 'market = "BTC-PERP"')
    with pytest.raises(ConfigError, match=r"markets\[1\]\.market: 'BTC-PERP' is configured twice"):
        load_config(write(tmp_path, text))


def test_the_reference_page_shows_the_embedded_default_verbatim():
    page = (ROOT / "docs" / "config.md").read_text()
    assert "```toml\n" + DEFAULT_TOML.read_text() + "```" in page


def test_the_reference_page_lists_every_key_of_the_schema():
    page = (ROOT / "docs" / "config.md").read_text()
    keys = set(ServerSection.__struct_fields__) | set(AccountSection.__struct_fields__)
    keys |= set(ReplicationSection.__struct_fields__)
    keys |= set(M.CreateMarket.__struct_fields__) - {"ts"}
    rows = set(re.findall(r"^\| `([a-z_]+)` \|", page, re.M))
    assert keys - rows == set()


def test_the_schema_defaults_are_the_documented_ones():
    page = (ROOT / "docs" / "config.md").read_text()
    for name, value in msgspec.structs.asdict(ServerSection()).items():
        row = re.search(rf"^\| `{name}` \|[^|]*\| `([^`]*)` \|", page, re.M)
        assert row and row.group(1) == msgspec.json.encode(value).decode(), name


@pytest.mark.parametrize("name", ["../../outside", "a/b", ".hidden", "", "x" * 65])
def test_an_account_name_that_is_no_plain_name_is_refused_with_its_line(tmp_path, name):
    """A name becomes the file names of its keys (data_dir/keys/NAME.key_secret) and the
    engine's account id (at most 64 characters)."""
    p = write(tmp_path, f'[server]\nheartbeat_ms = 1000\n[accounts."{name}"]\nrole = "trader"\n')
    with pytest.raises(ConfigError, match=r":3: accounts\..*: an account name is 1 to 64"):
        load_config(p)


def test_the_insurance_funds_account_cannot_be_configured(tmp_path):
    """A configured account "insurance" would trade with the fund's cash, and the engine never
    liquidates the fund's positions."""
    p = write(tmp_path, '[accounts.admin]\nrole = "admin"\n[accounts.insurance]\nrole = "trader"\n')
    with pytest.raises(ConfigError, match=r":3: accounts\.insurance: .*insurance fund"):
        load_config(p)


def test_the_replication_defaults_are_the_documented_ones():
    documented_defaults("[replication]", ReplicationSection)
