"""What an operator watches (docs/observability.md): Prometheus metrics, JSON log lines, and the
facts the `health` request answers.

Metrics live in the server's own registry (prometheus-client) and are served over HTTP by
`Metrics.serve(address)`. Counters are bumped as the loop works (a few dict lookups a request);
gauges (connections, sessions, queues, the engine's seq) are read from the server only when
Prometheus scrapes, so they cost the loop nothing.
"""
from __future__ import annotations

import copy
import json
import logging
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from logging.handlers import QueueHandler, QueueListener
from urllib.parse import urlsplit

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector,
                               ProcessCollector, disable_created_metrics)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from perpdex.engine import ROUTE, ROW_FIELDS, messages as M

# Request latencies, inside the server: 20 us to 1 s, with no gap wider than 2.5x (the p99 of a
# loaded server lives between 10 and 100 ms).
BUCKETS = (2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.25, 0.5,
           1.0)
# What a labelled series is made for at start (a rate over a series that appears only at its
# first event is wrong for its first scrape): the gateway's error reasons (docs/protocol.md),
# the liquidation kinds, the server's threads.
ERRORS = ("invalid_command", "forbidden", "too_large", "rate_limited", "resume_gap",
          "reply_dropped", "internal_error", "unavailable")
LIQUIDATIONS = ("book", "backstop", "adl")
THREADS = ("journal", "zap", "gate", "log", "zmq_gc", "metrics", "nats")
_ACCEPTED, _FILL, _REJECTED, _RARE = (ROUTE[k] for k in ("order_accepted", "fill", "rejected",
                                                          "rare"))
_A_MARKET = ROW_FIELDS["order_accepted"].index("market")
_F_MARKET = ROW_FIELDS["fill"].index("market")
_REASON = ROW_FIELDS["rejected"].index("reason")
_EVENT = ROW_FIELDS["rare"].index("event")
disable_created_metrics()           # no `_created` series beside every counter


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("perpdex")
    except PackageNotFoundError:
        return "unknown"


class Metrics:
    """The server's metrics. Names and labels are documented in docs/observability.md."""

    def __init__(self, server):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("perpdex_requests", "Requests handled, by type", ["type"],
                                registry=r)
        self.latency = Histogram("perpdex_request_seconds",
                                 "Time from reading a request to queueing its reply", ["type"],
                                 buckets=BUCKETS, registry=r)
        self.errors = Counter("perpdex_errors", "Requests answered with an error, by reason",
                              ["reason"], registry=r)
        self.rejections = Counter("perpdex_rejections",
                                  "Commands the engine answered `rejected`, by reason",
                                  ["reason"], registry=r)
        self.orders = Counter("perpdex_orders", "Orders accepted, by market", ["market"],
                              registry=r)
        self.fills = Counter("perpdex_fills", "Fills, by market", ["market"], registry=r)
        self.liquidations = Counter("perpdex_liquidations", "Liquidation events, by kind",
                                    ["kind"], registry=r)
        self.commit = Histogram("perpdex_commit_seconds",
                                "Time to make a loop turn's commands durable (the journal lag "
                                "a reply waits for)", buckets=BUCKETS, registry=r)
        self.thread_failures = Counter("perpdex_thread_failures",
                                       "Threads of the server that failed (it then stops)",
                                       ["thread"], registry=r)
        r.register(_Gauges(server))
        ProcessCollector(registry=r)        # process_cpu_seconds_total, memory, descriptors
        PlatformCollector(registry=r)       # python_info
        build = Gauge("perpdex_build_info", "The running perpdex: 1, its version in a label",
                      ["version"], registry=r)
        build.labels(_version()).set(1)
        self._preset(server)
        self.server = server
        self.http = None
        self.thread = None                  # the HTTP server's thread (the server watches it)

    def serve(self, address: str | "Endpoints", server=None):
        """Serve /metrics, /healthz and /readyz on `host:port` (or on `Endpoints` already bound),
        in a thread of the server process; `server` answers the probes (`liveness()`,
        `readiness()`), by default the one measured."""
        http = address if isinstance(address, Endpoints) else Endpoints(address)
        http.start(self.registry, server if server is not None else self.server)
        self.http, self.thread = http, http.thread
        return http

    def _preset(self, server) -> None:
        """Every labelled series that can be known at start, at 0."""
        from . import protocol as P
        from .errors import REASONS as _BY_REASON
        tags = [c.__struct_config__.tag for c in P.GATEWAY] + list(P.TRADER + P.ORACLE +
                                                                     P.ADMIN) + ["unreadable"]
        for tag in tags:
            self.requests.labels(tag)
            self.latency.labels(tag)
        for reason in ERRORS:
            self.errors.labels(reason)
        for reason in sorted(set(_BY_REASON) - set(ERRORS)):
            self.rejections.labels(reason)
        for market in getattr(getattr(server, "engine", None), "market_names", lambda: [])():
            self.orders.labels(market)
            self.fills.labels(market)
        for kind in LIQUIDATIONS:
            self.liquidations.labels(kind)
        for thread in THREADS:
            self.thread_failures.labels(thread)

    def rows(self, rows) -> None:
        """Count what a command did, from its events' index rows (Engine.route). O(events)."""
        for row in rows:
            kind = row[0]
            if kind == _ACCEPTED:
                self.orders.labels(row[_A_MARKET]).inc()
            elif kind == _FILL:
                self.fills.labels(row[_F_MARKET]).inc()
            elif kind == _REJECTED:
                self.rejections.labels(row[_REASON]).inc()
            elif kind == _RARE and type(row[_EVENT]) is M.LiquidationEvent:
                self.liquidations.labels(row[_EVENT].kind).inc()


class BindError(ValueError):
    """An address the server cannot listen on (taken, or not this machine's); the message names
    it. Raised before anything of the server exists."""


class Endpoints:
    """The metrics server's HTTP endpoints on one address (docs/observability.md): `/metrics`
    (Prometheus), `/healthz` (the process is alive: its loop turns), `/readyz` (it serves: the
    journal makes things durable, every thread runs); any other path is 404. The socket is
    bound at once, so a taken port stops the start before anything is made (BindError); the
    requests are answered once `start` is called, by a thread of their own."""

    def __init__(self, address: str):
        host, _, port = address.rpartition(":")
        try:
            self.httpd = ThreadingHTTPServer((host or "127.0.0.1", int(port)), _Handler)
        except (OSError, OverflowError, ValueError) as e:
            why = getattr(e, "strerror", None) or str(e)
            raise BindError(f"cannot serve: {why} (metrics={address!r})") from None
        self.httpd.daemon_threads = True
        self.address = address
        self.thread: threading.Thread | None = None

    def start(self, registry, server) -> None:
        self.httpd.registry, self.httpd.probed = registry, server
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="perpdex-metrics",
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        if self.thread is not None:
            self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics, /healthz, /readyz; 404 for anything else."""

    server_version = "perpdex"

    def do_GET(self):           # noqa: N802 - http.server's name
        path = urlsplit(self.path).path
        probed = self.server.probed
        if path == "/metrics":
            encoder, ctype = choose_encoder(self.headers.get("Accept"))
            self._answer(200, encoder(self.server.registry), ctype)
        elif path in ("/healthz", "/readyz"):
            ok, why = probed.liveness() if path == "/healthz" else probed.readiness()
            text = ("ok" if path == "/healthz" else "ready") if ok else \
                ("not alive: " if path == "/healthz" else "not ready: ") + "; ".join(why)
            self._answer(200 if ok else 503, (text + "\n").encode())
        else:
            self._answer(404, b"not found: this server has /metrics, /healthz and /readyz\n")

    def _answer(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):       # a scrape is not worth a log line
        pass


class _Gauges:
    """Gauges read from the server when Prometheus scrapes."""

    def __init__(self, server):
        self.server = server

    def collect(self):
        s = self.server
        h = s.health_facts()
        d = getattr(s, "descriptors", {})
        for name, doc, value in (
                ("perpdex_connections", "Connections of the request socket (handshaking too)",
                 h["connections"]),
                ("perpdex_subscribers", "Connections of the public socket (handshaking too)",
                 h["subscribers"]),
                ("perpdex_sessions", "Sessions (connections that sent a request)", len(s.sessions)),
                ("perpdex_queue_replies", "Replies queued this loop turn", len(s.out)),
                ("perpdex_queue_stream_items", "Private-stream items queued this loop turn",
                 len(s.stream_out)),
                ("perpdex_engine_seq", "Events the engine has written", s.engine.seq),
                ("perpdex_engine_commands", "Commands the engine has applied", s.engine.n_commands),
                ("perpdex_dropped", "Messages dropped for connections that could not keep up",
                 s.stats["dropped"]),
                ("perpdex_suspended", "Private streams suspended for slow connections",
                 s.stats["suspended"]),
                ("perpdex_over_send_bytes", "Messages dropped because their connection held "
                 "its most bytes", s.stats.get("over_bytes", 0)),
                ("perpdex_internal_errors", "Requests that failed in an unforeseen way",
                 s.stats["internal_errors"]),
                ("perpdex_descriptors_open", "Descriptors the process holds",
                 h["descriptors"]["open"]),
                ("perpdex_descriptor_budget", "Descriptors the server may need at most",
                 d.get("total", 0)),
                ("perpdex_descriptor_limit", "The soft limit on open files (-1: none)",
                 d.get("limit", 0))):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g
        for name, doc, value in (
                ("perpdex_dropped_messages", "Messages dropped for connections that could not "
                 "keep up", s.stats["dropped"]),
                ("perpdex_suspended_streams", "Private streams suspended for slow connections",
                 s.stats["suspended"]),
                ("perpdex_over_send_bytes_drops", "Messages dropped because their connection "
                 "held its most bytes", s.stats.get("over_bytes", 0)),
                ("perpdex_unforeseen_failures", "Requests that failed in an unforeseen way "
                 "(answered internal_error, logged with a traceback)",
                 s.stats["internal_errors"]),
                ("perpdex_replies_dropped", "Retries answered reply_dropped",
                 s.stats.get("replies_dropped", 0))):
            c = CounterMetricFamily(name, doc)      # exposed as NAME_total
            c.add_metric([], value)
            yield c
        g = GaugeMetricFamily("perpdex_gate_closed", "1 while a socket takes no new connections "
                              "(it holds its most)", labels=["socket"])
        for sock, facts in h["gates"].items():
            g.add_metric([sock], 1 if facts["gate"] == "closed" else 0)
        yield g
        g = GaugeMetricFamily("perpdex_thread_up", "1 while a thread of the server runs",
                              labels=["thread"])
        for thread, state in h["threads"].items():
            g.add_metric([thread], 1 if state == "alive" else 0)
        yield g


_SKIP = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "event", "values"}
log = logging.getLogger("perpdex.gateway")


def _event(record) -> tuple[str, dict]:
    """A record's event and fields: those its call passed in `extra={"event": ..., ...}`
    (docs/observability.md lists them); a call that named none is named after where it was made
    (`journal.fail`: its logger less `perpdex.`, and its function), its arguments its fields."""
    fields = {k: v for k, v in vars(record).items() if k not in _SKIP}
    event = getattr(record, "event", None)
    if event is None:
        event = f"{record.name.removeprefix('perpdex.')}.{record.funcName}"
        args = getattr(record, "values", None) or record.args
        if args:
            fields["args"] = list(args) if isinstance(args, tuple) else args
    return event, fields


def _stamp(record) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + \
        f".{int(record.msecs):03d}Z"


class JsonLines(logging.Formatter):
    """One JSON object a line: `ts` (ISO 8601, UTC), `level`, `logger`, `event`, `msg`, and the
    event's fields."""

    def format(self, record):
        event, fields = _event(record)
        out = {"ts": _stamp(record), "level": record.levelname.lower(), "logger": record.name,
               "event": event, "msg": record.getMessage(), **fields}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextLines(logging.Formatter):
    """One line a record, for a person: time, level, logger, `event:`, the message, then the
    fields as key=value (values with spaces or quotes as JSON strings); a traceback below."""

    def format(self, record):
        event, fields = _event(record)
        pairs = "".join(f" {k}={_value(v)}" for k, v in fields.items())
        line = (f"{_stamp(record)} {record.levelname.lower()} {record.name} {event}: "
                f"{record.getMessage()}{pairs}")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _value(v) -> str:
    if not isinstance(v, str):
        return json.dumps(v, default=str)
    return json.dumps(v) if not v or any(c in v for c in ' "=\n') else v


def set_level(level: str) -> None:
    """The least level perpdex's own loggers write (`--log-level`, `[server] log_level`: one of
    config.LEVELS). Other libraries' loggers keep the root's (info)."""
    logging.getLogger("perpdex").setLevel(level.upper())


def log_stop(why: str, **fields) -> None:
    """The server's `stop` event: why it stopped (`SIGTERM`, `asked`, `the journal thread
    failed`) and what it did (`commands`, `internal_errors`, `dropped`, `suspended`,
    `exit_code`: docs/observability.md)."""
    log.info("stopped (%s)", why, extra={"event": "stop", "why": why, **fields})


class _Dropping(QueueHandler):
    """Hands records to the writer thread and never waits: a full queue (a stderr nobody reads)
    drops the record and counts it, so logging cannot hold the loop that serves everyone."""

    def __init__(self, q):
        super().__init__(q)
        self.dropped = 0

    def prepare(self, record):
        """A copy for the writer thread: its message made now (its values may change after),
        its arguments (as `values`) and traceback kept for the formatter, where QueueHandler's
        own folds them into the message."""
        record = copy.copy(record)
        record.msg, record.args, record.values = record.getMessage(), None, record.args
        return record

    def enqueue(self, record):
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


def configure_logging(fmt: str, stream, keep: int = 10_000) -> QueueListener:
    """`text` (TextLines) or `json` (JsonLines) on `stream`, written by a thread of its own from
    a queue of at most `keep` records (docs/observability.md). Returns the listener: `stop()` it
    to write what is queued."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLines() if fmt == "json" else TextLines())
    q: queue.Queue = queue.Queue(maxsize=keep)
    listener = QueueListener(q, handler, respect_handler_level=False)
    root = logging.getLogger()
    root.handlers[:] = [_Dropping(q)]
    root.setLevel(logging.INFO)
    listener.start()
    return listener


def stop_logging(listener: QueueListener, seconds: float = 2.0) -> None:
    """Write what is queued, waiting at most `seconds` (a stderr nobody reads must not keep the
    server from stopping; the writer thread is a daemon)."""
    try:
        listener.queue.put_nowait(listener._sentinel)
    except queue.Full:
        return
    if listener._thread is not None:
        listener._thread.join(seconds)
        listener._thread = None
