"""`perpdex replay` as a user runs it: a real process, real files, stdin and stdout."""
import itertools
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

ROOT = Path(__file__).resolve().parents[2]
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
    assert summary.startswith("replayed 22 commands -> 26 events (3 fills, 3 rejected) in ")
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
    assert r.returncode == 2 and b"--in-format" in r.stderr and b"Traceback" not in r.stderr


def test_an_output_that_cannot_be_written_is_a_sentence(tmp_path):
    r = perpdex("replay", str(EXAMPLES / "basics.jsonl"), "--out", str(tmp_path),
                "--out-format", "jsonl")
    assert r.returncode == 2 and r.stderr == f"perpdex: {tmp_path}: Is a directory\n".encode()


# ---- rejections by line, and --strict (issue 23) ----------------------------------------------

def _named(stderr: bytes) -> list[str]:
    """The positions the rejection lines on stderr name."""
    return [m.group(1).decode() for m in re.finditer(rb"^perpdex replay: ((?:line|object) [^:]+): ",
                                            stderr, re.M) if b"stopped" not in m.group(0)]


def test_every_rejection_names_its_line():
    r = perpdex("replay", str(EXAMPLES / "bad_input.jsonl"), "--out", "-")
    assert r.returncode == 0
    rejected = [e for e in r.stdout.splitlines() if b'"type":"rejected"' in e]
    lines = (EXAMPLES / "bad_input.jsonl").read_bytes().splitlines()
    named = _named(r.stderr)
    assert len(named) == len(rejected) == 9
    assert named == ["line 2", "line 3", "line 5", "line 6", "line 7", "line 8", "line 9",
                     "line 10", "line 11"]
    # each named line is the command its rejection answers
    for where, event in zip(named, rejected):
        ev = msgspec.json.decode(event)
        line = lines[int(where.split()[1]) - 1]
        if ev["command"] is not None:
            assert f'"type":"{ev["command"]}"'.encode() in line, (where, ev)
    assert b"line 11: new_order rejected: insufficient_margin: " in r.stderr
    assert b"1 fills" not in r.stderr and b"9 rejected" in r.stderr


def test_line_numbers_hold_across_chunks_blank_lines_and_crlf(tmp_path):
    """Over 1 MiB (the reader's chunk), with blank lines, CRLF, a bad line split across two
    chunks and a line longer than the reader takes: every named line is a bad one, and every bad
    one is named."""
    from perpdex.engine.codec import MAX_LINE
    good = b'{"type":"deposit","account":"a","amount":1}'
    bad_kinds = [b"not json", b'{"type":"withdraw","account":"nobody","amount":5}',
                 b'{"type":"new_order","account":"a","market":"NONE","cid":1,"side":"buy",'
                 b'"kind":"limit","qty":1,"price":1}']
    rows, bad = [], set()
    n = size = 0
    while size < 3 * (1 << 20):
        n += 1
        if n % 997 == 0 or (1 << 20) - 50 < size < 1 << 20:     # one across the first chunk's end
            rows.append((bad_kinds[n % 3] if n % 997 == 0 else bad_kinds[2]) + b"\n")
            bad.add(n)
        elif n % 13 == 0:
            rows.append(b"   \n" if n % 2 else b"\n")
        else:
            rows.append(good + (b"\r\n" if n % 7 == 0 else b"\n"))
        size += len(rows[-1])
    assert any(k * (1 << 20) in range(s, s + len(r)) for k in (1, 2) for s, r in
               zip(itertools.accumulate(map(len, rows), initial=0), rows) if b"NONE" in r)
    n += 1
    rows.append(b" " * (MAX_LINE + 10) + b"\n")           # blank, but too long: a rejection
    bad.add(n)
    n += 1
    rows.append(bad_kinds[0])                               # the last line, with no newline
    bad.add(n)
    src = tmp_path / "flow.jsonl"
    src.write_bytes(b"".join(rows))
    r = perpdex("replay", str(src), "--out", str(tmp_path / "out.jsonl"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(int(w.split()[1]) for w in _named(r.stderr)) == sorted(bad)
    assert f"{len(bad)} rejected".encode() in r.stderr


def test_msgpack_rejections_name_their_object_and_byte(tmp_path):
    cmds = [msgspec.json.decode(x) for x in (EXAMPLES / "basics.jsonl").read_bytes().splitlines()]
    data = [msgspec.msgpack.encode(c) for c in cmds]
    src = tmp_path / "basics.msgpack"
    src.write_bytes(b"".join(data))
    r = perpdex("replay", str(src), "--out", str(tmp_path / "out.jsonl"))
    assert r.returncode == 0
    offsets = [sum(map(len, data[:k])) for k in range(len(data))]
    assert _named(r.stderr) == [f"object {k} at byte {offsets[k - 1]}" for k in (5, 17, 18)]


@pytest.mark.parametrize("suffix", [".jsonl", ".msgpack"])
def test_strict_stops_at_the_first_rejection_and_exits_1(tmp_path, suffix):
    src = tmp_path / f"flow{suffix}"
    cmds = (EXAMPLES / "basics.jsonl").read_bytes().splitlines()
    src.write_bytes(b"".join(c + b"\n" for c in cmds) if suffix == ".jsonl" else
                    b"".join(msgspec.msgpack.encode(msgspec.json.decode(c)) for c in cmds))
    r = perpdex("replay", "--strict", str(src), "--out", str(tmp_path / "out.jsonl"))
    assert r.returncode == 1
    where = "line 5" if suffix == ".jsonl" else "object 5 at byte"
    assert f"stopped at {where}".encode() in r.stderr
    out = (tmp_path / "out.jsonl").read_bytes().splitlines()
    expected = (EXAMPLES / "basics.events.jsonl").read_bytes().splitlines()
    # every event up to the rejection of the fifth command, and nothing after it
    assert b'"type":"rejected"' in out[-1] and out == expected[:len(out)]
    assert sum(b'"type":"rejected"' in e for e in out) == 1


@pytest.mark.parametrize("suffix", [".jsonl", ".msgpack"])
def test_random_bytes_fail_a_strict_replay(tmp_path, suffix):
    src = tmp_path / f"noise{suffix}"
    src.write_bytes(bytes(random.Random(23).randrange(256) for _ in range(5000)))
    r = perpdex("replay", "--strict", str(src), "--out", str(tmp_path / "out.jsonl"))
    assert r.returncode == 1 and b"stopped at " in r.stderr
    r = perpdex("replay", str(src), "--out", str(tmp_path / "out.jsonl"))
    assert r.returncode == 0 and _named(r.stderr)          # named, not fatal without --strict


def test_a_clean_strict_replay_exits_0_and_quiet_names_nothing(tmp_path):
    ok = b"".join(c + b"\n" for c in (EXAMPLES / "basics.jsonl").read_bytes().splitlines()[:4])
    r = perpdex("replay", "--strict", "-", "--out", str(tmp_path / "o.jsonl"), stdin=ok)
    assert r.returncode == 0 and b"0 rejected" in r.stderr
    r = perpdex("replay", "--quiet", str(EXAMPLES / "bad_input.jsonl"), "--out",
                str(tmp_path / "o.jsonl"))
    assert r.returncode == 0 and r.stderr == b""
    assert (tmp_path / "o.jsonl").read_bytes() == (EXAMPLES / "bad_input.events.jsonl").read_bytes()
