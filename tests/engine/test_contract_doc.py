"""docs/contract.md covers what engine/messages.py defines: every command and event by its tag,
every field of each in the row of its table, every reason code of `rejected` and of
`order_cancelled`. A field or a code added to the engine without a word in the contract fails."""
import re
from pathlib import Path

import pytest

from perpdex.engine import messages as M

PAGE = (Path(__file__).resolve().parents[2] / "docs" / "contract.md").read_text()


def table_rows(heading: str) -> dict[str, str]:
    """The rows of the first table under `## heading`, by the tag in their first cell."""
    section = PAGE.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z_]+)` \|(.*)$", section, re.M)}


COMMANDS = table_rows("Commands")
EVENTS = table_rows("Events")
MARKET_FIELDS = table_rows("Markets")


@pytest.mark.parametrize("cls", M.AnyCommand.__args__, ids=lambda c: c.__struct_config__.tag)
def test_every_command_and_its_fields_are_in_the_commands_table(cls):
    tag = cls.__struct_config__.tag
    assert tag in COMMANDS
    fields = set(cls.__struct_fields__) - {"ts"}
    where = MARKET_FIELDS if cls is M.CreateMarket else {
        f: None for f in re.findall(r"`([a-z_]+)`", COMMANDS[tag])}
    assert fields - set(where) == set()


@pytest.mark.parametrize("cls", M.AnyEvent.__args__, ids=lambda c: c.__struct_config__.tag)
def test_every_event_and_its_fields_are_in_the_events_table(cls):
    tag = cls.__struct_config__.tag
    assert tag in EVENTS
    named = set(re.findall(r"`([a-z_]+)`", EVENTS[tag]))
    assert set(cls.__struct_fields__) - {"seq", "ts"} - named == set()


@pytest.mark.parametrize("struct", [M.PositionInfo, M.OrderInfo, M.OpenInterest])
def test_the_fields_of_nested_records_are_named(struct):
    section = PAGE.split("\n## Events\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z_]+)`", section))
    assert set(struct.__struct_fields__) - named == set()


def codes(cls) -> set[str]:
    return {v for k, v in vars(cls).items() if k.isupper()}


def test_every_rejection_reason_is_in_the_reason_table():
    table = table_rows("Reason codes")
    assert codes(M.Reason) - set(table) == set()


def test_every_cancel_reason_is_in_the_cancel_reason_table():
    section = PAGE.split("\n### Cancel reasons\n", 1)[1].split("\n### ", 1)[0]
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))
    assert codes(M.CancelReason) - listed == set()
