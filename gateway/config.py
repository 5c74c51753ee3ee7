"""Server configuration: TOML, validated with errors that name the bad key; or the embedded default.

    [server]
    router = "tcp://127.0.0.1:7701"      # requests (clients use DEALER)
    pub = "tcp://127.0.0.1:7702"         # public events
    data_dir = "perpdex-data"            # CURVE keys live here

    [[markets]]                          # create_market fields of the contract
    market = "BTC-PERP"
    tick_size = "0.1"
    ...

    [accounts.mm-1]
    role = "trader"                      # trader | oracle | admin
    public_key = "z85 public key"        # omitted: a key pair is made in data_dir/keys
    deposit = 1000000000000              # quote units credited at start (optional)
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from engine import messages as M

ROLES = ("trader", "oracle", "admin")


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key."""


@dataclass
class AccountConfig:
    name: str
    role: str
    public_key: str | None = None
    deposit: int = 0


@dataclass
class Config:
    router: str = "tcp://127.0.0.1:7701"
    pub: str = "tcp://127.0.0.1:7702"
    data_dir: Path = Path("perpdex-data")
    heartbeat_ms: int = 1000            # clients send a heartbeat (or any request) this often
    session_timeout_ms: int = 5000      # ... and a session with no word for this long is gone
    markets: list[M.CreateMarket] = field(default_factory=list)
    accounts: dict[str, AccountConfig] = field(default_factory=dict)


def _market(name: str, **kw) -> M.CreateMarket:
    return M.CreateMarket(market=name, **kw)


def default_config(data_dir: str | Path = "perpdex-data") -> Config:
    """BTC-PERP and ETH-PERP, an admin, an oracle feeder and five funded demo traders."""
    common = dict(min_qty=1, imf_ppm=100_000, mmf_ppm=50_000, maker_fee_ppm=-100,
                  taker_fee_ppm=500, liquidation_fee_ppm=10_000, price_band_ppm=50_000,
                  funding_interval_s=3600, funding_cap_ppm=7500, interest_ppm=100)
    usd = 1_000_000
    accounts = {"admin": AccountConfig("admin", "admin"),
                "oracle": AccountConfig("oracle", "oracle")}
    for name, dep in (("mm-1", 20_000_000), ("mm-2", 20_000_000), ("taker-1", 500_000),
                      ("taker-2", 500_000), ("lev-1", 20_000)):
        accounts[name] = AccountConfig(name, "trader", deposit=dep * usd)
    return Config(
        data_dir=Path(data_dir),
        markets=[_market("BTC-PERP", tick_size="0.1", lot_size="0.001", **common),
                 _market("ETH-PERP", tick_size="0.01", lot_size="0.01", **common)],
        accounts=accounts,
    )


def load_config(path: str | Path) -> Config:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}")
    cfg = Config()
    unknown = set(raw) - {"server", "markets", "accounts"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s): {', '.join(sorted(unknown))}")
    server = raw.get("server", {})
    for key, value in server.items():
        if key in ("heartbeat_ms", "session_timeout_ms"):
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{path}: server.{key}: expected a positive number of ms")
            continue
        if key not in ("router", "pub", "data_dir"):
            raise ConfigError(f"{path}: server.{key}: unknown key")
        if not isinstance(value, str):
            raise ConfigError(f"{path}: server.{key}: expected a string, got {value!r}")
    cfg.router = server.get("router", cfg.router)
    cfg.pub = server.get("pub", cfg.pub)
    cfg.data_dir = Path(server.get("data_dir", str(cfg.data_dir)))
    cfg.heartbeat_ms = server.get("heartbeat_ms", cfg.heartbeat_ms)
    cfg.session_timeout_ms = server.get("session_timeout_ms", cfg.session_timeout_ms)
    for i, mk in enumerate(raw.get("markets", [])):
        try:
            cfg.markets.append(msgspec.convert({**mk, "type": "create_market"}, M.CreateMarket))
        except msgspec.ValidationError as e:
            raise ConfigError(f"{path}: markets[{i}]: {e}")
    for name, acct in raw.get("accounts", {}).items():
        where = f"{path}: accounts.{name}"
        if not isinstance(acct, dict):
            raise ConfigError(f"{where}: expected a table")
        extra = set(acct) - {"role", "public_key", "deposit"}
        if extra:
            raise ConfigError(f"{where}.{sorted(extra)[0]}: unknown key")
        role = acct.get("role")
        if role not in ROLES:
            raise ConfigError(f"{where}.role: expected one of {', '.join(ROLES)}, got {role!r}")
        key = acct.get("public_key")
        if key is not None and (not isinstance(key, str) or len(key) != 40):
            raise ConfigError(f"{where}.public_key: expected a 40-character z85 CURVE key")
        deposit = acct.get("deposit", 0)
        if not isinstance(deposit, int) or deposit < 0:
            raise ConfigError(f"{where}.deposit: expected a non-negative integer of quote units")
        cfg.accounts[name] = AccountConfig(name, role, key, deposit)
    if not cfg.accounts:
        raise ConfigError(f"{path}: accounts: at least one account is needed")
    return cfg
