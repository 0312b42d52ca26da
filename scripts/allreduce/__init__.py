"""All-reduce benchmark: a worker process per peer and the orchestration that drives four of them.

- ``worker``: one peer (its own DHT node) that runs our averaging protocol or hivemind's
  DecentralizedAverager on demand, round by round, answering in JSON lines.
- ``swarm``: starts the workers in netsim namespaces, starts every round at one shared moment,
  and reads each namespace's interface byte counters around the rounds.

``scripts/bench_codecs.py`` is the entry point.
"""
