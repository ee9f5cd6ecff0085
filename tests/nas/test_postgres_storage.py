"""``search.storage=postgresql://...`` on a real, throwaway PostgreSQL server.

Each test module starts its own server (Debian's PostgreSQL binaries, ``initdb`` + ``pg_ctl``) in
a fresh folder under /tmp, listening on a unix socket in that folder only (no TCP port), as the
``postgres`` user when the tests run as root (``initdb`` refuses root), and stops it and removes
the folder afterwards. Skipped, saying why, where the binaries or a psycopg driver are missing
(``pip install -c constraints.txt -e .[postgres]``).

- a small in-process search stores its studies and trials in Postgres, and a rerun resumes them
  without evaluating anything again;
- (slow) the real CLI on a two-node Ray cluster (joined by address), the driver killed mid-search and rerun: nothing lost or
  repeated, Optuna's trials in Postgres agree with ``results.jsonl`` (the SQLite kill test's checks).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from nas.config import SearchConfig  # noqa: E402
from nas.run import RunDir  # noqa: E402
from tests.nas._driver_kill import assert_optuna_agrees, kill_mid_search_and_rerun  # noqa: E402
from nas.search import RECORD_KIND, SyntheticObjective, run_search, synthetic_mixture_space  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if shutil.which("initdb"):
        found.append(shutil.which("initdb"))
    return Path(found[-1]).parent if found else None


def _dialect() -> str | None:
    """SQLAlchemy's driver name for the installed psycopg (2 preferred: SQLAlchemy's default)."""
    if importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2"
    if importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg"
    return None


class PostgresServer:
    """A throwaway PostgreSQL cluster in ``folder``, reachable on a unix socket in that folder."""

    def __init__(self, bindir: Path, dialect: str) -> None:
        self.bindir = bindir
        self.folder = Path(tempfile.mkdtemp(prefix="diffnas-pg-", dir="/tmp"))  # short: socket paths are bounded
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            try:
                pg = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.folder)
                pytest.skip("tests run as root and there is no 'postgres' user to run the server as")
            os.chown(self.folder, pg.pw_uid, pg.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.url = f"{dialect}://postgres@/postgres?host={self.folder}"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> None:
        done = self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                         "--no-sync", "-E", "UTF8")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr[-2000:]}")
        opts = f"-c listen_addresses='' -c unix_socket_directories='{self.folder}' -c fsync=off"
        done = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts,
                         "-w", "-t", "60", "start")
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {done.stderr[-1000:]} {log[-2000:]}")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    bindir, dialect = _pg_bindir(), _dialect()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    if dialect is None:
        pytest.skip("no psycopg driver: pip install -c constraints.txt -e .[postgres] (psycopg2-binary)")
    server = PostgresServer(bindir, dialect)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _proxy_records(run: RunDir) -> list[dict]:
    return [r for r in run.read_results() if r.get("kind") == RECORD_KIND and r["fidelity"] == "proxy"]


def test_a_search_stores_its_studies_in_postgres_and_a_rerun_resumes_them(postgres, tmp_path):
    space = synthetic_mixture_space(num_experts=2)
    cfg = SearchConfig(backend="local", n_trials=5, budgets=(0.5, 0.8), promote_top_k=0, storage=postgres.url,
                       study_prefix="pgfast")
    run = RunDir(tmp_path, "r")
    first = run_search(space, SyntheticObjective(space), cfg, run)
    assert [s.n_evaluated for s in first.studies] == [5, 5]
    assert not (run.path / "search" / "study.db").exists()  # nothing fell back to the default SQLite file
    names = {s.study_name for s in optuna.get_all_study_summaries(postgres.url)}
    assert {"pgfast-b0.5", "pgfast-b0.8"} <= names
    recs = _proxy_records(run)
    for budget in ("0.5", "0.8"):
        study = optuna.load_study(study_name=f"pgfast-b{budget}", storage=postgres.url)
        done = {t.user_attrs["diffnas_key"]: t.values for t in study.trials
                if t.state == optuna.trial.TrialState.COMPLETE}
        mine = [r for r in recs if r["study"] == f"pgfast-b{budget}"]
        assert len(mine) == 5 and {r["key"]: [r["quality"]] for r in mine} == done
    # the same command again: every trial is already there, nothing is evaluated or added
    n_trials = {b: len(optuna.load_study(study_name=f"pgfast-b{b}", storage=postgres.url).trials)
                for b in ("0.5", "0.8")}
    again = run_search(space, SyntheticObjective(space), cfg, run)
    assert [s.n_evaluated for s in again.studies] == [5, 5]
    assert len(_proxy_records(run)) == len(recs)
    assert {b: len(optuna.load_study(study_name=f"pgfast-b{b}", storage=postgres.url).trials)
            for b in ("0.5", "0.8")} == n_trials


@pytest.fixture
def two_nodes():
    """Two Ray nodes on this machine (1 CPU + 1 logical GPU each), held by the test, so the
    search's driver joins them by address and killing it leaves the cluster up."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "num_gpus": 1, "object_store_memory": 80 * 2**20})
    cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=80 * 2**20)
    ray.init(address=cluster.address, logging_level="WARNING")
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
@pytest.mark.ray
def test_killing_the_driver_of_a_postgres_backed_ray_search_loses_and_repeats_nothing(postgres, two_nodes, tmp_path):
    import ray

    n_trials = 10
    # one logical GPU per trial: a trial per node at once, so the search spans both nodes
    cmd = [sys.executable, "-m", "nas", "search", "--synthetic", "--synthetic-sleep", "0.6", "--name", "k",
           "--set", f"run_root={tmp_path}", "--address", two_nodes.address, "--gpus-per-trial", "1",
           "--set", f"search.n_trials={n_trials}", "--set", "search.budgets=[0.5]",
           "--set", "search.promote_top_k=1", "--set", f"search.storage={postgres.url}",
           "--set", "search.study_prefix=pgkill"]
    _, proxy, rerun = kill_mid_search_and_rerun(cmd, tmp_path, tmp_path / "k", n_trials)
    assert not (tmp_path / "k" / "search" / "study.db").exists()
    study = optuna.load_study(study_name="pgkill-b0.5", storage=postgres.url)
    assert_optuna_agrees(study, proxy)  # Optuna, in Postgres, agrees with the ledger
    assert "study pgkill-b0.5: 10 evaluated" in rerun.stdout
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    placed = {r["placement"]["node_id"] for r in proxy}
    assert placed == nodes and len(nodes) == 2  # a multi-node search: trials ran on both nodes
