"""The distribution installs under the project's name: perpdex.engine, perpdex.gateway,
perpdex.bench and perpdex.examples, no generic top-level `engine`, `gateway` or `bench` (issue
12). Inside a checkout the short names are aliases of the very same modules, never a second copy
of the Cython rooms. The wheel is packaged by the conventions (issue 23)."""
import email
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _python(code, cwd):
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def test_the_installed_packages_provide_only_the_perpdex_names(tmp_path):
    # The development venv (`make install`) also lists the checkout in perpdex-checkout.pth:
    # without that entry, what the distribution installs must not answer `engine`.
    r = _python("import sys\n"
                f"sys.path[:] = [p for p in sys.path if p != {str(ROOT)!r}]\n"
                "import perpdex.engine, perpdex.gateway.cli, perpdex.bench.suite\n"
                "import perpdex.examples.market_maker  # what `perpdex demo` runs\n"
                "for short in ('engine', 'gateway', 'bench'):\n"
                "    try:\n"
                "        __import__(short)\n"
                "    except ModuleNotFoundError:\n"
                "        print(short, 'absent')\n", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["engine absent", "gateway absent", "bench absent"]


def test_the_development_venv_answers_the_short_names_from_any_folder(tmp_path):
    r = _python("import engine, gateway.client, bench.suite, perpdex.engine, perpdex.bench.suite\n"
                "import perpdex.gateway.client\n"
                "assert engine is perpdex.engine\n"
                "assert gateway.client is perpdex.gateway.client\n"
                "assert bench.suite is perpdex.bench.suite\n"
                "print('ok')\n", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok\n"


def test_the_cython_rooms_carry_their_installed_names():
    from perpdex.engine import Engine, core
    assert Engine.__module__ == "perpdex.engine.core"
    assert core.__name__ == "perpdex.engine.core"


def test_inside_a_checkout_the_short_names_are_the_same_modules():
    r = _python("import sys\n"
                "import engine, engine.core, gateway.client\n"
                "from engine import Engine\n"
                "import perpdex.engine, perpdex.engine.core, perpdex.gateway.client\n"
                "assert engine is perpdex.engine and engine.core is perpdex.engine.core\n"
                "assert gateway.client is perpdex.gateway.client\n"
                "assert Engine is perpdex.engine.core.Engine\n"
                "files = {}\n"
                "for m in list(sys.modules.values()):\n"
                "    f = getattr(m, '__file__', None)\n"
                "    if f:\n"
                "        assert files.setdefault(f, m) is m, f + ' loaded twice'\n"
                "print('ok')\n", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok\n"


def test_python_dash_m_gateway_cli_runs_inside_a_checkout():
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "--version"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("perpdex ")


@pytest.mark.slow
def test_the_wheel_holds_only_the_perpdex_package_by_the_conventions(tmp_path):
    """Builds the wheel from the tracked files (the Cython rooms compile again: minutes)."""
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(src)], check=True,
                   timeout=900)
    (wheel,) = tmp_path.glob("perpdex-*.whl")
    check_wheel(wheel)


def check_wheel(wheel: Path) -> None:
    """What the wheel must and must not hold, and its metadata."""
    z = zipfile.ZipFile(wheel)
    names = z.namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"perpdex", "perpdex-%s.dist-info" % wheel.name.split("-")[1]}
    assert "perpdex/engine/core.pxd" in names and "perpdex/gateway/default.toml" in names
    assert any(n.startswith("perpdex/engine/core.") and n.endswith(".so") for n in names)
    # the compiled rooms, not the C that Cython generated, nor its annotated HTML
    assert [n for n in names if n.endswith((".c", ".html"))] == []
    for package in ("engine", "gateway", "bench"):
        assert f"perpdex/{package}/py.typed" in names, package
    # what `perpdex bench` and `perpdex demo` run
    assert "perpdex/bench/suite.py" in names and "perpdex/examples/market_maker.py" in names
    (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    msg = email.message_from_bytes(z.read(meta))
    assert "Typing :: Typed" in msg.get_all("Classifier")
    urls = dict(u.split(", ", 1) for u in msg.get_all("Project-URL"))
    assert {"Repository", "Documentation", "Changelog", "Issues"} <= set(urls)
    assert msg["Description-Content-Type"] == "text/markdown"
    description = msg.get_payload()
    links = re.findall(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)", description)
    assert links and all(u.startswith(("https://", "#")) for u in links), \
        [u for u in links if not u.startswith(("https://", "#"))]
    assert f"{urls['Repository']}/blob/main/docs/contract.md" in links
