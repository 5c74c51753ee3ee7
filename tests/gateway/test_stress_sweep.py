"""`perpdex stress --sweep` and `--compare` as real processes on files in tmp_path: the same
report byte for byte whatever the number of processes, each point the same as the single run it
stands for, the answer read off the points, bad specs refused with one sentence, the docs'
example run as printed (docs/stress.md, "Sweeps")."""
from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest

from .test_stress import PERPDEX, ROOT, SMALL, bigger, check_page, stress


@pytest.fixture
def scenario(tmp_path):
    p = tmp_path / "small.toml"
    p.write_text(SMALL)
    return p


def test_a_sweep_is_the_same_byte_for_byte_whatever_the_processes(tmp_path, scenario):
    outs = []
    for jobs in ("1", "2", "1"):
        out = tmp_path / f"sweep-{len(outs)}.json"
        r = stress(scenario, "--sweep", "mmf_ppm=20000:80000:20000", "--jobs", jobs,
                   "--json", out, "-q")
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]
    rep = json.loads(outs[0])
    assert rep["inputs"]["sweep"]["values"] == [20000, 40000, 60000, 80000]
    assert [p["value"] for p in rep["points"]] == [20000, 40000, 60000, 80000]


def test_each_point_is_the_single_run_it_stands_for(tmp_path, scenario):
    out = tmp_path / "sweep.json"
    r = stress(scenario, "--sweep", "insurance_usd=0:600000:300000", "--json", out, "-q")
    assert r.returncode == 0, r.stderr
    points = json.loads(out.read_text())["points"]
    for p in points:
        single = tmp_path / "one.json"
        r = stress(scenario, "--insurance-usd", p["value"], "--json", single, "-q")
        assert r.returncode == 0, r.stderr
        s = json.loads(single.read_text())["summary"]
        assert p["bad_debt_usd"] == s["bad_debt_usd"]
        assert p["liquidations"] == s["liquidations"]
        assert p["insurance_fund_usd"] == s["insurance_fund_usd"]
        assert p["adl_accounts"] == s["adl_accounts"]
        assert p["audit_balanced"] and s["audit"]["balanced_every_step"]


def run_both(tmp_path, *args) -> tuple[subprocess.CompletedProcess, dict, str]:
    """Run with --json and --html: the process, the report, the page."""
    out, page = tmp_path / "r.json", tmp_path / "r.html"
    r = stress(*args, "--json", out, "--html", page)
    assert r.returncode == 0, r.stderr
    return r, json.loads(out.read_text()), page.read_text()


def test_the_answer_is_read_off_the_points(tmp_path, scenario):
    r, rep, text = run_both(tmp_path, scenario, "--sweep", "insurance_usd=0:2000000:250000")
    adl = [p["liquidations"]["adl"] for p in rep["points"]]
    values = [p["value"] for p in rep["points"]]
    assert adl[0] > 0 and adl[-1] == 0                   # no fund: ADL; a large one: none
    first = next(i for i, n in enumerate(adl) if n == 0)
    answer = rep["answers"]["no_adl"]
    assert answer["value"] == values[first]
    assert answer["sentence"] in r.stdout
    if all(n == 0 for n in adl[first:]):
        assert answer["sentence"] == (f"the smallest insurance_usd with no ADL in this crash: "
                                      f"{values[first]:.0f} (and every larger value swept)")
    root = check_page(text, 4)
    assert answer["sentence"] in text
    assert len(root.findall(".//{http://www.w3.org/1999/xhtml}table//"
                            "{http://www.w3.org/1999/xhtml}tr")) >= len(values) + 1


def test_the_crash_scale_scales_the_moves(tmp_path, scenario):
    out = tmp_path / "sweep.json"
    r = stress(scenario, "--sweep", "crash_scale=0:1:0.5", "--json", out, "-q")
    assert r.returncode == 0, r.stderr
    pts = json.loads(out.read_text())["points"]
    lows = [p["low_usd"]["BTC-PERP"] for p in pts]
    assert lows[0] == 65_000 and lows[0] > lows[1] > lows[2]          # flat, half, whole
    assert sum(pts[0]["liquidations"].values()) == 0
    assert sum(pts[2]["liquidations"].values()) > 0


def test_two_parameter_sets_side_by_side(tmp_path, scenario):
    r, rep, text = run_both(tmp_path, scenario, "--compare", "mmf_ppm=80000,insurance_usd=3000000")
    single = tmp_path / "one.json"
    assert stress(scenario, "--json", single, "-q").returncode == 0
    assert rep["a"] == json.loads(single.read_text())             # A: the scenario as it is
    assert rep["b"]["markets"]["BTC-PERP"]["parameters"]["mmf_ppm"] == 80_000
    assert rep["b"]["summary"]["insurance_fund_usd"]["seeded"] == 3_000_000
    assert rep["difference"]["insurance_fund_usd"]["seeded"] == 3_000_000 - 20_000
    assert rep["labels"] == {"a": "as the scenario sets it",
                             "b": "mmf_ppm=80000, insurance_usd=3000000"}
    assert "B: mmf_ppm=80000, insurance_usd=3000000" in r.stdout
    check_page(text, 6)
    both = tmp_path / "both.json"                                 # twice: one against the other
    r = stress(scenario, "--compare", "mmf_ppm=30000", "--compare", "mmf_ppm=60000", "--json",
               both, "-q")
    assert r.returncode == 0, r.stderr
    rep = json.loads(both.read_text())
    assert [rep[k]["markets"]["BTC-PERP"]["parameters"]["mmf_ppm"] for k in "ab"] == [
        30_000, 60_000]


BAD = [
    (["--sweep", "mmf_ppm"], r"--sweep mmf_ppm: expected \[MARKET\.\]KEY=FROM:TO:STEP"),
    (["--sweep", "mmf_ppm=1:2"], r"expected \[MARKET\.\]KEY=FROM:TO:STEP"),
    (["--sweep", "colour=1:2:1"], r"'colour' cannot be swept \(one of imf_ppm"),
    (["--sweep", "tiers=1:2:1"], r"tiers is a list, not a number"),
    (["--sweep", "mmf_ppm=80000:20000:10000"], r"FROM 80000 is above TO 20000"),
    (["--sweep", "mmf_ppm=0:100000:1"], r"100001 points; a sweep runs at most 101"),
    (["--sweep", "mmf_ppm=1:2:0"], r"the step must be above zero"),
    (["--sweep", "mmf_ppm=1:2:x"], r"the step 'x' is not a number"),
    (["--sweep", "mmf_ppm=1.5:3:1"], r"mmf_ppm takes whole numbers from 0, not 1\.5"),
    (["--sweep", "insurance_usd=-1:3:1"], r"insurance_usd -1 is outside 0 to 1000000000000"),
    (["--sweep", "mmf_ppm=60000:140000:40000"],
     r"--sweep mmf_ppm=60000:140000:40000: at mmf_ppm=140000: BTC-PERP: the engine refuses "
     r"these parameters: mmf_ppm 140000 is above imf_ppm 100000"),
    (["--sweep", "SOL-PERP.crash_scale=0:1:1"], r"'SOL-PERP' is an unknown market"),
    (["--compare", "mmf_ppm"], r"--compare mmf_ppm: expected KEY=VALUE"),
    (["--compare", "a=1", "--compare", "b=2", "--compare", "c=3"], r"given more than twice"),
    (["--compare", "mmf_ppm=1", "--sweep", "mmf_ppm=1:2:1"], r"one at a time"),
    (["--sweep", "mmf_ppm=1:2:1", "--jobs", "0"], r"--jobs 0: out of range"),
]


@pytest.mark.parametrize("extra,said", BAD)
def test_bad_sweeps_are_refused_with_one_sentence(scenario, extra, said):
    r = stress(scenario, *extra, "-q")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("perpdex stress: "), r.stderr
    assert re.search(said, lines[0]), lines[0]


def _docs_example(flag: str) -> tuple[list[str], list[str]]:
    """The docs' command with `flag` and the lines it is shown to print."""
    doc = (ROOT / "docs" / "stress.md").read_text()
    m = re.search(r"```sh\n(\.venv/bin/perpdex stress examples/stress/crash\.toml "
                  + re.escape(flag) + r"[^\n]*)\n```\n\n[^`]*```\n(.*?)```", doc, re.S)
    return shlex.split(m.group(1).replace(".venv/bin/perpdex", str(PERPDEX))), \
        [line for line in m.group(2).splitlines() if "ran in" not in line]


@pytest.mark.parametrize("flag", ["--sweep", "--compare"])
def test_the_docs_examples_print_what_the_docs_show(tmp_path, flag):
    argv, shown = _docs_example(flag)
    argv = [str(tmp_path / a) if a.endswith((".html", ".json")) else a for a in argv]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    printed = [line for line in r.stdout.splitlines() if "ran in" not in line]
    assert printed == shown
    for a in argv:
        if a.endswith(".html"):
            check_page((tmp_path / a).read_text(), 4)


@pytest.mark.slow
def test_a_sweep_of_eleven_points_over_two_thousand_accounts(tmp_path):
    scen = bigger(tmp_path, 1200, 800, 480)
    outs = []
    for jobs in ("2", "1"):
        out = tmp_path / f"r{jobs}.json"
        r = stress(scen, "--sweep", "mmf_ppm=20000:100000:8000", "--jobs", jobs, "--json", out,
                   "-q")
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    rep = json.loads(outs[0])
    assert len(rep["points"]) == 11 and rep["audit_balanced_every_run"]


def test_the_readme_shows_the_docs_sweep():
    readme = (ROOT / "README.md").read_text()
    cmd = re.search(r"`(\.venv/bin/perpdex stress [^`]*--sweep [^`]*)`", readme).group(1)
    argv, shown = _docs_example("--sweep")
    assert shlex.split(cmd)[1:] == argv[1:len(shlex.split(cmd))]
    answer = next(line for line in shown if "with no ADL" in line)
    assert "300000" in answer and "300,000 USD" in readme
