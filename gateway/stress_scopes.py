"""Accounts below maintenance in a `perpdex stress` run (docs/stress.md, "Accounts below
maintenance"), counted without scanning every account: each scope keyed by its liquidation price
in a sorted list per market and side, refreshed when an event names its account.
"""
from __future__ import annotations

from sortedcontainers import SortedList

from .stress_venue import FUND


class Scopes:
    """The scopes of every account but the fund's, from `query(account)` (a `query_account`
    report); a cross account with positions in several markets has no single price and is
    counted from its report instead (`multi`)."""

    def __init__(self, query):
        self.query = query
        self.accounts: dict = {}                    # account -> its cached report
        self.long_l: dict[str, SortedList] = {}
        self.short_l: dict[str, SortedList] = {}
        self.multi: set = set()                     # cross accounts with several positions
        self.ids: dict = {}
        self.in_market: dict[str, set] = {}

    def refresh(self, account) -> None:
        """Query the account and key its scopes by their liquidation prices (exact: a scope is
        below maintenance when the mark is past that price, until its money or position
        change, which an event names, or funding accrues, which a `funding` event says)."""
        if account == FUND:
            return
        rep = self.query(account)
        old = self.accounts.get(account)
        if old is not None:
            for m, (_, key) in old["keys"].items():
                (self.long_l if key[2] else self.short_l)[m].discard(key[:2])
                self.in_market[m].discard(account)
        self.multi.discard(account)
        keys = {}
        cross = [p for p in rep.positions if p.size and p.mode == "cross"]
        for p in rep.positions:
            if not p.size:
                continue
            self.in_market.setdefault(p.market, set()).add(account)
            if p.mode == "cross" and len(cross) > 1:
                continue
            if p.liquidation_price is not None:
                sid = self.ids.setdefault((account, p.market), len(self.ids))
                key = (p.liquidation_price, sid, p.size > 0)
                (self.long_l if p.size > 0 else self.short_l).setdefault(
                    p.market, SortedList()).add(key[:2])
                keys[p.market] = (p.size, key)
        if len(cross) > 1:
            self.multi.add(account)
        self.accounts[account] = {"collateral": rep.collateral, "keys": keys,
                                  "iso": {p.market: p.isolated_margin for p in rep.positions},
                                  "below": rep.equity < rep.maintenance_margin}

    def refresh_all(self, accounts) -> None:
        for a in accounts:
            if a != FUND:
                self.refresh(a)

    def below(self, market: str, mark: int) -> int:
        """The single-price scopes in `market` past their liquidation price at `mark`."""
        longs = self.long_l.get(market)
        shorts = self.short_l.get(market)
        n = 0
        if longs:
            n += len(longs) - longs.bisect_left((mark + 1, -1))   # liquidation price > mark
        if shorts:
            n += shorts.bisect_left((mark, -1))                     # liquidation price < mark
        return n

    def below_multi(self) -> int:
        """The cross accounts with several positions below maintenance, each queried again."""
        n = 0
        for a in list(self.multi):
            self.refresh(a)
            n += self.accounts[a]["below"]
        return n
