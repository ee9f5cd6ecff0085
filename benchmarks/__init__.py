"""The comparison: allocation methods and baselines at equal MACs and equal fine-tuning cost, and
the reports.

- :mod:`benchmarks.methods`: the built-in allocation methods (``router``, ``search``,
  ``uniform``, ``static``, ``fewer_steps``, ``steps``, ``base``, ``cache``), registered with
  :mod:`nas.methods` by :mod:`benchmarks.plugin`;
- :mod:`benchmarks.bench`: fine-tunes and scores every (method, budget): FID/KID with intervals,
  trajectory MACs, latency; one row per model in ``results.jsonl``;
- :mod:`benchmarks.report`: Pareto fronts, tables and plots rebuilt from stored results alone;
- :mod:`benchmarks.static_pruning`: the torch-pruning baseline;
- :mod:`benchmarks.cli`: the ``bench`` and ``report`` commands and the ``finetune``, ``bench``,
  ``report`` stages, registered through the plugin (``nas`` never imports this package);
- scripts: ``latency.py``, ``router_synthetic.py``, ``sliced_eval.py``, ``proxy_rank.py``
  (results under ``benchmarks/results/``).
"""
