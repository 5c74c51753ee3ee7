"""Issue 23, the operator's tools as real processes: `perpdex keygen`, `perpdex health`, and the
metrics server's `/healthz`, `/readyz` (and 404 for what it does not serve)."""
from __future__ import annotations

import json
import os
import re
import stat
import time
import urllib.error
import urllib.request

import pytest

from perpdex.gateway.natslocal import free_port
from tests.harness import OperatorVenue as Venue, perpdex


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_keygen_writes_a_private_pair_and_the_table_that_lets_its_owner_in(tmp_path):
    made = perpdex("keygen", "mm-3", "--dir", tmp_path / "keys")
    assert made.returncode == 0, made.stderr
    secret, public = tmp_path / "keys" / "mm-3.key_secret", tmp_path / "keys" / "mm-3.key"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert public.is_file()
    (key,) = re.findall(r"^public key of mm-3: (\S{40})$", made.stdout, re.M)
    table = made.stdout[made.stdout.index("[accounts.mm-3]"):]
    assert f'public_key = "{key}"' in table and 'role = "trader"' in table
    # the printed table, pasted into a configuration, lets the key pair's owner in
    conf = tmp_path / "venue.toml"
    assert perpdex("config", "--write-default", conf).returncode == 0
    conf.write_text(conf.read_text() + "\n" + table)
    assert perpdex("config", "--check", conf).returncode == 0
    v = Venue(tmp_path / "data", "--config", conf)
    try:
        asked = perpdex("health", "--router", v.router, "--data", v.data, "--key", secret,
                        "--account", "mm-3")
        assert asked.returncode == 0, asked.stdout + asked.stderr
        assert f"{v.router}: ok: seq" in asked.stdout
        c = v.client("admin")
        assert c.request("deposit", account="mm-3", amount=10**9)["ok"]
        assert not (v.data / "keys" / "mm-3.key_secret").exists()    # never on the server
    finally:
        v.stop()


def test_keygen_keeps_an_existing_pair_and_refuses_a_bad_name(tmp_path):
    assert perpdex("keygen", "lp", "--dir", tmp_path).returncode == 0
    before = (tmp_path / "lp.key_secret").read_bytes()
    again = perpdex("keygen", "lp", "--dir", tmp_path)
    assert again.returncode == 2 and "exists; not overwritten" in again.stderr
    assert (tmp_path / "lp.key_secret").read_bytes() == before
    assert perpdex("keygen", "lp", "--dir", tmp_path, "--force").returncode == 0
    assert (tmp_path / "lp.key_secret").read_bytes() != before
    for bad in (".hidden", "insurance", "a/b"):
        r = perpdex("keygen", bad, "--dir", tmp_path)
        assert r.returncode == 2 and r.stderr.startswith("perpdex: "), (bad, r.stderr)


def test_health_exits_1_when_nobody_answers_and_2_without_a_key(tmp_path):
    assert perpdex("keygen", "server", "--dir", tmp_path / "keys").returncode == 0
    assert perpdex("keygen", "admin", "--dir", tmp_path / "keys").returncode == 0
    silent = perpdex("health", "--router", f"tcp://127.0.0.1:{free_port()}", "--data", tmp_path,
                     "--timeout-ms", "300")
    assert silent.returncode == 1 and "no answer from" in silent.stderr
    missing = perpdex("health", "--data", tmp_path / "nowhere")
    assert missing.returncode == 2 and "no such file" in missing.stderr


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    metrics = f"127.0.0.1:{free_port()}"
    v = Venue(tmp_path_factory.mktemp("watched") / "data", "--oracle-sim", "off",
              "--metrics", metrics)
    yield v, metrics
    v.stop()


def test_healthz_readyz_and_metrics_answer_and_any_other_path_is_404(watched):
    v, metrics = watched
    assert get(f"http://{metrics}/healthz") == (200, "ok\n")
    deadline = time.monotonic() + 20        # a hang guard: "starting" until its loop runs
    while (ready := get(f"http://{metrics}/readyz")) != (200, "ready\n"):
        assert ready[0] == 503 and ready[1].startswith("not ready: "), ready
        assert time.monotonic() < deadline, ready
        time.sleep(0.1)
    code, text = get(f"http://{metrics}/metrics")
    assert code == 200 and "perpdex_engine_seq" in text
    for path in ("/", "/metric", "/metrics/x", "/health"):
        code, text = get(f"http://{metrics}{path}")
        assert code == 404 and "/metrics" in text, path


def test_health_by_json_names_every_thread_alive(watched):
    v, _ = watched
    asked = perpdex("health", "--router", v.router, "--data", v.data, "--json")
    assert asked.returncode == 0, asked.stderr
    facts = json.loads(asked.stdout)
    assert facts["ok"] and set(facts["threads"].values()) == {"alive"}
    assert "metrics" in facts["threads"] and facts["journal"]["failure"] is None


@pytest.mark.parametrize("cmd", ["keygen", "health"])
def test_the_new_subcommands_help_names_pages_that_exist(cmd):
    from tests.harness import ROOT
    from tests.pages import help_points_at_documentation_that_exists as check
    check([cmd])
    assert (ROOT / "docs" / "operations.md").is_file()
