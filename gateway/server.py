"""`perpdex serve`: makes the server with the role the configuration asks for, plain or
replicated (gateway/writer.py, gateway/replicated.py), checks its endpoints, starts it and runs
its loop until a signal, then stops it and says so (a `stop` log event, and a line on stdout).
With the simulated oracle on, it starts that client process (gateway/oracle_sim.py) once its
sockets are bound and stops it first when it stops.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import zmq

from .config import Config
from .dispatch import Server
from .durability import Durability
from .limits import Limits
from .observability import (BindError, Endpoints, Metrics, configure_logging, log_stop,
                            stop_logging)
from .oracle_sim import spawn as start_sim
from .oracle_sim import stop as stop_sim
from .replicated import Replicated

log = logging.getLogger("perpdex.gateway")

STOP_WITHIN_S = 10                      # a server whose thread failed exits (code 3) by then


def check_endpoints(cfg: Config) -> None:
    """Before anything is made on disk: bind each of the server's endpoints once, on a scratch
    context, and let go. A taken, malformed or foreign endpoint stops the start here
    (BindError naming it), so that a failed start leaves no data folder behind."""
    if cfg.router == cfg.pub:
        raise BindError(f"cannot serve: requests and public events are both given {cfg.router}; "
                        f"they need an endpoint each")
    ctx = zmq.Context()
    try:
        for ep in (cfg.router, cfg.pub):
            s = ctx.socket(zmq.PUB)
            try:
                s.bind(ep)
            except zmq.ZMQError as e:       # its text names the endpoint: (addr='tcp://...')
                raise BindError(f"cannot serve: {e}") from None
            finally:
                s.close(linger=0)
    finally:
        ctx.term()


def make(cfg: Config, **kw) -> Server:
    """The server `cfg` describes: its role replicated when `[replication]` is on (`--role`),
    else the plain writer of its own journal. `kw`: Server's."""
    return Server(cfg, role=Replicated(cfg) if cfg.replication.enabled else None, **kw)


def run(cfg: Config, out=sys.stdout, plaintext_loopback=False, oracle_sim=False,
        limits: Limits | None = None, durability: Durability | None = None) -> int:
    logs = configure_logging(cfg.log_format, sys.stderr)
    http = None
    try:                                # every port first: a start that cannot bind makes nothing
        http = Endpoints(cfg.metrics) if cfg.metrics else None
        check_endpoints(cfg)
        server = make(cfg, plaintext_loopback=plaintext_loopback, limits=limits,
                      durability=durability)
    except BaseException:
        if http is not None:
            http.close()
        stop_logging(logs)
        raise
    server.log_listener = logs
    if http is not None:
        server.metrics = Metrics(server)
        server.metrics.serve(http)
    signals = []

    def stop(signum, _frame):
        signals.append(signal.Signals(signum).name)
        server.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, lambda *_: server.role.ask_snapshot())
    out.write(f"perpdex serving: requests {cfg.router}, public events {cfg.pub}\n")
    if plaintext_loopback:
        out.write("PLAIN-TEXT mode (loopback only): no encryption, accounts log in by name\n")
    else:
        out.write(f"server public key: {server.key_paths['server']}\n")
    sim = None
    if oracle_sim:                      # a client like any other, started once the sockets are
        sim, said = start_sim(cfg, server.key_paths, plaintext_loopback)    # bound
        out.write(f"simulated oracle: a random walk, 4 updates a second, from {said} (never "
                  f"for real money)\n" if sim is not None else
                  f"simulated oracle: not started: {said}\n")
    elif cfg.markets and not cfg.embedded:
        out.write("simulated oracle: off (with --config; --oracle-sim on, or [server] "
                  "oracle_sim = true, runs the embedded default's random walk): until an oracle "
                  "account sends prices, every order is refused no_mark_price\n")
    for name, path in server.key_paths.items():
        if name != "server":
            out.write(f"  {name} ({cfg.accounts[name].role}): {path}\n")
    if cfg.metrics:
        out.write(f"metrics: http://{cfg.metrics}/metrics (and /healthz, /readyz)\n")
    if server.recovered:
        out.write(server.recovered + "\n")
    out.flush()
    d = server.descriptors
    log.info("started", extra={"event": "start", "router": cfg.router, "pub": cfg.pub,
                               "markets": server.engine.market_names(),
                               "accounts": len(cfg.accounts), "metrics": cfg.metrics or None,
                               "descriptor_budget": d["total"], "descriptor_limit": d["limit"]})
    try:
        server.serve_forever()
    finally:
        stop_sim(sim)                   # the client first: it never outlives its server
        if server.failed is not None:   # stopping must not hang on what failed: exit 3 by then
            stopped(server, signals)
            stop_logging(logs)          # the thread_failed line is out before anything else
            watchdog = threading.Timer(STOP_WITHIN_S, os._exit, (3,))
            watchdog.daemon = True
            watchdog.start()
        server.close()
        if server.failed is None:
            stopped(server, signals)
        stop_logging(logs)               # what is queued is written (for 2 s at most)
    st = server.stats
    if server.failed is not None:
        name, error = server.failed
        out.write(f"perpdex stopped: the {name} thread failed ({error}); "
                  f"{server.seq.n_commands} commands sequenced, what was not durable was "
                  f"never acknowledged; restart it (the journal recovers every acknowledged "
                  f"command)\n")
        out.flush()
        return 3
    out.write(f"perpdex stopped ({', '.join(signals) or 'asked'}): "
              f"{server.seq.n_commands} commands sequenced, the last batch made durable, "
              f"sockets closed; {st['internal_errors']} internal errors, {st['dropped']} "
              f"messages dropped for slow connections, {st['suspended']} streams suspended\n")
    out.flush()
    return 0


def stopped(server, signals: list) -> None:
    """The `stop` log event: why the server stopped and what it did (docs/observability.md)."""
    st = server.stats
    log_stop(f"the {server.failed[0]} thread failed" if server.failed is not None
             else ", ".join(signals) or "asked",
             commands=server.seq.n_commands, internal_errors=st["internal_errors"],
             dropped=st["dropped"], suspended=st["suspended"],
             exit_code=3 if server.failed else 0)
