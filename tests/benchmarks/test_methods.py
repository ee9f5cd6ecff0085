"""Allocation methods behind one interface: a toy method registered in one line is run by
``diffnas run`` (planned and measured by the bench) and drawn in the report; unknown names are one clear error."""

from __future__ import annotations

import json
import re

import pytest

from nas.config import load_config
from nas.errors import UserError
from nas.methods import (
    AllocationMethod,
    Candidate,
    all_methods,
    get_method,
    load_plugins,
    methods_needing,
    register_method,
    unregister_method,
)

BUILTIN = ["router", "search", "uniform", "static", "fewer_steps", "steps", "base"]


class HalfSteps(AllocationMethod):
    """The toy: the base model with half the sampling steps (a method in a dozen lines)."""

    name, label, color, marker = "toy_half_steps", "toy: base, half the steps", "#17becf", "P"

    def candidate(self, ctx, budget, config_key):
        n = max(1, ctx.cfg.sampling.num_steps // 2)

        def build():
            return ctx.base.unet, ctx.base_macs_per_call * n, {"model_path": None}

        return Candidate(self.name, budget, f"{config_key}:{self.name}:{n}", n, build)


@pytest.fixture
def toy():
    method = register_method(HalfSteps)
    yield method
    unregister_method(HalfSteps.name)


def test_the_builtin_methods_come_from_the_plugin_entry_point():
    load_plugins()
    load_plugins()  # once per process: the second call changes nothing
    methods = all_methods()
    assert list(methods)[: len(BUILTIN)] == BUILTIN
    assert get_method("router").needs == ("experts", "router") and get_method("router").mixture
    assert get_method("base").budgeted is False and get_method("static").finetuned
    assert not get_method("fewer_steps").finetuned and get_method("fewer_steps").label == "base, fewer steps"
    assert methods_needing(["search"]) == ["search", "steps", "search_seeded"] and methods_needing(["base"]) == []
    with pytest.raises(KeyError, match="unknown allocation method 'routed'; registered: router, search"):
        get_method("routed")


def test_registering_checks_the_method():
    class NoName(AllocationMethod):
        def candidate(self, ctx, budget, config_key):
            return "never"

    with pytest.raises(ValueError, match="name must be an identifier"):
        register_method(NoName)
    with pytest.raises(TypeError):
        register_method(object)  # type: ignore[arg-type]

    class Impostor(HalfSteps):
        name = "router"

    with pytest.raises(ValueError, match="'router' is already registered by benchmarks.methods"):
        register_method(Impostor)
    assert type(get_method("router")).__name__ == "RouterMethod"


def test_an_unknown_method_is_one_line_error_in_config_and_cli(capsys):
    with pytest.raises(UserError, match=r"^config key 'bench.methods\[0\]' must be a registered allocation method "
                                        r"\(router, .*\), got 'toy_half_steps'$"):
        load_config(None, ["bench.methods=[toy_half_steps]"])
    from nas.cli import main

    assert main(["bench", "--set", "bench.methods=[nope, base]"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'bench.methods[0]'" in err and "got 'nope'" in err


def test_a_toy_method_is_run_by_diffnas_run_and_drawn_in_the_report(tmp_path, toy, monkeypatch):
    from benchmarks.report import figures
    from nas.cli import main
    from tests.benchmarks.test_bench import TINY

    legends: list[str] = []
    save = figures._save

    def keep_legend(fig, path):
        for ax in fig.axes:
            if ax.get_legend() is not None:
                legends.extend(t.get_text() for t in ax.get_legend().get_texts())
        return save(fig, path)

    monkeypatch.setattr(figures, "_save", keep_legend)
    settings = [f"run_root={tmp_path}", *TINY, f"bench.methods=[base, {toy.name}]"]
    skips = ["intervals", "experts", "router", "search"]
    assert main(["run", *[a for s in settings for a in ("--set", s)], *[a for s in skips for a in ("--skip", s)]]) == 0
    run = tmp_path / "tiny"
    rows = {r["method"]: r for r in map(json.loads, (run / "results.jsonl").read_text().splitlines())
            if r.get("kind") == "bench"}
    assert sorted(rows) == ["base", toy.name]
    assert rows[toy.name]["budget_ratio"] == 0.5 and rows[toy.name]["num_steps"] == 2
    assert rows[toy.name]["macs_ratio"] == pytest.approx(0.5)

    summary = json.loads((run / "report" / "summary.json").read_text())
    assert [r["method"] for r in summary["rows"]] == ["base", toy.name]  # registry order: builtins first
    assert toy.name in summary["methods"] and summary["budgets"] == {"0.5": [toy.name]}
    assert toy.label in legends and "base model" in legends
    page = (run / "report" / "index.html").read_text()
    assert re.search(rf'<tr data-method="{toy.name}" data-budget="0.5"><td data-col="method" '
                     rf'data-value="&quot;{toy.name}&quot;">{re.escape(toy.label)}</td>', page)
    assert f"| {toy.label} |" in (run / "report" / "report.md").read_text()
