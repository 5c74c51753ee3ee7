"""`perpdex replay` as a user runs it: a real process, real files, stdin and stdout."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PERPDEX = shutil.which("perpdex", path=str(Path(sys.executable).parent)) or "perpdex"


def perpdex(*args, stdin=None):
    return subprocess.run([PERPDEX, *args], input=stdin, capture_output=True, timeout=120,
                          cwd=ROOT)


@pytest.mark.parametrize("flow", ["basics", "bad_input"])
def test_replay_of_an_example_gives_its_recorded_events(flow, tmp_path):
    out = tmp_path / "events.jsonl"
    r = perpdex("replay", str(EXAMPLES / f"{flow}.jsonl"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == (EXAMPLES / f"{flow}.events.jsonl").read_bytes()


def test_the_same_input_gives_byte_identical_output(tmp_path):
    from tests.flows import random_flow
    src = tmp_path / "flow.msgpack"
    src.write_bytes(b"".join(msgspec.msgpack.encode(c) for c in random_flow(5, 20_000)))
    outs = []
    for i in range(2):
        out = tmp_path / f"out{i}.msgpack"
        assert perpdex("replay", str(src), "--out", str(out)).returncode == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] and len(outs[0]) > 100_000


def test_msgpack_and_jsonl_outputs_carry_the_same_events(tmp_path):
    src = EXAMPLES / "basics.jsonl"
    assert perpdex("replay", str(src), "--out", str(tmp_path / "e.msgpack")).returncode == 0
    data = (tmp_path / "e.msgpack").read_bytes()
    as_json = msgspec.json.encode(msgspec.msgpack.decode(b"\xdd" + (26).to_bytes(4, "big") + data))
    expected = [msgspec.json.decode(x) for x in (EXAMPLES / "basics.events.jsonl").read_bytes().splitlines()]
    assert msgspec.json.decode(as_json) == expected


def test_stdin_to_stdout_with_a_summary_on_stderr():
    r = perpdex("replay", "-", stdin=(EXAMPLES / "basics.jsonl").read_bytes())
    assert r.returncode == 0
    assert r.stdout == (EXAMPLES / "basics.events.jsonl").read_bytes()
    summary = r.stderr.decode().strip().splitlines()[-1]
    assert summary.startswith("replayed 22 commands -> 26 events (3 fills) in ")
    assert summary.endswith("commands/s")


def test_no_progress_bar_when_stderr_is_not_a_terminal():
    r = perpdex("replay", "-", stdin=b'{"type":"state_hash"}\n')
    assert "\r" not in r.stderr.decode()


def test_a_missing_input_file_is_a_clear_error():
    r = perpdex("replay", "no/such/file.jsonl")
    assert r.returncode == 2 and b"no such file" in r.stderr


def test_an_unknown_extension_asks_for_a_format(tmp_path):
    (tmp_path / "flow.txt").write_text("")
    r = perpdex("replay", str(tmp_path / "flow.txt"))
    assert r.returncode != 0 and b"--in-format" in r.stderr
