"""Promotions start on free slots while the last search evaluations run, and promote exactly the
set the search would have promoted after them (the Ray searcher, driven without Ray running)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ray")

from nas.config import SearchConfig  # noqa: E402
from nas.run import RunDir  # noqa: E402
from nas.search import RECORD_KIND, Proposal, SearchSession, StudySpec, SyntheticObjective  # noqa: E402
from nas.search import synthetic_mixture_space  # noqa: E402
from nas.search.ledger import StudyLedger, TrialOutcome  # noqa: E402
from search_spaces import Arch  # noqa: E402


def _complete(searcher, tid: str, job: dict, quality: float) -> None:
    payload = json.dumps({"metrics": {"quality": quality}, "placement": {"node_id": "n"}, "eval_s": 0.1})
    searcher.on_trial_complete(tid, {"quality": quality, "macs_ratio": job["macs_ratio"], "diffnas_payload": payload})


@pytest.mark.parametrize("last_quality", [0.001, 0.999])  # the last trial enters the top 2, or not
def test_a_free_slot_promotes_a_certain_candidate_while_the_last_trial_runs(tmp_path, last_quality):
    from nas.ray_backend._searchers import MultiStudySearcher, StudySearcher, TrialRegistry

    space = synthetic_mixture_space()
    run = RunDir(tmp_path, "r")
    cfg = SearchConfig(backend="ray", n_trials=3, budgets=(1.0,), promote_top_k=2, skip_infeasible=False)
    with SearchSession(space, SyntheticObjective(space), cfg, run) as session:
        searcher = MultiStudySearcher([StudySearcher(d, 0) for d in session.drivers], TrialRegistry())
        jobs = {tid: searcher.suggest(tid)["diffnas"] for tid in ("a", "b", "c")}
        assert {j["fidelity"] for j in jobs.values()} == {"proxy"}
        assert searcher.suggest("x") is None  # three in flight: nothing is certain yet
        _complete(searcher, "a", jobs["a"], 0.5)
        assert searcher.suggest("y") is None  # two in flight: still nothing certain of a top 2
        _complete(searcher, "b", jobs["b"], 0.25)
        early = searcher.suggest("d")["diffnas"]  # c runs: b (best so far) stays in the top 2 whatever c gives
        assert (early["fidelity"], early["key"]) == ("full", jobs["b"]["key"])
        assert searcher.suggest("z") is None  # a is not certain while c runs
        _complete(searcher, "c", jobs["c"], last_quality)
        second = searcher.suggest("e")["diffnas"]
        expected = jobs["c"] if last_quality < 0.5 else jobs["a"]
        assert (second["fidelity"], second["key"]) == ("full", expected["key"])
        for tid, job in (("d", early), ("e", second)):
            _complete(searcher, tid, job, 0.1)
        assert searcher.suggest("f") == "FINISHED"
    promoted = [r["key"] for r in run.read_results() if r.get("kind") == RECORD_KIND and r["fidelity"] == "full"]
    ranked = sorted(((q, j["key"]) for q, j in ((0.5, jobs["a"]), (0.25, jobs["b"]), (last_quality, jobs["c"]))))
    assert sorted(promoted) == sorted(k for _, k in ranked[:2])  # the top 2 by proxy, each once


def test_pending_search_evaluations_shrink_the_certain_candidates(tmp_path):
    spec = StudySpec("s", "constrained", 0.5, (0.5,))
    ledger = StudyLedger(RunDir(tmp_path, "r"), spec, "proxy", "full", promote_top_k=3)
    for n, q in enumerate((0.3, 0.1, 0.2, 0.4)):
        p = Proposal("s", n, Arch({"a": n}), f"k{n}", macs=5, macs_ratio=0.5, constraint=0.0, feasible=True,
                     fidelity="proxy")
        ledger.commit(p, TrialOutcome({"quality": q}))
    assert [p.key for p in ledger.promotion_candidates()] == ["k1", "k2", "k0"]
    assert [p.key for p in ledger.promotion_candidates(pending=1)] == ["k1", "k2"]
    assert [p.key for p in ledger.promotion_candidates(pending=2)] == ["k1"]
    assert ledger.promotion_candidates(pending=3) == []
    assert [p.key for p in ledger.promotion_candidates(in_flight={"k1"}, pending=1)] == ["k2"]
