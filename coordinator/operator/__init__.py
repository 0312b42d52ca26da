"""The run operator's node and commands: ``init`` (shards and a signed manifest), the bootstrap node
with its coordinator gRPC service, and ``token`` (membership of closed runs). May import ``protos``
and ``coordinator``, never ``peer``; only ``peer.cli``, the one ``barnraise`` entry point, imports it."""
