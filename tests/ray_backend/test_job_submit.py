"""The README's cluster recipe, as written: a head started with ``ray start --head``, a second
raylet joining it with ``ray start --address=...``, and a diffnas search submitted with ``ray job
submit --working-dir .`` that completes, its trials spread over both nodes.

Both nodes run on this machine, on loopback and free ports, each with its own ``--temp-dir`` inside
one temporary folder (two raylets sharing one session folder unpack the job's working directory
over each other, which pulls the driver's working directory from under it; separate machines never
share one). The cluster is stopped in a ``finally`` by :func:`stop_ray_under`, the ``ray stop``
scoped to that folder: plain ``ray stop`` would stop every Ray of the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nas.ray_backend._cluster import stop_ray_under

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _listening_hosts(port: int) -> set[str]:
    """Local IPv4 addresses with a TCP socket listening on ``port`` (from /proc/net/tcp)."""
    hosts = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            hosts.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return hosts


def _run(cmd: list[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, f"{' '.join(cmd[:3])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
@pytest.mark.ray
def test_ray_job_submit_of_a_search_to_a_hand_started_two_node_cluster_completes():
    # short folder: Ray's unix sockets live under it (a path of at most ~107 bytes)
    root = Path(tempfile.mkdtemp(prefix="dnjob-", dir="/tmp"))
    head_dir, node_dir, run_root = root / "head", root / "node", root / "runs"
    for d in (head_dir, node_dir):
        d.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
               RAY_TMPDIR=str(head_dir), RAY_USAGE_STATS_ENABLED="0",
               RAY_AUTH_MODE="disabled")  # a throwaway cluster on loopback; the README shows token mode
    gcs, dashboard, client, *agent = _free_ports(11)
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]
    try:
        _run([RAY, "start", "--head", f"--port={gcs}", f"--dashboard-port={dashboard}",
              f"--ray-client-server-port={client}", f"--temp-dir={head_dir}", *common,
              f"--dashboard-agent-listen-port={agent[0]}", f"--dashboard-agent-grpc-port={agent[1]}",
              f"--metrics-export-port={agent[2]}", f"--runtime-env-agent-port={agent[3]}"], env, 120)
        _run([RAY, "start", f"--address=127.0.0.1:{gcs}", f"--temp-dir={node_dir}", *common,
              f"--dashboard-agent-listen-port={agent[4]}", f"--dashboard-agent-grpc-port={agent[5]}",
              f"--metrics-export-port={agent[6]}", f"--runtime-env-agent-port={agent[7]}"], env, 120)
        # the dashboard (and its job server) listens on loopback only: ray start's default
        assert _listening_hosts(dashboard) == {"127.0.0.1"}

        search = ["python", "-m", "nas", "search", "--synthetic", "--synthetic-sleep", "1", "--address", "auto",
                  "--name", "job", "--set", f"run_root={run_root}", "--set", "search.n_trials=4",
                  "--set", "search.budgets=[0.5]", "--set", "search.promote_top_k=0"]
        done = _run([RAY, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", ".",
                     "--", *search], env, 400)
        assert "succeeded" in done.stdout + done.stderr
        assert "Ray cluster: 2 node(s), 2 CPU(s)" in done.stdout

        search_dir = run_root / "job" / "search"
        assert (run_root / "job" / "allocations" / "search-0.5.json").is_file()
        proxy = [json.loads(line) for line in (run_root / "job" / "results.jsonl").read_text().splitlines()]
        assert len([r for r in proxy if r.get("fidelity") == "proxy"]) == 4
        events = [json.loads(line) for line in (search_dir / "synthetic-evals.jsonl").read_text().splitlines()]
        # one CPU per node and up to two trials at once: the second raylet took trials
        assert len({e["node_id"] for e in events if e["event"] == "end"}) == 2
    finally:
        stop_ray_under(root)
        shutil.rmtree(root, ignore_errors=True)
