"""Fast, derandomized fuzzing of every parser of network input (scripts/fuzz.py runs the long version).

Each target (tests/fuzz/) must answer hostile input with a valid result or one of our protocol
errors, never another exception, an oversized read or a hang.
"""

from __future__ import annotations

import pytest

from tests.fuzz.targets import all_targets, run_target

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(120)]

EXAMPLES = 100  # per target: the whole file runs in about 15 s on 2 shared cores

TARGETS = all_targets()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target(name):
    assert run_target(TARGETS[name], EXAMPLES) > 0


def test_state_transfer_of_zero_parameters():
    # The fuzzer's input (state_transfer): a donor's valid reply for a model of 0 parameters.
    from tests.fuzz.peer_targets import check_state_stream

    reply = (
        b'\x00\x00\x00\x16\x08\x01"\x10e3b0c44298fc1c14(\x15\x00\x00\x00\x00\x00\x00\x00\x15'
        b"BRST1\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    )
    check_state_stream((0, reply))


def test_a_donor_sending_empty_frames_is_refused_at_the_first():
    # A state header announcing 8 bytes, then empty frames: each arrives on time, so without a check
    # the download would wait for ever.
    from barnraise.coordinator.errors import ProtocolError
    from barnraise.peer.net.auth import OPEN_RUN
    from barnraise.peer.sync.statesync import download_state
    from barnraise.protos import averaging_pb2
    from tests.fuzz.peer_targets import PEER, FakeP2P, frame, run_async

    head = averaging_pb2.StateHeader(ok=True, round=1, params_hash="0" * 16, total_bytes=8)
    data = frame(head.SerializeToString()) + frame(b"") * 1000
    with pytest.raises(ProtocolError, match="empty frame"):
        run_async(download_state(FakeP2P(data), PEER, "run", 1, 1.0, auth=OPEN_RUN))
