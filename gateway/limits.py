"""Every bound of the gateway in one place, each with its default and its owner (docs/protocol.md,
"Limits"; what they add up to in bytes and descriptors: docs/limits.md, "What the gateway
holds"). The server takes a `Limits` as a constructor argument, or the `[limits]` table of its
configuration (docs/config.md); the defaults are the documented ones, and tests and benchmarks
pass their own.

    Server(cfg, limits=Limits(request_rate=(10_000.0, 10_000.0)))
"""
from __future__ import annotations

from dataclasses import dataclass, fields

Rate = tuple[float, float]          # (tokens a second, burst)

KIB, MIB = 1024, 1024 * 1024


@dataclass(frozen=True)
class Limits:
    # ---- requests ------------------------------------------------------------------------
    max_message: int = 64 * KIB         # bytes; a larger request is answered `too_large`
    hard_limit: int = 1 * MIB           # bytes; ZeroMQ resets a connection that sends more
    drain: int = 1024                   # requests taken per loop turn at most
    max_batch: int = 256                # items in one batch request
    max_deposit: int = 10**15           # quote units (1e9 USD) in one admin deposit
    # ---- memory kept per account ---------------------------------------------------------
    retry_window: int = 4096            # req_ids remembered for retries (their replies below)
    retry_bytes: int = 4 * MIB          # bytes of kept replies; the oldest replies drop first
    stream_buffer: int = 10_000         # private-stream items kept for resume (encoded bytes)
    resume_bytes: int = 256 * KIB       # bytes of missed items in one `subscribe` reply (a page)
    # ---- budgets, per account: token buckets (a second, burst) ----------------------------
    request_rate: Rate = (1000.0, 1000.0)   # every request, weighted (WEIGHTS in protocol.py)
    order_rate: Rate = (500.0, 1000.0)      # each command item that is not a cancel
    cancel_rate: Rate = (2000.0, 4000.0)    # each cancel / cancel_all item
    # ---- connections -----------------------------------------------------------------------
    send_hwm: int = 1000                # messages queued for one connection; then it is slow
    send_bytes: int = 8 * MIB           # bytes queued for one connection; then it is slow
    account_send_bytes: int = 32 * MIB  # bytes queued for all of one account's connections
    sndbuf: int = 0                     # kernel send buffer per connection (0: the OS's)
    handshake_ms: int = 2000            # a connection (either socket) must finish its handshake
    max_connections: int = 4096         # request-socket connections, handshaking ones included
    max_subscribers: int = 1024         # public-socket connections, handshaking ones included
    max_per_address: int = 1024         # connections of one socket from one address
    backlog: int = 128                  # connections the kernel queues per socket, not accepted
    pub_hwm: int = 10_000               # public messages queued per subscriber; then dropped

    def __post_init__(self):
        for name in ("request_rate", "order_rate", "cancel_rate"):
            rate, burst = getattr(self, name)
            if not (rate > 0 and burst >= 1):
                raise ValueError(f"limits.{name}: a positive rate and a burst of at least 1")
            object.__setattr__(self, name, (float(rate), float(burst)))
        for f in fields(self):
            if f.name in ("request_rate", "order_rate", "cancel_rate", "sndbuf"):
                continue
            value = getattr(self, f.name)
            if type(value) is not int or value <= 0:
                raise ValueError(f"limits.{f.name}: a positive integer, not {value!r}")
        if type(self.sndbuf) is not int or self.sndbuf < 0:
            raise ValueError(f"limits.sndbuf: 0 (the OS's) or a positive integer")
