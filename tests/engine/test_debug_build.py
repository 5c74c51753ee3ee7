"""The debug build (`make debug-test`, PERPDEX_DEBUG=1) checks the engine's own invariants
as it runs (a narrowing that does not fit, a fill that moves more than its fee, a walk whose
remaining quantity does not fall by each fill); the normal build compiles them out."""
import os

from perpdex.engine import Engine


def test_the_build_checks_exactly_when_it_was_built_to():
    assert Engine().checks is (os.environ.get("PERPDEX_EXPECT_CHECKS") == "1")
