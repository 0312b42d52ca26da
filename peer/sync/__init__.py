"""The global state a peer holds and how it moves: the immutable state and its outer step, a
launched round's life up to the state it leads to, and state sync between peers (serving it,
catching up). May import ``protos``, ``coordinator``, ``peer.net``, ``peer.training`` and
``peer.averaging``."""
