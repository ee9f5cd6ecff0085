"""Shared by the kill-and-resume tests of the search driver (local SQLite and PostgreSQL): run a
search command, SIGKILL its driver once 3 results are committed, rerun it, and check what every
such test checks (nothing lost, nothing repeated, the committed lines kept, Optuna agreeing)."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import optuna

from nas.search import RECORD_KIND

REPO = Path(__file__).resolve().parents[2]


def committed(results: Path) -> list[dict]:
    """The search records in ``results.jsonl`` (a torn last line is skipped)."""
    out = []
    if results.exists():
        for line in results.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("kind") == RECORD_KIND:
                out.append(rec)
    return out


def kill_mid_search_and_rerun(cmd: list[str], cwd: Path, run: Path, n_trials: int,
                              ) -> tuple[list[dict], list[dict], subprocess.CompletedProcess]:
    """(records before the kill, proxy records after the rerun, the rerun), with the shared checks:
    the kill landed mid-search, the rerun finished with every trial once, the lines committed
    before the kill kept as they were and none of their evaluations started twice."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    results = run / "results.jsonl"
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(committed(results)) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-search
        proc.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # and the local Ray it started (its process group)
    before = committed(results)
    assert 3 <= len(before) < n_trials, "the kill must land mid-search"

    rerun = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = committed(results)
    proxy = [r for r in after if r["fidelity"] == "proxy"]
    keys = [r["key"] for r in proxy]
    assert len(keys) == n_trials and len(set(keys)) == n_trials  # none missing, none twice
    assert after[: len(before)] == before  # the committed lines are kept as they were
    events = [json.loads(line) for line in (run / "search" / "synthetic-evals.jsonl").read_text().splitlines()]
    starts = collections.Counter((e["key"], e["fidelity"]) for e in events if e["event"] == "start")
    for rec in before:  # completed results were not recomputed
        assert starts[(rec["key"], rec["fidelity"])] == 1
    return before, proxy, rerun


def assert_optuna_agrees(study: Any, proxy: list[dict]) -> list[Any]:
    """No trial left RUNNING and every evaluated record told to Optuna as it is; the trials."""
    trials = study.trials
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    told = {t.number: t for t in trials}
    for rec in proxy:
        t = told[rec["number"]]
        assert t.user_attrs["diffnas_key"] == rec["key"] and t.state == optuna.trial.TrialState.COMPLETE
        assert t.values == [rec["quality"]]
    return trials
