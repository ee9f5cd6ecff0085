"""Validate before writing (issue 14): a refused command leaves the run folder byte-identical,
``config.yaml`` included, even when its options differ from the run's (so a config written
before the check would show), and creates no file in it; ``bench`` with a damaged expert is one
line naming the file and the remedy, before any sampling.

Cases marked ``xfail`` are known gaps (strict: they fail the suite once fixed, so the mark is
removed): those commands call ``RunContext.prepare()``, which writes ``config.yaml``, before the
check that refuses them."""

from __future__ import annotations

import pytest

from tests.reliability.cases import C, Case, _expert_weights, _remove, _truncate, _write, run_case, snapshot

# every case passes an option that changes the resolved config (sampling.batch_size), so a
# config.yaml written before the inputs are checked would differ afterwards
OTHER = ("--set", "sampling.batch_size=7")

_PREPARE_FIRST: dict[str, str] = {}  # case name -> where config.yaml is written before the check

CASES = (
    Case("bench: truncated expert weights", "run artefacts", ("bench", "--config", C),
         (_expert_weights(0), "truncated", "train-experts --expert 0"), damage=_truncate(_expert_weights(0))),
    Case("bench: expert weights of zero bytes", "run artefacts", ("bench", "--config", C),
         (_expert_weights(1), "train-experts --expert 1"), damage=_truncate(_expert_weights(1), 0)),
    Case("bench: truncated expert weights, other options", "run artefacts", ("bench", "--config", C, *OTHER),
         (_expert_weights(0), "truncated", "train-experts --expert 0"), damage=_truncate(_expert_weights(0))),
    Case("bench: no base model, other options", "run artefacts", ("bench", "--config", C, *OTHER),
         ("no trained base model", "train-base"), damage=_remove("base")),
    Case("route: truncated expert weights, other options", "run artefacts", ("route", "--config", C, *OTHER),
         (_expert_weights(0), "truncated"), damage=_truncate(_expert_weights(0))),
    Case("search: truncated expert weights, other options", "run artefacts", ("search", "--config", C, *OTHER),
         (_expert_weights(0), "truncated"), damage=_truncate(_expert_weights(0))),
    Case("train-experts: truncated intervals.json, other options", "run artefacts",
         ("train-experts", "--config", C, *OTHER), ("intervals.json",), damage=_truncate("intervals.json", 30)),
    Case("finetune: allocation missing, other options", "run artefacts",
         ("finetune", "--config", C, "--allocation", "{w}/none.json", *OTHER), ("none.json", "does not exist")),
    Case("evaluate --model missing, other options", "models", ("evaluate", "--config", C, "--model", "{w}/nope", *OTHER),
         ("{w}/nope", "does not exist")),
    Case("sample --model missing, other options", "models", ("sample", "--config", C, "--model", "{w}/nope", *OTHER),
         ("{w}/nope", "does not exist")),
    Case("intervals: bad model.base, other options", "config",
         ("intervals", "--config", C, "--set", "model.base={w}/nobase", *OTHER), ("nobase",)),
    Case("route: overlapping experts/intervals.json, other options", "run artefacts", ("route", "--config", C, *OTHER),
         ("experts/intervals.json", "overlap"),
         damage=_write("experts/intervals.json", '{"num_train_timesteps": 1000, "boundaries": [333], '
                                                 '"spans": [[0, 600], [333, 1000]]}')),
)


def _param(case: Case):
    where = _PREPARE_FIRST.get(case.name)
    marks = [pytest.mark.xfail(strict=True, reason=f"config.yaml is written before the check ({where})")] if where else []
    return pytest.param(case, id=case.name.replace(" ", "_"), marks=marks)


def test_every_known_gap_names_a_case():
    assert set(_PREPARE_FIRST) <= {c.name for c in CASES}


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_refused_command_changes_nothing_in_the_run(case, tiny_run, tmp_path):
    work = tmp_path / "w"
    result = run_case(case, work, tiny_run)
    assert result["code"] == case.code, result["err"]
    assert "Traceback" not in result["err"], result["err"]
    assert len(result["lines"]) == 1, result["err"]
    line = result["lines"][0]
    assert line.startswith("diffnas: error: "), line
    for fragment in result["fragments"]:
        assert fragment in line, (fragment, line)
    assert result["changed"] == [], f"files changed: {result['changed']}"


def test_refused_bench_creates_no_file_and_records_no_skip(tiny_run, tmp_path):
    """The damaged expert stops bench before any row, skip record or sample is written."""
    case = CASES[0]
    work = tmp_path / "w"
    from tests.reliability.cases import _inside, prepare, resolve, run_cli

    prepare(case, work, tiny_run)
    before = snapshot(work)
    args, _ = resolve(case, work)
    with _inside(work):
        code, _, err = run_cli([*args, "-q"])
    assert code == 2, err
    assert snapshot(work) == before  # nothing changed, nothing added (no results.jsonl, no mixtures/)
