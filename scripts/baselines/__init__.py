"""What the swarm benchmarks compare barnraise against, and the tools to measure all of them alike.

Every system trains the same model (``peer.model.build_model`` from the run's manifest) on the same
shards (read from the run directory with barnraise's own ``ShardFeed``), logs the same events and
writes parameter snapshots that one evaluator scores on the same held-out bytes afterwards.

- ``workload``: model, data and the timed training loop the baseline workers share.
- ``solo``, ``ddp``, ``hivemind_worker``: the baseline workers (``python -m baselines.X``).
- ``probe``: the real ``barnraise`` CLI with read-only instrumentation (windows, all-reduces,
  snapshots of the agreed parameters).
- ``events``: the JSON Lines event log and snapshot files all of the above write.
- ``corpus``: the built-in corpus with a held-out tail, and the fixed evaluation batch.
- ``evaluator``: loss of every snapshot on the evaluation batch, as curves over wall time.
- ``cpucap``: a CPU quota per emulated machine, so "one peer" means the same compute everywhere.
- ``systems``: each system started inside a ``netsim_lib.NetSim`` and its raw results collected.
- ``metrics``: time to target, utilisation, bytes per parameter, all-reduce time vs the limit.
- ``figures``: from raw runs to the benchmark's figures and the issue's targets.
- ``agreement``: per round, which states each group's members ended with and who missed it.
- ``report``: machine description, tables, result files and the plot.

Workers are run as modules with ``scripts/`` on ``PYTHONPATH``; they import only stdlib, torch,
hivemind and barnraise's own packages.
"""
