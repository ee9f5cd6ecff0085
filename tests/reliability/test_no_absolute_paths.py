"""A run folder stores no absolute path, even when its run root is given as one: diffusers and
transformers record the folder a model was loaded from (``_name_or_path``) in every config.json
they save, so each save into a run folder drops it (the run can then be copied or moved)."""

from __future__ import annotations

import json
import shutil

from tests.reliability.cases import _inside, run_cli

TEXT_SUFFIXES = (".json", ".jsonl", ".yaml", ".txt", ".md", ".html", ".csv")


def test_route_and_finetune_with_an_absolute_run_root_write_no_absolute_path(tiny_run, tmp_path):
    work = (tmp_path / "w").resolve()
    shutil.copytree(tiny_run, work)
    cfg = str(work / "tiny.yaml")
    with _inside(work):
        root = ["--set", f"run_root={work / 'runs'}"]
        code, _, err = run_cli(["route", "--config", cfg, *root, "-q"])
        assert code == 0, err
        alloc = next((work / "runs/tiny/allocations").glob("router-*.json"))
        code, _, err = run_cli(["finetune", "--config", cfg, *root, "--allocation", str(alloc), "-q"])
        assert code == 0, err
    configs = list((work / "runs/tiny/mixtures").rglob("expert_*/config.json"))
    assert configs, "finetune wrote no mixture: nothing was checked"
    for path in configs:
        assert "_name_or_path" not in json.loads(path.read_text()), path
    leaks = [str(p.relative_to(work)) for p in (work / "runs").rglob("*")
             if p.is_file() and p.suffix in TEXT_SUFFIXES and str(work) in p.read_text(errors="ignore")]
    assert leaks == []
