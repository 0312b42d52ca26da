"""The volunteer's peer: the daemon (``daemon.py``) that joins a run and trains round after round, and
its heartbeat, over one subpackage per concern (``net``, ``training``, ``data``, ``averaging``,
``sync``). May import ``protos``, ``coordinator`` and those subpackages; only ``peer.cli`` sits above."""
