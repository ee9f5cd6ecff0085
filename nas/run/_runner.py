"""The stage runner: :func:`run_pipeline` runs the registered stages in order, skipping those whose
outputs are up to date (recorded in ``pipeline.json``)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.config import ExperimentConfig
from nas.errors import UserError
from nas.run._context import RunContext, prepare_run
from nas.run._rundir import RunDir
from nas.run._stages import Stage, all_stages, stage_key

log = logging.getLogger("nas.pipeline")

__all__ = ["LEDGER_FILE", "PipelineResult", "StageOutcome", "run_pipeline"]

LEDGER_FILE = "pipeline.json"

OnStage = Callable[[int, int, str, str], None]


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


def _is_done(ctx: RunContext, ledger: dict[str, Any], stage: Stage) -> bool:
    entry = ledger["stages"].get(stage.name)
    if not entry or entry.get("key") != stage_key(ctx.cfg, stage.name):
        return False
    return all(p.exists() for p in stage.outputs(ctx))


def _run_stage(stage: Stage, ctx: RunContext) -> str:
    """Run one stage (the seam the runner's tests replace to check the order and the ledger alone)."""
    return stage.run(ctx)


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


def _relative_detail(detail: str, run_path: Path) -> str:
    """``detail`` with the run folder's absolute path written relative to it: the ledger travels with a
    copied or moved run (a stage's log line keeps the absolute path the user can click).

    >>> _relative_detail("models ready in /runs/x/mixtures", Path("/runs/x"))
    'models ready in mixtures'
    >>> _relative_detail("/runs/x", Path("/runs/x"))
    '.'
    """
    text = str(detail)
    for form in {str(run_path), str(Path(run_path).resolve())}:
        text = text.replace(form + os.sep, "").replace(form, ".")
    return text


def _fmt_s(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


@dataclass
class _Progress:
    """Where the runner is: the stage count, the start time, and the caller's progress callback."""

    total: int
    t0: float
    on_stage: OnStage | None

    def elapsed(self) -> str:
        return _fmt_s(time.perf_counter() - self.t0)

    def tell(self, i: int, name: str, status: str) -> None:
        if self.on_stage:
            self.on_stage(i, self.total, name, status)


def _run_one(stage: Stage, i: int, ctx: RunContext, ledger: dict[str, Any], prog: _Progress) -> StageOutcome:
    """Run one stage, record it in the ledger and log it."""
    log.info("[%d/%d %s] %s: %s", i, prog.total, prog.elapsed(), stage.name, stage.description)
    prog.tell(i, stage.name, "running")
    s0 = time.perf_counter()
    try:
        detail = _run_stage(stage, ctx)
    except UserError as exc:
        raise UserError(f"stage '{stage.name}' ({i}/{prog.total}) failed: {exc}") from exc
    wall = time.perf_counter() - s0
    ledger["stages"][stage.name] = {"key": stage_key(ctx.cfg, stage.name),
                                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                    "wall_s": round(wall, 3), "detail": _relative_detail(detail, ctx.run.path)}
    _write_ledger(ctx.run, ledger)
    log.info("[%d/%d %s] %s: done in %s: %s", i, prog.total, prog.elapsed(), stage.name, _fmt_s(wall), detail)
    prog.tell(i, stage.name, "done")
    return StageOutcome(stage.name, "ran", wall, detail)


def _checked_names(stages: Sequence[Stage], skip: Sequence[str], force: Sequence[str]) -> None:
    names = [s.name for s in stages]
    for name in (*skip, *force):
        if name not in names:
            raise UserError(f"unknown stage {name!r}; stages: {', '.join(names)}")


def run_pipeline(
    cfg: ExperimentConfig | RunContext,
    *,
    skip: Sequence[str] = (),
    force: Sequence[str] = (),
    progress: bool = True,
    on_stage: OnStage | None = None,
) -> PipelineResult:
    """Run every registered stage in order (see :mod:`nas.pipeline`).

    A stage is skipped when ``pipeline.json`` records it as finished with the same stage key,
    its outputs exist and no stage before it ran in this call. Each stage gets a fresh
    :class:`RunContext`: a stage may change the models it trains in place, and every stage reads
    the artefacts as the stages before it stored them.

    Args:
        cfg: the config, or a run context (its config, device, progress and folder are used).
        skip: stages left out on purpose.
        force: stages run even if they are up to date.
        progress: show progress bars (ignored when ``cfg`` is a run context).
        on_stage: called as ``(index, total, stage, status)`` when a stage starts and ends (the
            CLI's progress display).

    Raises:
        UserError: an unknown stage name, or a stage failed.
    """
    stages = all_stages()
    _checked_names(stages, skip, force)
    device: Any = None
    run: RunDir | None = None
    if isinstance(cfg, RunContext):
        cfg, device, progress, run = cfg.cfg, cfg.device, cfg.progress, cfg.run
    cfg = _same_budgets(cfg)
    prog = _Progress(len(stages), time.perf_counter(), on_stage)
    if device is None:
        device = RunContext(cfg).device
    run = prepare_run(cfg) if run is None else RunContext(cfg, run=run).prepare()
    ledger = _read_ledger(run)
    outcomes: list[StageOutcome] = []
    upstream_ran = False  # once a stage runs, every later one runs too (each reuses what is still valid)
    for i, stage in enumerate(stages, start=1):
        ctx = RunContext(cfg, device=device, progress=progress, run=run)
        if stage.name in skip:
            log.info("[%d/%d %s] %s: skipped (--skip)", i, prog.total, prog.elapsed(), stage.name)
            outcomes.append(StageOutcome(stage.name, "skipped", 0.0))
            prog.tell(i, stage.name, "skipped")
        elif stage.name not in force and not upstream_ran and _is_done(ctx, ledger, stage):
            log.info("[%d/%d %s] %s: up to date (same config, outputs present)", i, prog.total, prog.elapsed(),
                     stage.name)
            outcomes.append(StageOutcome(stage.name, "up to date", 0.0))
            prog.tell(i, stage.name, "up to date")
        else:
            outcomes.append(_run_one(stage, i, ctx, ledger, prog))
            upstream_ran = True
    index = run.report_dir / "index.html"
    return PipelineResult(run.path, tuple(outcomes), time.perf_counter() - prog.t0,
                          index if index.is_file() else None)
