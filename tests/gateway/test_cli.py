"""The `perpdex` command introduces itself: a version, and every subcommand's --help names the
pages that explain it, each of which exists in the repository."""
import socket
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.pages import help_points_at_documentation_that_exists

ROOT = Path(__file__).resolve().parents[2]
PERPDEX = shutil.which("perpdex", path=str(Path(sys.executable).parent)) or "perpdex"
SUBCOMMANDS = ["replay", "demo", "serve", "config"]


def perpdex(*args):
    return subprocess.run([PERPDEX, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_version_prints_the_installed_version():
    r = perpdex("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"perpdex {version('perpdex')}"


@pytest.mark.parametrize("args", [[], *[[c] for c in SUBCOMMANDS]],
                         ids=lambda a: a[0] if a else "perpdex")
def test_help_points_at_documentation_that_exists(args):
    help_points_at_documentation_that_exists(args)


def test_no_help_points_at_source_code_for_what_a_page_explains():
    for c in SUBCOMMANDS:
        assert "see gateway/" not in perpdex(c, "--help").stdout


def test_serve_help_says_the_data_folder_holds_the_journal_and_points_at_operations():
    text = " ".join(perpdex("serve", "--help").stdout.split())
    data = text[text.index("--data DATA "):].split(" --router")[0]
    assert "journal" in data and "snapshots" in data, data
    assert "docs/operations.md" in text


def test_serve_on_a_port_already_taken_says_so_in_a_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([PERPDEX, "serve", "--data", str(tmp_path / "data"), "--router",
                            f"tcp://127.0.0.1:{port}", "--pub", "tcp://127.0.0.1:0"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"perpdex: cannot serve: Address already in use (addr='tcp://127.0.0.1:{port}')"]
