"""The application: the ``sqsd-fast`` commands and the resumable run behind them.

- ``cli``: argument parsing and the summary printed; a thin front over ``commands``;
- ``commands``: every command in one table (options -> runner -> summary), what the CLI,
  the pipeline and Python users (``sqsd_fast.run_command``) go through;
- ``pipeline``: the resumable, sharded run that writes one row per sample (score, project,
  baseline), through the scorer protocol of ``run_protocol``;
- ``distributed``: the world of a torchrun / accelerate launch and its shards;
- ``subsets``, ``filtering``: acting on finished scores (the paper's S1..S5, drop / weight).
"""
