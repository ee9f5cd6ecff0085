"""One experiment's run: its folder, the artefacts in it, and the stages that write them.

- :class:`RunDir`: the paths of ``runs/<name>/`` and the ``results.jsonl`` writer/reader.
- :class:`RunContext`: the config, the run folder and every artefact in it (base model,
  scheduler, intervals, experts, data, held-out set, mixture space (joint with the steps when
  ``schedule.joint``), evaluation features, trajectory proxy, allocations, results), each loaded
  once, on first use. Every command and stage takes one.
- The stage registry (:class:`Stage`, :func:`register_stage`, :func:`all_stages`,
  :func:`stage_key`) and the runner :func:`run_pipeline` behind ``diffnas run``. The method's
  stages are registered by :mod:`nas.pipeline`; other packages register theirs through the
  ``diffnas.plugins`` entry point.
- What the stages share from the config and the run folder: :func:`read_intervals`,
  :func:`train_settings`, :func:`finetune_settings`, :func:`space_options`, :func:`experts_data`
  (the training samples and the fixed held-out set).

Example:
    >>> from nas.config import load_config
    >>> ctx = RunContext(load_config(None, ["name=doc"]))
    >>> ctx.run.results_path.name
    'results.jsonl'
"""

from nas.run._artefacts import (
    HELDOUT_FILE,
    experts_data,
    finetune_settings,
    heldout_path,
    read_intervals,
    space_options,
    train_condition,
    train_settings,
)
from nas.run._context import RunContext, check_experts, prepare_run
from nas.run._proxy import build_trajectory_proxy, proxy_quality
from nas.run._rundir import RunDir, to_jsonable
from nas.run._runner import LEDGER_FILE, PipelineResult, StageOutcome, run_pipeline
from nas.run._stages import (
    STAGE_MODULES,
    Stage,
    all_stages,
    get_stage,
    load_stages,
    register_stage,
    stage_key,
    stage_names,
)

__all__ = [
    "HELDOUT_FILE",
    "LEDGER_FILE",
    "PipelineResult",
    "RunContext",
    "RunDir",
    "STAGE_MODULES",
    "Stage",
    "StageOutcome",
    "all_stages",
    "build_trajectory_proxy",
    "check_experts",
    "experts_data",
    "finetune_settings",
    "get_stage",
    "heldout_path",
    "load_stages",
    "prepare_run",
    "proxy_quality",
    "read_intervals",
    "register_stage",
    "run_pipeline",
    "space_options",
    "stage_key",
    "stage_names",
    "to_jsonable",
    "train_condition",
    "train_settings",
]
