"""``diffnas export``: hand over one benchmarked model as a self-contained diffusers pipeline folder
with a Hugging Face model card.

Which model: a (method, budget) of the run, or the lowest-FID exportable row under a MACs-ratio
budget and/or a latency limit, read from the run's bench results (``results.jsonl``, the rows the
report shows: :func:`benchmarks.report.build_summary`). Exportable rows are those whose model
is a :class:`~experts.pipeline.MixturePipeline` folder (``mixtures/<method>-<budget>/``: the
router's, the search's and the uniform-width mixtures); the base model with fewer steps or a
statically pruned UNet is refused with one line saying how to use it instead.

What is written (``OUT``, default ``RUN_DIR/export/<method>-<budget>``):

- the pipeline folder's files as the fine-tuning stage saved them (``model_index.json``,
  ``mixture/``, ``scheduler/``, ``vae/`` for latent models; safetensors only), so
  ``MixturePipeline.from_pretrained(OUT)`` loads it in one call and samples with the usual
  arguments (``num_inference_steps``, ``generator``, ``output_type``, or ``seed=`` for the
  bench's own noise);
- ``README.md``: the model card, Hugging Face format with YAML metadata (base model, intervals,
  steps and expert size per interval, trajectory MACs vs the base, FID/KID with intervals,
  extractor and sample counts, latency and speed-up with the machine, the command and config);
  its figures are ``report/summary.json``'s for the same results;
- ``diffnas_export.json``: the same facts, machine-readable, and the files written.

The folder is built in a temporary sibling, loaded back once, then renamed into place; an
existing non-empty ``OUT`` is refused unless ``force`` (then only files a previous export wrote
are replaced; nothing else is deleted). The folder is ``push_to_hub``-ready
(``huggingface_hub.upload_folder``); nothing is pushed.

Example (a run with a benchmarked router mixture at 0.5)::

    >>> from benchmarks.export import export_pipeline             # doctest: +SKIP
    >>> res = export_pipeline("runs/demo", method="router", budget=0.5)  # doctest: +SKIP
    >>> from experts.pipeline import MixturePipeline              # doctest: +SKIP
    >>> pipe = MixturePipeline.from_pretrained(res.folder)        # doctest: +SKIP
    >>> images = pipe(batch_size=4, num_inference_steps=10).images  # doctest: +SKIP
"""

from __future__ import annotations

from benchmarks.export._card import model_card
from benchmarks.export._select import Selection, select_row
from benchmarks.export._writer import MANIFEST, ExportResult, export_pipeline

__all__ = ["MANIFEST", "ExportResult", "Selection", "export_pipeline", "model_card", "select_row"]
