"""The `perpdex` command's argument parsers: one function a subcommand, and `parser()` that
puts them together (gateway/cli.py runs what they parse). Building them costs a few ms."""
from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version

from perpdex.engine.codec import FORMATS

from .config import LEVELS


def _version() -> str:
    try:
        return version("perpdex")
    except PackageNotFoundError:      # run from a checkout that was never installed
        return "unknown (not installed)"


def _docs(*pages: str) -> str:
    """An epilog naming the pages (paths in the repository) that explain a subcommand; a test
    checks that each exists."""
    return "documentation: " + ", ".join(pages) + " (in the repository)"


def parser() -> argparse.ArgumentParser:
    """`perpdex` with every subcommand but bench's options (bench/suite.py has its own)."""
    top = argparse.ArgumentParser(
        prog="perpdex", description="perpdex: a deterministic perpetual-futures matching engine",
        epilog=_docs("README.md", "docs/contract.md", "docs/engine-api.md",
                     "docs/protocol.md", "docs/config.md"))
    top.add_argument("--version", action="version", version=f"perpdex {_version()}")
    sub = top.add_subparsers(dest="cmd", required=True)

    rp = sub.add_parser("replay", help="replay a command file through a fresh engine",
                        description="Replay commands (JSON Lines or msgpack, by extension; - for "
                        "stdin) and write the events (- for stdout). The same input always gives "
                        "byte-identical output. Each rejection is named on stderr by its line "
                        "(JSON Lines) or object (msgpack). Exit 0; 1 if --strict stopped at a "
                        "rejection; 2 for a file that cannot be read.",
                        epilog=_docs("README.md#replay", "docs/contract.md#encoding",
                                     "docs/engine-api.md"))
    rp.add_argument("input", help="commands: FILE.jsonl, FILE.msgpack, - (stdin, JSON Lines), "
                    "or a journal folder (or the data folder holding it)")
    rp.add_argument("--out", "-o", default="-", help="events: FILE.jsonl, FILE.msgpack or - (stdout)")
    rp.add_argument("--in-format", choices=FORMATS, help="override the input format")
    rp.add_argument("--out-format", choices=FORMATS, help="override the output format")
    rp.add_argument("--strict", action="store_true", help="stop at the first command the "
                    "engine rejects or cannot read, and exit 1 (its events are written)")
    rp.add_argument("--quiet", "-q", action="store_true", help="no summary line and no line "
                    "per rejection, at full speed (naming each rejection applies commands one "
                    "at a time); --strict still says where it stopped")

    _verify_parser(sub)

    dm = sub.add_parser("demo", help="run the exchange demo on the embedded default configuration",
                        description="Start the server and market makers, takers and a leveraged "
                        "trader as client processes, crash the oracle, show it live, end with the "
                        "audit.",
                        epilog=_docs("README.md#the-demo", "docs/contract.md#liquidation"))
    dm.add_argument("--seconds", type=float, default=45.0, help="how long the market runs")
    dm.add_argument("--in-process", action="store_true",
                    help="the engine alone, in this process, through its per-command API")
    dm.add_argument("--router", help="the server's request endpoint (default: a free loopback "
                    "port)")
    dm.add_argument("--pub", help="the server's public events endpoint (default: a free "
                    "loopback port)")

    sv = sub.add_parser("serve", help="serve the engine over ZeroMQ (CURVE)",
                        description="Serve the engine: a ROUTER for requests and a PUB for public "
                        "events. Without --config, the embedded default: BTC-PERP, ETH-PERP and "
                        "funded demo accounts whose keys are written to the data folder.",
                        epilog=_docs("docs/config.md", "docs/protocol.md",
                                     "docs/operations.md", "docs/observability.md"))
    sv.add_argument("--config", help="a TOML configuration (docs/config.md; `perpdex config "
                    "--write-default FILE` writes one to start from)")
    sv.add_argument("--data", help="the data folder: keys, the journal and snapshots "
                                   "(overrides the config)")
    sv.add_argument("--router", help="request endpoint (overrides the config)")
    sv.add_argument("--pub", help="public events endpoint (overrides the config)")
    sv.add_argument("--plaintext-loopback", action="store_true",
                    help="no CURVE: loopback and ipc endpoints only, accounts log in by name "
                    "(for local testing; never for real money)")
    sv.add_argument("--oracle-sim", choices=("on", "off"),
                    help="a simulated oracle feed, started as a client process (`perpdex "
                    "oracle-sim`; default: [server] oracle_sim, on in the embedded default and "
                    "in the file `config --write-default` writes)")
    sv.add_argument("--state-wins", action="store_true",
                    help="once the data folder holds a venue, serve its markets and deposits "
                    "even where the configuration's differ (saying what it ignores); without "
                    "it such a start is refused")
    sv.add_argument("--metrics", metavar="HOST:PORT",
                    help="serve Prometheus metrics there (docs/observability.md)")
    sv.add_argument("--log-format", choices=("text", "json"),
                    help="log lines as text or as JSON objects (docs/observability.md)")
    sv.add_argument("--log-level", choices=LEVELS, help="the least level logged (default: "
                    "[server] log_level, info)")
    sv.add_argument("--session-timeout-ms", type=int,
                    help="a session with no word for this long is gone (overrides the config)")
    sv.add_argument("--role", choices=("primary", "standby", "replica"),
                    help="replicated mode (docs/operations.md, \"Replication\"): this node's "
                    "role; turns [replication] on")
    sv.add_argument("--nats", metavar="URL[,URL...]",
                    help="replicated mode: the NATS servers (overrides [replication] servers)")
    sv.add_argument("--node", help="replicated mode: this node's name (default: host-pid)")

    cf = sub.add_parser("config", help="write the default configuration, or check one",
                        description="Write the embedded default configuration as a TOML file to "
                        "start from, or check a configuration file and say what is wrong with it.",
                        epilog=_docs("docs/config.md"))
    what = cf.add_mutually_exclusive_group(required=True)
    what.add_argument("--write-default", metavar="FILE",
                      help="write the embedded default (- for stdout); an existing FILE is kept "
                      "unless --force")
    what.add_argument("--check", metavar="FILE", help="load FILE as `perpdex serve` would")
    cf.add_argument("--force", action="store_true", help="overwrite FILE")

    nl = sub.add_parser("nats-local", help="run a three-server NATS JetStream cluster on loopback, "
                        "to try replicated mode on one machine",
                        description="Start three nats-server processes (installed by `make "
                        "install`) forming one JetStream cluster on loopback, print their URLs, "
                        "and stop them on Ctrl-C or SIGTERM. The stores live in DIR.",
                        epilog=_docs("docs/operations.md#replication"))
    nl.add_argument("dir", metavar="DIR", help="a folder for the servers' stores and logs")
    nl.add_argument("--sync", default="always",
                    help="JetStream sync_interval: always (the default), or a duration such as "
                    "2m (the NATS default); docs/operations.md says what each promises")

    _stress_parser(sub)
    _keygen_parser(sub)
    _health_parser(sub)
    _markets_parser(sub)

    sub.add_parser("bench", add_help=False, help="run the benchmark suite, or compare its "
                   "reports (`perpdex bench --help`)")
    sub.add_parser("oracle-sim", add_help=False, help="price a venue's markets with a simulated "
                   "oracle, a random walk, as its oracle account (never for real money; "
                   "`perpdex oracle-sim --help`)")
    return top


def _verify_parser(sub) -> None:
    vf = sub.add_parser("verify", help="check a data folder: its journal, snapshots and state",
                        description="Replay the journal of DATA_DIR from scratch and compare the "
                        "state hash with every snapshot and with the state recovery gives; check "
                        "that the journal reaches the newest seq known durable (the newest "
                        "snapshot's, DATA_DIR/durable-seq's); print a report. Exit 0 if "
                        "everything matches, 1 on any mismatch, corruption or missing segments, "
                        "2 if DATA_DIR holds no journal. Changes nothing.",
                        epilog=_docs("docs/operations.md#perpdex-verify-data_dir"))
    vf.add_argument("data_dir", metavar="DATA_DIR", help="the server's data folder")


def _stress_parser(sub) -> None:
    st = sub.add_parser("stress", help="replay a crash through the engine and report what the "
                        "venue's parameters do (liquidations, the fund, ADL, bad debt)",
                        description="Run a scenario (a TOML file: the venue, a population, market "
                        "makers, price paths) through the real engine, deterministically, and "
                        "report accounts below maintenance, liquidations by kind, the insurance "
                        "fund, auto-deleveraging, socialised losses and bad debt, with the audit "
                        "checked at every step. Exit 0, 1 if the audit ever failed to balance, 2 "
                        "on a bad input.",
                        epilog=_docs("docs/stress.md"))
    st.add_argument("scenario", nargs="?", help="the scenario TOML (docs/stress.md); without "
                    "one, the embedded default's markets with no population")
    st.add_argument("--state", metavar="DATA_DIR|SNAPSHOT", help="start from a `perpdex serve` "
                    "data folder or snapshot file (read only)")
    st.add_argument("--path", action="append", default=[], metavar="MARKET=SPEC",
                    help="a price path: FILE.csv or synthetic components (gap:PCT[@STEP], "
                    "slide:PCT:STEPS[@STEP], walk:VOL_PCT[:JUMP_PROB:JUMP_PCT], "
                    "spike:PCT:STEPS[@STEP], flat) joined with +")
    st.add_argument("--oracle", action="append", default=[], metavar="MARKET=MODEL",
                    help="what the oracle shows: live, lag:N or stuck:FROM:TO")
    st.add_argument("--set", action="append", default=[], dest="sets",
                    metavar="[MARKET.]KEY=VALUE", help="a market parameter (imf_ppm, mmf_ppm, "
                    "tiers, liquidation_fee_ppm, max_liquidations_per_update, price_band_ppm, "
                    "funding_interval_s, funding_cap_ppm, interest_ppm, ...)")
    st.add_argument("--insurance-usd", type=float, help="the insurance fund's seed in USD")
    st.add_argument("--seed", type=int, help="the random seed (overrides the scenario's)")
    st.add_argument("--steps", type=int, help="steps of a synthetic path")
    st.add_argument("--step-seconds", type=int, help="seconds between two steps")
    st.add_argument("--html", metavar="FILE", help="write the HTML report there")
    st.add_argument("--json", metavar="FILE", help="write the report as JSON there (- for stdout)")
    st.add_argument("--events", metavar="FILE", help="write every event the run read, JSON Lines")
    st.add_argument("--sweep", metavar="[MARKET.]KEY=FROM:TO:STEP", help="run the scenario "
                    "once per value (a parameter --set takes, insurance_usd or crash_scale) in "
                    "parallel processes and report the outcome against it")
    st.add_argument("--compare", action="append", metavar="KEY=VALUE[,KEY=VALUE]",
                    help="run the scenario as it is and with these values side by side (twice: "
                    "one set against the other)")
    st.add_argument("--jobs", type=int, help="processes for --sweep and --compare (default: "
                    "the cores)")
    st.add_argument("--quiet", "-q", action="store_true", help="no summary, no progress")


def _keygen_parser(sub) -> None:
    kg = sub.add_parser("keygen", help="make a CURVE key pair for an account",
                        description="Write NAME.key (the public key) and NAME.key_secret (the "
                        "secret key, mode 0600, never readable by others) to DIR, as ZeroMQ "
                        "certificates, and print the public key and the table to add to the "
                        "server's configuration. The secret key stays with whoever trades (or "
                        "feeds the oracle) as NAME; the server needs only the public key. Exit "
                        "0, or 2 (a bad name, an existing key kept).",
                        epilog=_docs("docs/operations.md#keys", "docs/config.md#accountsname"))
    kg.add_argument("name", metavar="NAME", help="the account's name: 1 to 64 letters, digits, "
                    "'-', '_' or '.', not starting with '.'")
    kg.add_argument("--dir", default=".", help="where to write the key files (default: here)")
    kg.add_argument("--role", choices=("trader", "oracle", "admin"), default="trader",
                    help="the role in the printed configuration table (default: trader)")
    kg.add_argument("--force", action="store_true", help="replace existing key files")


def _ask_args(p) -> None:
    """The options of a command that asks a running server (health, markets)."""
    p.add_argument("--router", help="the server's request endpoint (default: $PERPDEX_ROUTER, "
                   "else tcp://127.0.0.1:7701)")
    p.add_argument("--data", help="the server's data folder, whose keys/ hold server.key and "
                   "the account's key (default: $PERPDEX_DATA, else perpdex-data)")
    p.add_argument("--account", help="the account whose key asks (default: $PERPDEX_ACCOUNT, "
                   "else admin)")
    p.add_argument("--server-key", metavar="FILE", help="the server's public key file "
                   "(default: DATA/keys/server.key)")
    p.add_argument("--key", metavar="FILE", help="the account's secret key file (default: "
                   "DATA/keys/ACCOUNT.key_secret)")
    p.add_argument("--timeout-ms", type=int, default=3000, help="how long to wait for the "
                   "answer (default: 3000)")
    p.add_argument("--json", action="store_true", help="print the whole answer as JSON")


def _health_parser(sub) -> None:
    hp = sub.add_parser("health", help="ask a running server whether it is healthy",
                        description="Send `health` to a running `perpdex serve` over CURVE with "
                        "an account's key (any role), print what it answers, and exit 0 if it "
                        "answered and serves (every thread alive, the journal making things "
                        "durable), 1 if it did not answer in time or is not healthy, 2 if a key "
                        "file is missing. The defaults are the SDK's: $PERPDEX_ROUTER, "
                        "$PERPDEX_DATA, $PERPDEX_ACCOUNT (else admin).",
                        epilog=_docs("docs/observability.md#health",
                                     "docs/operations.md#keys"))
    _ask_args(hp)


def _markets_parser(sub) -> None:
    mp = sub.add_parser("markets", help="list a running server's markets and their status",
                        description="Send `markets` to a running `perpdex serve` over CURVE with "
                        "an account's key (any role) and print each market's status (active, "
                        "post_only, reduce_only, halted, settled) and main parameters; exit 0, "
                        "1 if it did not answer, 2 if a key file is missing. The defaults are "
                        "the SDK's, as for `perpdex health`.",
                        epilog=_docs("docs/protocol.md#markets",
                                     "docs/contract.md#market-lifecycle"))
    _ask_args(mp)
