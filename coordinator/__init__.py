"""What the swarm agrees on, imported by the peer and the operator alike: manifest and codec catalogue,
records, signing, keys and tokens, leases, run clock, errors, health rules. May import ``protos``
only; ``coordinator.operator`` and ``peer`` build on it, never the other way round."""

__version__ = "0.1.0"
