"""The peer's network layer: the hivemind P2P loop, capped length-prefixed frames, membership (sign
what goes out, check what comes in) and the coordinator's gRPC client. May import ``protos`` and
``coordinator`` only; ``data``, ``averaging`` and ``sync`` build on it."""
