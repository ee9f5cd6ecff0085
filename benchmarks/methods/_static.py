"""``static``: one model, no intervals, pruned with torch-pruning to the budget and fine-tuned with
the same total budget as a mixture (:mod:`benchmarks.static_pruning`, Diff-Pruning style)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.methods._common import finetune_settings, inputs_key
from nas.methods import AllocationMethod, Candidate

if TYPE_CHECKING:  # pragma: no cover
    from experts.training import ExpertTrainSettings

__all__ = ["STATIC_MARKER", "StaticMethod"]

log = logging.getLogger(__name__)

#: File in ``mixtures/static-<b>/`` recording what the saved pruned model was made from.
STATIC_MARKER = "static.json"


class StaticMethod(AllocationMethod):
    """One network for all ``K`` intervals, pruned to the budget (Taylor importance by default)
    and fine-tuned for ``K x experts.finetune_steps`` steps of the same batch, loss and optimiser
    (:func:`experts.training.run_training` over the whole schedule); saved to
    ``mixtures/static-<b>/`` (:func:`experts.pruned.save_pruned`) and reused while
    its inputs are the same. Its context is a :class:`benchmarks.bench.BenchContext` (Taylor
    importance reads ``ctx.taylor_gradients()``)."""

    name = "static"
    label = "static pruning"
    color = "#9467bd"
    marker = "D"
    finetuned = True
    cost = "pruning-ratio search and fine-tuning, no allocation"

    def candidate(self, ctx: Any, budget: float | None, config_key: str) -> Candidate:
        """The pruned model at ``budget`` (made by its ``build``, only when needed)."""
        assert budget is not None, "static pruning is made for a budget"

        def build() -> tuple[Any, int, dict[str, Any]]:
            return _build_static(ctx, budget, config_key)

        return Candidate(self.name, budget, inputs_key(config_key, self.name), ctx.cfg.sampling.num_steps, build)


def _build_static(ctx: Any, budget: float, config_key: str) -> tuple[Any, int, dict[str, Any]]:
    """The static model (reused from its folder when made from the same inputs, else pruned and
    fine-tuned), its trajectory MACs and the extra row fields."""
    from search_spaces.macs import count_unet_macs

    iv = ctx.intervals()
    k = iv.num_intervals if iv is not None else 1
    settings = finetune_settings(ctx.cfg)
    settings = dataclasses.replace(settings, steps=settings.steps * k)
    out = ctx.run.mixture_dir("static", budget)
    identity = _identity(ctx, budget, settings, k, config_key)
    reused = _reusable(ctx, out, identity, budget)
    model, meta = reused if reused is not None else _prune_and_finetune(ctx, budget, settings, identity, out)
    per_call = int(count_unet_macs(model, batch_size=1))
    return model, per_call * len(ctx.timesteps), _row_fields(ctx, out, settings, k, meta)


def _identity(ctx: Any, budget: float, settings: ExpertTrainSettings, k: int, config_key: str) -> dict[str, Any]:
    """Everything the saved model depends on (compared with the marker's to reuse it)."""
    b = ctx.cfg.bench
    return {"budget_ratio": budget, "importance": b.static_importance, "taylor_batches": b.static_taylor_batches,
            "tolerance": b.static_tolerance, "max_iterations": b.static_max_iterations,
            "settings": json.loads(json.dumps(dataclasses.asdict(settings), default=str)), "num_intervals": k,
            "base": ctx.base.info.get("config_hash") or ctx.base.source, "config_key": config_key}


def _reusable(ctx: Any, out: Path, identity: dict[str, Any], budget: float) -> tuple[Any, dict[str, Any]] | None:
    """(model, stored result) of the model saved in ``out`` for the same ``identity``, else None."""
    from experts.pruned import load_pruned

    marker = out / STATIC_MARKER
    done = json.loads(marker.read_text()) if marker.is_file() else None
    if done is None or done.get("identity") != identity or not (out / "model").is_dir():
        return None
    log.info("static pruning at %g: reusing %s", budget, out)
    return load_pruned(out / "model", device=ctx.device), done["result"]


def _prune_and_finetune(ctx: Any, budget: float, settings: ExpertTrainSettings, identity: dict[str, Any],
                        out: Path) -> tuple[Any, dict[str, Any]]:
    """Prune the base model to ``budget``, fine-tune it over the whole schedule (resumable
    checkpoints in ``out``), save it with its marker; returns (model, result)."""
    from experts.intervals import Intervals
    from experts.denoising import training_scheduler
    from experts.training import CHECKPOINTS_DIR, run_training

    base = ctx.base
    train, _ = ctx.data()
    grads = ctx.taylor_gradients() if ctx.cfg.bench.static_importance == "taylor" else None
    t0 = time.perf_counter()
    res = _prune(ctx, budget, grads)
    model = res.model.to(ctx.device)
    sched = training_scheduler(base.scheduler_config)
    whole = Intervals(int(sched.config.num_train_timesteps), ())
    kw = {"encoder_hidden_states": base.encoder_hidden_states} if base.encoder_hidden_states is not None else None
    tlog = run_training(model, base.unet, train, whole, 0, settings, sched, out / CHECKPOINTS_DIR,
                        identity, choose_archs=None, device=ctx.device, model_kwargs=kw,
                        progress=ctx.progress, desc=f"finetune static@{budget:g}", **ctx.train_condition())
    model.eval().requires_grad_(False)
    meta = {"prune": res.to_dict(), "finetune_seconds": tlog.seconds, "steps": tlog.step,
            "wall_s": time.perf_counter() - t0}
    _save(ctx, model, out, budget, identity, meta)
    return model, meta


def _prune(ctx: Any, budget: float, grads: Any) -> Any:
    """:func:`benchmarks.static_pruning.prune_to_budget` of the base UNet with the bench settings."""
    from benchmarks.static_pruning import prune_to_budget

    b = ctx.cfg.bench
    return prune_to_budget(ctx.base.unet, budget, importance=b.static_importance, gradients=grads,
                           max_iterations=b.static_max_iterations, tolerance=b.static_tolerance)


def _save(ctx: Any, model: Any, out: Path, budget: float, identity: dict[str, Any], meta: dict[str, Any]) -> None:
    """Save the pruned model and the config to ``out``, then the marker (last, atomically: a
    folder without it is never reused), and drop the training checkpoints."""
    import shutil

    from experts.pruned import save_pruned
    from experts.training import CHECKPOINTS_DIR

    save_pruned(model, out / "model", info={"budget_ratio": budget, **meta["prune"]})
    ctx.run.write_config(ctx.cfg, out)
    marker = out / STATIC_MARKER
    tmp = marker.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"identity": identity, "result": meta}, indent=2, sort_keys=True, default=str))
    tmp.replace(marker)
    shutil.rmtree(out / CHECKPOINTS_DIR, ignore_errors=True)


def _row_fields(ctx: Any, out: Path, settings: ExpertTrainSettings, k: int, meta: dict[str, Any]) -> dict[str, Any]:
    """The static row's extra fields: model folder, fine-tuning budget, pruning result."""
    return {
        "model_path": str((out / "model").relative_to(ctx.run.path)),
        "finetune": {"steps_per_expert": settings.steps // k, "batch_size": settings.batch_size, "num_experts": k,
                     "steps_total": settings.steps, "images_total": settings.steps * settings.batch_size,
                     "seconds": meta.get("finetune_seconds")},
        "static": {key: meta["prune"].get(key) for key in ("pruning_ratio", "importance", "macs_ratio", "params",
                                                          "tries")},
    }
