"""What leaves the process: replies, private-stream items and public messages, each sent without
waiting (docs/protocol.md, "Slow connections"). A connection whose pipe is full, or that holds
too many bytes in this process, loses that message and its stream; it is told (`suspended`) as
soon as it has room, and resumes with `subscribe`.
"""
from __future__ import annotations

import logging

import zmq

log = logging.getLogger("perpdex.gateway")

OK, FULL, GONE = 0, 1, 2
TRACK = 64 * 1024                       # bytes: a message this large, or the first after this
                                        # many untracked bytes to a connection, is tracked
_MORE = zmq.NOBLOCK | zmq.SNDMORE


class Outbox:
    """The sending side of the server's sockets: `router` (requests) and `pub` (public), the
    `sessions` and private `streams` they serve, the `limits` and the server's `stats`."""

    def __init__(self, router, pub, sessions, streams, limits, stats: dict, encode):
        self.router, self.pub = router, pub
        self.sessions, self.streams = sessions, streams
        self.limits, self.stats, self.encode = limits, stats, encode
        self.notices: set[bytes] = set()        # suspended connections not yet told

    def send_turn(self, out, stream_out, pub_out):
        send = self.send
        for identity, data in out:
            send(identity, data)
        sessions = self.sessions
        for identity, data, pseq in stream_out:
            sess = sessions.get(identity)
            if sess is None or sess.suspended:
                continue
            if send(identity, data) == OK:
                sess.delivered = pseq
        for topic, data in pub_out:
            try:
                self.pub.send_multipart([topic, data], zmq.NOBLOCK)
            except zmq.Again:           # PUB drops at its bound; subscribers see the seq gap
                self.stats["dropped"] += 1

    def send(self, identity: bytes, data: bytes) -> int:
        """One message to one connection, never waiting. FULL when its pipe holds `send_hwm`
        messages, or when what it may still hold in this process is over `send_bytes`, or what
        all its account's connections may hold is over `account_send_bytes` (the connection is
        then slow: the message is dropped and its stream suspended); GONE when the peer left.
        A message always goes when nothing (at most TRACK bytes) is queued. A message of TRACK
        bytes or more, or the first after TRACK untracked bytes, is sent tracked: ZeroMQ says
        when it is done with it, and so with everything before it (`Session.queued`). O(1)
        amortised."""
        sess = self.sessions.get(identity)
        router = self.router
        try:                            # two frames; ROUTER decides on the first (the identity)
            if sess is None:            # no session: only short error replies go here
                router.send(identity, _MORE)
                router.send(data, zmq.NOBLOCK)
                return OK
            n = len(data)
            lim = self.limits
            queued = sess.recount()
            spend = sess.spend
            if (queued > TRACK and queued + n > lim.send_bytes) or (
                    spend.total + n > lim.account_send_bytes           # stale, never low:
                    and TRACK < spend.refresh()                         # count them again
                    and spend.total + n > lim.account_send_bytes):
                self.stats["dropped"] += 1
                self.stats["over_bytes"] += 1
                self.suspend(identity)
                return FULL
            router.send(identity, _MORE)
            if n >= TRACK or sess.sent - sess.mark >= TRACK:
                tracker = router.send(zmq.Frame(data, track=True, copy=False), zmq.NOBLOCK,
                                      copy=False, track=True)
                sess.sent += n
                sess.mark = sess.sent
                sess.trackers.append((tracker, sess.sent))
            else:
                router.send(data, zmq.NOBLOCK)
                sess.sent += n
            return OK
        except zmq.Again:               # its pipe is full: it is slow, and nobody waits for it
            self.stats["dropped"] += 1
            self.suspend(identity)
            return FULL
        except zmq.ZMQError:            # the peer left (ROUTER_MANDATORY says so)
            self.streams.leave(identity)
            self.notices.discard(identity)
            return GONE

    def suspend(self, identity: bytes):
        """A connection that cannot keep up leaves its stream; it is told (`suspended`, with the
        last pseq it was sent) as soon as its pipe has room, and resumes with `subscribe`."""
        sess = self.sessions.get(identity)
        if sess is None or sess.suspended:
            return
        st = self.streams.get(sess.account)
        if st is None or identity not in st.subscribers:
            return
        st.subscribers.discard(identity)
        sess.suspended = True
        self.notices.add(identity)
        self.stats["suspended"] += 1
        log.warning("slow consumer: %s's private stream suspended", sess.account,
                    extra={"event": "slow_consumer", "account": sess.account})

    def tell_suspended(self):
        for identity in list(self.notices):
            sess = self.sessions.get(identity)
            if sess is None:
                self.notices.discard(identity)
                continue
            notice = self.encode({
                "stream": "private", "suspended": True, "pseq": sess.delivered,
                "detail": "this connection fell behind and left the private stream after "
                          f"pseq {sess.delivered}; subscribe with resume_from to go on"})
            try:
                self.router.send_multipart([identity, notice], zmq.NOBLOCK)
            except zmq.Again:
                continue                # still full: try again next turn
            except zmq.ZMQError:
                pass
            self.notices.discard(identity)
