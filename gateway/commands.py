"""The engine commands of requests: each built from its request (stamped by the one clock),
sequenced through Engine.route, and its events routed from their bytes and index rows, each
encoded once by the engine (a fill once a side): to the reply, to the private streams of its
accounts and to the public feed. A batch runs its cancels first. Mixed
into the server.
"""
from __future__ import annotations

import logging

import msgspec
from msgspec import Raw

from perpdex.engine import ROUTE, ROW_FIELDS, messages as M

from . import protocol as P
from .sessions import Session
from .streams import row_views

_ACCEPTED, _CANCELLED, _FILL, _RARE = (
    ROUTE[k] for k in ("order_accepted", "order_cancelled", "fill", "rare"))
_T_OID, _T_REM, _M_OID, _M_REM = (ROW_FIELDS["fill"].index(f) for f in (
    "taker_oid", "taker_remaining", "maker_oid", "maker_remaining"))
_A_OID, _A_MARKET, _A_CID = (ROW_FIELDS["order_accepted"].index(f) for f in (
    "oid", "market", "cid"))
_C_OID = ROW_FIELDS["order_cancelled"].index("oid")
_EVENT = ROW_FIELDS["rare"].index("event")

log = logging.getLogger("perpdex.gateway")


class Commands:
    """The server's command path (`Server` has it)."""

    def _command(self, acct, req):
        """The engine command of one request (stamped now), or the reason and detail it is not
        one. O(fields)."""
        cls = type(req)
        if cls.command is None or cls.tag not in P.ROLES[acct.role]:
            allowed = P.ROLES[acct.role]
            return None, ("forbidden", f"a {acct.role} may not send {cls.tag!r}; it may send "
                                       f"{', '.join(sorted(allowed))}")
        fields = msgspec.structs.astuple(req)[:-1]              # less req_id, the last
        if cls.trader:
            return cls.command(acct.name, *fields, ts=self.seq.now()), None
        return cls.command(*fields, ts=self.seq.now()), None

    def _run(self, cmd, sess: Session | None = None, view=None) -> list:
        """Sequence one command and route its events, each encoded once by the engine (a fill
        once a side, Engine.route): to the reply (the returned Raw list), to the private
        streams of its accounts and to the PUB. With `view` (a trader's account), the reply
        holds what that account may see: its own events, its side of its fills, and the events
        naming no account; without, the engine's events as they are (an operator's). Tracks
        the orders a session placed, for cancel-on-disconnect. O(events * subscribers)."""
        data, rows = self.seq.route(cmd)
        if self.metrics is not None:
            self.metrics.rows(rows)
        return self._route(data, rows, sess, view)

    def _route(self, data: bytes, rows: list, sess: Session | None, view=None) -> list:
        """`_run` after the engine: the events to the reply, the streams and the PUB, from
        their bytes and index rows (docs/engine-api.md, "Routing a command's events")."""
        feed = self.records.feed.row
        push = self.records.streams.push
        stream_out = self.stream_out
        sessions = self.sessions
        raws = []
        for row in rows:
            kind, account = row[0], row[3]
            views = row_views(data, row)
            if kind == _FILL:
                if view is None:
                    raws.append(Raw(data[row[1]:row[2]]))
                else:
                    raws.extend(Raw(own) for who, own in views if who == view)
                if row[_T_REM] == 0:
                    sessions.closed(row[_T_OID])
                if row[_M_REM] == 0:
                    sessions.closed(row[_M_OID])
            else:
                if view is None or account is None or account == view:
                    raws.append(Raw(views[0][1] if views else data[row[1]:row[2]]))
                if kind == _ACCEPTED:
                    if sess is not None and account == sess.account:
                        sessions.placed(sess, row[_A_OID], row[_A_MARKET], row[_A_CID])
                elif kind == _CANCELLED:
                    sessions.closed(row[_C_OID])
                elif kind == _RARE and type(row[_EVENT]) is M.LiquidationEvent:
                    _log_liquidation(row[_EVENT])
            feed(data, row)
            if views:
                push(views, stream_out)
        return raws

    def _one(self, acct, sess, req):
        """One command (its budget was taken in `_handle`)."""
        cmd, why = self._command(acct, req)
        if cmd is None:
            return P.error(req.req_id, *why)
        return {"req_id": req.req_id, "ok": True,
                "events": self._run(cmd, sess, view_of(acct))}

    def _batch(self, acct, sess, req):
        """Several commands in one request: cancels run first, then the rest, each in request
        order; one status per item, in request order. O(items)."""
        n = len(req.items)
        if not 0 < n <= self.limits.max_batch:
            return P.error(req.req_id, "invalid_command",
                           f"a batch has `items`: a list of 1 to {self.limits.max_batch} commands")
        decoded: list = [None] * n
        results: list = [None] * n
        cancels, rest = [], []
        for i, item in enumerate(req.items):
            try:
                it = decoded[i] = self.codec.item.decode(item)
            except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as e:
                results[i] = {"ok": False, "reason": "invalid_command",
                              "detail": P.invalid_detail(e)}
                continue
            if it.req_id is not None:
                results[i] = {"ok": False, "reason": "invalid_command",
                              "detail": "a batch item has no req_id of its own"}
                continue
            (cancels if it.tag in P.CANCELS else rest).append(i)
        wait = self.budgets.wait(acct.name, self.seq.now(), 0, len(cancels), len(rest))
        if wait:
            return self._rate_limited(req.req_id, wait)
        for i in cancels + rest:
            cmd, why = self._command(acct, decoded[i])
            if cmd is None:
                results[i] = {"ok": False, "reason": why[0], "detail": why[1]}
                continue
            results[i] = {"ok": True, "events": self._run(cmd, sess, view_of(acct))}
        return {"req_id": req.req_id, "ok": True, "results": results}


def _log_liquidation(ev) -> None:
    log.info("liquidation: %s %s %s %d at %d (%s)", ev.account, ev.market, ev.side, ev.qty,
             ev.price, ev.kind,
             extra={"event": "liquidation", "account": ev.account, "market": ev.market,
                    "side": ev.side, "qty": ev.qty, "price": ev.price, "kind": ev.kind,
                    "fee": ev.fee})


def view_of(acct):
    """Whose view a reply to this account's command holds: a trader's own (docs/protocol.md,
    "Fills"); None for an operator (admin, oracle), who sees the engine's events."""
    return acct.name if acct.role == "trader" else None
