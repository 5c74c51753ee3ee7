"""Server configuration: a TOML file read into msgspec Structs, the schema below; or the embedded
default (gateway/default.toml, which `perpdex config --write-default FILE` writes out to start
from). docs/config.md lists every key with its default.

    [server]           ServerSection: endpoints, the data folder, session timing
    [journal]          JournalSection: the command journal, fsync policy, snapshots
    [replication]      ReplicationSection: the record log on NATS JetStream, role, timing
    [limits]           LimitsSection: the gateway's bounds (gateway/limits.py, docs/limits.md)
    [[markets]]        the contract's create_market, one table per market
    [accounts.NAME]    AccountSection: role, optional CURVE public key, opening deposit

An error names the file, the line where it can be found, and the key (`accounts.mm-1.role`).
Markets are also checked the way the engine checks create_market, so a market that could not be
created stops the server before it starts rather than as a `rejected` event at boot.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Union, get_args

import msgspec
from msgspec import Meta, Struct

from perpdex.engine import messages as M
from perpdex.engine.markets import MarketConfigError, market_spec, updated_spec

from .limits import Limits

ROLES = ("trader", "oracle", "admin")
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LEVELS = get_args(LogLevel)
DEFAULT_TOML = Path(__file__).with_name("default.toml")

PositiveMs = Annotated[int, Meta(gt=0, le=86_400_000)]
QuoteUnits = Annotated[int, Meta(ge=0, le=M.INT64_MAX)]
Z85Key = Annotated[str, Meta(min_length=40, max_length=40,
                             pattern=r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")]
Endpoint = Annotated[str, Meta(min_length=1)]


# A configured account's name: the file names of its keys (data_dir/keys/NAME.key_secret) and
# its account id in the engine (at most 64 characters, engine/messages.py).
ACCOUNT_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,63}")
INSURANCE = "insurance"             # the engine's insurance fund (docs/contract.md)


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the file, the line and the key."""


# ---- the schema of the file ------------------------------------------------------------------

class ServerSection(Struct, forbid_unknown_fields=True, kw_only=True):
    router: Endpoint = "tcp://127.0.0.1:7701"
    pub: Endpoint = "tcp://127.0.0.1:7702"
    data_dir: Annotated[str, Meta(min_length=1)] = "perpdex-data"
    heartbeat_ms: PositiveMs = 1000
    session_timeout_ms: PositiveMs = 5000
    metrics: str = ""               # HOST:PORT, or "" for none: checked by address_problem
    log_format: Literal["text", "json"] = "text"
    log_level: LogLevel = "info"
    oracle_sim: bool = False


class JournalSection(Struct, forbid_unknown_fields=True, kw_only=True):
    """The command journal and snapshots in the data folder (docs/operations.md)."""
    enabled: bool = True
    fsync: Literal["batch", "interval", "off"] = "batch"
    fsync_interval_ms: PositiveMs = 10
    segment_bytes: Annotated[int, Meta(ge=4096, le=2**40)] = 64 * 1024 * 1024
    snapshot_every: Annotated[int, Meta(ge=0, le=2**40)] = 1_000_000
    keep_snapshots: Annotated[int, Meta(ge=1, le=1000)] = 2
    covered_segments: Literal["keep", "archive", "delete"] = "keep"


NatsUrl = Annotated[str, Meta(pattern=r"^(nats|tls)://[^\s]+$")]


class ReplicationSection(Struct, forbid_unknown_fields=True, kw_only=True):
    """Replicated mode: the record log on a NATS JetStream stream (docs/operations.md,
    "Replication")."""
    enabled: bool = False
    role: Literal["primary", "standby", "replica"] = "standby"
    node: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{0,64}$")] = ""
    servers: Annotated[list[NatsUrl], Meta(min_length=1, max_length=16)] = msgspec.field(
        default_factory=lambda: ["nats://127.0.0.1:4222"])
    stream: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "PERPDEX"
    replicas: Annotated[int, Meta(ge=1, le=5)] = 3
    heartbeat_ms: Annotated[int, Meta(ge=10, le=60_000)] = 200
    takeover_ms: Annotated[int, Meta(ge=50, le=600_000)] = 2000
    append_timeout_ms: Annotated[int, Meta(ge=10, le=60_000)] = 1000
    hash_every: Annotated[int, Meta(ge=0, le=2**40)] = 10_000
    snapshot_every: Annotated[int, Meta(ge=0, le=2**40)] = 1_000_000
    keep_snapshots: Annotated[int, Meta(ge=1, le=1000)] = 2
    max_append_bytes: Annotated[int, Meta(ge=4096, le=8 << 20)] = 512 * 1024


Positive = Annotated[int, Meta(gt=0, le=2**40)]
RateBurst = Annotated[list[Annotated[float, Meta(gt=0)]], Meta(min_length=2, max_length=2)]
_LIMITS = Limits()


class LimitsSection(Struct, forbid_unknown_fields=True, kw_only=True):
    """The gateway's bounds (gateway/limits.py; docs/limits.md says what they add up to)."""
    max_message: Positive = _LIMITS.max_message
    hard_limit: Positive = _LIMITS.hard_limit
    drain: Positive = _LIMITS.drain
    max_batch: Positive = _LIMITS.max_batch
    max_deposit: Annotated[int, Meta(gt=0, le=M.INT64_MAX)] = _LIMITS.max_deposit
    retry_window: Positive = _LIMITS.retry_window
    retry_bytes: Positive = _LIMITS.retry_bytes
    stream_buffer: Positive = _LIMITS.stream_buffer
    resume_bytes: Positive = _LIMITS.resume_bytes
    request_rate: RateBurst = msgspec.field(default_factory=lambda: list(_LIMITS.request_rate))
    order_rate: RateBurst = msgspec.field(default_factory=lambda: list(_LIMITS.order_rate))
    cancel_rate: RateBurst = msgspec.field(default_factory=lambda: list(_LIMITS.cancel_rate))
    send_hwm: Positive = _LIMITS.send_hwm
    send_bytes: Positive = _LIMITS.send_bytes
    account_send_bytes: Positive = _LIMITS.account_send_bytes
    sndbuf: Annotated[int, Meta(ge=0, le=2**31 - 1)] = _LIMITS.sndbuf
    handshake_ms: Annotated[int, Meta(gt=0, le=600_000)] = _LIMITS.handshake_ms
    max_connections: Annotated[int, Meta(gt=0, le=1_000_000)] = _LIMITS.max_connections
    max_subscribers: Annotated[int, Meta(gt=0, le=1_000_000)] = _LIMITS.max_subscribers
    max_per_address: Annotated[int, Meta(gt=0, le=1_000_000)] = _LIMITS.max_per_address
    backlog: Annotated[int, Meta(gt=0, le=65_535)] = _LIMITS.backlog
    pub_hwm: Positive = _LIMITS.pub_hwm


class AccountSection(Struct, forbid_unknown_fields=True, kw_only=True):
    role: Literal["trader", "oracle", "admin"]
    public_key: Union[Z85Key, None] = None
    deposit: QuoteUnits = 0


class ConfigFile(Struct, forbid_unknown_fields=True, kw_only=True):
    server: ServerSection = msgspec.field(default_factory=ServerSection)
    journal: JournalSection = msgspec.field(default_factory=JournalSection)
    replication: ReplicationSection = msgspec.field(default_factory=ReplicationSection)
    limits: LimitsSection = msgspec.field(default_factory=LimitsSection)
    markets: list[M.CreateMarket] = msgspec.field(default_factory=list)
    accounts: dict[str, AccountSection] = msgspec.field(default_factory=dict)


# ---- what the server reads -------------------------------------------------------------------

@dataclass
class AccountConfig:
    name: str
    role: str
    public_key: str | None = None      # filled in by the server when it makes the key pair
    deposit: int = 0


_SERVER = ServerSection()


@dataclass
class Config:
    router: str = _SERVER.router
    pub: str = _SERVER.pub
    data_dir: Path = Path(_SERVER.data_dir)
    heartbeat_ms: int = _SERVER.heartbeat_ms
    session_timeout_ms: int = _SERVER.session_timeout_ms
    metrics: str = _SERVER.metrics
    log_format: str = _SERVER.log_format
    log_level: str = _SERVER.log_level
    oracle_sim: bool = _SERVER.oracle_sim
    state_wins: bool = field(default=False, compare=False)   # `serve --state-wins`
    embedded: bool = field(default=False, compare=False)     # the embedded default (no --config)
    markets: list[M.CreateMarket] = field(default_factory=list)
    # A market's lifecycle at boot (docs/config.md): a status other than active, and
    # update_market commands (most often scheduled, with effective_ts); applied to a new data
    # folder only, after the markets, as the deposits are.
    market_status: dict[str, str] = field(default_factory=dict)
    market_updates: list[M.UpdateMarket] = field(default_factory=list)
    accounts: dict[str, AccountConfig] = field(default_factory=dict)
    journal: JournalSection = field(default_factory=JournalSection)
    replication: ReplicationSection = field(default_factory=ReplicationSection)
    limits: Limits = field(default_factory=Limits)


def default_config(data_dir: str | Path | None = None) -> Config:
    """The embedded default: BTC-PERP and ETH-PERP, an admin, an oracle feeder and five funded
    demo traders (gateway/default.toml), its markets priced by the simulated oracle."""
    cfg = parse_config(DEFAULT_TOML.read_text(), str(DEFAULT_TOML))
    cfg.embedded = cfg.oracle_sim = True
    if data_dir is not None:
        cfg.data_dir = Path(data_dir)
    return cfg


def default_text() -> str:
    """The file `perpdex config --write-default` writes: gateway/default.toml with `oracle_sim =
    true` in [server], so that served with --config it runs what the embedded default runs.
    (The file itself leaves it out: the tests and the demo build their venues on it and feed
    their own prices.)"""
    text, n = re.subn(r"^log_format = .*\n", lambda m: m.group(0) + SIM_LINE,
                      DEFAULT_TOML.read_text(), count=1, flags=re.M)
    assert n == 1, "gateway/default.toml has no log_format line in [server]"
    return text


SIM_LINE = "oracle_sim = true                    # a simulated oracle: never for real money\n"


def load_config(path: str | Path) -> Config:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file")
    except (IsADirectoryError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read as a text file: {e}")
    return parse_config(text, str(path))


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}")
    accounts = raw.pop("accounts", {})
    lifecycle = _lifecycle_keys(raw)
    try:
        parsed = msgspec.convert(raw, ConfigFile)
    except msgspec.ValidationError as e:
        raise validation_error(source, text, [], e)
    if not isinstance(accounts, dict):
        raise ConfigError(f"{source}{key_line(text, ['accounts'])}: accounts: expected tables "
                          f"[accounts.NAME], got {type(accounts).__name__}")
    for name, acct in accounts.items():
        where = f"{source}{key_line(text, ['accounts', name])}: accounts.{name}"
        if not ACCOUNT_NAME.fullmatch(name):
            raise ConfigError(f"{where}: an account name is 1 to 64 letters, digits, '-', '_' "
                              f"or '.', not starting with '.' (it names the account's key files "
                              f"and is its account id in the engine)")
        if name == INSURANCE:
            raise ConfigError(f"{where}: {INSURANCE!r} is the insurance fund's account in the "
                              f"engine, which is never liquidated; seed the fund with an admin's "
                              f"deposit to it instead")
        try:
            parsed.accounts[name] = msgspec.convert(acct, AccountSection)
        except msgspec.ValidationError as e:
            raise validation_error(source, text, ["accounts", name], e)
    for i, mk in enumerate(parsed.markets):
        where = ["markets", i]
        if "ts" in raw["markets"][i] or "type" in raw["markets"][i]:
            bad = "ts" if "ts" in raw["markets"][i] else "type"
            raise ConfigError(f"{source}{key_line(text, where + [bad])}: markets[{i}].{bad}: "
                              f"unknown key (a market table holds the fields of create_market)")
        try:
            market_spec(mk)
        except MarketConfigError as e:
            raise ConfigError(f"{source}{key_line(text, where)}: markets[{i}] ({mk.market}): the "
                              f"engine refuses it: invalid_market: {e}")
    names = [mk.market for mk in parsed.markets]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"{source}{key_line(text, ['markets', i])}: markets[{i}].market: "
                              f"{name!r} is configured twice")
    status, updates = _lifecycle(parsed.markets, lifecycle, source, text)
    if not parsed.accounts:
        raise ConfigError(f"{source}: accounts: at least one account is needed")
    try:
        limits = Limits(**msgspec.structs.asdict(parsed.limits))
    except ValueError as e:
        raise ConfigError(f"{source}{key_line(text, ['limits'])}: {e}")
    s = parsed.server
    for key in ("router", "pub", "metrics"):
        why = (address_problem if key == "metrics" else endpoint_problem)(getattr(s, key))
        if why:
            raise ConfigError(f"{source}{key_line(text, ['server', key])}: server.{key}: {why}")
    return Config(router=s.router, pub=s.pub, data_dir=Path(s.data_dir),
                  heartbeat_ms=s.heartbeat_ms, session_timeout_ms=s.session_timeout_ms,
                  metrics=s.metrics, log_format=s.log_format, log_level=s.log_level,
                  oracle_sim=s.oracle_sim,
                  markets=parsed.markets, market_status=status, market_updates=updates,
                  accounts={n: AccountConfig(n, a.role, a.public_key, a.deposit)
                            for n, a in parsed.accounts.items()},
                  journal=parsed.journal, replication=parsed.replication, limits=limits)


def _lifecycle_keys(raw: dict) -> list:
    """Take each market table's `status` and `updates` out of `raw` (the rest is create_market):
    [(status or None, updates or None), ...] in the tables' order."""
    tables = raw.get("markets")
    if not isinstance(tables, list):
        return []
    return [(t.pop("status", None), t.pop("updates", None)) if isinstance(t, dict) else (None, None)
            for t in tables]


STATUSES = get_args(M.MarketStatusName)


def _lifecycle(markets: list, keys: list, source: str, text: str) -> tuple[dict, list]:
    """The markets' `status` and `updates`, checked as the engine would take them: a status it
    knows, and updates that make a market `update_market` accepts (one each at most: a
    market holds one scheduled update). ConfigError names the key."""
    status, updates = {}, []
    for i, (mk, (st, ups)) in enumerate(zip(markets, keys)):
        where = f"{source}{key_line(text, ['markets', i])}: markets[{i}] ({mk.market})"
        if st is not None:
            if st not in STATUSES:
                raise ConfigError(f"{where}.status: {st!r} is not one of {', '.join(STATUSES)}")
            if st != "active":
                status[mk.market] = st
        if ups is None:
            continue
        if not isinstance(ups, list) or len(ups) > 1:
            raise ConfigError(f"{where}.updates: at most one [[markets.updates]] table (a market "
                              f"holds one scheduled update; a later one replaces it)")
        for u in ups:
            if not isinstance(u, dict) or "market" in u or "type" in u:
                raise ConfigError(f"{where}.updates: a table of update_market's fields, without "
                                  f"`market` (it is this market's) or `type`")
            try:
                upd = msgspec.convert(dict(u, market=mk.market), M.UpdateMarket)
                updated_spec(market_spec(mk), upd)
            except msgspec.ValidationError as e:
                raise ConfigError(f"{where}.updates: {e}")
            except MarketConfigError as e:
                raise ConfigError(f"{where}.updates: the engine refuses it: invalid_market: {e}")
            updates.append(upd)
    return status, updates


_ENDPOINT = re.compile(r"tcp://(?:\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):([0-9]+|\*)|ipc://\S+")


def endpoint_problem(ep: str) -> str | None:
    """What is wrong with a server endpoint (None: nothing): `tcp://HOST:PORT` (a port of 1 to
    65535, or `*`) or `ipc://PATH`."""
    m = _ENDPOINT.fullmatch(ep)
    if m is None:
        return (f"{ep!r} is not an endpoint to serve on: tcp://HOST:PORT (a port is needed) or "
                f"ipc://PATH")
    port = m.group(1)
    if port is not None and port != "*" and not 0 <= int(port) <= 65535:
        return f"{ep!r}: a port is 0 to 65535 (0 or *: any free one)"
    return None


_ADDRESS = re.compile(r"[^\s:/]*:([0-9]+)")


def address_problem(address: str) -> str | None:
    """What is wrong with the metrics server's address (None: nothing): `HOST:PORT` (a port of
    0 to 65535; no host: 127.0.0.1), or "" for no metrics server."""
    if address == "":
        return None
    m = _ADDRESS.fullmatch(address)
    if m is None:
        return (f"{address!r} is not an address to serve metrics on: HOST:PORT (a port is "
                f"needed), or \"\" for none")
    if not 0 <= int(m.group(1)) <= 65535:
        return f"{address!r}: a port is 0 to 65535 (0: any free one)"
    return None


# Command-line overrides: flag -> (section, key, the Config attribute).
OVERRIDES = {"--data": ("server", "data_dir", "data_dir"),
             "--router": ("server", "router", "router"), "--pub": ("server", "pub", "pub"),
             "--session-timeout-ms": ("server", "session_timeout_ms", "session_timeout_ms"),
             "--metrics": ("server", "metrics", "metrics"),
             "--log-format": ("server", "log_format", "log_format"),
             "--log-level": ("server", "log_level", "log_level"),
             "--nats": ("replication", "servers", None),
             "--node": ("replication", "node", None)}
_SECTIONS = {"server": ServerSection, "replication": ReplicationSection}


def override(cfg: Config, flag: str, value) -> None:
    """Set what a command-line flag overrides, checked by the same schema as the file (a value
    the file could not hold is refused the same way): ConfigError `--flag VALUE: key: why`."""
    section, key, attr = OVERRIDES[flag]
    try:
        checked = getattr(msgspec.convert({key: value}, _SECTIONS[section]), key)
    except msgspec.ValidationError as e:
        message = _SUFFIX.match(str(e)).group(1)
        raise ConfigError(f"{flag} {value!r}: {section}.{key}: {message}") from None
    why = (endpoint_problem(checked) if key in ("router", "pub") else
           address_problem(checked) if key == "metrics" else None)
    if why:
        raise ConfigError(f"{flag}: {section}.{key}: {why}")
    if section == "replication":
        setattr(cfg.replication, key, checked)
    else:
        setattr(cfg, attr, Path(checked) if attr == "data_dir" else checked)


# ---- errors that say where -------------------------------------------------------------------

_SUFFIX = re.compile(r"^(.*?)(?: - at `\$(.*)`)?$", re.S)
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]*)`")
_MISSING = re.compile(r"Object missing required field `([^`]*)`")


def validation_error(source: str, text: str, prefix: list,
                     e: msgspec.ValidationError) -> ConfigError:
    """A msgspec ValidationError as `FILE:LINE: key.path: what is wrong`."""
    message, path = _SUFFIX.match(str(e)).groups()
    keys = list(prefix)
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path or ""):
        keys.append(int(index) if index else name)
    line_keys = keys
    if m := _UNKNOWN.match(message):
        keys.append(m.group(1))
        line_keys = keys
        message = "unknown key"
    elif m := _MISSING.match(message):
        keys.append(m.group(1))
        message = "missing (it has no default)"
    elif message.startswith("Invalid enum value") and keys and keys[-1] == "role":
        message += f": expected one of {', '.join(ROLES)}"
    elif keys and keys[-1] == "public_key":
        message += " (a public_key is a 40-character z85 CURVE key)"
    return ConfigError(f"{source}{key_line(text, line_keys)}: {_dotted(keys)}: {message}")


def _dotted(keys: list) -> str:
    out = ""
    for k in keys:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"'. ]+?)\s*=")


def _split(dotted: str) -> list[str]:
    return [p.strip().strip("\"'") for p in re.findall(r"\"[^\"]*\"|'[^']*'|[^.]+", dotted)]


def key_line(text: str, keys: list) -> str:
    """`:LINE` of the key in the TOML text (or of the table that should hold it), best effort:
    tables, arrays of tables and `key = value` lines; "" when it cannot be found."""
    want = [str(k) for k in keys]
    table: list[str] = []
    counts: dict[tuple, int] = {}
    best = ""
    for n, line in enumerate(text.splitlines(), 1):
        if m := _HEADER.match(line):
            table = _split(m.group(2))
            if m.group(1) == "[[":
                i = counts.get(tuple(table), 0)
                counts[tuple(table)] = i + 1
                table = table + [str(i)]
            here = table
        elif m := _KEY.match(line):
            here = table + _split(m.group(1))
        else:
            continue
        if here == want:
            return f":{n}"
        if here == want[:len(here)] and len(here) < len(want) and not best:
            best = f":{n}"      # the table that holds (or should hold) the key
    return best
