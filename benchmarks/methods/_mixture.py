"""Methods whose model is a fine-tuned mixture of the interval experts, made from an allocation
file ``allocations/<name>-<budget>.json``: the shared :class:`MixtureMethod`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from benchmarks.bench.records import normalize_cost
from benchmarks.methods._common import file_hash, finetune_settings, inputs_key
from nas.methods import AllocationMethod, Candidate

if TYPE_CHECKING:  # pragma: no cover
    from experts.allocation import Allocation
    from experts.training import ExpertTrainSettings

__all__ = ["MixtureMethod", "finetune_target"]

log = logging.getLogger(__name__)


class MixtureMethod(AllocationMethod):
    """A mixture of the interval experts pruned to an allocation, fine-tuned with the common budget
    (:func:`experts.finetune.finetune_allocation`) into ``mixtures/<name>-<budget>/``.

    Subclasses set :attr:`producer` (the command that writes the allocation file) or override
    :meth:`write_allocation` to write it themselves.
    """

    mixture: ClassVar[bool] = True
    finetuned: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("experts",)
    #: The command that writes ``allocations/<name>-<budget>.json`` (named in skip reasons).
    producer: ClassVar[str | None] = None

    def write_allocation(self, ctx: Any, budget: float, path: Path) -> str | None:
        """Make sure ``path`` holds this method's allocation at ``budget``: None when it does,
        else the reason it cannot. The default only checks that :attr:`producer` wrote it."""
        if path.is_file():
            return None
        return f"{path.relative_to(ctx.run.path)} does not exist (run {self.producer} with budget {budget:g})"

    @staticmethod
    def save_allocation(alloc: Allocation, path: Path) -> None:
        """Write ``alloc`` to ``path`` unless the file already holds it (then it stays byte-identical;
        an unreadable stale file is rewritten)."""
        from experts.allocation import Allocation

        if path.is_file():
            try:
                if Allocation.load(path) == alloc:
                    return
            except (ValueError, KeyError, json.JSONDecodeError):
                pass  # an unreadable stale file: rewritten below
        alloc.save(path)

    def candidate(self, ctx: Any, budget: float | None, config_key: str) -> Candidate | str:
        """The mixture at ``budget`` from its allocation file, or why it cannot run (no experts, no
        allocation, an unreadable one, or one made for other intervals)."""
        assert budget is not None, f"{self.name} is made for a budget"
        run = ctx.run
        if not ctx.has_experts():
            return f"{run.experts_dir.relative_to(run.path)}/ has no trained experts (run `diffnas train-experts`)"
        path = run.allocations_dir / f"{self.name}-{budget:g}.json"
        reason = self.write_allocation(ctx, budget, path)
        if reason is not None:
            return reason
        alloc = self._load_allocation(ctx, path)
        if isinstance(alloc, str):
            return alloc
        if not alloc.feasible:
            log.warning("%s is over its budget (achieved %.3f > %g); benchmarked as stored", path, alloc.achieved_ratio,
                        budget)
        settings = finetune_settings(ctx.cfg)
        key = inputs_key(config_key, file_hash(path))

        def build() -> tuple[Any, int, dict[str, Any]]:
            return _finetune_mixture(ctx, alloc, budget, settings)

        # an allocation with a step schedule (joint) samples along it; else the run's steps
        timesteps = alloc.timesteps()
        num_steps = ctx.cfg.sampling.num_steps if timesteps is None else len(timesteps)
        return Candidate(self.name, budget, key, num_steps, build,
                         allocation_path=str(path.relative_to(run.path)), allocation_cost=normalize_cost(alloc.info),
                         timesteps=None if timesteps is None else tuple(int(t) for t in timesteps))

    def expert_jobs(self, ctx: Any, c: Candidate) -> tuple[int, ...]:
        """The experts of ``c`` (this method's candidate) that :meth:`finetune_expert` can fine-tune
        one task each (``bench.parallel``): those trained by the fine-tuning
        (:func:`experts.finetune.split_experts`) and not stored yet; none once the mixture is made.
        The stored ones' identity is checked when the mixture is assembled (a stale one trains
        there again)."""
        from experts.finetune import split_experts, tuned_expert_done

        alloc = self._candidate_allocation(ctx, c)
        out = ctx.run.mixture_dir(alloc.method, c.budget_ratio)
        return tuple(k for k in split_experts(alloc, ctx.cfg.bench.finetune_target) if not tuned_expert_done(out, k))

    def finetune_expert(self, ctx: Any, c: Candidate, k: int) -> dict[str, Any]:
        """Fine-tune expert ``k`` of ``c``'s mixture alone and store it in the mixture folder
        (``experts_only``); ``c.build()`` then assembles the mixture without training it again.
        Returns ``{k, seconds, loss_before, loss_after}``."""
        assert c.budget_ratio is not None
        alloc = self._candidate_allocation(ctx, c)
        res, _ = _finetune_call(ctx, alloc, c.budget_ratio, finetune_settings(ctx.cfg), experts_only=(int(k),))
        return {"k": int(k), "seconds": res.seconds, "loss_before": list(res.loss_before),
                "loss_after": list(res.loss_after)}

    @staticmethod
    def _candidate_allocation(ctx: Any, c: Candidate) -> Allocation:
        from experts.allocation import Allocation

        assert c.allocation_path is not None, f"{c.name} has no allocation file"
        return Allocation.load(ctx.run.path / c.allocation_path)

    def _load_allocation(self, ctx: Any, path: Path) -> Allocation | str:
        """The allocation stored at ``path``, or why it cannot be used (unreadable, other intervals)."""
        from experts.allocation import Allocation

        rel = path.relative_to(ctx.run.path)
        try:
            alloc = Allocation.load(path)
        except (ValueError, KeyError, json.JSONDecodeError) as exc:
            return f"cannot read {rel}: {exc}"
        iv = ctx.intervals()
        if iv is not None and alloc.intervals != iv:
            return (f"{rel} was made for intervals {list(alloc.intervals.boundaries)}, the experts "
                    f"have {list(iv.boundaries)}; rerun {self.producer or 'the allocation'}")
        return alloc


def finetune_target(ctx: Any) -> dict[str, Any]:
    """The ``finetune_allocation`` arguments of ``bench.finetune_target`` (none for ``denoise``):
    the run's own timesteps and the reference sampler's (``schedule.reference_steps`` in a joint
    run, else ``sampling.num_steps``, the base model's own trajectory)."""
    from nas.sampling import sampling_timesteps

    cfg = ctx.cfg
    if cfg.bench.finetune_target == "denoise":
        return {}
    steps = cfg.schedule.reference_steps if cfg.schedule.joint else cfg.sampling.num_steps
    return {"target": cfg.bench.finetune_target, "timesteps": list(ctx.timesteps),
            "reference_timesteps": list(sampling_timesteps(ctx.scheduler, steps))}


def _finetune_call(ctx: Any, alloc: Allocation, budget: float, settings: ExpertTrainSettings,
                   out: Path | None = None, **more: Any) -> tuple[Any, Path]:
    """:func:`experts.finetune.finetune_allocation` of ``alloc`` with the run's data, base and
    target into ``out`` (default ``mixtures/<method>-<budget>``; ``more``: e.g. ``experts_only``);
    (its result, the mixture folder)."""
    from experts.finetune import finetune_allocation

    run = ctx.run
    train, heldout = ctx.data()
    out = out or run.mixture_dir(alloc.method, budget)
    res = finetune_allocation(
        alloc, run.experts_dir, train, settings, out, scheduler_config=ctx.base.scheduler_config,
        device=ctx.device, heldout=heldout, vae=ctx.base.vae, encoder_hidden_states=ctx.base.encoder_hidden_states,
        sampler_scheduler=ctx.scheduler, progress=ctx.progress, **ctx.train_condition(), **finetune_target(ctx),
        **more,
    )
    return res, out


def _finetune_mixture(ctx: Any, alloc: Allocation, budget: float,
                      settings: ExpertTrainSettings) -> tuple[Any, int, dict[str, Any]]:
    """Materialise and fine-tune the mixture of ``alloc`` (reused when already in its folder), load
    it, and return (model, trajectory MACs, extra row fields)."""
    from experts.pipeline import load_model_folder

    run = ctx.run
    res, out = _finetune_call(ctx, alloc, budget, settings)
    run.write_config(ctx.cfg, out)
    model = load_model_folder(out, device=ctx.device).model
    timesteps = alloc.timesteps()
    timesteps = ctx.timesteps if timesteps is None else timesteps  # the allocation's schedule, if any
    validation = None
    if ctx.cfg.bench.finetune_validation_images:
        model, out, validation = _validated(ctx, alloc, budget, settings, model, out, list(timesteps))
    traj = int(model.trajectory_macs(timesteps))
    k = alloc.intervals.num_intervals
    extra = {
        "model_path": str(out.relative_to(run.path)),
        "finetune": {"steps_per_expert": res.steps_per_expert, "batch_size": res.batch_size, "num_experts": k,
                     "steps_total": res.steps_per_expert * k, "images_total": res.steps_per_expert * res.batch_size * k,
                     "seconds": res.seconds, "loss_before": list(res.loss_before), "loss_after": list(res.loss_after),
                     **({"validation": validation} if validation else {})},
        "macs_per_expert": list(model.macs_per_expert()),
        "steps_per_expert": alloc.intervals.steps_per_interval(timesteps),
        "intervals": alloc.intervals.spans(),
        "allocation_achieved_ratio": alloc.achieved_ratio,
    }
    return model, traj, extra


VALIDATION_FILE = "validation.json"


def _validation_fid(ctx: Any, model: Any, timesteps: list[int]) -> float:
    """FID of ``bench.finetune_validation_images`` samples of ``model`` along ``timesteps`` from
    ``bench.finetune_validation_seed`` against the dataset's reference features."""
    from nas.metrics import frechet_distance_from_features

    b = ctx.cfg.bench
    images = ctx.generate(model, b.finetune_validation_images, b.finetune_validation_seed, len(timesteps),
                          timesteps=timesteps, progress=False)  # (N, C, H, W)
    return float(frechet_distance_from_features(ctx.extractor()(images), ctx.reference_features()))


def _validated(ctx: Any, alloc: Allocation, budget: float, settings: ExpertTrainSettings, tuned: Any, out: Path,
               timesteps: list[int]) -> tuple[Any, Path, dict[str, Any]]:
    """The fine-tuned mixture ``tuned`` (in ``out``) or, when its validation FID is worse, the
    allocation's untuned experts saved as ``mixtures/<method>-untuned-<budget>``: (model, its
    folder, the record). The record is cached in ``out/validation.json`` (written to a temporary
    sibling and renamed) and recomputed when the validation images, seed or timesteps change."""
    from dataclasses import replace

    from experts.pipeline import load_model_folder

    b = ctx.cfg.bench
    untuned_dir = ctx.run.mixture_dir(alloc.method + "-untuned", budget)
    wanted = {"images": b.finetune_validation_images, "seed": b.finetune_validation_seed, "timesteps": timesteps}
    path = out / VALIDATION_FILE
    record = None
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or any(record.get(k) != v for k, v in wanted.items()):
            record = None
    untuned = None
    if record is None or record.get("kept") == "untuned":
        # the same materialisation with no optimiser step: what the router and the search scored
        _finetune_call(ctx, alloc, budget, replace(settings, steps=0), out=untuned_dir)
        ctx.run.write_config(ctx.cfg, untuned_dir)
        untuned = load_model_folder(untuned_dir, device=ctx.device).model
    if record is None:
        fid_tuned, fid_untuned = _validation_fid(ctx, tuned, timesteps), _validation_fid(ctx, untuned, timesteps)
        record = {**wanted, "fid_finetuned": fid_tuned, "fid_untuned": fid_untuned,
                  "kept": "untuned" if fid_untuned < fid_tuned else "finetuned"}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(path)
    log.info("%s: validation FID fine-tuned %.4f, untuned %.4f: %s kept", out.name, record["fid_finetuned"],
             record["fid_untuned"], record["kept"])
    summary = {k: record[k] for k in ("images", "seed", "fid_finetuned", "fid_untuned", "kept")}
    if record["kept"] == "untuned":
        return untuned, untuned_dir, {**summary, "untuned_path": str(untuned_dir.relative_to(ctx.run.path))}
    return tuned, out, summary
