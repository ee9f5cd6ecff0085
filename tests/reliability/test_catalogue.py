"""Every case of the catalogue: the exit code, exactly one ``diffnas: error:`` line naming the
culprit, no traceback, and every file that existed before is byte-identical after."""

from __future__ import annotations

import pytest

from tests.reliability.cases import CASES, run_case


def _param(case):
    marks = [pytest.mark.slow] if case.slow else []
    return pytest.param(case, id=case.name.replace(" ", "_"), marks=marks)


def test_the_catalogue_has_at_least_40_cases():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_case(case, tiny_run, tmp_path):
    result = run_case(case, tmp_path / "w", tiny_run)
    assert result["code"] == case.code, result["err"]
    assert "Traceback" not in result["err"], result["err"]
    assert len(result["lines"]) == 1, result["err"]
    line = result["lines"][0]
    assert line.startswith("diffnas: error: "), line
    for fragment in result["fragments"]:
        assert fragment in line, (fragment, line)
    assert result["changed"] == [], f"files changed: {result['changed']}"
