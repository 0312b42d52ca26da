"""Averaging a round's update within a group: matchmaking, the butterfly all-reduce, update codecs
and robust aggregation of each part. May import ``protos``, ``coordinator`` and ``peer.net``."""
