"""Attack harness: an in-process swarm whose reducers run the peer's real aggregation code.

``sim`` trains N peers on the built-in corpus with the real model, inner trainer, codec, reducer
(``peer.allreduce.PartReducer`` with ``peer.robust``) and outer step; some of them send what
``peer.attacks.Attacker`` forges. Only the network is left out. ``scripts/bench_attacks.py`` runs it.
"""
