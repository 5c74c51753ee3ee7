"""`perpdex replay`'s progress bar (rich's) shows on a terminal and nowhere else: a real
process whose stderr is a pseudo-terminal, and one whose stderr is a pipe."""
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import msgspec

from perpdex.engine import messages as M

PERPDEX = str(Path(sys.executable).with_name("perpdex"))


def commands(tmp_path, n=200_000) -> Path:
    path = tmp_path / "flow.jsonl"
    deposit = [msgspec.json.encode(M.Deposit(account=f"a{i % 50}", amount=10**9, ts=i))
               for i in range(n)]
    path.write_bytes(b"\n".join(deposit) + b"\n")
    return path


def test_the_bar_is_drawn_on_a_terminal_and_the_summary_is_the_last_line(tmp_path):
    master, slave = pty.openpty()
    proc = subprocess.Popen([PERPDEX, "replay", str(commands(tmp_path)), "--out",
                             str(tmp_path / "events.jsonl")], stderr=slave,
                            stdout=subprocess.PIPE)
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(60) == 0
    assert "━".encode() in seen                                 # the bar was drawn
    assert b"replayed 200,000 commands" in seen.rstrip().splitlines()[-1]   # after the bar


def test_no_bar_when_stderr_is_not_a_terminal(tmp_path):
    r = subprocess.run([PERPDEX, "replay", str(commands(tmp_path, 1_000)), "--out",
                        str(tmp_path / "events.jsonl")], capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stderr.count(b"\n") == 1       # the summary alone
    assert r.stderr.startswith(b"replayed 1,000 commands")
