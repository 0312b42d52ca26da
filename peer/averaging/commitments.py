"""A member's signed commitment to each chunk it sends a reducer: a Merkle root over its segments.

With every chunk of its part a member sends ``EncodedTensor.commitment``: the Merkle root of the
chunk's values as the reducer decodes them (fp32, little-endian, one leaf per segment of
``segmented.SEGMENT_VALUES`` values) and the member's Ed25519 signature over that root, the group,
the part, the chunk and the weight it claims. The reducer recomputes the root from what it decoded
and refuses a chunk whose commitment does not match, so every input it keeps is one its sender
signed. Later it can hand a verifier one segment of one input with the Merkle path to the signed
root (a few hundred bytes): the verifier learns the exact values the sender sent without trusting
the reducer, and the sender cannot deny them.

The signing key is the peer's identity, whose public key is its peer id (``coordinator/keys.py``),
so a signature is checked against the sender's id alone.
"""

from __future__ import annotations

import hashlib
import struct

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from barnraise.coordinator import keys
from barnraise.peer.averaging.segmented import segment_bounds

DOMAIN = b"barnraise/commitment/v1\0"
ROOT_BYTES = 32
COMMITMENT_BYTES = ROOT_BYTES + keys.SIGNATURE_BYTES  # root, then signature
MAX_PATH = 32  # Merkle path length a verifier accepts (a chunk has at most 2**32 segments)


def _leaf(values: torch.Tensor) -> bytes:
    return hashlib.sha256(b"\0" + values.detach().float().contiguous().numpy().tobytes()).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\1" + left + right).digest()


def leaves(chunk: torch.Tensor) -> list[bytes]:
    """One hash per segment of a chunk's values."""
    return [_leaf(chunk[lo:hi]) for lo, hi in segment_bounds(chunk.numel())] or [_leaf(chunk[:0])]


def _levels(hashes: list[bytes]) -> list[list[bytes]]:
    """Every level of the tree, leaves first; an odd node at the end of a level moves up as is."""
    levels = [hashes]
    while len(levels[-1]) > 1:
        lv = levels[-1]
        levels.append([_node(lv[i], lv[i + 1]) if i + 1 < len(lv) else lv[i] for i in range(0, len(lv), 2)])
    return levels


def root(hashes: list[bytes]) -> bytes:
    return _levels(hashes)[-1][0]


def path(hashes: list[bytes], index: int) -> list[bytes]:
    """The sibling hashes from leaf ``index`` up to the root (none where a node moved up alone)."""
    out = []
    for lv in _levels(hashes)[:-1]:
        sibling = index ^ 1
        if sibling < len(lv):
            out.append(lv[sibling])
        index //= 2
    return out


def root_from_path(leaf_hash: bytes, index: int, count: int, siblings: list[bytes]) -> bytes | None:
    """The root that ``leaf_hash`` at ``index`` of ``count`` leaves leads to; None if the path is malformed."""
    if not 0 <= index < count or len(siblings) > MAX_PATH:
        return None
    node, it = leaf_hash, iter(siblings)
    while count > 1:
        if index ^ 1 < count:
            sibling = next(it, None)
            if sibling is None or len(sibling) != ROOT_BYTES:
                return None
            node = _node(node, sibling) if index % 2 == 0 else _node(sibling, node)
        index, count = index // 2, (count + 1) // 2
    return node if next(it, None) is None else None


def statement(group_id: str, part: int, chunk: int, weight: float, chunk_root: bytes) -> bytes:
    """What a member signs for one chunk of part ``part`` sent with ``weight``."""
    gid = group_id.encode()
    return DOMAIN + struct.pack(">I", len(gid)) + gid + struct.pack(">IId", part, chunk, weight) + chunk_root


def commit(
    identity: Ed25519PrivateKey, group_id: str, part: int, chunk: int, weight: float, values: torch.Tensor
) -> bytes:
    """The commitment field of chunk ``chunk`` whose decoded ``values`` the reducer will hold."""
    r = root(leaves(values))
    return r + identity.sign(statement(group_id, part, chunk, weight, r))


def check(
    commitment: bytes, sender: str, group_id: str, part: int, chunk: int, weight: float, hashes: list[bytes]
) -> str:
    """Why ``commitment`` does not bind ``sender`` to a chunk with these leaf hashes ("" if it does)."""
    if len(commitment) != COMMITMENT_BYTES:
        return f"commitment of {len(commitment)} bytes, not {COMMITMENT_BYTES}"
    r, sig = commitment[:ROOT_BYTES], commitment[ROOT_BYTES:]
    if r != root(hashes):
        return "commitment does not match the chunk's values"
    return verify(sender, sig, statement(group_id, part, chunk, weight, r))


def verify(sender: str, signature: bytes, data: bytes) -> str:
    """Why ``signature`` is not ``sender``'s over ``data`` ("" if it is)."""
    public = keys.public_key_of(sender)
    if public is None:
        return f"sender {sender[:12]} is not an Ed25519 peer id"
    if not keys.verify(public, signature, data):
        return f"bad commitment signature from {sender[:12]}"
    return ""
