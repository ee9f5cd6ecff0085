"""``diffnas run``: every stage of the method, in order, on one config.

Stages (each calls the library function or the registered subcommand of the package that owns it):

====  ==========  ==========================================  =====================================
 #    stage       what it does                                outputs checked
====  ==========  ==========================================  =====================================
 1    base        train (or load) the base model              ``base/`` (embedded model folder)
 2    intervals   timestep similarity -> intervals            ``intervals.json``, ``similarity.png``
 3    experts     one elastic expert per interval             ``experts/intervals.json``
 4    router      Expert Routing Agent (``diffnas route``)    ``allocations/router-<b>.json``
 5    search      Optuna/Ray search (``diffnas search``)      ``allocations/search-<b>.json``
 6    finetune    fine-tune every pruned model (equal cost)   ``mixtures/``
 7    bench       FID/KID, MACs, latency per method/budget    ``results.jsonl`` bench rows
 8    report      Pareto fronts, tables, plots                ``report/index.html``
====  ==========  ==========================================  =====================================

A stage is skipped when ``pipeline.json`` in the run folder records it as finished with the same
*stage key* (a hash of the config sections the stage and the stages before it depend on), its
outputs exist and no stage before it ran in this call; otherwise it runs (every stage resumes or
reuses its own partial outputs, so a rerun after an upstream change only redoes what changed). A
stage whose package is not in this version fails loudly with a message naming it; ``--skip
STAGE`` leaves a stage out on purpose (the benchmark then skips the methods that need it, and
says so). The budgets compared are ``bench.budgets``; ``search.budgets`` (and ``router.budgets``
when the router has that key) are set to them so all methods are made for the same budgets.

Example::

    >>> from nas.config import load_config
    >>> result = run_pipeline(load_config(preset="demo"))  # doctest: +SKIP
    >>> result.report  # doctest: +SKIP
    PosixPath('runs/demo/report/index.html')
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.config import ExperimentConfig, config_to_dict
from nas.errors import UserError
from nas.rundir import RunDir

log = logging.getLogger(__name__)

__all__ = ["LEDGER_FILE", "PipelineResult", "STAGES", "Stage", "StageOutcome", "run_pipeline", "stage_key"]

LEDGER_FILE = "pipeline.json"

# config sections each stage adds to the ones before it (sections not listed anywhere, e.g. a
# section added later, count from the router stage on: conservative)
_KNOWN_SECTIONS = ("seed", "data", "model", "intervals", "space", "experts", "sampling", "search",
                   "evaluation", "bench", "name", "run_root", "device", "threads")
_IGNORED_SECTIONS = ("name", "run_root", "device", "threads")  # where/how fast, not what


@dataclass(frozen=True)
class Stage:
    """One stage of :func:`run_pipeline`.

    Attributes:
        name: what ``--skip``/``--force`` and the logs call it.
        description: one line for the progress display.
        sections: config sections this stage adds to its key (on top of the earlier stages').
        command: registered subcommand that runs it (stages owned by other packages), or None.
        owner: who provides it, for the message when it is missing.
    """

    name: str
    description: str
    sections: tuple[str, ...]
    command: str | None = None
    owner: str = ""


STAGES: tuple[Stage, ...] = (
    Stage("base", "base model (train the embedded one once, or load it)", ("seed", "data", "model")),
    Stage("intervals", "timestep similarity -> intervals", ("intervals",)),
    Stage("experts", "elastic expert per interval", ("space", "experts"), "train-experts",
          "the experts package (issue 4: `diffnas train-experts`)"),
    Stage("router", "Expert Routing Agent under each budget", ("sampling", "*"), "route",
          "the router package (issue 5: `diffnas route`)"),
    Stage("search", "Optuna/Ray search of allocations", ("search", "evaluation"), "search",
          "the search (issue 6: `diffnas search`)"),
    Stage("finetune", "fine-tune every pruned model at equal cost", ("bench",)),
    Stage("bench", "FID/KID, MACs and latency of every method", ()),
    Stage("report", "Pareto fronts, tables and plots", ()),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def stage_key(cfg: ExperimentConfig, stage: str) -> str:
    """Hash of the config sections ``stage`` and every stage before it depend on.

    Example:
        >>> from nas.config import load_config
        >>> a, b = load_config(None, []), load_config(None, ["bench.num_samples=10"])
        >>> stage_key(a, "experts") == stage_key(b, "experts"), stage_key(a, "bench") == stage_key(b, "bench")
        (True, False)
    """
    if stage not in STAGE_NAMES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_NAMES)}")
    d = config_to_dict(cfg)
    sections: list[str] = []
    for s in STAGES:
        for sec in s.sections:
            if sec == "*":
                sections += [k for k in d if k not in _KNOWN_SECTIONS and k not in _IGNORED_SECTIONS]
            else:
                sections.append(sec)
        if s.name == stage:
            break
    payload = {sec: d.get(sec) for sec in sorted(set(sections))}
    payload["stage"] = stage
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# outputs and the ledger


def _outputs(cfg: ExperimentConfig, run: RunDir, stage: str) -> list[Path]:
    budgets = list(cfg.bench.budgets)
    if stage == "base":
        return [run.base_dir]
    if stage == "intervals":
        return [run.intervals_path]
    if stage == "experts":
        return [run.experts_dir / "intervals.json"]
    if stage == "router":
        return [run.allocations_dir / f"router-{b:g}.json" for b in budgets]
    if stage == "search":
        return [run.allocations_dir / f"search-{b:g}.json" for b in budgets]
    if stage == "finetune":
        return [run.mixtures_dir]
    if stage == "bench":
        return [run.results_path]
    if stage == "report":
        return [run.report_dir / "index.html", run.report_dir / "summary.json"]
    raise ValueError(stage)


def _read_ledger(run: RunDir) -> dict[str, Any]:
    path = run.path / LEDGER_FILE
    if not path.is_file():
        return {"stages": {}}
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data.get("stages"), dict) else {"stages": {}}
    except (OSError, json.JSONDecodeError):
        log.warning("%s is unreadable; every stage is checked again", path)
        return {"stages": {}}


def _write_ledger(run: RunDir, ledger: dict[str, Any]) -> None:
    path = run.path / LEDGER_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(ledger, indent=2, sort_keys=True))
    tmp.replace(path)


def _is_done(cfg: ExperimentConfig, run: RunDir, ledger: dict[str, Any], stage: str) -> bool:
    entry = ledger["stages"].get(stage)
    if not entry or entry.get("key") != stage_key(cfg, stage):
        return False
    return all(p.exists() for p in _outputs(cfg, run, stage))


# --------------------------------------------------------------------------------------------
# running stages


def _run_command(cfg: ExperimentConfig, stage: Stage, extra: Sequence[str] = ()) -> str:
    from nas.cli import build_parser
    from nas.commands import all_commands

    assert stage.command is not None
    commands = all_commands()
    if stage.command not in commands:
        raise UserError(
            f"stage '{stage.name}' needs {stage.owner}, which this version does not have (no `diffnas "
            f"{stage.command}` command); run the stages before it, add it, or leave it out with --skip {stage.name}"
        )
    args = build_parser().parse_args([stage.command, *extra])
    rc = int(commands[stage.command].func(cfg, args) or 0)
    if rc != 0:
        raise UserError(f"stage '{stage.name}': `diffnas {stage.command}` exited with status {rc}")
    return f"diffnas {stage.command} done"


def _check_available(stages: Sequence[Stage]) -> None:
    """Fail at once, naming them, if stages to run need subcommands this version lacks."""
    from nas.commands import all_commands

    have = all_commands()
    missing = [s for s in stages if s.command is not None and s.command not in have]
    if missing:
        names = ", ".join(f"'{s.name}' needs {s.owner}" for s in missing)
        skips = " ".join(f"--skip {s.name}" for s in missing)
        raise UserError(
            f"this version cannot run the whole pipeline: {names}, which it does not have (no "
            f"{', '.join('`diffnas ' + s.command + '`' for s in missing)} command); add it, or leave the "
            f"stage out with {skips} (the benchmark then skips the methods that need it)"
        )


def _run_stage(stage: Stage, cfg: ExperimentConfig, run: RunDir, device: Any, progress: bool) -> str:
    if stage.name == "base":
        from nas.commands.base import load_base

        base = load_base(cfg, run, device, progress=progress)
        n = sum(p.numel() for p in base.unet.parameters())
        return f"{base.source}: {type(base.unet).__name__}, {n / 1e6:.2f}M parameters"
    if stage.name == "intervals":
        from nas.commands.intervals import run_intervals

        result, reused = run_intervals(cfg, run, device, progress=progress)
        return result.summary() + (" (stored matrix reused)" if reused else "")
    if stage.command is not None:
        return _run_command(cfg, stage)
    if stage.name == "finetune":
        from benchmarks.bench import prepare_models

        res = prepare_models(cfg, run, device, progress=progress)
        return f"models ready in {run.mixtures_dir}" + (f"; {len(res.skipped)} skipped" if res.skipped else "")
    if stage.name == "bench":
        from benchmarks.bench import run_bench

        res = run_bench(cfg, run, device, progress=progress)
        return (f"{len(res.rows)} rows measured, {len(res.reused)} kept from before"
                + (f", {len(res.skipped)} skipped (see report)" if res.skipped else ""))
    if stage.name == "report":
        from benchmarks.report import build_report

        rep = build_report(run.path)
        return f"{rep.index_html}"
    raise ValueError(f"no runner for stage {stage.name!r}")


def _same_budgets(cfg: ExperimentConfig) -> ExperimentConfig:
    """``search.budgets`` (and ``router.budgets`` if it exists) set to ``bench.budgets``."""
    budgets = tuple(cfg.bench.budgets)
    changes: dict[str, Any] = {}
    for section in ("search", "router"):
        sec = getattr(cfg, section, None)
        if sec is None or not hasattr(sec, "budgets"):
            continue
        if tuple(getattr(sec, "budgets")) != budgets:
            log.info("diffnas run compares at bench.budgets %s: %s.budgets set to them (was %s)", list(budgets),
                     section, list(getattr(sec, "budgets")))
            changes[section] = dataclasses.replace(sec, budgets=budgets)
    return dataclasses.replace(cfg, **changes) if changes else cfg


@dataclass(frozen=True)
class StageOutcome:
    """How one stage went: ``ran``, ``up to date`` or ``skipped`` (by ``--skip``)."""

    name: str
    status: str
    wall_s: float
    detail: str = ""


@dataclass(frozen=True)
class PipelineResult:
    """What :func:`run_pipeline` did; ``report`` is the report's ``index.html`` (None if not built)."""

    run_dir: Path
    stages: tuple[StageOutcome, ...]
    wall_s: float
    report: Path | None


def _fmt_s(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def run_pipeline(
    cfg: ExperimentConfig,
    *,
    skip: Sequence[str] = (),
    force: Sequence[str] = (),
    progress: bool = True,
    on_stage: Callable[[int, int, str, str], None] | None = None,
) -> PipelineResult:
    """Run every stage of :data:`STAGES` in order (see the module docstring).

    Args:
        skip: stages left out on purpose.
        force: stages run even if they are up to date.
        on_stage: called as ``(index, total, stage, status)`` when a stage starts and ends (the
            CLI's progress display).

    Raises:
        UserError: a stage failed or needs a package this version does not have.
    """
    from nas.commands.base import prepare_run
    from nas.device import resolve_device

    for name in (*skip, *force):
        if name not in STAGE_NAMES:
            raise UserError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")
    _check_available([s for s in STAGES if s.name not in skip])  # before any slow work
    cfg = _same_budgets(cfg)
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    run = prepare_run(cfg)
    ledger = _read_ledger(run)
    outcomes: list[StageOutcome] = []
    total = len(STAGES)
    upstream_ran = False  # once a stage runs, every later one runs too (each reuses what is still valid)
    for i, stage in enumerate(STAGES, start=1):
        elapsed = _fmt_s(time.perf_counter() - t0)
        if stage.name in skip:
            log.info("[%d/%d %s] %s: skipped (--skip)", i, total, elapsed, stage.name)
            outcomes.append(StageOutcome(stage.name, "skipped", 0.0))
            if on_stage:
                on_stage(i, total, stage.name, "skipped")
            continue
        if stage.name not in force and not upstream_ran and _is_done(cfg, run, ledger, stage.name):
            log.info("[%d/%d %s] %s: up to date (same config, outputs present)", i, total, elapsed, stage.name)
            outcomes.append(StageOutcome(stage.name, "up to date", 0.0))
            if on_stage:
                on_stage(i, total, stage.name, "up to date")
            continue
        log.info("[%d/%d %s] %s: %s", i, total, elapsed, stage.name, stage.description)
        if on_stage:
            on_stage(i, total, stage.name, "running")
        s0 = time.perf_counter()
        try:
            detail = _run_stage(stage, cfg, run, device, progress)
        except UserError as exc:
            raise UserError(f"stage '{stage.name}' ({i}/{total}) failed: {exc}") from exc
        wall = time.perf_counter() - s0
        upstream_ran = True
        ledger["stages"][stage.name] = {"key": stage_key(cfg, stage.name), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                        "wall_s": round(wall, 3), "detail": detail}
        _write_ledger(run, ledger)
        outcomes.append(StageOutcome(stage.name, "ran", wall, detail))
        log.info("[%d/%d %s] %s: done in %s: %s", i, total, _fmt_s(time.perf_counter() - t0), stage.name,
                 _fmt_s(wall), detail)
        if on_stage:
            on_stage(i, total, stage.name, "done")
    index = run.report_dir / "index.html"
    return PipelineResult(run.path, tuple(outcomes), time.perf_counter() - t0, index if index.is_file() else None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``diffnas run`` options: ``--skip STAGE`` and ``--force STAGE`` (repeatable)."""
    parser.add_argument("--skip", action="append", default=[], metavar="STAGE", choices=STAGE_NAMES,
                        help=f"leave a stage out (repeatable): {', '.join(STAGE_NAMES)}")
    parser.add_argument("--force", action="append", default=[], metavar="STAGE", choices=STAGE_NAMES,
                        help="run a stage even if its outputs are up to date (repeatable)")
