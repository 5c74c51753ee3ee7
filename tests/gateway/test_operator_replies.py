"""Issue 23: what a refusal says agrees with its fields. Against a real `perpdex serve`."""
from __future__ import annotations

import re

import pytest

from perpdex.gateway.client import RateLimited, check
from tests.harness import OperatorVenue as Venue, perpdex


@pytest.fixture(scope="module")
def slow_venue(tmp_path_factory):
    """A venue whose request budget is one a second, burst one."""
    home = tmp_path_factory.mktemp("slow")
    assert perpdex("config", "--write-default", home / "slow.toml").returncode == 0
    with open(home / "slow.toml", "a") as f:
        f.write("\n[limits]\nrequest_rate = [1, 1]\n")
    v = Venue(home / "data", "--config", home / "slow.toml")
    yield v
    v.stop()


def test_rate_limited_says_the_wait_its_retry_after_ms_gives(slow_venue):
    c = slow_venue.client("mm-1")
    replies = [c.request("heartbeat") for _ in range(20)]
    limited = [r for r in replies if not r["ok"]]
    assert len(limited) >= 15 and {r["reason"] for r in limited} == {"rate_limited"}
    for r in limited:
        (said,) = re.findall(r"retry in (\d+) ms", r["detail"])
        assert int(said) == r["retry_after_ms"] >= 1, r
        with pytest.raises(RateLimited) as e:
            check(r, "heartbeat")
        assert e.value.retry_after_ms == r["retry_after_ms"]
        assert f"{r['retry_after_ms']} ms" in str(e.value)
