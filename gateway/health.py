"""What the server says of itself: its threads (and the loud stop when one fails), `health`,
and the metrics' `/healthz` and `/readyz` (docs/observability.md). Mixed into the server: it
reads the server's threads, gates, journal and counters.
"""
from __future__ import annotations

import logging
import sys
import time

import zmq.utils.garbage

from .gate import open_descriptors
from .journal import Journal

log = logging.getLogger("perpdex.gateway")

LIVE_WITHIN_S = 10.0                    # /healthz: the loop turned within this


class Health:
    """The server's threads and health facts (`Server` has them)."""

    def threads(self) -> dict:
        """Each thread of the server: name -> the exception that stopped it, "dead" when it
        ended without one, or None while it runs. O(threads)."""
        out = {}
        j = self.seq.durability
        failure = getattr(j, "failure", None) or getattr(j, "error", None)
        t = getattr(j, "thread", None)
        if failure is not None:
            out["journal"] = failure
        elif t is not None and not t.is_alive() and not getattr(j, "closed", False):
            out["journal"] = "dead"
        elif t is not None or type(j) is Journal:
            out["journal"] = None
        if self.auth is not None:
            t = self.auth.thread
            out["zap"] = None if t is not None and t.is_alive() else (self.auth.failure or
                                                                      "dead")
        if self.gate is not None:
            out["gate"] = self.gate.failure or (None if self.gate.is_alive() else "dead")
        if self.log_listener is not None:
            t = getattr(self.log_listener, "_thread", None)
            out["log"] = None if t is not None and t.is_alive() else "dead"
        out.update(self.role.threads())         # replicated mode: the NATS client's
        zgc = getattr(zmq.utils.garbage.gc, "thread", None)
        if zgc is not None:             # pyzmq's: trackers are told through it
            out["zmq_gc"] = None if zgc.is_alive() else "dead"
        if self.metrics is not None and self.metrics.thread is not None:
            out["metrics"] = None if self.metrics.thread.is_alive() else "dead"
        return out

    def watch(self) -> bool:
        """Every loop turn: has a thread of the server failed? Then the server stops, loudly
        (a `thread_failed` line at level critical, the metric, exit code 3): a process that
        answers `health` while it cannot make anything durable, or keep its connections
        bounded, helps nobody. O(threads)."""
        if self.failed is not None:
            return True
        for name, why in self.threads().items():
            if why is None or (name == "gate" and self.gate.stopping):
                continue
            error = why if isinstance(why, str) else f"{type(why).__name__}: {why}"
            self.failed = (name, error)
            self.running = False
            if self.metrics is not None:
                self.metrics.thread_failures.labels(name).inc()
            log.critical("the %s thread failed (%s): the server stops", name, error,
                         extra={"event": "thread_failed", "failed_thread": name,
                                "error": error})
            if name == "log":           # nobody writes the line above: say it on stderr
                sys.stderr.write(f"perpdex: the log thread failed ({error}): the server "
                                 f"stops\n")
            return True
        return False

    def health_facts(self) -> dict:
        """What `health` answers and the metrics' gauges read (docs/observability.md).
        O(markets + threads); the process's descriptors are counted at most once a second."""
        gate = self.gate
        gates = gate.facts() if gate is not None else {}
        now = time.monotonic()
        if now - self._fd_at >= 1.0:
            self._fd_at, self._fd_open = now, open_descriptors()
        d = self.descriptors
        return {"seq": self.engine.seq, "clock": self.engine.clock,
                "commands": self.engine.n_commands,
                "uptime_s": round(now - self.started, 3),
                "connections": gates.get("requests", {}).get("connections", 0),
                "subscribers": gates.get("public", {}).get("connections", 0),
                "sessions": len(self.sessions),
                "markets": self.engine.market_names(), "internal_errors":
                    self.stats["internal_errors"], "suspended_streams": self.stats["suspended"],
                "dropped_messages": self.stats["dropped"],
                "over_send_bytes": self.stats["over_bytes"],
                "descriptors": {"open": self._fd_open, "budget": d["total"],
                                "limit": d["limit"]},
                "gates": gates,
                "threads": {name: "alive" if why is None else
                            (why if isinstance(why, str) else f"failed: {why!r}")
                            for name, why in self.threads().items()},
                "journal": self.journal_health(), **self.role.health_facts()}

    def liveness(self) -> tuple[bool, list]:
        """`/healthz`: the process is alive, its loop turning (a loop turn waits at most 200
        ms for requests). O(1)."""
        idle = time.monotonic() - self.turned
        if idle > LIVE_WITHIN_S:
            return False, [f"the loop has not turned for {idle:.1f} s"]
        return True, []

    def readiness(self) -> tuple[bool, list]:
        """`/readyz`: the server serves: its loop runs, nothing failed, every thread is alive
        and the journal (if any) can make things durable; else why not. O(threads)."""
        why = []
        if not self.serving:
            why.append("starting")
        elif not self.running:
            why.append("stopping")
        if self.failed is not None:
            why.append(f"the {self.failed[0]} thread failed ({self.failed[1]})")
        for name, state in self.threads().items():
            if state is not None:
                why.append(f"thread {name}: {state if isinstance(state, str) else repr(state)}")
        j = self.journal_health()
        if j is not None and j.get("failure") is not None:
            why.append(f"the journal cannot make commands durable: {j['failure']}")
        live, idle = self.liveness()
        return live and not why, why + idle

    def journal_health(self) -> dict | None:
        """The journal's own health (`Journal.health()` when it has one), or what the server
        sees of it; None without a journal."""
        j = self.seq.durability
        own = getattr(j, "health", None)
        if callable(own):
            facts = dict(own())
        elif type(j) is Journal:
            facts = {"policy": j.policy, "seq": j.seq, "synced": j.synced, "fsyncs": j.fsyncs}
        else:
            return None
        failure = getattr(j, "failure", None) or getattr(j, "error", None)
        facts.setdefault("failure", failure)
        return {k: v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)
                for k, v in facts.items()}
