"""The `perpdex` command."""
from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="perpdex", description="perpdex: a deterministic perpetual-futures matching engine",
        epilog=_docs("README.md", "docs/contract.md", "docs/engine-api.md",
                     "docs/protocol.md", "docs/config.md"))
    parser.add_argument("--version", action="version", version=f"perpdex {_version()}")
    sub = parser.add_subparsers(dest="cmd", required=True)

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
                    help="a simulated oracle feed (default: [server] oracle_sim, on in the "
                    "embedded default and in the file `config --write-default` writes)")
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
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:        # its options are bench/suite.py's own
        return _bench(argv[1:])
    args = parser.parse_args(argv)
    if args.cmd == "config":
        return _config(args)
    if args.cmd == "replay":
        return _replay(args)
    if args.cmd == "verify":
        return _verify(args)
    if args.cmd == "stress":
        from .stress_cli import stress
        return stress(args)
    if args.cmd == "nats-local":
        return _nats_local(args)
    if args.cmd == "keygen":
        return _keygen(args)
    if args.cmd == "health":
        return _health(args)
    if args.cmd == "markets":
        return _markets(args)
    if args.cmd == "demo":
        if args.in_process:
            from .demo import run
            try:
                return run()
            except KeyboardInterrupt:
                print("\nperpdex demo: interrupted", file=sys.stderr)
                return 130
            except BrokenPipeError:      # `| head`: the reader has gone, so has the demo
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 141
        from .exchange_demo import run as live
        return live(seconds=args.seconds, router=args.router, pub=args.pub)
    if args.cmd == "serve":
        from pathlib import Path

        from .config import ConfigError, default_config, load_config
        from .server import run as serve
        try:
            cfg = load_config(args.config) if args.config else default_config()
        except ConfigError as e:
            print(f"perpdex: {e}", file=sys.stderr)
            return 2
        from .config import override
        given = {"--data": args.data, "--router": args.router, "--pub": args.pub,
                 "--session-timeout-ms": args.session_timeout_ms, "--metrics": args.metrics,
                 "--log-format": args.log_format, "--log-level": args.log_level,
                 "--node": args.node,
                 "--nats": None if args.nats is None else
                 [u.strip() for u in args.nats.split(",") if u.strip()]}
        if given["--nats"] == []:
            print("perpdex: --nats takes the NATS servers' URLs, comma-separated; it was "
                  "given none", file=sys.stderr)
            return 2
        try:                        # the same schema as the file's: -5 or 0 is refused
            for flag, value in given.items():
                if value is not None:
                    override(cfg, flag, value)
        except ConfigError as e:
            print(f"perpdex: {e}", file=sys.stderr)
            return 2
        sim = (args.oracle_sim == "on") if args.oracle_sim else cfg.oracle_sim
        cfg.state_wins = args.state_wins
        rc = cfg.replication
        if args.role:
            rc.enabled, rc.role = True, args.role
        import zmq

        from .observability import set_level
        set_level(cfg.log_level)
        try:
            return serve(cfg, plaintext_loopback=args.plaintext_loopback, oracle_sim=sim)
        except ValueError as e:
            print(f"perpdex: {e}", file=sys.stderr)
            return 2
        except zmq.ZMQError as e:        # an endpoint that cannot be bound: taken, or malformed
            print(f"perpdex: cannot serve: {e}", file=sys.stderr)
            return 2
    return 2


def _nats_local(args) -> int:
    import signal
    import time
    from pathlib import Path

    from .natslocal import LocalCluster
    try:
        cluster = LocalCluster(Path(args.dir), sync=args.sync)
    except FileNotFoundError as e:
        print(f"perpdex: {e}", file=sys.stderr)
        return 2
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        cluster.start()
        urls = ",".join(cluster.urls)
        print(f"NATS JetStream cluster (sync_interval {args.sync}): {urls}\n"
              f"  perpdex serve --role primary --nats {urls} --data DATA-A ...\n"
              f"  perpdex serve --role standby --nats {urls} --data DATA-B ... "
              f"(DATA-B/keys copied from DATA-A/keys)", flush=True)
        while not stop:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


def _bench(argv: list[str]) -> int:
    from perpdex.bench.suite import main as bench
    return bench(argv)


def _replay(args) -> int:
    from .replay import UnknownFormat, replay_file

    def rejected(r) -> None:
        if not args.quiet:
            print(f"perpdex replay: {r.line()}", file=sys.stderr)
    try:
        summary = replay_file(args.input, args.out, args.in_format, args.out_format,
                              strict=args.strict, rejected=rejected)
    except FileNotFoundError as e:
        print(f"perpdex: {e.filename}: no such file", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 1
    except OSError as e:                # a folder, a file it may not read or write
        print(f"perpdex: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except UnknownFormat as e:
        print(f"perpdex: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(summary.line(), file=sys.stderr)
    if summary.stopped is not None:
        print(f"perpdex replay: stopped at {summary.stopped}, the first rejection (--strict)",
              file=sys.stderr)
        return 1
    return 0


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


def _keygen(args) -> int:
    import zmq.auth

    from .config import ACCOUNT_NAME, INSURANCE
    name = args.name
    if not ACCOUNT_NAME.fullmatch(name) or name == INSURANCE:
        why = ("is the insurance fund's account" if name == INSURANCE else
               "is not 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'")
        print(f"perpdex: {name!r} {why}; an account name names its key files", file=sys.stderr)
        return 2
    d = Path(args.dir)
    public, secret = d / f"{name}.key", d / f"{name}.key_secret"
    kept = [p for p in (public, secret) if p.exists()]
    if kept and not args.force:
        print(f"perpdex: {kept[0]}: exists; not overwritten (--force to replace the key pair)",
              file=sys.stderr)
        return 2
    old = os.umask(0o077)           # the secret is never readable by others, even briefly
    try:
        d.mkdir(parents=True, exist_ok=True)
        for p in kept:
            p.unlink()
        zmq.auth.create_certificates(str(d), name)
        os.chmod(secret, 0o600)
        os.chmod(public, 0o600)
    except OSError as e:
        print(f"perpdex: {d}: cannot write the key pair: {e.strerror}", file=sys.stderr)
        return 2
    finally:
        os.umask(old)
    key = zmq.auth.load_certificate(str(public))[0].decode()
    print(f"public key of {name}: {key}\n"
          f"secret key: {secret} (mode 0600: for {name} alone; the server never needs it)\n"
          f"\n"
          f"add to the server's configuration (docs/config.md), then restart it:\n"
          f"\n"
          f"[accounts.{name}]\n"
          f"role = \"{args.role}\"\n"
          f"public_key = \"{key}\"")
    return 0


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


def _ask(args, request: str):
    """(reply, router) of `request` sent to a running server, or an exit code after saying
    why not: 2 for a missing key file or a bad option, 1 for no answer or a refusal."""
    from .client import Client, Timeout
    data = Path(args.data or os.environ.get("PERPDEX_DATA") or "perpdex-data")
    account = args.account or os.environ.get("PERPDEX_ACCOUNT") or "admin"
    router = args.router or os.environ.get("PERPDEX_ROUTER") or "tcp://127.0.0.1:7701"
    server_key = Path(args.server_key or data / "keys" / "server.key")
    secret = Path(args.key or data / "keys" / f"{account}.key_secret")
    for p, what in ((server_key, "the server's public key"), (secret, f"{account}'s secret key")):
        if not p.is_file():
            print(f"perpdex: {p}: no such file ({what}; --data, --server-key, --key)",
                  file=sys.stderr)
            return 2
    if args.timeout_ms < 1:
        print("perpdex: --timeout-ms is at least 1", file=sys.stderr)
        return 2
    try:
        c = Client(router, str(server_key), str(secret), timeout_ms=args.timeout_ms)
    except (ValueError, OSError) as e:
        print(f"perpdex: cannot ask {router}: {e}", file=sys.stderr)
        return 2
    try:
        reply = c.request(request)
    except Timeout:
        print(f"perpdex {request}: no answer from {router} in {args.timeout_ms} ms: the server "
              f"is down or unreachable, or does not know {account}'s key", file=sys.stderr)
        return 1
    finally:
        c.close()
    if not reply.get("ok"):
        print(f"perpdex {request}: {router} refused: {reply.get('reason')}: "
              f"{reply.get('detail')}", file=sys.stderr)
        return 1
    reply.pop("req_id", None)
    return reply, router


def _health(args) -> int:
    import json
    asked = _ask(args, "health")
    if type(asked) is int:
        return asked
    reply, router = asked
    why = [f"thread {n}: {state}" for n, state in (reply.get("threads") or {}).items()
           if state != "alive"]
    failure = (reply.get("journal") or {}).get("failure")
    if failure is not None:
        why.append(f"the journal cannot make commands durable: {failure}")
    if args.json:
        print(json.dumps(reply, default=lambda b: b.hex() if isinstance(b, bytes) else str(b)))
    else:
        print(f"{router}: {'ok' if not why else 'NOT HEALTHY'}: seq {reply['seq']:,}, "
              f"{reply['commands']:,} commands, up {reply['uptime_s']} s, "
              f"{reply['connections']} connections, {reply['sessions']} sessions, markets "
              f"{', '.join(reply['markets']) or 'none'}, {reply['internal_errors']} internal "
              f"errors" + "".join(f"; {w}" for w in why))
    return 1 if why else 0


def _markets(args) -> int:
    import json
    asked = _ask(args, "markets")
    if type(asked) is int:
        return asked
    reply, router = asked
    if args.json:
        print(json.dumps(reply))
        return 0
    print(f"{'market':<14} {'status':<12} {'tick':>10} {'lot':>10} {'imf':>8} {'mmf':>8} "
          f"{'band':>8} {'max lev':>8}")
    for m in reply["markets"]:
        print(f"{m['market']:<14} {m.get('status', 'active'):<12} {m['tick_size']:>10} "
              f"{m['lot_size']:>10} {m['imf_ppm'] / 1e4:>7.2f}% {m['mmf_ppm'] / 1e4:>7.2f}% "
              f"{m['price_band_ppm'] / 1e4:>7.2f}% {m['max_leverage']:>7}x")
    return 0


def _verify(args) -> int:
    from .replay import verify
    return verify(Path(args.data_dir))


def _config(args) -> int:
    from .config import ConfigError, default_text, load_config
    if args.check:
        try:
            cfg = load_config(args.check)
        except ConfigError as e:
            print(f"perpdex: {e}", file=sys.stderr)
            return 2
        print(f"{args.check}: ok: {len(cfg.markets)} markets "
              f"({', '.join(m.market for m in cfg.markets) or 'none'}), "
              f"{len(cfg.accounts)} accounts, requests {cfg.router}, public events {cfg.pub}, "
              f"simulated oracle {'ON (never for real money)' if cfg.oracle_sim else 'off'}")
        return 0
    text = default_text()
    if args.write_default == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.write_default)
    if out.exists() and not args.force:
        print(f"perpdex: {out}: exists; not overwritten (--force to replace it)", file=sys.stderr)
        return 2
    try:
        out.write_text(text)
    except OSError as e:
        print(f"perpdex: {out}: cannot be written: {e.strerror}", file=sys.stderr)
        return 2
    print(f"wrote the default configuration to {out}: `perpdex serve --config {out}` serves "
          f"what the embedded default serves, its simulated oracle included (oracle_sim = "
          f"true: set it false where a real oracle feeds prices)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
