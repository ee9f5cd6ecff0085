"""Cluster edges of the Ray backend that can be checked without a cluster: an address that does
not answer fails within a bound with one line, token-authentication failures say so, and the
local Ray a killed driver left behind is stopped by the next start."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray")

from nas.cli import main  # noqa: E402
from nas.errors import UserError  # noqa: E402
from nas.ray_backend._cluster import (  # noqa: E402
    CONNECT_TIMEOUT_ENV,
    RAY_STATE_FILE,
    _is_auth_error,
    check_address,
    cleanup_stale_ray,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_where_nothing_listens_fails_at_once_with_one_line(tmp_path, capsys):
    port = _free_port()
    code = main(["search", "--synthetic", "--address", f"127.0.0.1:{port}", "--set", f"run_root={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"nothing answers at the Ray address '127.0.0.1:{port}'" in err and CONNECT_TIMEOUT_ENV in err
    assert not (tmp_path / "default" / "search").exists()  # refused before any work


def test_an_address_that_accepts_but_never_answers_fails_within_the_bound(monkeypatch):
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, "8")
    with socket.socket() as silent:  # accepts TCP connections (the kernel does), never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(UserError) as err:
            check_address(f"127.0.0.1:{port}")
        elapsed = time.monotonic() - t0
    msg = str(err.value)
    assert "\n" not in msg and f"127.0.0.1:{port}" in msg and f"{CONNECT_TIMEOUT_ENV}=8" in msg
    assert elapsed < 120  # bounded (generous: the probe is killed at 8 s)


def test_a_bad_timeout_setting_is_one_line(monkeypatch):
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, "soon")
    with pytest.raises(UserError, match=f"{CONNECT_TIMEOUT_ENV}='soon' is not a number of seconds"):
        check_address("127.0.0.1:1")


def test_authentication_failures_are_recognised():
    assert _is_auth_error("AuthenticationError: Authentication token is missing or invalid")
    assert _is_auth_error("StatusCode.UNAUTHENTICATED: bad token")
    assert not _is_auth_error("Failed to connect to GCS within 5 seconds")


def test_the_ray_a_killed_driver_left_is_stopped_and_only_it(tmp_path):
    session = tmp_path / "session_2099-01-01_00-00-00_000000_1"
    session.mkdir()
    # a stand-in for a Ray process: its command line names the session folder, as Ray's do
    ours = subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(600)", str(session)])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "unrelated"])
    dead_driver = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_driver.wait()
    # a stand-in for an agent of that Ray's raylet (recorded, now dead): renamed, only its
    # environment says whose it is
    dead_raylet = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_raylet.wait()
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "ray::DashboardAgent"],
                             env={**os.environ, "RAY_RAYLET_PID": str(dead_raylet.pid)})
    try:
        (tmp_path / RAY_STATE_FILE).write_text(json.dumps({
            "driver_pid": dead_driver.pid, "host": socket.gethostname(), "session_dir": str(session),
            "pids": [ours.pid, other.pid, dead_raylet.pid]}))
        stopped = cleanup_stale_ray(tmp_path, wait_s=10)
        assert ours.pid in stopped and agent.pid in stopped and other.pid not in stopped
        assert agent.wait(timeout=30) in (-signal.SIGTERM, -signal.SIGKILL)
        assert ours.wait(timeout=30) in (-signal.SIGTERM, -signal.SIGKILL)
        assert other.poll() is None  # a recorded pid whose process is not that Ray's is left alone
        assert not (tmp_path / RAY_STATE_FILE).exists()
    finally:
        for p in (ours, other, agent):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
