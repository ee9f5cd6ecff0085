"""``diffnas report`` checks every input before it writes anything, writes through a temporary
sibling, and never deletes a file it did not write (issue 14's report bullet)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.report import build_report
from nas.cli import main
from tests.benchmarks.fakerun import write_fake_run


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(capsys, *names: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for n in names:
        assert n in err, (n, err)
    return err


@pytest.fixture
def reported(tmp_path):
    """A run with a finished report; returns (run, snapshot of the whole run folder)."""
    run = write_fake_run(tmp_path)
    assert main(["report", str(run)]) == 0
    return run, _snapshot(run)


def _rewrite_row(run: Path, method: str, **changes) -> None:
    lines = (run / "results.jsonl").read_text().splitlines()
    out = []
    for line in lines:
        r = json.loads(line)
        if r.get("kind") == "bench" and r.get("method") == method and r.get("config_key") == "cfgkey-test":
            r.update(changes)
        out.append(json.dumps(r))
    (run / "results.jsonl").write_text("\n".join(out) + "\n")


def test_a_wrong_typed_value_in_results_is_one_line_and_the_report_stays(reported, capsys):
    run, _ = reported
    _rewrite_row(run, "static", fid_mean="12.0")
    before = _snapshot(run)
    assert main(["report", str(run)]) == 2
    err = _one_line_error(capsys, "results.jsonl line", "'fid_mean'", "expected a number")
    assert "rerun" in err
    assert _snapshot(run) == before  # the previous report (grids too) byte-identical, nothing added


@pytest.mark.parametrize("damage", ["truncated", "overlapping", "gap", "not-an-object"])
def test_a_damaged_intervals_json_is_one_line_and_the_report_stays(reported, capsys, damage):
    run, _ = reported
    path = run / "intervals.json"
    data = json.loads(path.read_text())
    if damage == "truncated":
        text = path.read_text()
        path.write_text(text[: len(text) // 2])
        expect = ("intervals.json is not valid JSON",)
    elif damage == "overlapping":
        data["spans"] = [[0, 500], [400, 1000]]
        path.write_text(json.dumps(data))
        expect = ("intervals.json", "[0, 500) and [400, 1000) overlap")
    elif damage == "gap":
        data["spans"] = [[0, 300], [400, 1000]]
        path.write_text(json.dumps(data))
        expect = ("intervals.json", "[300, 400) belong to no interval")
    else:
        path.write_text("[1, 2]")
        expect = ("intervals.json", "expected a JSON object")
    before = _snapshot(run)
    assert main(["report", str(run)]) == 2
    err = _one_line_error(capsys, *expect)
    assert "diffnas intervals" in err
    assert _snapshot(run) == before


def test_a_truncated_allocation_is_one_line(reported, capsys):
    run, _ = reported
    p = run / "allocations" / "router-0.5.json"
    p.write_text(p.read_text()[:40])
    before = _snapshot(run)
    assert main(["report", str(run)]) == 2
    _one_line_error(capsys, "router-0.5.json is not valid JSON")
    assert _snapshot(run) == before


def test_a_partial_line_left_by_a_crashed_append_is_skipped(reported):
    run, _ = reported
    with open(run / "results.jsonl", "a") as fh:
        fh.write('{"kind": "bench", "method": "rou')  # a write killed mid-line
    rep = build_report(run)
    assert len(rep.summary["rows"]) == 11


def test_out_naming_a_folder_of_the_users_is_refused_unless_forced(reported, tmp_path, capsys):
    run, _ = reported
    mine = tmp_path / "mine"
    (mine / "grids").mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    (mine / "grids" / "keep.png").write_bytes(b"not a report grid of mine")
    (mine / "index.html").write_text("<p>my page</p>")
    before = _snapshot(mine)
    run_before = _snapshot(run)
    assert main(["report", str(run), "--out", str(mine)]) == 2
    _one_line_error(capsys, str(mine), "did not write", "--force")
    assert _snapshot(mine) == before and _snapshot(run) == run_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake", "mine"]  # no temporary leftovers

    # forced: the report is written beside the user's files, none of which is deleted
    assert main(["report", str(run), "--out", str(mine), "--force"]) == 0
    after = _snapshot(mine)
    assert after["notes.txt"] == b"my notes"
    summary = json.loads(after["summary.json"])
    assert set(summary["files"]) <= set(after)
    assert "<p>my page</p>" not in after["index.html"].decode()  # a report name: overwritten, as forced
    # a second forced report: still nothing of the user's deleted
    assert main(["report", str(run), "--out", str(mine), "--force"]) == 0
    assert _snapshot(mine)["notes.txt"] == b"my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake", "mine"]


def test_a_foreign_file_in_the_run_report_folder_is_refused(reported, capsys):
    run, _ = reported
    (run / "report" / "my-notes.md").write_text("mine")
    before = _snapshot(run)
    assert main(["report", str(run)]) == 2
    _one_line_error(capsys, "my-notes.md", "--force")
    assert _snapshot(run) == before


def test_a_new_report_replaces_only_what_the_previous_one_wrote(reported, tmp_path):
    run, _ = reported
    out = run / "report"
    assert (out / "grids" / "static-0.5.png").is_file()
    # drop the static rows: their grids were the previous report's, so they go
    lines = [ln for ln in (run / "results.jsonl").read_text().splitlines()
             if not (json.loads(ln).get("kind") == "bench" and json.loads(ln).get("method") == "static")]
    (run / "results.jsonl").write_text("\n".join(lines) + "\n")
    rep = build_report(run)
    assert not (out / "grids" / "static-0.5.png").exists()
    assert sorted(rep.summary["files"]) == sorted(_snapshot(out))
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temporary siblings


def test_an_empty_out_folder_is_used(reported, tmp_path):
    run, _ = reported
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(run), "--out", str(empty)]) == 0
    assert (empty / "index.html").is_file()
