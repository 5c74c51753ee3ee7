"""The answers to the requests that are not engine commands (docs/protocol.md): heartbeat,
session, schedule_cancel (the dead-man's switch), subscribe (the private stream), book, markets,
snapshot (the public feed's), health, and login in plain-text mode; and the answers to a request
over its budgets or retrying a reply no longer kept. Mixed into the server: each handler takes
(account, session, connection, request, now) and returns the reply.
"""
from __future__ import annotations

import math

from . import protocol as P
from .boot import market_info
from .durability import Deadline


class Handlers:
    """The server's handlers of the requests that read or set the gateway's own state."""

    def _login(self, identity, req):
        if not self.plaintext:
            return P.error(req.req_id, "invalid_command",
                           "login exists only in plain-text mode; your key names your account")
        acct = self.accounts.login(identity, req.account)
        if acct is None:
            return P.error(req.req_id, "forbidden", "no such account")
        return {"req_id": req.req_id, "ok": True, "account": acct.name}

    def _heartbeat(self, acct, sess, identity, req, now):
        return {"req_id": req.req_id, "ok": True, "ts": now}

    def _session(self, acct, sess, identity, req, now):
        sess.cancel_on_disconnect = req.cancel_on_disconnect
        return {"req_id": req.req_id, "ok": True, "heartbeat_ms": self.cfg.heartbeat_ms,
                "session_timeout_ms": self.cfg.session_timeout_ms}

    def _schedule_cancel(self, acct, sess, identity, req, now):
        deadlines = self.records.deadlines
        if req.after_ms is None:
            if deadlines.pop(acct.name, None) is not None:
                self.seq.note(Deadline(acct.name, None))
            return {"req_id": req.req_id, "ok": True, "at": None}
        deadlines[acct.name] = now + req.after_ms * 1_000_000
        self.seq.note(Deadline(acct.name, deadlines[acct.name]))
        return {"req_id": req.req_id, "ok": True, "at": deadlines[acct.name]}

    def _subscribe(self, acct, sess, identity, req, now):
        """Join the account's private stream; with `resume_from`, first a page of what came
        after it (`Streams.page`): a reply with `more` leaves the connection out of the stream
        until the last page. O(page)."""
        reply, joins = self.records.streams.page(acct.name, req.resume_from,
                                                 self.limits.resume_bytes, req.req_id)
        if reply.get("ok") is False:
            return reply
        st = self.records.streams[acct.name]
        self.outbox.notices.discard(identity)
        if not joins:
            st.subscribers.discard(identity)
            return reply
        st.subscribers.add(identity)
        sess.suspended = False
        sess.delivered = st.pseq
        return reply

    def _book(self, acct, sess, identity, req, now):
        if req.market not in self.engine.market_names():
            return P.error(req.req_id, "invalid_command",
                           f"book takes a known `market`, not {req.market!r}")
        return {"req_id": req.req_id, "ok": True, "market": req.market,
                **self.engine.book(req.market, req.depth)}

    def _health(self, acct, sess, identity, req, now):
        return {"req_id": req.req_id, "ok": True, **self.health_facts()}

    def _markets(self, acct, sess, identity, req, now):
        eng = self.engine
        markets = [dict(market_info(sp), status=eng.market_status(sp.name))
                   for sp in eng.specs]
        if req.prices:
            for m in markets:
                m["index"], m["mark"] = eng.prices(m["market"])
        return {"req_id": req.req_id, "ok": True, "markets": markets}

    def _snapshot(self, acct, sess, identity, req, now):
        """The book as the last published `book` delta left it, with that delta's seq."""
        if req.market not in self.engine.market_names():
            return P.error(req.req_id, "invalid_command",
                           f"snapshot takes a known `market`, not {req.market!r}")
        return {"req_id": req.req_id, "ok": True,
                **self.records.feed.snapshot(req.market, req.depth)}

    def _dropped(self, rid) -> dict:
        """The answer to a retry whose reply the retry cache no longer holds (its bytes went
        to newer replies); the request ran once and is not run again."""
        self.stats["replies_dropped"] += 1
        lim = self.limits
        return P.error(rid, "reply_dropped",
                       f"req_id {rid!r} was run once, but its reply is no longer kept (an "
                       f"account's last {lim.retry_window:,} req_ids are remembered, their "
                       f"replies up to {lim.retry_bytes:,} bytes, the oldest dropped first); "
                       f"it is not run again: your private stream and query_account tell what "
                       f"it did")

    def _rate_limited(self, rid, wait: float) -> dict:
        """The `rate_limited` reply to a request over its budgets (`Budgets.wait`), saying when
        to retry."""
        after = math.ceil(wait * 1000)         # whole ms, never 0: by then the tokens are there
        reply = P.error(rid, "rate_limited", f"over the request rate; retry in {after} ms")
        reply["retry_after_ms"] = after
        return reply
