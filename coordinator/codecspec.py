"""The codec catalogue: which update codecs exist and how they rank, as the swarm agrees on them.

Codec names are a wire contract (manifest, join requests, groups): more are added, never renamed.
The manifest validates its codec here and matchmaking negotiates with the ranks here, so neither
needs the encoders (``barnraise.peer.averaging.codecs``), which implement exactly these names.
"""

from __future__ import annotations

# Codecs from largest to smallest payload; a group uses the smallest its members asked for.
CODEC_RANK: dict[str, int] = {"fp32": 0, "fp16": 1, "bf16": 1, "int8": 2, "int4": 3, "topk": 4, "sparse": 5}
CODECS: tuple[str, ...] = tuple(CODEC_RANK)
FLOAT_CODECS: tuple[str, ...] = ("fp32", "fp16", "bf16")


def check_codec(name: str) -> str:
    """``name`` if it is a codec; ValueError naming the choices otherwise."""
    if name not in CODEC_RANK:
        raise ValueError(f"unknown codec {name!r}: choose one of {', '.join(CODECS)}")
    return name


def negotiate_codec(run_codec: str, requested: list[str]) -> str:
    """The group's codec: the smallest any member asked for, never larger than the run's.

    A peer on a slow link asks for a smaller codec; everyone in its group then sends that size,
    because the slowest link bounds the round.
    """
    best = run_codec
    for c in requested:
        if c in CODEC_RANK and CODEC_RANK[c] > CODEC_RANK.get(best, 0):
            best = c
    return best
