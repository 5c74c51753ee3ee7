"""The Cython core against the pure-Python reference: every event, every state, on random flows.

As exchange-core's multipleCommandsCompareTest: two implementations, one hash. With margin off
they compare the matching rules; with margin on the whole contract: deposits, leverage, margin
modes and transfers, the placement and pre-fill checks, fees, funding across boundaries and long
jumps, triggers, margin calls, liquidation into the book, the backstop and ADL. Every event
field is compared (rejection `detail`s included), and after every command the `audit`, each
account's `query_account` and the canonical state (whose digest is `state_hash`).
"""
from collections import Counter
import random

import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from perpdex.engine import Engine, messages as M
from tests.flows import (FUND, MAKERS, TRADERS, flows, leveraged_flows, margin_flow, margin_flows,
                         random_flow)
from bench.reference import ReferenceEngine, Rules

# The rules of issue 19 the core is built with (bench/reference.py, `Rules`).
CORE_RULES = Rules()
ACCOUNTS = TRADERS + MAKERS + [FUND]


def run_both(cmds, check_every=1):
    core, ref = Engine(margin=False), ReferenceEngine(margin=False)
    for n, cmd in enumerate(cmds):
        got = [msgspec.to_builtins(e) for e in core.execute(cmd)]
        assert got == ref.execute(cmd), f"command {n}: {cmd}"
        if n % check_every == 0:
            core.check_integrity()
    assert core.state() == ref.state()
    return core, ref


def run_margin(cmds) -> dict:
    """Both engines with margin on: the events of every command, then the audit, every
    account's report and the canonical state. Returns what the reference reached (its
    counts)."""
    core, ref = Engine(), ReferenceEngine(rules=CORE_RULES)
    reports = [M.Audit()] + [M.QueryAccount(account=a) for a in ACCOUNTS]
    for n, cmd in enumerate(cmds):
        got = [msgspec.to_builtins(e) for e in core.execute(cmd)]
        want = ref.execute(cmd)
        assert got == want, f"command {n}: {cmd}"
        for q in reports:
            assert [msgspec.to_builtins(e) for e in core.execute(q)] == ref.execute(q), \
                f"after command {n} ({cmd}): {q}"
        assert core.state() == ref.state(), f"after command {n}: {cmd}"
    h = M.StateHash()
    assert [msgspec.to_builtins(e) for e in core.execute(h)] == ref.execute(h), "state_hash"
    return ref.reached


# ---- margin off: the matching rules -------------------------------------------------------

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flows())
def test_core_matches_reference_on_random_flows(cmds):
    run_both(cmds)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_core_matches_reference_on_long_seeded_flows(seed):
    cmds = random_flow(seed, 4000)
    try:
        run_both(cmds, check_every=97)
    except AssertionError as e:
        raise AssertionError(f"seed {seed}: reproduce with tests.flows.random_flow({seed}, 4000)") from e


# ---- margin on: the whole contract ---------------------------------------------------------

LIQUIDATED = ("liquidation book", "liquidation backstop", "adl")


def _report(reached):
    for what in sorted(reached):
        event(what)
    if any(k in reached for k in LIQUIDATED):
        event("liquidated")


def test_core_matches_reference_with_margin_on_hypothesis_flows():
    """Hypothesis margin flows (tests.flows.margin_flows); a reasonable share must liquidate,
    and between them they must reach the book, the backstop and ADL."""
    seen = Counter()

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(margin_flows())
    def check(cmds):
        reached = run_margin(cmds)
        _report(reached)
        seen["cases"] += 1
        seen.update(k for k in reached)
        seen["liquidated"] += any(k in reached for k in LIQUIDATED)

    check()
    assert seen["liquidated"] >= 0.2 * seen["cases"], seen
    assert seen["fill"] >= 0.9 * seen["cases"], seen
    for what in ("liquidation book", "liquidation backstop", "adl", "margin call",
                 "trigger fired", "funding jump"):
        assert seen[what], (what, seen)


# Seeds of tests.flows.margin_flow, each a few hundred steps; together they reach each kind of
# liquidation, margin calls, triggers, funding jumps and the pre-fill check.
SEEDS = range(40)


def test_core_matches_reference_with_margin_on_seeded_flows():
    seen = Counter()
    for seed in SEEDS:
        try:
            reached = run_margin(margin_flow(random.Random(seed), 300))
        except AssertionError as e:
            raise AssertionError(f"seed {seed}: reproduce with tests.flows.margin_flow("
                                 f"random.Random({seed}), 300)") from e
        seen.update(reached.keys())
    assert seen["liquidated scope"] >= 0.2 * len(SEEDS), seen


def test_adl_queues_are_ranked_once_a_pass_and_positions_that_left_them_are_passed_over():
    """Seed 1008: several bankruptcies in one pass; a position ranked at the pass's start that
    is no longer in profit at its turn is passed over (docs/contract.md, ADL)."""
    run_margin(margin_flow(random.Random(1008), 267))


@pytest.mark.slow
@pytest.mark.parametrize("block", range(10))
def test_core_matches_reference_with_margin_on_long_flows(block):
    """The long profile (pytest -m slow): 10 x 50 flows of 600 steps."""
    for seed in range(1000 + 50 * block, 1050 + 50 * block):
        try:
            run_margin(margin_flow(random.Random(seed), 600))
        except AssertionError as e:
            raise AssertionError(f"seed {seed}: reproduce with tests.flows.margin_flow("
                                 f"random.Random({seed}), 600)") from e


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(margin_flows())
def test_core_matches_reference_past_the_funds_deficit(cmds):
    run_margin(cmds)


# ---- the entry points agree ------------------------------------------------------------------

def test_batch_path_writes_what_the_per_command_path_returns():
    cmds = random_flow(11, 3000)
    one = Engine(margin=False)
    per_command = [msgspec.json.encode(e) for c in cmds for e in one.execute(c)]
    batch = Engine(margin=False).execute_many(cmds, "jsonl").splitlines()
    assert batch == per_command
    data = b"".join(msgspec.msgpack.encode(c) for c in cmds)
    assert Engine(margin=False).execute_batch(data, "msgpack", "jsonl").splitlines() == per_command


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(leveraged_flows())
def test_execute_returns_what_the_batch_path_writes_with_margin_liquidation_and_funding(cmds):
    """`execute` makes the order events as Structs and decodes only the rare ones (funding,
    balance, liquidation, mark, ...): interleaved, they come back in `seq` order, equal to
    what the batch path encodes for the same command."""
    crash = [M.Oracle(market=m, price=p, ts=10**15) for m in ("BTC-PERP", "ETH-PERP")
             for p in (9_500, 8_000, 11_000, 6_500, 14_000)]
    one, other = Engine(), Engine()
    for n, cmd in enumerate(cmds + crash):
        got = [msgspec.json.encode(e) for e in one.execute(cmd)]
        assert got == other.execute_many([cmd], "jsonl").splitlines(), f"command {n}: {cmd}"
