"""Fuzz targets of verified reduction and of the DHT's record gate.

- ``record_validator``: ``SignedRecordValidator.validate``, which every DHT node runs on every
  record it is asked to store or hears in an answer: hostile subkeys, values and expirations.
- ``revocation_record``: ``tokens.read_revocation`` on whatever a DHT lookup returns.
- ``audit_protobuf`` / ``audit_request``: the audit messages and the ``barnraise.audit`` request cap.
- ``audit_answer``: a reducer's ``Auditor._answer`` on hostile requests for the part it kept.
- ``audit_evidence``: ``audit.check_evidence`` on mutated evidence (values, paths, signatures,
  weights, senders, segment numbers): only untouched evidence may pass as honest or prove a lie.
- ``accusation``: ``Auditor.judge`` on hostile accusations relayed by a leader.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch
from hypothesis import strategies as st

from barnraise.coordinator import keys, signing, tokens
from barnraise.peer.averaging import audit, codecs, commitments
from barnraise.peer.averaging.auditor import AUDIT, Auditor
from barnraise.peer.averaging.partreducer import PartReducer
from barnraise.peer.averaging.robust import RobustConfig
from barnraise.peer.net.auth import OPEN_RUN
from barnraise.protos import audit_pb2, auth_pb2, averaging_pb2
from tests.fuzz.peer_targets import check_proto, check_request, run_async
from tests.fuzz.record_targets import NOW, RUN_KEY, RUN_PUB, SUBKEYS, _sealed
from tests.fuzz.strategies import encoded, hostile, interesting_ints, messages, spoiled
from tests.fuzz.targets import Target

# --- the DHT's record gate --------------------------------------------------------------------------


@dataclass
class _Record:  # the fields of hivemind's DHTRecord that a validator reads
    key: bytes
    subkey: bytes
    value: bytes
    expiration_time: float


def _packed(obj) -> bytes:
    from hivemind.utils.serializer import MSGPackSerializer

    return MSGPackSerializer.dumps(obj)


@st.composite
def validator_case(draw):
    key, subkey, exp, _record, sealed = draw(st.sampled_from(range(2)).map(lambda i: _sealed()[i]))
    key_id = signing.dht_key_id(key)
    record = _Record(
        key=draw(st.sampled_from([key_id, key_id, signing.dht_key_id("barnraise/other"), b""])),
        subkey=draw(
            st.one_of(
                st.just(_packed(subkey)),
                st.sampled_from(SUBKEYS).map(_packed),
                st.binary(max_size=64),
                st.sampled_from([_packed(3), _packed(None), _packed([subkey])]),
            )
        ),
        value=draw(
            st.one_of(
                st.just(_packed(sealed)),
                hostile(st.just(sealed)).map(_packed),
                st.binary(max_size=256),
                st.sampled_from([_packed("text"), _packed(7), _packed({"a": b"b"})]),
            )
        ),
        expiration_time=draw(st.sampled_from([exp, exp, exp + 1.0, math.nan, math.inf])),
    )
    return (key_id, _packed(subkey), exp), record


def check_validator(case) -> None:
    original, record = case
    ok = signing.SignedRecordValidator().validate(record)
    assert isinstance(ok, bool)
    try:
        from hivemind.utils.serializer import MSGPackSerializer

        owner = signing.owner_of(MSGPackSerializer.loads(record.subkey))
    except Exception:
        owner = None
    if ok and owner is not None:  # an owned record accepted: it must be the one its owner sealed
        assert (record.key, record.subkey, record.expiration_time) == original


# --- the run's revocation record ----------------------------------------------------------------------

RUN_ID = "run"


@cache
def _revocation() -> tuple[str, bytes]:
    signing.register_signer(RUN_KEY)
    subkey = signing.runkey_subkey(RUN_PUB)
    rev = auth_pb2.Revocation(run_id=RUN_ID, banned_peer_ids=["x"], issued_at=NOW)
    return subkey, signing.seal(tokens.revocations_key(RUN_ID), subkey, NOW + 60, rev.SerializeToString())


@dataclass
class _Item:
    value: object
    expiration_time: object


class _Found:
    def __init__(self, value):
        self.value = value


class _Done:
    def __init__(self, value):
        self._value = value

    def result(self, timeout=None):
        return self._value

    def cancel(self) -> None:
        pass


class _FakeDHT:
    def __init__(self, found):
        self.found = found

    def get(self, key, latest=True, return_future=False):
        return _Done(self.found)


@st.composite
def revocation_case(draw):
    subkey, sealed = _revocation()
    item = _Item(
        value=draw(st.one_of(hostile(st.just(sealed)), st.just(sealed), st.integers(), st.none())),
        expiration_time=draw(st.sampled_from([NOW + 60, NOW + 61, 3, None, math.nan])),
    )
    entries = {draw(st.sampled_from([subkey, subkey, *SUBKEYS, 5])): item}
    found = draw(st.sampled_from([_Found(entries), _Found(entries), _Found([1]), None]))
    return found


def check_revocation(found) -> None:
    rev = tokens.read_revocation(_FakeDHT(found), RUN_ID, RUN_PUB)
    if rev is not None:
        assert isinstance(rev, auth_pb2.Revocation) and rev.run_id == RUN_ID
        item = found.value[_revocation()[0]]
        assert (item.value, item.expiration_time) == (_revocation()[1], NOW + 60), (
            "an unsealed revocation was used"
        )


# --- audits -------------------------------------------------------------------------------------------

PART, NUMEL = 1, 3000  # three segments, one short


@cache
def _reduced(lie: bool) -> tuple[averaging_pb2.Group, PartReducer, torch.Tensor]:
    """One part reduced by a reducer that kept its signed inputs (lying or not)."""
    people = sorted(
        ((keys.peer_id_of(keys.public_bytes(k)), k) for k in (keys.generate() for _ in range(4))),
        key=lambda t: t[0],
    )
    group = averaging_pb2.Group(group_id="g", round=1, codec="fp32")
    for pid, _ in people:
        group.members.add(peer_id=pid, weight=2.0, part_fraction=0.25)
    r = PartReducer(
        group=group,
        index=PART,
        numel=NUMEL,
        topk_fraction=0.1,
        check_commitments=True,
        lie=(lambda c, v: v + 1.0) if lie else None,
    )
    gen = torch.Generator().manual_seed(1)
    for pid, key in people:
        x = torch.randn(NUMEL, generator=gen)
        r.begin(pid, 2.0)
        enc = codecs.encode(x, "fp32")
        enc.commitment = commitments.commit(key, group.group_id, PART, 0, 2.0, x)
        r.receive_chunk(pid, 0, enc)
    return group, r, codecs.decode(r.chunks[0], NUMEL, "fp32")


def _auditor(r: PartReducer) -> Auditor:
    a = Auditor(p2p=None, peer_id="", auth=OPEN_RUN, robust=RobustConfig())
    a.keep(r)
    return a


@st.composite
def evidence_case(draw):
    lie = draw(st.booleans())
    _, r, _ = _reduced(lie)
    segment = draw(st.integers(0, 2))
    ev = _auditor(r)._evidence_of(r, [segment]).segments[0]
    if draw(st.booleans()):
        return lie, False, ev
    if draw(st.booleans()):
        bad = draw(spoiled(ev))  # scalar fields: segment, weights, values, roots, signatures, senders
    else:
        data = draw(hostile(st.just(ev.SerializeToString())))
        try:
            bad = audit_pb2.SegmentInputs.FromString(data)
        except Exception:
            bad = audit_pb2.SegmentInputs()
    return lie, bad != ev, bad


def check_evidence(case) -> None:
    lie, changed, ev = case
    group, _, delivered = _reduced(lie)
    outcome, why = audit.check_evidence(group, PART, NUMEL, ev, delivered, RobustConfig())
    assert outcome in (audit.HONEST, audit.LIE, audit.INVALID)
    if not changed:
        assert outcome == (audit.LIE if lie else audit.HONEST), why
    elif outcome == audit.HONEST and lie:
        raise AssertionError("forged evidence cleared a lying reducer")


@st.composite
def answer_case(draw):
    req = draw(messages(audit_pb2.AuditRequest))
    if draw(st.booleans()):
        req.group_id = "g"
        req.part_index = draw(st.sampled_from([PART, PART, 0, 7]))
        req.segments[:] = draw(st.lists(interesting_ints(0, 1 << 40), max_size=300))
    return req, draw(st.sampled_from(["member", "stranger"]))


def check_answer(case) -> None:
    req, who = case
    _, r, _ = _reduced(False)

    class _Stream:
        remote = r.members[0] if who == "member" else "stranger"

    reply = run_async(_auditor(r)._answer(_Stream(), req))
    assert isinstance(reply, audit_pb2.AuditReply)
    if reply.ok:
        assert [ev.segment for ev in reply.segments] == list(req.segments)
        assert all(len(inp.values) <= 4 * 1024 for ev in reply.segments for inp in ev.inputs)


@st.composite
def accusation_case(draw):
    lie = draw(st.booleans())
    _, r, _ = _reduced(lie)
    ev = _auditor(r)._evidence_of(r, [0]).segments[0]
    acc = audit_pb2.Accusation(
        reducer=r.members[PART], accuser=r.members[0], group_id="g", part_index=PART, evidence=ev
    )
    return lie, draw(st.one_of(st.just(acc), spoiled(acc)))


def check_accusation(case) -> None:
    lie, acc = case
    group, r, delivered = _reduced(lie)
    average = torch.zeros(NUMEL * 4)
    average[NUMEL : 2 * NUMEL] = delivered
    caught, _ = _auditor(r).judge(group, average, [acc])
    assert set(caught) <= {r.members[PART]}
    if caught:
        assert lie, "an honest reducer was found guilty"


TARGETS = [
    Target("record_validator", "signing.SignedRecordValidator.validate", validator_case(), check_validator),
    Target("revocation_record", "tokens.read_revocation", revocation_case(), check_revocation),
    Target(
        "audit_protobuf",
        "wire.parse_frame (audit messages)",
        st.sampled_from(
            [audit_pb2.AuditRequest, audit_pb2.AuditReply, audit_pb2.SegmentInputs, audit_pb2.Accusation]
        ).flatmap(lambda cls: st.tuples(st.just(cls), hostile(encoded(cls)))),
        check_proto,
    ),
    Target(
        "audit_request",
        "rpc._answer (barnraise.audit request cap)",
        st.tuples(
            st.just(AUDIT),
            hostile(encoded(audit_pb2.AuditRequest)),
            st.one_of(st.none(), interesting_ints(0, (1 << 32) - 1)),
        ),
        check_request,
    ),
    Target("audit_answer", "Auditor._answer", answer_case(), check_answer),
    Target("audit_evidence", "audit.check_evidence", evidence_case(), check_evidence),
    Target("accusation", "Auditor.judge", accusation_case(), check_accusation),
]
