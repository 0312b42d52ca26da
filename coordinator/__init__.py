"""What the swarm agrees on: run manifest and keys, bootstrap node, shard registry, gRPC service,
swarm health. Imports run one way: ``protos`` <- ``coordinator`` <- ``peer``."""

__version__ = "0.1.0"
