"""Every bound of the gateway in one place, each with its default and its owner (docs/protocol.md,
"Limits"; what they add up to in bytes and descriptors: docs/limits.md, "What the gateway
holds"), and the token buckets that hold each account to its budgets (`Budgets`). The server
takes a `Limits` as a constructor argument, or the `[limits]` table of its configuration
(docs/config.md); the defaults are the documented ones, and tests and benchmarks pass their own.

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


class Bucket:
    """A token bucket: `rate` tokens a second up to `burst`; time from the gateway's clock."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.burst, self.tokens, self.at = rate, burst, burst, now

    def take(self, n: int, now: float) -> float:
        """Take `n` tokens; 0.0 if granted, else the seconds until they would be. O(1)."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


class Budgets:
    """Each account's request, order and cancel buckets (`Limits`' rates), made on first use."""

    def __init__(self, limits: Limits):
        self.buckets: dict[str, dict] = {"request": {}, "order": {}, "cancel": {}}
        self.kinds = tuple((self.buckets[kind], rate, burst) for kind, (rate, burst) in (
            ("request", limits.request_rate), ("cancel", limits.cancel_rate),
            ("order", limits.order_rate)))

    def wait(self, account: str, now_ns: int, request: int = 0, cancels: int = 0,
             others: int = 0) -> float:
        """0.0 when every bucket asked has the tokens (then taken), else the seconds until they
        would be (none taken). O(1)."""
        now = now_ns / 1e9
        wait = 0.0
        taken = []
        for (buckets, rate, burst), n in zip(self.kinds, (request, cancels, others)):
            if n:
                b = buckets.get(account)
                if b is None:
                    b = buckets[account] = Bucket(rate, burst, now)
                w = b.take(n, now)
                if w:
                    wait = max(wait, w)
                else:
                    taken.append((b, n))
        if wait > 0:
            for b, n in taken:
                b.tokens += n
        return wait
