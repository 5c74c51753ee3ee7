"""The `perpdex` command."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .parsers import parser


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:        # its options are bench/suite.py's own
        return _bench(argv[1:])
    if argv[:1] == ["oracle-sim"]:   # its options are gateway/oracle_sim.py's own
        from .oracle_sim import main as oracle_sim
        return oracle_sim(argv[1:])
    args = cli.parse_args(argv)
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
    from .verify import verify
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
