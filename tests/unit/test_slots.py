"""Several peers on one machine: identity slots of one cache directory (peer/slots.py)."""

from __future__ import annotations

import logging

import pytest

from barnraise.coordinator import keys
from barnraise.coordinator.errors import ConfigError
from barnraise.peer.slots import open_peer_identity, slot_path


def peer_id(taken) -> str:
    return keys.peer_id_of(keys.public_bytes(taken.key))


def test_first_peer_keeps_the_single_peer_identity(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="barnraise.peer.slots")
    first = open_peer_identity(tmp_path, None)
    assert first.slot == 0 and first.path == tmp_path / "peer.id"
    assert f"identity {tmp_path / 'peer.id'} (slot 0, peer id {peer_id(first)})" in caplog.text
    first.lock.release()
    again = open_peer_identity(tmp_path, None)
    assert again.slot == 0 and peer_id(again) == peer_id(first)
    again.lock.release()


def test_a_second_peer_takes_the_next_free_slot_and_gets_it_back(tmp_path):
    first = open_peer_identity(tmp_path, None)
    second = open_peer_identity(tmp_path, None)
    third = open_peer_identity(tmp_path, None)
    assert (second.slot, third.slot) == (1, 2)
    assert second.path == slot_path(tmp_path, 1) == tmp_path / "slot-1" / "peer.id"
    assert len({peer_id(first), peer_id(second), peer_id(third)}) == 3
    second.lock.release()
    restarted = open_peer_identity(tmp_path, None)  # the second restarts while the others run
    assert restarted.slot == 1 and peer_id(restarted) == peer_id(second)
    for taken in (first, third, restarted):
        taken.lock.release()


def test_a_named_identity_in_use_is_still_refused(tmp_path):
    path = tmp_path / "mine.id"
    held = open_peer_identity(tmp_path, path)
    assert held.slot is None and held.path == path
    with pytest.raises(ConfigError, match=f"identity {path} is already in use by a running peer"):
        open_peer_identity(tmp_path, path)
    held.lock.release()


def test_a_lock_that_is_not_refused_says_whether_it_is_held(tmp_path):
    lock = keys.IdentityLock(tmp_path / "peer.id")
    other = keys.IdentityLock(tmp_path / "peer.id", refuse=False)
    assert lock.held and not other.held
    other.release()
    lock.release()
    assert keys.IdentityLock(tmp_path / "peer.id", refuse=False).held
