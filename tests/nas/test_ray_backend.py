"""The Ray Tune backend on real Ray: a two-node local cluster with one logical GPU per node,
failures and retries, the up-front resource check, and killing the driver mid-search.

One ``ray.cluster_utils.Cluster`` is shared by the tests of this module (starting Ray costs
seconds and memory); the kill test runs the real CLI in subprocesses with their own local Ray.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ray = pytest.importorskip("ray")
optuna = pytest.importorskip("optuna")

from ray.cluster_utils import Cluster  # noqa: E402

from experts.intervals import Intervals  # noqa: E402
from nas.config import SearchConfig  # noqa: E402
from nas.errors import UserError  # noqa: E402
from nas.ray_backend import (  # noqa: E402
    SideJob,
    auto_concurrency,
    check_cluster_resources,
    trial_device,
    trial_resources,
)
from nas.run import RunDir  # noqa: E402
from tests.nas._driver_kill import assert_optuna_agrees, kill_mid_search_and_rerun  # noqa: E402
from nas.search import RECORD_KIND, SyntheticObjective, arch_key, run_search, synthetic_mixture_space  # noqa: E402

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
INTERVALS = Intervals(1000, (300, 700))
_MiB = 2**20


@pytest.fixture(scope="module")
def two_node_cluster():
    """Two Ray nodes on this machine, each with 2 CPUs and 1 logical GPU."""
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "num_gpus": 1, "object_store_memory": 80 * _MiB},
    )
    cluster.add_node(num_cpus=2, num_gpus=1, object_store_memory=80 * _MiB)
    ray.init(address=cluster.address, logging_level="WARNING")
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def _records(run: RunDir, fidelity: str | None = "proxy") -> list[dict]:
    return [r for r in run.read_results()
            if r.get("kind") == RECORD_KIND and (fidelity is None or r["fidelity"] == fidelity)]


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ------------------------------------------------------------------ pure helpers (no cluster)


NODES = [{"Resources": {"CPU": 4.0, "GPU": 1.0}}, {"Resources": {"CPU": 4.0, "GPU": 1.0}}]


def test_resource_check_names_the_numbers():
    check_cluster_resources({"cpu": 1, "gpu": 1}, NODES)
    check_cluster_resources({"cpu": 4, "gpu": 0.5}, NODES)
    with pytest.raises(UserError, match=r"asks for 2 GPU\(s\).*largest node has 1 GPU\(s\), the cluster 2 GPU\(s\) over 2"):
        check_cluster_resources({"cpu": 1, "gpu": 2}, NODES)
    with pytest.raises(UserError, match=r"asks for 8 CPU\(s\).*largest node has 4"):
        check_cluster_resources({"cpu": 8, "gpu": 0}, NODES)
    with pytest.raises(UserError, match="whole number"):
        check_cluster_resources({"cpu": 1, "gpu": 1.5}, NODES)


def test_concurrency_and_default_gpu_request_follow_the_cluster():
    assert auto_concurrency({"cpu": 1, "gpu": 1}, NODES) == 2
    assert auto_concurrency({"cpu": 1, "gpu": 0.5}, NODES) == 4
    assert auto_concurrency({"cpu": 1, "gpu": 0}, NODES) == 8
    assert trial_resources(SearchConfig(), NODES) == {"cpu": 1.0, "gpu": 1.0}
    assert trial_resources(SearchConfig(), [{"Resources": {"CPU": 2.0}}]) == {"cpu": 1.0, "gpu": 0.0}
    assert trial_device([]) == "cpu"


# --------------------------------------------------------------------------- on the cluster


def test_asking_more_gpus_than_any_node_has_fails_at_once(two_node_cluster, tmp_path):
    space = synthetic_mixture_space()
    run = RunDir(tmp_path, "r")
    cfg = SearchConfig(backend="ray", gpus_per_trial=2, n_trials=2)
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"asks for 2 GPU\(s\).*largest node has 1 GPU\(s\)"):
        run_search(space, SyntheticObjective(space), cfg, run)
    assert time.monotonic() - t0 < 60  # a failure, not a trial pending forever
    # nothing was started: the search folder holds only its lock (taken before Ray)
    assert not run.search_dir.exists() or [p.name for p in run.search_dir.iterdir()] == [".lock"]


def test_one_gpu_trials_use_both_nodes_and_never_share_a_gpu(two_node_cluster, tmp_path):
    space = synthetic_mixture_space()
    run = RunDir(tmp_path, "r")
    log = tmp_path / "evals.jsonl"
    router_arch = space.smallest()

    def train_router():  # the routing agent's job beside the studies (here: writes an allocation)
        from nas.search import allocation_path, arch_to_allocation

        alloc = arch_to_allocation(space, router_arch, INTERVALS, 0.7, method="router")
        alloc.save(allocation_path(run.allocations_dir, "router", 0.7))
        return {"budgets": [0.7]}

    cfg = SearchConfig(backend="ray", gpus_per_trial=1, n_trials=5, budgets=(0.5, 0.7), promote_top_k=1)
    res = run_search(space, SyntheticObjective(space, sleep_s=0.4, log_path=str(log)), cfg, run,
                     intervals=INTERVALS, side_jobs={"router": SideJob(train_router, num_cpus=1)})
    recs = _records(run, None)
    assert len(_records(run)) == 10 and len(_records(run, "full")) == 2
    assert all(r["state"] == "complete" for r in recs)
    nodes = {r["placement"]["node_id"] for r in recs}
    assert nodes == {n["NodeID"] for n in ray.nodes() if n["Alive"]} and len(nodes) == 2
    by_gpu = collections.defaultdict(list)
    for r in recs:
        pl = r["placement"]
        assert len(pl["gpu_ids"]) == 1 and pl["device"] == "cpu"  # logical GPUs, no CUDA here
        by_gpu[(pl["node_id"], pl["gpu_ids"][0])].append((pl["start"], pl["end"]))
    for spans in by_gpu.values():  # one trial per GPU at a time
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end
    # every evaluation was committed once; the outputs exist
    starts = collections.Counter((e["study"], e["key"], e["fidelity"]) for e in _events(log) if e["event"] == "start")
    assert set(starts.values()) == {1} and len(starts) == len(recs)
    assert {s.name: s.n_evaluated for s in res.studies} == {"search-b0.5": 5, "search-b0.7": 5}
    for b in (0.5, 0.7):
        assert (run.allocations_dir / f"search-{b:g}.json").exists()
        assert (run.search_dir / f"pareto-search-b{b:g}.json").exists()
    assert res.side_jobs["router"]["state"] == "complete"
    assert res.side_jobs["router"]["node"] in nodes and res.side_jobs["router"]["device"] == "cpu"  # where it ran
    assert (run.allocations_dir / "router-0.7.json").exists()
    study = optuna.load_study(study_name="search-b0.5", storage=f"sqlite:///{run.search_dir / 'study.db'}")
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    # Tune's own state (absolute paths inside) lives beside the run folder, not in it
    assert not (run.search_dir / "ray").exists()
    assert list((run.path.parent / ".cache" / "ray-tune" / run.path.name / run.search_dir.name).glob("tune-*"))


def test_a_trial_that_raises_is_retried_marked_failed_and_the_study_completes(two_node_cluster, tmp_path):
    space = synthetic_mixture_space()
    run = RunDir(tmp_path, "r")
    log = tmp_path / "evals.jsonl"
    bad = arch_key(space.full())  # the full arch is enqueued first
    cfg = SearchConfig(backend="ray", gpus_per_trial=0.5, n_trials=4, max_failures=1, promote_top_k=0,
                       skip_infeasible=False)
    res = run_search(space, SyntheticObjective(space, sleep_s=0.2, fail_keys=(bad,), log_path=str(log)), cfg, run)
    recs = _records(run)
    assert len(recs) == 4 and res.studies[0].n_evaluated == 4 and res.studies[0].n_failed == 1
    (failed,) = [r for r in recs if r["state"] == "failed"]
    assert failed["key"] == bad and failed["attempts"] == 2
    assert "synthetic failure" in failed["error"]
    starts = collections.Counter(e["key"] for e in _events(log) if e["event"] == "start")
    assert starts[bad] == 2  # one retry (max_failures=1)
    study = optuna.load_study(study_name="search-b0.5", storage=f"sqlite:///{run.search_dir / 'study.db'}")
    states = {t.user_attrs["diffnas_key"]: t.state for t in study.trials}
    assert states[bad] == optuna.trial.TrialState.FAIL
    assert sum(s == optuna.trial.TrialState.COMPLETE for s in states.values()) == 3
    # fractional GPUs: never more than two trials on one GPU at a time
    spans = collections.defaultdict(list)
    for r in recs:
        if r["state"] == "complete":
            pl = r["placement"]
            spans[(pl["node_id"], pl["gpu_ids"][0])].append((pl["start"], pl["end"]))
    for s in spans.values():
        for start, _ in s:
            assert sum(a <= start < b for a, b in s) <= 2


def test_the_cli_joins_a_running_cluster_by_address(two_node_cluster, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "nas", "search", "--synthetic", "--synthetic-sleep", "0.3", "--name", "j",
           "--set", f"run_root={tmp_path}", "--address", two_node_cluster.address, "--gpus-per-trial", "1",
           "--set", "search.n_trials=4", "--set", "search.budgets=[0.5]", "--set", "search.promote_top_k=0",
           "--set", "search.skip_infeasible=false"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Ray cluster: 2 node(s), 4 CPU(s), 2 GPU(s); 1 CPU + 1 GPU per trial, up to 2 at once" in done.stderr
    recs = _records(RunDir(tmp_path, "j"))
    assert len(recs) == 4
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert {r["placement"]["node_id"] for r in recs} <= alive
    assert ray.is_initialized()  # the cluster the test holds is still up (the CLI did not shut it down)


# ------------------------------------------------------------------------ kill the driver


def _search_cmd(root: Path, name: str, n_trials: int) -> list[str]:
    return [
        sys.executable, "-m", "nas", "search", "--synthetic", "--synthetic-sleep", "0.6",
        "--name", name, "--set", f"run_root={root}", "--set", f"search.n_trials={n_trials}",
        "--set", "search.budgets=[0.5]", "--set", "search.num_cpus=2", "--set", "search.promote_top_k=1",
    ]


def test_killing_the_driver_mid_search_and_rerunning_loses_and_repeats_nothing(tmp_path):
    n_trials = 10
    _, proxy, rerun = kill_mid_search_and_rerun(_search_cmd(tmp_path, "k", n_trials), tmp_path,
                                                tmp_path / "k", n_trials)
    keys = [r["key"] for r in proxy]
    study = optuna.load_study(study_name="search-b0.5", storage=f"sqlite:///{tmp_path / 'k' / 'search' / 'study.db'}")
    trials = assert_optuna_agrees(study, proxy)  # Optuna agrees with the ledger
    # a trial in flight at the kill is re-run, not lost (one killed while its parameters were being
    # drawn was never dispatched and has no architecture; one killed after it was found over the
    # budget is settled as skipped, not interrupted)
    interrupted = [t for t in trials if t.user_attrs.get("diffnas_state") == "interrupted"]
    assert all(t.user_attrs.get("diffnas_feasible") is not False for t in interrupted)
    assert {t.user_attrs["diffnas_key"] for t in interrupted if "diffnas_key" in t.user_attrs} <= set(keys)
    assert "study search-b0.5: 10 evaluated" in rerun.stdout


# ------------------------------------------------------- the searchers, driven without Ray running


def test_searcher_commits_before_telling_and_never_commits_a_result_less_stop(tmp_path):
    from nas.ray_backend._searchers import MultiStudySearcher, StudySearcher, TrialRegistry
    from nas.search import SearchSession

    space = synthetic_mixture_space()
    run = RunDir(tmp_path, "r")
    cfg = SearchConfig(backend="ray", n_trials=3, budgets=(0.4, 0.6), promote_top_k=1)
    with SearchSession(space, SyntheticObjective(space), cfg, run) as session:
        searcher = MultiStudySearcher([StudySearcher(d, 0) for d in session.drivers], TrialRegistry())
        configs = {tid: searcher.suggest(tid) for tid in ("a", "b", "c")}
        # round robin over the two studies
        assert [c["diffnas"]["study"] for c in configs.values()] == ["search-b0.4", "search-b0.6", "search-b0.4"]
        job = configs["a"]["diffnas"]
        payload = json.dumps({"metrics": {"quality": 0.5}, "placement": {"node_id": "n"}, "eval_s": 0.1})
        searcher.on_trial_complete("a", {"quality": 0.5, "macs_ratio": job["macs_ratio"], "diffnas_payload": payload})
        searcher.on_trial_complete("b", {"trial_id": "b"})  # stopped without a result (Ctrl-C)
        recs = _records(run)
        assert [(r["study"], r["number"], r["state"]) for r in recs] == [("search-b0.4", job["number"], "complete")]
        study = optuna.load_study(study_name="search-b0.4", storage=f"sqlite:///{run.search_dir / 'study.db'}")
        assert study.trials[job["number"]].values == [0.5]
        b_study = optuna.load_study(study_name="search-b0.6", storage=f"sqlite:///{run.search_dir / 'study.db'}")
        b_number = configs["b"]["diffnas"]["number"]
        assert b_study.trials[b_number].state == optuna.trial.TrialState.RUNNING  # not failed
        for drv in session.drivers:
            drv.settle_running()
        b_trial = optuna.load_study(study_name="search-b0.6",
                                    storage=f"sqlite:///{run.search_dir / 'study.db'}").trials[b_number]
        assert b_trial.user_attrs["diffnas_state"] == "interrupted"
