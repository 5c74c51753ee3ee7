"""The Python examples of the README and docs/ work as written: each ```python block runs as its
own process, in an empty folder, and nothing it does is refused."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# docs/sdk.md's worked example needs a running venue: tests/gateway/test_sdk.py runs it against one.
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md")
                                     if p.name != "sdk.md")]
BLOCKS = [(page, i, code) for page in PAGES
          for i, code in enumerate(re.findall(r"^```python\n(.*?)^```", page.read_text(),
                                              re.S | re.M))]


def run(code, tmp_path):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)


def test_the_readme_has_a_python_example():
    assert any(page.name == "README.md" for page, _, _ in BLOCKS)


@pytest.mark.parametrize("page, i, code", BLOCKS,
                         ids=[f"{p.relative_to(ROOT)}[{i}]" for p, i, _ in BLOCKS])
def test_a_python_example_runs_as_written(page, i, code, tmp_path):
    r = run(code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "rejected" not in r.stdout.lower(), r.stdout


def test_the_readme_example_trades():
    page, _, code = next(b for b in BLOCKS if b[0].name == "README.md")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert '"type":"fill"' in r.stdout and "OrderAccepted(" in r.stdout
