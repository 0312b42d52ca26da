"""State sync between peers: a newcomer, or a peer that fell behind, downloads the global state from a
donor and checks it against the announced hash. May import ``protos``, ``coordinator``, ``peer.net``,
``peer.training`` and ``peer.averaging``."""
