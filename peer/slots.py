"""Several peers on one machine: without ``--identity``, each takes the first free identity slot.

Slot 0 is ``CACHE_DIR/peer.id``, the identity of a peer alone on its machine; slot n (n >= 1) is
``CACHE_DIR/slot-n/peer.id``. A peer takes the lowest slot whose lock (``keys.IdentityLock``) no
running peer holds. So a single peer keeps its peer id across restarts as before, and a second
peer restarted while the first runs gets slot 1, and its peer id, back. An ``--identity FILE``
that a running peer holds is refused, as before.

The rest of CACHE_DIR is shared by the slots, which is safe and saves disk:
- the shard cache (``CACHE_DIR/RUN_ID/shards``): files named by their sha256, written atomically
  under a per-process temporary name, re-verified on every read; one peer's eviction only costs
  the other a re-fetch (it trains from the bytes it already read). The directory stays within the
  smallest ``--cache-budget-mb`` of the peers sharing it;
- the run keys trusted on first use (``known_runs.json``): the trust is the machine owner's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from barnraise.coordinator import keys
from barnraise.coordinator.errors import ConfigError
from barnraise.peer.net.auth import open_identity

log = logging.getLogger(__name__)

IDENTITY_FILE = "peer.id"
MAX_SLOTS = 64  # peers sharing one cache directory; more is surely a runaway script


@dataclass(frozen=True)
class Identity:
    """The key a peer runs with, the file it lives in, and the lock that keeps it to this process."""

    key: Ed25519PrivateKey
    path: Path
    lock: keys.IdentityLock
    slot: int | None  # None: the user named the file (--identity)


def slot_path(cache_dir: Path, slot: int) -> Path:
    """The identity file of ``slot``: slot 0 is the single peer's ``CACHE_DIR/peer.id``."""
    return cache_dir / IDENTITY_FILE if slot == 0 else cache_dir / f"slot-{slot}" / IDENTITY_FILE


def take_slot(cache_dir: Path) -> tuple[int, keys.IdentityLock]:
    """The lowest slot no running peer holds, locked for this process."""
    for slot in range(MAX_SLOTS):
        path = slot_path(cache_dir, slot)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = keys.IdentityLock(path, refuse=False)
        if lock.held:
            return slot, lock
    raise ConfigError(
        f"all {MAX_SLOTS} identity slots of {cache_dir} are in use by running peers: "
        "stop one, or pass --cache-dir DIR or --identity FILE"
    )


def open_peer_identity(cache_dir: Path, identity: Path | None) -> Identity:
    """``identity`` if given (refused while a running peer holds it), else a free slot's, created
    if missing; logs which one this peer took."""
    if identity is not None:
        key, lock = open_identity(identity, default_location=False)
        taken = Identity(key=key, path=identity, lock=lock, slot=None)
    else:
        slot, lock = take_slot(cache_dir)
        path = slot_path(cache_dir, slot)
        try:  # the lock is taken first, so two peers starting together never create one file twice
            key = keys.ensure_identity(path, replace_foreign=True)
        except BaseException:
            lock.release()
            raise
        taken = Identity(key=key, path=path, lock=lock, slot=slot)
    peer_id = keys.peer_id_of(keys.public_bytes(taken.key))
    where = "--identity" if taken.slot is None else f"slot {taken.slot}"
    log.info("identity %s (%s, peer id %s)", taken.path, where, peer_id)
    return taken
