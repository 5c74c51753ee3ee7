"""Every bound of the gateway in one place, each with its default and its owner (docs/protocol.md,
"Limits"). The server takes a `Limits` as a constructor argument; the defaults are the documented
ones, and tests and benchmarks pass their own.

    Server(cfg, limits=Limits(request_rate=(10_000.0, 10_000.0)))
"""
from __future__ import annotations

from dataclasses import dataclass

Rate = tuple[float, float]          # (tokens a second, burst)


@dataclass(frozen=True)
class Limits:
    # ---- requests ------------------------------------------------------------------------
    max_message: int = 64 * 1024        # bytes; a larger request is answered `too_large`
    hard_limit: int = 1024 * 1024       # bytes; ZeroMQ resets a connection that sends more
    drain: int = 1024                   # requests taken per loop turn at most
    max_batch: int = 256                # items in one batch request
    max_deposit: int = 10**15           # quote units (1e9 USD) in one admin deposit
    # ---- memory kept per account ---------------------------------------------------------
    retry_window: int = 4096            # replies kept for retries (encoded bytes)
    stream_buffer: int = 10_000         # private-stream items kept for resume (encoded bytes)
    # ---- budgets, per account: token buckets (a second, burst) ----------------------------
    request_rate: Rate = (1000.0, 1000.0)   # every request, weighted (WEIGHTS in protocol.py)
    order_rate: Rate = (500.0, 1000.0)      # each command item that is not a cancel
    cancel_rate: Rate = (2000.0, 4000.0)    # each cancel / cancel_all item
    # ---- connections -----------------------------------------------------------------------
    send_hwm: int = 1000                # messages queued for one connection; then it is slow
    sndbuf: int = 0                     # kernel send buffer per connection (0: the OS's)
    handshake_ms: int = 2000            # a connection must finish the CURVE handshake in this
    max_connections: int = 4096         # established connections; then handshakes are refused
    pub_hwm: int = 10_000               # public messages queued per subscriber; then dropped

    def __post_init__(self):
        for name in ("request_rate", "order_rate", "cancel_rate"):
            rate, burst = getattr(self, name)
            if not (rate > 0 and burst >= 1):
                raise ValueError(f"limits.{name}: a positive rate and a burst of at least 1")
            object.__setattr__(self, name, (float(rate), float(burst)))
        for name in ("max_message", "drain", "max_batch", "max_deposit", "retry_window",
                     "stream_buffer", "send_hwm", "handshake_ms", "max_connections",
                     "pub_hwm"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"limits.{name}: a positive integer")
