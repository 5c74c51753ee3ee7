"""What a server leaves behind and says (issue 23): its snapshots folder is as private as the
rest of the data folder, its stop is a JSON `stop` event, and a refused handshake names the
address it came from."""
import json
import signal
import stat
import subprocess
import time

import zmq

from perpdex.gateway.config import default_config
from perpdex.gateway.dispatch import Server
from perpdex.gateway.natslocal import free_port
from tests.harness import HANG_S, PERPDEX


def test_the_snapshots_folder_is_private_like_the_rest_of_the_data_folder(tmp_path):
    cfg = default_config(tmp_path / "data")
    cfg.router, cfg.pub = f"ipc://{tmp_path}/req", f"ipc://{tmp_path}/pub"
    srv = Server(cfg)
    try:
        assert srv.role.take_snapshot() is not None
    finally:
        srv.close()
    for folder in (cfg.data_dir, cfg.data_dir / "journal", cfg.data_dir / "snapshots"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_a_stop_is_a_json_event_and_a_refused_handshake_names_its_address(tmp_path):
    data = tmp_path / "data"
    router, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([PERPDEX, "serve", "--data", str(data), "--router", router, "--pub",
                             pub, "--oracle-sim", "off", "--log-format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + HANG_S
        while b"perpdex serving" not in proc.stdout.readline():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
        server_key = (data / "keys" / "server.key").read_text()
        server_public = server_key.split('public-key = "')[1].split('"')[0]
        ctx = zmq.Context()
        s = ctx.socket(zmq.DEALER)
        s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()    # a key nobody knows
        s.curve_serverkey = server_public.encode()
        s.linger = 0
        s.connect(router)
        s.send(b"\x80")
        time.sleep(1.0)                     # the handshake is refused meanwhile
        s.close()
        ctx.term()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(HANG_S)
    lines = [json.loads(x) for x in proc.stderr.read().decode().splitlines() if x.strip()]
    by_event: dict = {}
    for x in lines:
        by_event.setdefault(x.get("event"), []).append(x)
    (stop,) = by_event["stop"]
    assert stop["why"] == "SIGTERM" and stop["exit_code"] == 0
    assert {"commands", "internal_errors", "dropped", "suspended"} <= set(stop)
    assert lines[-1]["event"] == "stop"
    failed = by_event["auth_failed"]
    assert failed and all(x["address"] == "127.0.0.1" and x["socket"] == "requests"
                          for x in failed), failed
