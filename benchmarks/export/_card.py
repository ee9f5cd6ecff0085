"""The exported folder's model card (``README.md``, Hugging Face format: YAML metadata between
``---`` lines, then markdown) and its machine-readable facts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from benchmarks.report.summary import fmt_ci, fmt_macs, fmt_num, method_label
from benchmarks.report.verdict import machine_text
from nas.methods import budget_key

__all__ = ["card_facts", "model_card"]


def _hub_id(base: Any) -> str | None:
    """``base`` when it reads as a Hugging Face hub id (``org/name``, not a local path)."""
    if not isinstance(base, str) or base.count("/") != 1 or base.startswith((".", "/", "~")) or ":" in base:
        return None
    return base


def _metric(row: Mapping[str, Any] | None, name: str) -> dict[str, Any] | None:
    if row is None or row.get(f"{name}_mean") is None:
        return None
    return {"mean": row.get(f"{name}_mean"), "ci_low": row.get(f"{name}_ci_low"),
            "ci_high": row.get(f"{name}_ci_high"), "values": row.get(f"{name}_values")}


def card_facts(row: Mapping[str, Any], raw: Mapping[str, Any], summary: Mapping[str, Any],
               base: Mapping[str, Any] | None, command: str) -> dict[str, Any]:
    """The exported model's facts: the report row's figures (the same numbers as
    ``report/summary.json``), its allocation (intervals, steps and expert MACs per interval from
    the bench record ``raw``), the setup, the base row, the machine and the command."""
    setup = summary["setup"]
    alloc = summary["allocations"].get(f"{row['method']}-{budget_key(row['budget_ratio'])}") or {}
    spans = raw.get("intervals") or alloc.get("spans")
    steps = row.get("steps_per_interval") or raw.get("steps_per_expert") or alloc.get("steps_per_expert")
    macs = raw.get("macs_per_expert") or alloc.get("macs_per_expert")
    base_traj = raw.get("base_macs_per_trajectory")
    per_call_base = (float(base_traj) / float(setup["num_steps"])
                     if base_traj and setup.get("num_steps") else None)
    cfg = summary.get("config") or {}
    return {
        "run": summary["run"], "method": row["method"], "method_label": method_label(row["method"]),
        "budget_ratio": row["budget_ratio"], "base_model": (cfg.get("model") or {}).get("base"),
        "dataset": cfg.get("data"),
        "intervals": [list(s) for s in spans] if spans else None,
        "steps_per_interval": list(steps) if steps else None,
        "macs_per_expert": list(macs) if macs else None,
        "expert_macs_ratio": ([round(float(m) / per_call_base, 6) for m in macs] if macs and per_call_base else None),
        "num_steps": row.get("num_steps"), "sampler": setup.get("sampler"),
        "macs_per_trajectory": row.get("macs_per_trajectory"), "base_macs_per_trajectory": base_traj,
        "macs_ratio": row.get("macs_ratio"),
        "fid": _metric(row, "fid"), "kid": _metric(row, "kid"),
        "base_fid": _metric(base, "fid"), "base_kid": _metric(base, "kid"),
        "confidence": setup.get("confidence"), "extractor": setup.get("extractor"),
        "feature_dim": setup.get("feature_dim"), "num_generated_per_seed": setup.get("num_generated"),
        "num_reference": setup.get("num_reference"), "seeds": setup.get("seeds"),
        "latency_ms_per_image": row.get("latency_ms_per_image"),
        "base_latency_ms_per_image": row.get("base_latency_ms_per_image"), "speedup": row.get("speedup"),
        "latency_batch_size": setup.get("latency_batch_size"), "machine": summary.get("machine"),
        "versions": summary.get("versions"), "finetune": row.get("finetune"), "config_key": summary.get("config_key"),
        "command": command, "source": row.get("model_path"),
    }


def _yaml_dump(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100, allow_unicode=True)


def _prompt_usage(facts: Mapping[str, Any]) -> list[str]:
    """The usage lines of a text-to-image export (its text encoder and tokenizer are in the folder)."""
    if not facts.get("text_encoder"):
        return []
    return ["# text-to-image: the folder has the base model's text_encoder and tokenizer",
            'images = pipe(prompt="a handwritten three", negative_prompt=None, guidance_scale=4.0, '
            f"num_inference_steps={facts.get('num_steps')}).images"]


def model_card(facts: Mapping[str, Any], config_text: str | None, folder_name: str) -> str:
    """``README.md`` of an exported folder from :func:`card_facts`.

    Example:
        >>> f = {"run": "demo", "method": "router", "method_label": "router", "budget_ratio": 0.5,
        ...      "base_model": "embedded:digits", "dataset": {"dataset": "digits"}, "intervals": [[0, 400], [400, 1000]],
        ...      "steps_per_interval": [4, 6], "macs_per_expert": [10, 20], "expert_macs_ratio": [0.3, 0.6],
        ...      "num_steps": 10, "sampler": "ddim", "macs_per_trajectory": 160, "base_macs_per_trajectory": 330,
        ...      "macs_ratio": 0.48, "fid": {"mean": 3.0, "ci_low": 2.5, "ci_high": 3.5, "values": [3.0]},
        ...      "kid": None, "base_fid": None, "base_kid": None, "confidence": 0.95, "extractor": "digits",
        ...      "feature_dim": 64, "num_generated_per_seed": 128, "num_reference": 1797, "seeds": [0, 1, 2],
        ...      "latency_ms_per_image": 5.0, "base_latency_ms_per_image": 9.0, "speedup": 1.8,
        ...      "latency_batch_size": 16, "machine": {"device": "cpu"}, "versions": None, "finetune": None,
        ...      "config_key": "k", "command": "diffnas export runs/demo --method router --budget 0.5",
        ...      "source": "mixtures/router-0.5"}
        >>> card = model_card(f, None, "router-0.5")
        >>> card.startswith("---\\nlibrary_name: diffusers") and "| this model | 3.00 [2.50, 3.50] |" in card
        True
    """
    fid, kid, bfid = facts.get("fid") or {}, facts.get("kid") or {}, facts.get("base_fid") or {}
    conf = int(round(100 * float(facts.get("confidence") or 0.95)))
    samples = (f"{facts.get('num_generated_per_seed')} generated images per seed x {len(facts.get('seeds') or [])} "
               f"seeds {facts.get('seeds')} vs {facts.get('num_reference')} reference images")
    metrics = []
    if fid.get("mean") is not None:
        metrics.append({"type": "fid", "value": fid["mean"],
                        "name": f"FID (clean-fid, {facts.get('extractor')} features; {samples})"})
    if kid.get("mean") is not None:
        metrics.append({"type": "kid", "value": kid["mean"], "name": f"KID (clean-fid raw, {facts.get('extractor')} features)"})
    data = facts.get("dataset") or {}
    meta: dict[str, Any] = {
        "library_name": "diffusers", "pipeline_tag": "unconditional-image-generation",
        "tags": ["diffnas", "mixture-of-experts", "pruning", "efficient-inference", "diffusion"],
    }
    hub = _hub_id(facts.get("base_model"))
    if hub:
        meta["base_model"] = hub
    name = f"{facts['run']}-{facts['method']}-{budget_key(facts['budget_ratio'])}"
    meta["model-index"] = [{"name": name, "results": [{
        "task": {"type": "unconditional-image-generation"},
        "dataset": {"name": str(data.get("path") or data.get("dataset") or "unknown"),
                    "type": str(data.get("dataset") or "unknown")},
        "metrics": metrics}]}]
    meta["diffnas"] = {k: v for k, v in facts.items() if k not in ("versions",)}
    out = ["---", _yaml_dump(meta).rstrip(), "---", "",
           f"# {name}: {facts['method_label']} at {budget_key(facts['budget_ratio'])} of the base model's MACs", "",
           f"A mixture of interval experts made by diffnas from the base model "
           f"`{facts.get('base_model')}`: each interval of denoising timesteps is served by its own pruned, "
           f"fine-tuned expert. Trajectory MACs {fmt_num(facts.get('macs_ratio'), 3)} of the base model's "
           f"({fmt_macs(facts.get('macs_per_trajectory'))} vs {fmt_macs(facts.get('base_macs_per_trajectory'))}, "
           f"fvcore, {facts.get('num_steps')} {facts.get('sampler')} steps); "
           f"{fmt_num(facts.get('speedup'))}x faster than the base model on {machine_text(facts.get('machine'))}.", "",
           "## Use", "", "Needs `diffnas` installed (the mixture's classes live in its `experts` package).", "",
           "```python", "from experts.pipeline import MixturePipeline", "",
           f'pipe = MixturePipeline.from_pretrained("{folder_name}")',
           f"images = pipe(batch_size=4, num_inference_steps={facts.get('num_steps')}).images  # PIL images",
           f"# the benchmark's own noise, image for image: pipe(batch_size=4, num_inference_steps="
           f"{facts.get('num_steps')}, seed=0)", *_prompt_usage(facts), "```", "",
           f"Measured with `num_inference_steps={facts.get('num_steps')}` (the default without it: the mixture's "
           "step schedule if it has one, else 50 steps).", "",
           "## Allocation", "", "| interval (training timesteps) | sampling steps | expert MACs per call | x base model's |",
           "|---|---|---|---|"]
    spans = facts.get("intervals") or []
    steps = facts.get("steps_per_interval") or [None] * len(spans)
    macs = facts.get("macs_per_expert") or [None] * len(spans)
    ratio = facts.get("expert_macs_ratio") or [None] * len(spans)
    for s, n, m, r in zip(spans, steps, macs, ratio):
        out.append(f"| [{s[0]}, {s[1]}) | {n if n is not None else '-'} | {fmt_macs(m)} | {fmt_num(r, 3)} |")
    out += ["", "## Quality and speed", "",
            "| | FID | KID | MACs ratio | ms/image | speed-up |", "|---|---|---|---|---|---|",
            f"| this model | {fmt_ci(fid.get('mean'), fid.get('ci_low'), fid.get('ci_high'), 2)} | "
            f"{fmt_ci(kid.get('mean'), kid.get('ci_low'), kid.get('ci_high'), 4)} | {fmt_num(facts.get('macs_ratio'), 3)} | "
            f"{fmt_num(facts.get('latency_ms_per_image'))} | {fmt_num(facts.get('speedup'))} |"]
    if bfid:
        bkid = facts.get("base_kid") or {}
        out.append(f"| base model | {fmt_ci(bfid.get('mean'), bfid.get('ci_low'), bfid.get('ci_high'), 2)} | "
                   f"{fmt_ci(bkid.get('mean'), bkid.get('ci_low'), bkid.get('ci_high'), 4)} | 1.000 | "
                   f"{fmt_num(facts.get('base_latency_ms_per_image'))} | 1.00 |")
    out += ["", f"FID and KID: clean-fid with {facts.get('extractor')} features ({facts.get('feature_dim')}-d), mean and "
            f"{conf}% Student-t interval over the seeds; {samples}. Latency: a whole trajectory at batch "
            f"{facts.get('latency_batch_size')}, per image, timed beside the base model in the same run on "
            f"{machine_text(facts.get('machine'))}.", "",
            "## How it was made", "", f"Exported with `{facts.get('command')}` from `{facts.get('source')}` of run "
            f"`{facts['run']}` (bench configuration {facts.get('config_key')}). The run's config (rerun it with "
            "`diffnas run --config config.yaml`):", "", "```yaml", (config_text or "(config.yaml not found)").rstrip(),
            "```", ""]
    return "\n".join(out)
