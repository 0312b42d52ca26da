"""Training data on the peer: shard leases through the DHT, fetching, verifying and caching shards,
serving them to other peers, and the batch feed. May import ``protos``, ``coordinator`` and
``peer.net``."""
