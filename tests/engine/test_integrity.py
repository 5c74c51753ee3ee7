"""The engine's own integrity walk (`check_integrity`: every book, index and account agrees with
the others, docs/engine-api.md) after every command of long seeded flows: the matching flows of
the differential tests (margin off, 4,000 commands each) and margin flows that trade, fund and
liquidate (tests.flows.margin_flow, 300 steps each). It costs about 25 us a command here, so it
runs after each one rather than every so often."""
import random

import pytest

from perpdex.engine import Engine, messages as M
from tests.flows import margin_flow, random_flow


def walk(eng: Engine, cmds, where: str) -> set:
    """Every command, each followed by the integrity walk; the event types the flow made."""
    kinds = set()
    for n, cmd in enumerate(cmds):
        kinds |= {type(e) for e in eng.execute(cmd)}
        try:
            eng.check_integrity()
        except AssertionError as e:
            raise AssertionError(f"{where}, after command {n}: {cmd}") from e
    return kinds


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_the_integrity_walk_holds_after_every_command_of_long_matching_flows(seed):
    kinds = walk(Engine(margin=False), random_flow(seed, 4000),
                 f"tests.flows.random_flow({seed}, 4000)")
    assert {M.Fill, M.OrderAmended, M.OrderTriggered, M.OrderCancelled} <= kinds


def test_the_integrity_walk_holds_after_every_command_of_margin_flows():
    seen = set()
    for seed in range(40):
        seen |= walk(Engine(), margin_flow(random.Random(seed), 300),
                     f"tests.flows.margin_flow(random.Random({seed}), 300)")
    assert {M.Fill, M.FundingEvent, M.MarginCall, M.LiquidationEvent} <= seen
