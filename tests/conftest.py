"""Helpers that read like the contract: a market, an oracle price, orders, and the events back."""
from __future__ import annotations

from collections import Counter

import msgspec
import pytest
from hypothesis import event

from perpdex.engine import Engine, messages as M
from tests.flows import MARKET_FIELDS

MKT = "BTC-PERP"


def pytest_collection_modifyitems(config, items):
    """Tests marked slow (soaks, crash loops, the wheel build) run only under `pytest -m slow`."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="a slow test: pytest -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, config):
    """The order the tests ran in (pytest-randomly), also under -q, whose header is hidden."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int) and getattr(config.option, "randomly_reorganize", False):
        terminalreporter.write_line(
            f"random order: --randomly-seed={seed} (again in this order: "
            f"pytest -p randomly --randomly-seed={seed})")


def open_orders(reply: dict) -> list:
    """The open orders a `query_account` reply gives, from its `account` event, which need not
    come first: a cancel the server made in the same loop turn (a session that timed out, a
    dead-man's switch) may stand before it."""
    (account,) = [e for e in reply["events"] if e["type"] == "account"]
    return account["open_orders"]


class Reached(Counter):
    """What the cases of a property test reached: `case(traded=..., liquidated=...)` once a
    case counts each flag that is true (and tells hypothesis, `event()`, for its statistics);
    `share(flag)` is the part of the cases that reached it. A test asserts the shares after its
    cases ran, so a strategy that stops reaching what the test is named for fails it."""

    def case(self, **flags):
        self["cases"] += 1
        for name, hit in flags.items():
            if hit:
                self[name] += 1
                event(name)

    def share(self, name) -> float:
        return self[name] / max(1, self["cases"])


class Exchange:
    """An engine with one market (multiplier 100, min_qty 2, band 2 %) and event dicts out.

    Margin is off unless asked for: the matching tests are about the matching rules, and the
    margin tests (tests/engine/test_margin.py) turn it on and deposit collateral like a real venue.
    """

    def __init__(self, margin=False, **market_overrides):
        self.engine = Engine(margin=margin)
        self.ts = 0
        fields = dict(MARKET_FIELDS, **market_overrides)
        assert self.run(M.CreateMarket(market=MKT, **fields)) == []

    def run(self, cmd) -> list[dict]:
        return [msgspec.to_builtins(e) for e in self.engine.execute(cmd)]

    def oracle(self, price, market=MKT):
        return self.run(M.Oracle(market=market, price=price))

    def order(self, account, cid, side, qty, price=None, kind="limit", **kw):
        kw.setdefault("market", MKT)
        return self.run(M.NewOrder(account=account, cid=cid, side=side, kind=kind, qty=qty,
                                   price=price, **kw))

    def cancel(self, account, cid, market=MKT):
        return self.run(M.Cancel(account=account, market=market, cid=cid))

    def amend(self, account, cid, market=MKT, **kw):
        return self.run(M.Amend(account=account, market=market, cid=cid, **kw))

    def book(self, side):
        """[(price, [(cid, qty), ...]), ...] best first, from the canonical state."""
        mk = self.engine.state()["markets"][0]
        orders = mk[4] if side == "buy" else mk[5]
        levels: list = []
        for o in orders:
            if not levels or levels[-1][0] != o[3]:
                levels.append((o[3], []))
            levels[-1][1].append((o[2], o[4]))
        return levels


def types(events):
    return [e["type"] for e in events]


def only(events, type_):
    found = [e for e in events if e["type"] == type_]
    assert len(found) == 1, f"expected one {type_} in {events}"
    return found[0]


def reason(events):
    return only(events, "rejected")["reason"]


@pytest.fixture
def ex():
    x = Exchange()
    x.oracle(10_000)
    yield x
    x.engine.check_integrity()
