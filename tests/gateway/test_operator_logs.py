"""Issue 23, "Operator": logs by the conventions of structured logging, and errors on stderr. Every
log line has an event name and its fields, in JSON and in text; `--log-level` (and `[server]
log_level`) is checked and obeyed; the stop is a JSON event (`log_stop`); `perpdex verify`
writes what fails on stderr. Real processes, but for the formatters' own cases."""
from __future__ import annotations

import io
import json
import logging

import pytest

from perpdex.gateway import observability as O
from tests.harness import OperatorVenue as Venue, perpdex, written


def _serve_and_stop(tmp_path, *args) -> tuple[int, str, str]:
    v = Venue(tmp_path / "data", "--oracle-sim", "off", *args)
    try:
        assert v.client("mm-1").request("query_account")["ok"]
    finally:
        code, out, err = v.stop()
    assert code == 0, err
    return code, out, err


def test_every_json_log_line_has_an_event_and_the_level_is_obeyed(tmp_path):
    _, _, err = _serve_and_stop(tmp_path, "--log-format", "json", "--log-level", "debug")
    lines = [json.loads(x) for x in err.splitlines() if x.strip()]
    assert lines and all(isinstance(x["event"], str) and x["event"] for x in lines), lines
    events = [x["event"] for x in lines]
    assert events[0] == "start" and events[-1] == "stop"
    # at warning, the info lines (start, stop) are not written
    _, _, err = _serve_and_stop(tmp_path / "quiet", "--log-format", "json", "--log-level",
                                "warning")
    assert [json.loads(x)["event"] for x in err.splitlines() if x.strip()] == []


def test_a_text_log_line_names_its_event_and_its_fields(tmp_path):
    _, _, err = _serve_and_stop(tmp_path)
    start = next(x for x in err.splitlines() if " start: " in x)
    assert " info perpdex.gateway start: started " in start
    assert "router=tcp://127.0.0.1:" in start and "markets=" in start
    stop = err.strip().splitlines()[-1]
    assert " stop: stopped (SIGTERM) why=SIGTERM " in stop and "exit_code=0" in stop


@pytest.mark.parametrize("args,said", [
    (("--log-level", "loud"), "argument --log-level: invalid choice: 'loud'"),
])
def test_a_log_level_that_is_none_is_refused(tmp_path, args, said):
    r = perpdex("serve", "--data", tmp_path / "data", *args, cwd=tmp_path)
    assert r.returncode == 2 and said in r.stderr and not (tmp_path / "data").exists()


def test_the_file_checks_its_log_level(tmp_path):
    conf = written(tmp_path, 'log_format = "text"', 'log_format = "text"\nlog_level = "loud"')
    r = perpdex("config", "--check", conf)
    assert r.returncode == 2 and "server.log_level: Invalid enum value 'loud'" in r.stderr


def _logged(fmt: str, write) -> str:
    """What `write()` logs through configure_logging (the server's queue and writer thread)."""
    stream = io.StringIO()
    listener = O.configure_logging(fmt, stream)
    try:
        write()
    finally:
        O.stop_logging(listener)
        logging.getLogger().handlers[:] = []
    return stream.getvalue()


def fail():
    log = logging.getLogger("perpdex.journal")
    log.warning("journal %s: failed %s", "a", "fsync")
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("the writer %s", "stopped")


def test_a_call_that_names_no_event_is_named_after_where_it_was_made():
    warned, failed = [json.loads(x) for x in _logged("json", fail).splitlines()]
    assert warned["event"] == "journal.fail" and warned["args"] == ["a", "fsync"]
    assert warned["msg"] == "journal a: failed fsync"
    # the traceback in its own field, as documented, not folded into the message
    assert failed["msg"] == "the writer stopped" and failed["level"] == "error"
    assert failed["exception"].endswith("ZeroDivisionError: division by zero")
    text = _logged("text", fail).splitlines()
    assert " warning perpdex.journal journal.fail: journal a: failed fsync " in text[0]
    assert text[0].endswith('args=["a", "fsync"]')
    assert text[1].endswith("the writer stopped args=[\"stopped\"]") and \
        text[-1] == "ZeroDivisionError: division by zero"


def test_log_stop_writes_the_stop_event_with_its_fields():
    (line,) = [json.loads(x) for x in _logged("json", lambda: O.log_stop(
        "SIGTERM", commands=12, internal_errors=0, exit_code=0)).splitlines()]
    assert line["event"] == "stop" and line["why"] == "SIGTERM"
    assert (line["commands"], line["exit_code"], line["level"]) == (12, 0, "info")


def test_verify_writes_what_fails_on_stderr_and_the_report_on_stdout(tmp_path):
    r = perpdex("verify", tmp_path)
    assert r.returncode == 2 and r.stdout == "" and "no journal folder" in r.stderr
