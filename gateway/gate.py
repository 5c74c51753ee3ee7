"""Every connection of both sockets counted and bounded, and the descriptors they may take
(docs/protocol.md, "Connections"; the budget: docs/limits.md, "What the gateway holds").

ZeroMQ accepts every TCP connection its listener is offered and has no call that closes one
connection, so the bound is kept in front of `accept`. `Gate`, a thread of its own, reads the
monitor of each socket (accepted, disconnected), counts connections per socket and per peer
address, and when a socket holds its most connections, or an address holds its most on that
socket, it puts a socket filter (classic BPF, Linux's SO_ATTACH_FILTER) on the socket's
listening descriptor that drops new connection attempts: all of them, or those from the
addresses at their cap (IPv4). Connections already made are not touched; the filter comes off
as soon as there is room again. A client whose SYN was dropped is retried by its own kernel (1,
3, 7 s later) and gets in once there is room. What gets past before the filter is in place (at
most the listen backlog, plus what was accepted while the gate thread caught up) is in the
descriptor budget's margin. A connection must also finish its handshake within `handshake_ms`
(ZMQ_HANDSHAKE_IVL, both sockets), and a handshaking connection beyond a cap is refused by ZAP.

`budget()` is the number of descriptors the process may need at most; the server checks it
against RLIMIT_NOFILE at boot (raising the soft limit to twice the budget within the hard one,
refusing to start when the budget itself cannot fit).
"""
from __future__ import annotations

import ctypes
import logging
import os
import socket
import sys
import threading
import time

import zmq

log = logging.getLogger("perpdex.gateway")

# Descriptors besides connections: files (the journal's segment, its lock, a descriptor the
# fsync thread dups, a snapshot and its folder, key files read at boot), the ZeroMQ context
# (its I/O thread's poller, a mailbox per socket), the metrics server (its listener and a
# scrape or two), NATS connections in replicated mode: counted at boot (`open_descriptors`)
# plus RUNTIME for what opens later, plus MARGIN.
RUNTIME = 64
MARGIN = 64
ACCEPT_SLACK = 64                   # connections accepted while the gate thread catches up

SO_ATTACH_FILTER, SO_DETACH_FILTER = 26, 27
SKF_NET_OFF = (-0x100000) & 0xFFFFFFFF
LOG_EVERY_S = 1.0                   # at most a gate_closed / gate_open line a second a socket
MAX_BLOCKED = 1000                  # addresses in one filter (2 instructions each, of 4,096)
EVENTS = (zmq.EVENT_LISTENING | zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
          | zmq.EVENT_ACCEPT_FAILED)


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_Insn))]


def _program(closed: bool, blocked) -> list[tuple]:
    """A classic BPF program for a listening TCP socket: drop every packet (`closed`), or the
    IPv4 packets from `blocked` addresses; (code, jt, jf, k) each."""
    drop, accept = (0x06, 0, 0, 0), (0x06, 0, 0, 0xFFFFFFFF)
    if closed:
        return [drop]
    prog = [(0x30, 0, 0, SKF_NET_OFF),          # A = the IP header's first byte
            (0x54, 0, 0, 0xF0),                 # A &= 0xf0 (the version)
            (0x15, 1, 0, 0x40),                 # IPv4: skip the next
            accept,                             # anything else is let through
            (0x20, 0, 0, SKF_NET_OFF + 12)]     # A = the source address
    for addr in sorted(blocked)[:MAX_BLOCKED]:
        prog += [(0x15, 0, 1, int.from_bytes(socket.inet_aton(addr), "big")), drop]
    return prog + [accept]


def _set_filter(fd: int, prog: list[tuple] | None) -> None:
    """Attach `prog` to the listening descriptor `fd` (None: detach). OSError if refused."""
    s = socket.socket(fileno=fd)
    try:
        if prog is None:
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
            except OSError:             # ENOENT: none attached
                pass
            return
        insns = (_Insn * len(prog))(*[_Insn(*i) for i in prog])
        fprog = _Prog(len(prog), ctypes.cast(insns, ctypes.POINTER(_Insn)))
        s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(memoryview(fprog)))
    finally:
        s.detach()


def _peer(fd: int) -> str:
    """The peer address (IP) of a connected descriptor; "" for ipc or when it cannot be read
    (the descriptor was closed meanwhile)."""
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        return ""
    try:
        if s.family not in (socket.AF_INET, socket.AF_INET6):
            return ""
        return s.getpeername()[0]
    except OSError:
        return ""
    finally:
        s.detach()


def open_descriptors() -> int:
    """Descriptors this process holds now (/proc/self/fd or /dev/fd), -1 if unknown."""
    for d in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(d)) - 1       # less the one listdir held
        except OSError:
            continue
    return -1


class Listener:
    """One socket's connections: how many, from which addresses, and its gate."""

    def __init__(self, name: str, sock, cap: int, per_address: int):
        self.name, self.cap, self.per_address = name, cap, per_address
        self.monitor = sock.get_monitor_socket(EVENTS)
        self.fd = -1                            # the listening descriptor (EVENT_LISTENING)
        self.peers: dict[int, str] = {}         # descriptor -> address
        self.by_address: dict[str, int] = {}
        self.applied = None                     # the filter in place: (closed, blocked)
        self.closings = 0                       # times the gate closed
        self.logged = -LOG_EVERY_S              # when a gate line was last logged
        self.accept_failed = 0                  # accepts the kernel refused (EMFILE, ...)
        self.filter_ok = sys.platform.startswith("linux")

    @property
    def count(self) -> int:
        return len(self.peers)

    def over(self, address: str) -> str | None:
        """Why one more handshaking connection (already counted) is one too many, or None."""
        if len(self.peers) > self.cap:
            return f"too many connections ({self.cap} on the {self.name} socket)"
        if address and self.by_address.get(address, 0) > self.per_address:
            return f"too many connections from {address} ({self.per_address} on the " \
                   f"{self.name} socket)"
        return None

    def event(self, frames) -> None:
        event = int.from_bytes(frames[0][:2], "little")
        value = int.from_bytes(frames[0][2:6], "little")
        if event == zmq.EVENT_LISTENING:
            self.fd = value
            try:                                # a filter gates TCP listeners only
                s = socket.socket(fileno=value)
                tcp = s.family in (socket.AF_INET, socket.AF_INET6)
                s.detach()
            except OSError:
                tcp = False
            self.filter_ok = self.filter_ok and tcp
        elif event == zmq.EVENT_ACCEPTED:
            addr = _peer(value)
            old = self.peers.get(value)
            if old is not None:                 # a descriptor reused before its event: fix
                self._forget(old)
            self.peers[value] = addr
            if addr:
                self.by_address[addr] = self.by_address.get(addr, 0) + 1
        elif event == zmq.EVENT_DISCONNECTED:
            addr = self.peers.pop(value, None)
            if addr:
                self._forget(addr)
        elif event == zmq.EVENT_ACCEPT_FAILED:
            self.accept_failed += 1

    def _forget(self, addr: str) -> None:
        n = self.by_address.get(addr, 0) - 1
        if n > 0:
            self.by_address[addr] = n
        else:
            self.by_address.pop(addr, None)

    def regate(self) -> None:
        """Put the filter this count calls for in place (only when it changed). O(addresses
        at their cap)."""
        closed = len(self.peers) >= self.cap
        blocked = frozenset() if closed else frozenset(
            a for a, n in self.by_address.items() if n >= self.per_address and "." in a)
        want = (closed, blocked)
        if want == self.applied or self.fd < 0 or not self.filter_ok:
            return
        try:
            _set_filter(self.fd, None if not closed and not blocked
                        else _program(closed, blocked))
        except OSError as e:
            self.filter_ok = False
            log.warning("the %s socket's listener cannot be gated (%s): connections beyond "
                        "its cap are refused at the handshake only", self.name, e,
                        extra={"event": "gate_unavailable", "socket": self.name})
            return
        was_closed = bool(self.applied and self.applied[0])
        now = time.monotonic()
        if closed and not was_closed:
            self.closings += 1
            if now - self.logged >= LOG_EVERY_S:   # a flood flaps the gate: a line a second
                self.logged = now
                log.warning("the %s socket holds %d connections, its most: new connections "
                            "wait (closed %d times so far)", self.name, len(self.peers),
                            self.closings, extra={"event": "gate_closed", "socket": self.name,
                                                  "connections": len(self.peers),
                                                  "closings": self.closings})
        elif not closed and was_closed and now - self.logged >= LOG_EVERY_S:
            self.logged = now
            log.info("the %s socket takes connections again (%d)", self.name, len(self.peers),
                     extra={"event": "gate_open", "socket": self.name,
                            "connections": len(self.peers)})
        self.applied = want

    def facts(self) -> dict:
        return {"connections": len(self.peers), "max": self.cap,
                "gate": "closed" if self.applied and self.applied[0] else "open",
                "addresses_at_cap": len(self.applied[1]) if self.applied else 0,
                "closings": self.closings, "accept_failed": self.accept_failed}


class Gate(threading.Thread):
    """The thread that keeps every listener's count and gate (see the module's docstring).
    `failure` is the exception that stopped it, if one did (the server then stops)."""

    def __init__(self, listeners: dict[str, Listener]):
        super().__init__(name="perpdex-gate", daemon=True)
        self.listeners = listeners
        self.lock = threading.Lock()
        self.stopping = False
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            poller = zmq.Poller()
            by_sock = {}
            for li in self.listeners.values():
                poller.register(li.monitor, zmq.POLLIN)
                by_sock[li.monitor] = li
            while not self.stopping:
                for sock, _ in poller.poll(100):
                    li = by_sock[sock]
                    with self.lock:
                        while True:
                            try:
                                frames = sock.recv_multipart(zmq.NOBLOCK)
                            except zmq.Again:
                                break
                            li.event(frames)
                        li.regate()
        except BaseException as e:      # noqa: BLE001 - the server sees it and stops
            self.failure = e
            raise
        finally:
            for li in self.listeners.values():
                li.monitor.close(linger=0)

    def over(self, name: str, address: str) -> str | None:
        """(The ZAP thread asks.) Why a handshaking connection is refused, or None."""
        li = self.listeners.get(name)
        if li is None:
            return None
        with self.lock:
            return li.over(address)

    def count(self, name: str) -> int:
        li = self.listeners.get(name)
        return li.count if li is not None else 0

    def facts(self) -> dict:
        with self.lock:
            return {name: li.facts() for name, li in self.listeners.items()}

    def stop(self) -> None:
        self.stopping = True
        if self.is_alive():
            self.join(2)


class DescriptorBudget(ValueError):
    """The descriptors the server may need do not fit the hard limit on open files."""


def budget(limits, held: int) -> dict:
    """The descriptors the server may need at most, by what needs them."""
    b = {"request_connections": limits.max_connections,
         "public_connections": limits.max_subscribers,
         "accepted_past_a_gate": 2 * (limits.backlog + ACCEPT_SLACK),
         "held_at_boot": held, "runtime": RUNTIME, "margin": MARGIN}
    b["total"] = sum(b.values())
    return b


def fit(limits, held: int) -> dict:
    """Check the budget against RLIMIT_NOFILE: raise the soft limit to twice the budget
    (within the hard limit), or raise DescriptorBudget with a sentence saying what does not
    fit. Returns the budget with `limit`, the soft limit now."""
    import resource
    b = budget(limits, held)
    need = b["total"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    inf = resource.RLIM_INFINITY
    if soft != inf and soft < 2 * need:         # twice the budget where the hard limit allows:
        if hard != inf and hard < need:         # room for what a gate lets past under load
            raise DescriptorBudget(
                f"cannot start: the server may need {need:,} descriptors "
                f"({limits.max_connections:,} request connections + {limits.max_subscribers:,} "
                f"public connections + {b['accepted_past_a_gate']:,} accepted past a gate + "
                f"{held + RUNTIME + MARGIN:,} for files, threads and a margin), and the hard "
                f"limit on open files is {hard:,} (ulimit -Hn); raise it, or lower [limits] "
                f"max_connections or max_subscribers (docs/limits.md)")
        target = 2 * need if hard == inf else min(hard, 2 * need)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            if soft < need:
                raise DescriptorBudget(
                    f"cannot start: the server may need {need:,} descriptors and the open-file "
                    f"limit is {soft:,}; raising it failed ({e}); raise it (ulimit -n) or "
                    f"lower [limits] max_connections or max_subscribers")
            target = soft
        if target != soft:
            log.info("open-file limit raised from %d to %d (the descriptor budget is %d)",
                     soft, target, need)
        soft = target
    b["limit"] = -1 if soft == inf else soft
    return b
