"""`perpdex stress` as a real process on files in tmp_path: determinism, counts that agree with
the engine's own events, the audit at every step, bad inputs refused with their sentence, and
a self-contained, well-formed HTML report (docs/stress.md)."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PERPDEX = Path(sys.executable).with_name("perpdex")
SVG = "{http://www.w3.org/2000/svg}"

SMALL = """
seed = 3
steps = 40
step_seconds = 60

[venue]
insurance_usd = 20000

[start_price]
BTC-PERP = 65000

[paths]
BTC-PERP = "walk:0.05+gap:-25@10+slide:-5:10@20"

[[population]]
market = "BTC-PERP"
accounts = 60
long_share = 0.8
isolated_share = 0.3
leverage = { min = 5, max = 10 }
notional_usd = { median = 20000, sigma = 0.5 }
stop_share = 0.2

[makers]
count = 2
depth_usd = 150000
withdraw_move_pct = 10
"""


def stress(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(PERPDEX), "stress", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


@pytest.fixture
def scenario(tmp_path) -> Path:
    p = tmp_path / "small.toml"
    p.write_text(SMALL)
    return p


def test_same_seed_same_json_byte_for_byte(tmp_path, scenario):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for out in (a, b):
        r = stress(scenario, "--json", out, "-q")
        assert r.returncode == 0, r.stderr
    assert a.read_bytes() == b.read_bytes()
    c = tmp_path / "c.json"
    assert stress(scenario, "--json", c, "-q", "--seed", "4").returncode == 0
    assert c.read_bytes() != a.read_bytes()


def test_a_gap_that_must_liquidate_counts_what_the_engine_said(tmp_path, scenario):
    out, events = tmp_path / "r.json", tmp_path / "events.jsonl"
    r = stress(scenario, "--json", out, "--events", events)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    s = report["summary"]
    evs = [json.loads(line) for line in events.read_text().splitlines()]
    kinds = Counter(e["kind"] for e in evs if e["type"] == "liquidation")
    assert s["liquidations"]["book"] == kinds["book"]
    assert s["liquidations"]["backstop"] == kinds["backstop"]
    assert 2 * s["liquidations"]["adl"] == kinds["adl"]          # two events a match
    assert sum(s["liquidations"].values()) > 0                   # a 25 % gap at 5-10x
    per_step = report["series"]
    for kind in ("book", "backstop", "adl"):
        assert sum(per_step[kind]) == s["liquidations"][kind]
    social = [e for e in evs if e["type"] == "balance" and e["reason"] == "socialised_loss"]
    assert s["socialised"]["events"] == len(social)
    adl = [e for e in evs if e["type"] == "liquidation" and e["kind"] == "adl"]
    victims = {adl[i + 1]["account"] for i in range(0, len(adl), 2)}   # bankrupt, then victim
    assert s["adl_accounts"] == len(victims)
    bankrupt = {adl[i]["account"] for i in range(0, len(adl), 2)} - {"insurance"}
    assert s["accounts_liquidated"] == len(bankrupt | {
        e["account"] for e in evs if e["type"] == "liquidation" and e["kind"] != "adl"})
    # Below maintenance: the pass found them at the gap, and none is left after it.
    assert max(per_step["below_before"]) > 0
    assert per_step["below_after"][10] == 0


def test_the_audit_balances_at_every_step(tmp_path, scenario):
    out, events = tmp_path / "r.json", tmp_path / "events.jsonl"
    assert stress(scenario, "--json", out, "--events", events, "-q").returncode == 0
    report = json.loads(out.read_text())
    assert report["series"]["audit_balanced"] == [True] * (report["summary"]["steps"] + 1)
    audits = [json.loads(line) for line in events.read_text().splitlines()
              if '"type":"audit"' in line]
    assert len(audits) == report["summary"]["steps"] + 1
    for a in audits:
        assert a["deposits"] - a["withdrawals"] == (a["collateral"] + a["unrealised_pnl"]
                                                    + a["insurance_fund"] + a["fees"])
        for oi in a["open_interest"].values():
            assert oi["long"] == oi["short"]


def check_page(text: str, min_charts: int) -> ET.Element:
    """The page is well-formed XML, refers to nothing outside itself, runs no script, and every
    chart in it draws something: a line of two points or more, or bars."""
    root = ET.fromstring(text.split("\n", 1)[1])          # after <!DOCTYPE html>
    urls = set(re.findall(r"(?:https?:)?//[^\s\"'<>)]+", text))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xhtml"}
    assert "<script" not in text and "<link" not in text and "src=" not in text
    svgs = root.findall(f".//{SVG}svg")
    assert len(svgs) >= min_charts
    for svg in svgs:
        title = svg.find(f"{SVG}title").text
        lines = svg.findall(f"{SVG}polyline")
        bars = [r for r in svg.findall(f"{SVG}rect") if r.get("fill") not in ("#ffffff", "none")
                and float(r.get("height")) != 10]                # not the legend's squares
        drawn = False
        for pl in lines:
            pts = [tuple(map(float, p.split(","))) for p in pl.get("points").split()]
            assert len(pts) >= 2, title
            drawn |= len({y for _, y in pts}) > 1 or bool(pts)
        assert lines or bars or "liquidations by kind" in title, title
        assert drawn or bars, title
    return root


def test_the_html_is_well_formed_self_contained_and_every_plot_drawn(tmp_path, scenario):
    page = tmp_path / "r.html"
    assert stress(scenario, "--html", page, "-q").returncode == 0
    text = page.read_text()
    check_page(text, 8)
    assert "balanced to the unit at every one of" in text


BAD = [
    # (file name, content, extra args, what stderr must say)
    ("bad.toml", "seed = 1\n[venue\n", [], r"bad\.toml: not valid TOML"),
    ("bad.toml", "seed = 1\nstepz = 3\n", [], r"bad\.toml:2: stepz: unknown key"),
    ("bad.toml", '[[population]]\nmarket = "DOGE-PERP"\naccounts = 3\n', [],
     r"bad\.toml:2: population\[0\]\.market: 'DOGE-PERP' is an unknown market"),
    ("bad.toml", '[[population]]\nmarket = "BTC-PERP"\naccounts = -3\n', [],
     r"bad\.toml:3: population\[0\]\.accounts: Expected `int` >= 1"),
    ("ok.toml", '[start_price]\nBTC-PERP = 65000\n', ["--set", "mmf_ppm=200000"],
     r"--set mmf_ppm=200000: BTC-PERP: the engine refuses these parameters: mmf_ppm 200000 is "
     r"above imf_ppm 100000"),
    ("ok.toml", '[start_price]\nBTC-PERP = 65000\n', ["--set", "colour=3"],
     r"--set colour=3: colour: not a parameter stress can set"),
    ("ok.toml", '[start_price]\nBTC-PERP = 65000\n', ["--path", "BTC-PERP=crash:-10"],
     r"--path BTC-PERP=crash:-10: 'crash:-10' is not a path component"),
    ("ok.toml", '[start_price]\nBTC-PERP = 65000\n', ["--path", "SOL-PERP=gap:-10"],
     r"--path SOL-PERP=gap:-10: 'SOL-PERP' is an unknown market"),
    ("ok.toml", '[start_price]\nBTC-PERP = 65000\n', ["--oracle", "BTC-PERP=late"],
     r"--oracle BTC-PERP=late: 'late' is not an oracle model"),
    ("ok.toml", '[start_price]\nBTC-PERP = 65000\n', ["--steps", "0"],
     r"--steps 0: out of range"),
    ("ok.toml", '[paths]\nBTC-PERP = "p.csv"\n', [], r"p\.csv:3: price: 'abc' is not a number"),
    ("ok.toml", '[paths]\nBTC-PERP = "gap:-10"\n', [],
     r"start_price\.BTC-PERP: missing: a synthetic path"),
    (None, "", ["--state", "nowhere"], r"--state nowhere: no such file or folder"),
]


@pytest.mark.parametrize("name,content,extra,said", BAD)
def test_bad_inputs_are_refused_with_one_sentence(tmp_path, name, content, extra, said):
    (tmp_path / "p.csv").write_text("timestamp,price\n1700000000,100\n1700000060,abc\n")
    args = []
    if name:
        (tmp_path / name).write_text(content)
        args.append(name)
    r = stress(*args, *extra, "-q", cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("perpdex stress: "), r.stderr
    assert re.search(said, lines[0]), lines[0]


def test_a_csv_of_minute_bars_and_parameters_from_the_command_line(tmp_path):
    out = tmp_path / "r.json"
    scen = tmp_path / "s.toml"
    scen.write_text('[[population]]\nmarket = "BTC-PERP"\naccounts = 20\n'
                    'leverage = { min = 8, max = 10 }\n')
    r = stress(scen, "--path", f"BTC-PERP={ROOT / 'examples/stress/minute-bars.csv'}",
               "--set", "BTC-PERP.mmf_ppm=80000", "--set", "max_liquidations_per_update=5",
               "--insurance-usd", "0", "--json", out, "-q")
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    assert rep["inputs"]["step_seconds"] == 60 and rep["summary"]["steps"] == 149
    p = rep["markets"]["BTC-PERP"]["parameters"]
    assert p["mmf_ppm"] == 80_000 and p["max_liquidations_per_update"] == 5
    assert rep["summary"]["insurance_fund_usd"]["seeded"] == 0
    assert rep["markets"]["BTC-PERP"]["start_usd"] == 40005.7


def test_the_worked_example_of_the_docs_runs(tmp_path):
    doc = (ROOT / "docs" / "stress.md").read_text()
    cmd = re.search(r"```sh\n(\.venv/bin/perpdex stress examples/stress/crash\.toml[^\n]*)\n",
                    doc).group(1)
    argv = shlex.split(cmd.replace(".venv/bin/perpdex", str(PERPDEX)))
    argv = [str(tmp_path / a) if a.endswith((".html", ".json")) else a for a in argv]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "audit: balanced to the unit at every one of 121 steps" in r.stdout
    assert (tmp_path / "report.html").stat().st_size > 10_000


def bigger(tmp_path, btc: int, eth: int, steps: int) -> Path:
    """examples/stress/crash.toml with more accounts and steps."""
    text = (ROOT / "examples/stress/crash.toml").read_text()
    text = text.replace("accounts = 300", f"accounts = {btc}").replace(
        "accounts = 200", f"accounts = {eth}").replace("steps = 120", f"steps = {steps}")
    scen = tmp_path / "big.toml"
    scen.write_text(text)
    return scen


@pytest.mark.slow
def test_ten_thousand_accounts_over_a_day_of_minute_steps(tmp_path):
    scen = bigger(tmp_path, 6000, 4000, 1440)
    r = stress(scen, "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["summary"]["accounts"] == 10_000 and rep["summary"]["audit"]["balanced_every_step"]


def _venue(tmp_path) -> tuple[Path, Path]:
    """A data folder as `perpdex serve` leaves it (a journal of turns), and a snapshot file of
    the same state: the default markets, a 10x long and its counterparty."""
    from perpdex.engine import Engine, messages as M
    from perpdex.gateway import journal as J
    from perpdex.gateway.config import default_config
    cmds = list(default_config().markets) + [
        M.Deposit(account="whale", amount=10**12, ts=10**9),
        M.Deposit(account="lev", amount=7_000 * 10**6, ts=10**9),
        M.Oracle(market="BTC-PERP", price=650_000, ts=2 * 10**9),
        M.NewOrder(account="whale", market="BTC-PERP", cid=1, side="sell", kind="limit",
                   qty=1_000, price=650_000, ts=2 * 10**9),
        M.NewOrder(account="lev", market="BTC-PERP", cid=1, side="buy", kind="market",
                   qty=1_000, ts=2 * 10**9)]
    data = tmp_path / "data"
    jr = J.Journal(data / "journal", fsync="off")
    for c in cmds:
        jr.append([c])
    jr.close()
    eng = Engine()
    for c in cmds:
        eng.execute(c)
    assert eng.position("lev", "BTC-PERP")[0] == 1_000
    snap = J.write_snapshot(tmp_path / "snaps", J.Snapshot(
        seq=jr.seq, commands=len(cmds), state_hash=J.state_hash(eng), engine=eng.snapshot(),
        gateway={}))
    return data, snap


def test_a_venue_state_from_a_data_folder_or_a_snapshot(tmp_path):
    data, snap = _venue(tmp_path)
    reports = []
    for state in (data, snap):
        out = tmp_path / "r.json"
        r = stress("--state", state, "--path", "BTC-PERP=gap:-12@2", "--steps", "4",
                   "--json", out, "-q")
        assert r.returncode == 0, r.stderr
        rep = json.loads(out.read_text())
        assert rep["markets"]["BTC-PERP"]["start_usd"] == 65_000      # the state's index
        assert rep["summary"]["accounts_liquidated"] >= 1              # the 10x long
        assert rep["summary"]["audit"]["balanced_every_step"]
        reports.append(rep)
    assert reports[0]["summary"] == reports[1]["summary"]
    out = tmp_path / "r.json"
    r = stress("--state", data, "--set", "BTC-PERP.mmf_ppm=90000", "--path",
               "BTC-PERP=gap:-5@2", "--steps", "4", "--json", out, "-q")
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    assert rep["markets"]["BTC-PERP"]["parameters"]["mmf_ppm"] == 90_000
    assert rep["summary"]["accounts_liquidated"] >= 1                  # 5 % is enough at 9 %
    r = stress("--state", snap, "--set", "mmf_ppm=90000", "-q")
    assert r.returncode == 2
    assert "a snapshot fixes its markets' parameters" in r.stderr
