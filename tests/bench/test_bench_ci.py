"""`perpdex bench --compare` gates CI (issue 23): it exits 1 past its threshold, refuses to compare
unlike runs (exit 2, a sentence), names each metric's unit and which way is better, and answers a
missing or malformed report with a sentence, not a traceback. `--plot` works where `make install`
ran. Real processes on one quick run's report (`--report` reads a report instead of running)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PERPDEX = shutil.which("perpdex", path=str(Path(sys.executable).parent)) or "perpdex"


def bench(*args, cwd):
    return subprocess.run([PERPDEX, "bench", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench-ci")
    r = bench("--quick", "--no-peers", "--json", d / "new.json", cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    return d / "new.json"


def _old(report: Path, tmp_path: Path, change) -> Path:
    rep = json.loads(report.read_text())
    change(rep)
    out = tmp_path / "old.json"
    out.write_text(json.dumps(rep))
    return out


def _faster_before(rep):
    """The old report: every path of the deep workload was twice as fast."""
    for p in rep["suites"]["core"]["workloads"]["deep"]["paths"].values():
        p["ops_per_s"] *= 2


def test_a_regression_past_the_threshold_exits_1(report, tmp_path):
    old = _old(report, tmp_path, _faster_before)
    r = bench("--report", report, "--compare", old, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "| core/deep/perpdex execute_batch ops/s | ops/s | higher |" in r.stdout
    assert "REGRESSION" in r.stdout and "regression(s) past 15%" in r.stdout
    # the same halving is within a threshold of 60 %
    r = bench("--report", report, "--compare", old, "--threshold", "0.6", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:]
    assert "0 regression(s) past 60%" in r.stdout


def test_a_run_compared_with_a_faster_report_exits_1(report, tmp_path):
    old = _old(report, tmp_path, _faster_before)
    r = bench("--quick", "--no-peers", "--compare", old, cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "REGRESSION" in r.stdout


def test_the_table_names_units_and_which_way_is_better(report, tmp_path):
    r = bench("--report", report, "--compare", report, "--threshold", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "| metric | unit | better | old | new | new / old | |" in r.stdout
    rows = [line for line in r.stdout.splitlines() if line.startswith("| core/deep/plain book")]
    units = {line.split(" | ")[0][2:].rsplit(" ", 1)[-1]: line.split(" | ")[1:3] for line in rows}
    assert units["ops/s"] == ["ops/s", "higher"] and units["plain"] == ["x plain book", "higher"]
    assert units["p99"] == ["us", "lower"] and units["p99.9"] == ["us", "lower"]


@pytest.mark.parametrize("change, said", [
    (lambda rep: rep["options"].update(quick=False), "is a full run and this is a --quick run"),
    (lambda rep: rep["options"].update(suites=["replay"]), "has no core suite"),
    (lambda rep: rep["options"].update(seed=7), "seed 7"),
    (lambda rep: rep["suites"]["core"]["workloads"]["mm"]["workload"].update(sha256="0" * 64),
     "the core/mm workload is not"),
], ids=["quick-vs-full", "another-suite", "another-seed", "another-workload"])
def test_unlike_reports_are_not_compared(report, tmp_path, change, said):
    old = _old(report, tmp_path, change)
    r = bench("--report", report, "--compare", old, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("perpdex bench: will not compare: ") and said in r.stderr


def test_a_full_run_against_a_quick_report_is_refused_before_it_runs(report, tmp_path):
    r = bench("--compare", report, cwd=tmp_path)         # a full run would take minutes
    assert r.returncode == 2 and "is a --quick run (small workloads) and this is a full run" \
        in r.stderr, r.stderr


@pytest.mark.parametrize("content, said", [
    (None, "no such file"), ("{not json", "not JSON"), ("[1, 2]", "not a report of"),
    ('{"meta": {}}', "not a report of"),
    ('{"meta": {}, "options": {}, "suites": {"core": {"workloads": {"deep": 1}}}}',
     "not a report of")], ids=["missing", "malformed", "a-list", "no-suites", "broken-inside"])
@pytest.mark.parametrize("flag", ["--compare", "--report"])
def test_a_missing_or_malformed_report_is_a_sentence(tmp_path, content, said, flag):
    path = tmp_path / "old.json"
    if content is not None:
        path.write_text(content)
    r = bench(flag, path, *(["--quick"] if flag == "--compare" else []), cwd=tmp_path)
    assert r.returncode == 2, r.stdout[-2000:]
    assert r.stderr.startswith(f"perpdex bench: {path}: ") and said in r.stderr
    assert "Traceback" not in r.stderr


def test_a_threshold_out_of_range_is_refused(tmp_path):
    r = bench("--threshold", "1.5", cwd=tmp_path)
    assert r.returncode == 2 and "a fraction from 0 to below 1" in r.stderr


def test_plot_works_where_make_install_ran(report, tmp_path):
    r = bench("--report", report, "--plot", tmp_path / "plots", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert "core-deep-throughput.png" in pngs and "core-deep-latency.png" in pngs


def test_plot_without_matplotlib_says_what_to_install(report, tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from perpdex.gateway.cli import main\n"
            f"sys.exit(main(['bench', '--report', {str(report)!r}, '--plot', 'plots']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 2 and "pip install 'perpdex[bench]'" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-c", code.replace("'--report', " + repr(str(report)),
                                                           "'--quick'")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and "--plot needs matplotlib" in r.stderr     # before it runs
    assert "suite core" not in r.stderr
