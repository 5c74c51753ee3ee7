"""The pytest-benchmark microbenchmarks in bench/ run (once each, untimed, on small books with
BENCH_QUICK=1), so that `make bench` does not find them broken. No timing is asserted."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_microbenchmarks_run():
    r = subprocess.run([sys.executable, "-m", "pytest", "bench/", "-q", "--benchmark-disable",
                        "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, BENCH_QUICK="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "failed" not in r.stdout
