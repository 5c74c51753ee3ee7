"""Issue 23, "Operator": what `perpdex serve` checks before it serves, as real processes. The
command line is checked by the file's schema; nothing is made on disk before every port is
bound; a data folder's venue is not silently replaced by another configuration's; the file
`config --write-default` writes serves as the embedded default does."""
from __future__ import annotations

import socket
import subprocess
import time

import pytest

from perpdex.gateway.natslocal import free_port
from tests.harness import OperatorVenue as Venue, perpdex, written


def serve(tmp_path, *args, timeout=60) -> subprocess.CompletedProcess:
    """`perpdex serve` that is expected to stop by itself (a refused start)."""
    return perpdex("serve", "--data", tmp_path / "data", "--router",
                   f"tcp://127.0.0.1:{free_port()}", "--pub", f"tcp://127.0.0.1:{free_port()}",
                   *args, cwd=tmp_path, timeout=timeout)


@pytest.mark.parametrize("value", ["-5", "0"])
def test_a_session_timeout_the_file_could_not_hold_is_refused_on_the_command_line(tmp_path, value):
    r = serve(tmp_path, "--session-timeout-ms", value)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"perpdex: --session-timeout-ms {value}: server.session_timeout_ms: Expected `int` >= 1"]
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("flag,value", [("--router", "tcp://127.0.0.1"),
                                        ("--metrics", "localhost"), ("--log-format", "xml"),
                                        ("--node", "a b")])
def test_every_override_is_checked_as_the_file_is(tmp_path, flag, value):
    r = serve(tmp_path, flag, value)
    assert r.returncode == 2 and flag in r.stderr.strip().splitlines()[-1], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "data").exists()


def test_an_override_in_range_is_applied_not_ignored(tmp_path):
    v = Venue(tmp_path / "data", "--session-timeout-ms", "1234", "--oracle-sim", "off")
    try:
        reply = v.client("mm-1").request("session", cancel_on_disconnect=False)
        assert reply["session_timeout_ms"] == 1234
    finally:
        v.stop()


def taken() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@pytest.mark.parametrize("which", ["--router", "--pub", "--metrics"])
def test_a_taken_port_stops_the_start_in_a_line_and_leaves_no_data_folder(tmp_path, which):
    with taken() as held:
        port = held.getsockname()[1]
        address = f"127.0.0.1:{port}" if which == "--metrics" else f"tcp://127.0.0.1:{port}"
        r = serve(tmp_path, which, address, *(() if which == "--metrics" else
                                              ("--metrics", f"127.0.0.1:{free_port()}")))
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("perpdex: cannot serve: Address already in use") and str(port) in line
    assert not (tmp_path / "data").exists()
    assert not r.stdout


def test_config_check_refuses_an_endpoint_with_no_port(tmp_path):
    conf = written(tmp_path, 'router = "tcp://127.0.0.1:7701"', 'router = "tcp://127.0.0.1"')
    r = perpdex("config", "--check", conf)
    assert r.returncode == 2
    line = next(n for n, text in enumerate(conf.read_text().splitlines(), 1)
                if text.startswith('router = "tcp://127.0.0.1" '))
    assert r.stderr.startswith(f"perpdex: {conf}:{line}: server.router: 'tcp://127.0.0.1' is "
                               f"not an endpoint"), r.stderr


def test_the_written_default_serves_as_the_embedded_default_does(tmp_path):
    conf = tmp_path / "x.toml"
    written = perpdex("config", "--write-default", conf)
    assert written.returncode == 0 and "its simulated oracle included" in written.stdout
    assert written.stderr == ""
    checked = perpdex("config", "--check", conf)
    assert checked.returncode == 0 and "simulated oracle ON (never for real money)" in \
        checked.stdout
    # the file as it is, and the embedded default: the same markets, priced by the simulated
    # oracle, so that an order is accepted
    for args in (("--config", conf), ()):
        home = tmp_path / ("file" if args else "embedded")
        v = Venue(home / "data", *args)
        try:
            c = v.client("mm-1")
            reply = c.request("markets")
            assert [m["market"] for m in reply["markets"]] == ["BTC-PERP", "ETH-PERP"]
            deadline = time.monotonic() + 20        # a hang guard: the oracle ticks 4 a second
            while True:
                order = c.request("new_order", market="ETH-PERP", cid=f"p{time.time_ns()}",
                                  side="buy", kind="limit", qty=1, price=1)["events"]
                if order[0]["type"] == "order_accepted":
                    break
                assert order[0]["reason"] == "no_mark_price"
                assert time.monotonic() < deadline, "no mark: the simulated oracle is off"
                time.sleep(0.1)
        finally:
            code, out, _ = v.stop()
        assert code == 0 and "simulated oracle: a random walk" in out


def test_a_file_that_turns_the_simulated_oracle_off_says_what_that_means(tmp_path):
    conf = written(tmp_path, "oracle_sim = true", "oracle_sim = false")
    v = Venue(tmp_path / "data", "--config", conf)
    code, out, _ = v.stop()
    assert code == 0 and "simulated oracle: off" in out and "no_mark_price" in out


@pytest.mark.parametrize("metrics,said", [
    ("127.0.0.1", "'127.0.0.1' is not an address to serve metrics on: HOST:PORT (a port is "
                  "needed)"),
    ("127.0.0.1:99999", "'127.0.0.1:99999': a port is 0 to 65535"),
    ("tcp://127.0.0.1:9464", "'tcp://127.0.0.1:9464' is not an address to serve metrics on")])
def test_config_check_refuses_a_metrics_address_with_no_port_in_a_sentence(tmp_path, metrics,
                                                                           said):
    conf = written(tmp_path, 'metrics = ""', f'metrics = "{metrics}"')
    r = perpdex("config", "--check", conf)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"perpdex: {conf}:") and f"server.metrics: {said}" in r.stderr
    r = serve(tmp_path, "--metrics", metrics)
    assert r.returncode == 2 and f"--metrics: server.metrics: {said}" in r.stderr, r.stderr


@pytest.fixture
def booted(tmp_path):
    """A data folder booted from the written default (then stopped), and that file."""
    conf = tmp_path / "venue.toml"
    assert perpdex("config", "--write-default", conf).returncode == 0
    v = Venue(tmp_path / "data", "--config", conf)
    assert v.stop()[0] == 0
    return tmp_path, conf


@pytest.mark.parametrize("change,said", [
    (("taker_fee_ppm = 500", "taker_fee_ppm = 600", 1),
     "market BTC-PERP: taker_fee_ppm is 600 in the configuration, 500 in the data folder"),
    (("deposit = 500000000000 ", "deposit = 700000000000 ", 1),
     "accounts.taker-1.deposit is 700000000000 in the configuration, 500000000000 when the "
     "data folder was booted"),
    (('[accounts.lev-1]', '[accounts.new-1]\nrole = "trader"\ndeposit = 5\n\n[accounts.lev-1]',
      1), "accounts.new-1.deposit is 5 in the configuration, 0 when the data folder was booted"),
])
def test_a_configuration_unlike_the_data_folder_is_refused_naming_the_difference(booted, change,
                                                                                 said):
    home, conf = booted
    text = conf.read_text()
    assert change[0] in text
    conf.write_text(text.replace(*change))
    r = serve(home, "--config", conf)
    assert r.returncode == 2, r.stdout + r.stderr
    assert said in r.stderr and "--state-wins" in r.stderr
    assert r.stderr.startswith("perpdex: the configuration differs from the data folder")
    # told which wins, it serves the data folder as it is, and says what it ignores
    v = Venue(home / "data", "--config", conf, "--state-wins")
    try:
        markets = v.client("mm-1").request("markets")["markets"]
        assert [m["taker_fee_ppm"] for m in markets] == [500, 500]
    finally:
        code, out, _ = v.stop()
    assert code == 0 and said in out and "--state-wins" in out


def test_a_configuration_like_the_data_folder_restarts_without_a_word(booted):
    home, conf = booted
    v = Venue(home / "data", "--config", conf)
    code, out, err = v.stop()
    assert code == 0 and "differs" not in out + err and "perpdex: recovered" in out
