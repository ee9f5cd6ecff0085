"""diffnas's framework layer: runs, stages, configuration, the CLI, and the searched alternative.

Sub-packages, one role each (their ``__init__`` exports the public names):

- :mod:`nas.run`: :class:`~nas.run.RunDir`, :class:`~nas.run.RunContext` (owns ``runs/<name>/``
  and loads each artefact once), the stage registry and :func:`~nas.run.run_pipeline`;
- :mod:`nas.methods`: the allocation-method interface and registry, and plugin loading
  (entry-point group ``diffnas.plugins``);
- :mod:`nas.config`: one frozen dataclass per stage, strict YAML, presets;
- :mod:`nas.search`: Optuna studies of allocations, search backends by name, the objective
  contract suite; :mod:`nas.ray_backend`: the Ray Tune backend (depends on ``nas.search``);
- :mod:`nas.metrics`: FID/KID through clean-fid with offline feature extractors;
- :mod:`nas.commands` and :mod:`nas.cli`: the ``diffnas`` console script, thin adapters over the
  library (nothing else imports them).

Library modules for the method's stages, each taking a :class:`~nas.run.RunContext`:
:mod:`nas.pipeline` (registers the stages base, intervals, experts, router, search),
:mod:`nas.intervals`, :mod:`nas.experts_stage`, :mod:`nas.routing`, :mod:`nas.search_run`,
:mod:`nas.search_objective`, :mod:`nas.evaluation`; base models (:mod:`nas.models`), data
(:mod:`nas.data`), sampling (:mod:`nas.sampling`).

Imports point one way: ``search_spaces <- experts <- router <- nas <- benchmarks``.
"""
