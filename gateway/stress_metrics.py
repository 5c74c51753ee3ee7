"""What a `perpdex stress` run measures (docs/stress.md, "The report"): every event read into
the step's counts (liquidations by kind, ADL matches and their victims, socialised losses,
margin calls, stops), the series recorded at each step, and the result made of them, the JSON
that gateway/stress_report.py draws.
"""
from __future__ import annotations

from collections import Counter

from perpdex.engine import messages as M

from .stress_inputs import USD
from .stress_paths import MarketRun
from .stress_scopes import Scopes
from .stress_venue import FUND

SERIES = ("t_s", "below_before", "below_after", "book", "backstop", "adl", "book_usd",
          "backstop_usd", "adl_usd", "fund_cash_usd", "fund_equity_usd", "adl_accounts",
          "socialised_usd", "bad_debt_usd", "margin_calls", "audit_balanced")
MARKET_SERIES = ("fair", "index", "mark", "bid_depth_usd", "ask_depth_usd", "book_liq_usd", "oi",
                 "below_before", "below_after", "makers_withdrawn")


class Metrics:
    """The counts and series of a run over `markets` (their specs in `specs`); `scopes` is
    refreshed for every account an event names, and read for what a socialised loss took."""

    def __init__(self, markets: dict[str, MarketRun], specs: dict, scopes: Scopes):
        self.mk, self.specs, self.scopes = markets, specs, scopes
        self.counts: Counter = Counter()
        self.adl: list = []
        self.adl_accounts: set = set()
        self.liquidated: set = set()
        self.socialised_accounts: set = set()
        self.social_total = 0
        self.audits_failed = 0
        self.series = {k: [] for k in SERIES}
        self.per_market = {m: {k: [] for k in MARKET_SERIES} for m in markets}

    # -- reading events ---------------------------------------------------------------------------
    def read(self, events: list, step: Counter) -> None:
        touched: set = set()
        other: set = set()                  # accounts with a cash movement besides socialising
        social: list = []
        funded: set = set()
        pending_adl = None
        for ev in events:
            t = type(ev)
            if t is M.Fill:
                touched.update((ev.taker_account, ev.maker_account))
                other.update((ev.taker_account, ev.maker_account))
                if ev.liquidation:
                    step["liq_fills"] += 1
            elif t is M.LiquidationEvent:
                touched.add(ev.account)
                other.add(ev.account)
                mr = self.mk.get(ev.market)
                usd = ev.qty * ev.price * self.specs[ev.market].multiplier
                if ev.kind == "adl":
                    if pending_adl is None:
                        pending_adl = ev
                        continue
                    bankrupt, pending_adl = pending_adl, None
                    step["adl"] += 1
                    step["adl_usd"] += usd
                    self.adl.append({"step": step["step"], "market": ev.market,
                                     "account": ev.account, "bankrupt": bankrupt.account,
                                     "qty": ev.qty, "price": mr.usd(ev.price) if mr else None,
                                     "notional_usd": usd / USD})
                    self.adl_accounts.add(ev.account)
                    if bankrupt.account != FUND:
                        self.liquidated.add(bankrupt.account)
                else:
                    step[ev.kind] += 1
                    step[ev.kind + "_usd"] += usd
                    step["liq_fee"] += ev.fee
                    step.setdefault("book_usd_by_market", Counter())
                    if ev.kind == "book":
                        step["book_usd_by_market"][ev.market] += usd
                    self.liquidated.add(ev.account)
            elif t is M.Balance:
                touched.add(ev.account)
                if ev.reason == "socialised_loss":
                    social.append(ev)
                else:
                    other.add(ev.account)
                    if ev.reason == "insurance":
                        step["insurance_covers"] += 1
            elif t is M.MarginCall:
                step["margin_calls"] += 1
            elif t is M.FundingEvent:
                funded.add(ev.market)
                step["funding"] += 1
            elif t is M.OrderTriggered:
                step["triggered"] += 1
                touched.add(ev.account)
            elif t is M.Mark:
                step["marks"][ev.market] = ev.mark
            elif t is M.OrderCancelled and ev.reason == "liquidation":
                touched.add(ev.account)
        old = {a: self.scopes.accounts.get(a) for a in {e.account for e in social}}
        for m in funded:
            touched |= self.scopes.in_market.get(m, set())
        for a in sorted(touched, key=str):
            self.scopes.refresh(a)
        for a, before in old.items():
            step["socialised_events"] += sum(1 for e in social if e.account == a)
            self.socialised_accounts.add(a)
            after = self.scopes.accounts.get(a)
            if before is None or after is None or a in other:
                step["socialised_inexact"] += 1
                continue
            paid = before["collateral"] - after["collateral"] + sum(
                v - after["iso"].get(m, 0) for m, v in before["iso"].items())
            step["socialised"] += paid

    # -- the series -------------------------------------------------------------------------------
    def market_step(self, m: str, step: Counter, bid: int, ask: int, withdrawn: bool,
                    below_before: int, below_after: int) -> None:
        """A market's part of a step: the depth before its oracle, the scopes past their price
        before and after it."""
        p = self.per_market[m]
        p["bid_depth_usd"].append(round(bid / USD, 2))
        p["ask_depth_usd"].append(round(ask / USD, 2))
        p["makers_withdrawn"].append(withdrawn)
        p["below_before"].append(below_before)
        p["below_after"].append(below_after)
        p["book_liq_usd"].append(round(step.get("book_usd_by_market", {}).get(m, 0) / USD, 2))

    def step_done(self, step: Counter, below_multi: int) -> None:
        """The step's counts added up, with the cross accounts of several markets below."""
        s, per = self.series, self.per_market
        self.social_total += step["socialised"]
        self.counts.update({k: v for k, v in step.items() if isinstance(v, int) and k != "step"})
        s["below_before"].append(sum(p["below_before"][-1] for p in per.values()) + below_multi)
        s["below_after"].append(sum(p["below_after"][-1] for p in per.values()) + below_multi)
        for kind in ("book", "backstop", "adl"):
            s[kind].append(step[kind])
            s[kind + "_usd"].append(round(step[kind + "_usd"] / USD, 2))
        s["margin_calls"].append(step["margin_calls"])

    def record(self, k: int, audit, fund, t_s: int, marks: dict, depths: dict | None) -> None:
        """Step `k`'s state: the `audit` and the fund's `query_account` report, each market's
        mark (in ticks) and, at the start (k = 0), the book's depth (bid, ask) by market."""
        s = self.series
        lhs = audit.deposits - audit.withdrawals
        rhs = audit.collateral + audit.unrealised_pnl + audit.insurance_fund + audit.fees
        ok = lhs == rhs
        self.audits_failed += not ok
        self.last_audit = audit
        s["t_s"].append(t_s)
        s["audit_balanced"].append(ok)
        s["fund_cash_usd"].append(round(audit.insurance_fund / USD, 2))
        s["fund_equity_usd"].append(round(fund.equity / USD, 2))
        s["adl_accounts"].append(len(self.adl_accounts))
        s["socialised_usd"].append(round(self.social_total / USD, 2))
        s["bad_debt_usd"].append(round((self.social_total + max(0, -fund.equity)) / USD, 2))
        if k == 0:
            for kk in ("below_before", "below_after", "book", "backstop", "adl", "book_usd",
                       "backstop_usd", "adl_usd", "margin_calls"):
                s[kk].append(0)
        for m, p in self.per_market.items():
            mr = self.mk[m]
            p["fair"].append(mr.usd(mr.fair[k]))
            p["index"].append(mr.usd(mr.oracle[k]))
            p["mark"].append(mr.usd(marks[m]))
            p["oi"].append(audit.open_interest[m].long if m in audit.open_interest else 0)
            if k == 0:
                bid, ask = depths[m]
                p["bid_depth_usd"].append(round(bid / USD, 2))
                p["ask_depth_usd"].append(round(ask / USD, 2))
                for kk in ("below_before", "below_after", "book_liq_usd"):
                    p[kk].append(0)
                p["makers_withdrawn"].append(False)
        self.fund_equity = fund.equity

    # -- the result -------------------------------------------------------------------------------
    def result(self, inputs: dict, accounts: int, insurance_seed: int,
               setup_rejects: Counter) -> dict:
        """The run's JSON: `inputs` as given, the summary, the markets, the series and the ADL
        victims; `accounts` generated, the fund's seed (quote units), refused setup commands."""
        s, c = self.series, self.counts
        audit = self.last_audit
        social = s["socialised_usd"][-1]
        summary = {
            "steps": inputs["steps"],
            "accounts": accounts,
            "accounts_liquidated": len(self.liquidated),
            "peak_below_maintenance": max(s["below_before"]),
            "liquidations": {"book": c["book"], "backstop": c["backstop"], "adl": c["adl"]},
            "liquidated_usd": {"book": round(sum(s["book_usd"]), 2),
                               "backstop": round(sum(s["backstop_usd"]), 2),
                               "adl": round(sum(s["adl_usd"]), 2)},
            "book_share": _share(sum(s["book_usd"]),
                                 sum(s["book_usd"]) + sum(s["backstop_usd"]) + sum(s["adl_usd"])),
            "liquidation_fees_usd": round(c["liq_fee"] / USD, 2),
            "margin_calls": c["margin_calls"],
            "stops_triggered": c["triggered"],
            "insurance_fund_usd": {"seeded": round(insurance_seed / USD, 2),
                                   "start": s["fund_equity_usd"][0],
                                   "low": min(s["fund_equity_usd"]),
                                   "end": s["fund_equity_usd"][-1]},
            "insurance_covers": c["insurance_covers"],
            "adl_accounts": len(self.adl_accounts),
            "socialised": {"events": c["socialised_events"],
                           "accounts": len(self.socialised_accounts),
                           "usd": social, "inexact_payers": c["socialised_inexact"]},
            "bad_debt_usd": s["bad_debt_usd"][-1],
            "insolvent": self.fund_equity < 0,
            "audit": {"steps_checked": len(s["audit_balanced"]),
                      "balanced_every_step": self.audits_failed == 0,
                      "deposits_usd": round(audit.deposits / USD, 2),
                      "withdrawals_usd": round(audit.withdrawals / USD, 2),
                      "collateral_usd": round(audit.collateral / USD, 2),
                      "unrealised_pnl_usd": round(audit.unrealised_pnl / USD, 2),
                      "insurance_fund_usd": round(audit.insurance_fund / USD, 2),
                      "fees_usd": round(audit.fees / USD, 2)},
            "setup_rejected": dict(sorted(setup_rejects.items())),
            "makers_rejected": {k.split(":", 1)[1]: v for k, v in sorted(c.items())
                                if k.startswith("maker_rejected:")},
        }
        markets = {}
        for name, mr in self.mk.items():
            spec = self.specs[name]
            markets[name] = {
                "path": mr.path_source, "oracle": mr.oracle_model,
                "start_usd": mr.usd(mr.fair[0]), "low_usd": mr.usd(min(mr.fair)),
                "end_usd": mr.usd(mr.fair[-1]),
                "parameters": {"imf_ppm": spec.imf_ppm, "mmf_ppm": spec.mmf_ppm,
                               "liquidation_fee_ppm": spec.liquidation_fee_ppm,
                               "price_band_ppm": spec.price_band_ppm,
                               "max_liquidations_per_update": spec.max_liquidations_per_update,
                               "funding_interval_s": spec.funding_interval_s,
                               "funding_cap_ppm": spec.funding_cap_ppm,
                               "interest_ppm": spec.interest_ppm,
                               "tiers": [[t.max_notional, t.imf_ppm, t.mmf_ppm]
                                         for t in spec.tiers]},
                "series": self.per_market[name],
            }
        victims = sorted(self.adl, key=lambda v: (-v["notional_usd"], v["step"], str(v["account"])))
        return {
            "perpdex_stress": 1,
            "inputs": inputs,
            "summary": summary,
            "markets": markets,
            "series": s,
            "adl_victims": victims[:200],
            "adl_victims_total": len(victims),
        }


def _share(part: float, whole: float) -> float | None:
    return None if not whole else round(part / whole, 4)
