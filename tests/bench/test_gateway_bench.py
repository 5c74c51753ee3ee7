"""The gateway benchmark runs end to end on a tiny run (no timing is asserted). Slow: it starts
six servers and echoes and a dozen client processes, so it runs only when asked for with
`pytest -m slow` (tests/conftest.py skips it otherwise)."""
import io

import pytest

from bench import gateway as bench


@pytest.mark.slow
def test_the_gateway_benchmark_reports_every_path_next_to_its_echo():
    res = bench.run(seconds=0.3, rate=2000, clients=1, log=lambda *_: None)
    assert set(res["latency"]) == {f"{who} {path}" for who in ("server", "echo")
                                   for path in ("tcp curve", "ipc curve", "tcp plain")}
    assert all(r["received"] == r["sent"] for r in res["latency"].values())
    assert res["throughput"]["items"] > 0 and res["throughput"]["errors"] == 0
    out = io.StringIO()
    bench.print_report(res, out)
    assert "| server tcp curve |" in out.getvalue()
