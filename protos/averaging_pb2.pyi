from barnraise.protos import audit_pb2 as _audit_pb2
from barnraise.protos import auth_pb2 as _auth_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JoinStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOIN_UNSPECIFIED: _ClassVar[JoinStatus]
    JOIN_ACCEPTED: _ClassVar[JoinStatus]
    JOIN_NOT_LEADER: _ClassVar[JoinStatus]
    JOIN_STALE_BASE: _ClassVar[JoinStatus]
    JOIN_TOO_LATE: _ClassVar[JoinStatus]
    JOIN_WRONG_ROUND: _ClassVar[JoinStatus]
    JOIN_REFUSED: _ClassVar[JoinStatus]

class PartStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PART_UNSPECIFIED: _ClassVar[PartStatus]
    PART_OK: _ClassVar[PartStatus]
    PART_REJECTED: _ClassVar[PartStatus]
    PART_FAILED: _ClassVar[PartStatus]
JOIN_UNSPECIFIED: JoinStatus
JOIN_ACCEPTED: JoinStatus
JOIN_NOT_LEADER: JoinStatus
JOIN_STALE_BASE: JoinStatus
JOIN_TOO_LATE: JoinStatus
JOIN_WRONG_ROUND: JoinStatus
JOIN_REFUSED: JoinStatus
PART_UNSPECIFIED: PartStatus
PART_OK: PartStatus
PART_REJECTED: PartStatus
PART_FAILED: PartStatus

class EncodedTensor(_message.Message):
    __slots__ = ("codec", "numel", "data", "scales", "indices", "block_size", "nnz", "commitment")
    CODEC_FIELD_NUMBER: _ClassVar[int]
    NUMEL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    NNZ_FIELD_NUMBER: _ClassVar[int]
    COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    codec: str
    numel: int
    data: bytes
    scales: bytes
    indices: bytes
    block_size: int
    nnz: int
    commitment: bytes
    def __init__(self, codec: _Optional[str] = ..., numel: _Optional[int] = ..., data: _Optional[bytes] = ..., scales: _Optional[bytes] = ..., indices: _Optional[bytes] = ..., block_size: _Optional[int] = ..., nnz: _Optional[int] = ..., commitment: _Optional[bytes] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("run_id", "round", "peer_id", "weight", "base_hash", "codec", "bandwidth_bps", "base_round", "auth", "reach")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    BASE_HASH_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_BPS_FIELD_NUMBER: _ClassVar[int]
    BASE_ROUND_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    REACH_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    peer_id: str
    weight: float
    base_hash: str
    codec: str
    bandwidth_bps: float
    base_round: int
    auth: _auth_pb2.RequestAuth
    reach: str
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., peer_id: _Optional[str] = ..., weight: _Optional[float] = ..., base_hash: _Optional[str] = ..., codec: _Optional[str] = ..., bandwidth_bps: _Optional[float] = ..., base_round: _Optional[int] = ..., auth: _Optional[_Union[_auth_pb2.RequestAuth, _Mapping]] = ..., reach: _Optional[str] = ...) -> None: ...

class GroupMember(_message.Message):
    __slots__ = ("peer_id", "weight", "part_fraction", "bandwidth_bps")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PART_FRACTION_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_BPS_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    weight: float
    part_fraction: float
    bandwidth_bps: float
    def __init__(self, peer_id: _Optional[str] = ..., weight: _Optional[float] = ..., part_fraction: _Optional[float] = ..., bandwidth_bps: _Optional[float] = ...) -> None: ...

class Group(_message.Message):
    __slots__ = ("group_id", "round", "codec", "base_hash", "members", "reduce_deadline", "exchange_s")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    BASE_HASH_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    REDUCE_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_S_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    round: int
    codec: str
    base_hash: str
    members: _containers.RepeatedCompositeFieldContainer[GroupMember]
    reduce_deadline: float
    exchange_s: float
    def __init__(self, group_id: _Optional[str] = ..., round: _Optional[int] = ..., codec: _Optional[str] = ..., base_hash: _Optional[str] = ..., members: _Optional[_Iterable[_Union[GroupMember, _Mapping]]] = ..., reduce_deadline: _Optional[float] = ..., exchange_s: _Optional[float] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("status", "reason", "leader", "group")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    status: JoinStatus
    reason: str
    leader: str
    group: Group
    def __init__(self, status: _Optional[_Union[JoinStatus, str]] = ..., reason: _Optional[str] = ..., leader: _Optional[str] = ..., group: _Optional[_Union[Group, _Mapping]] = ...) -> None: ...

class PartMessage(_message.Message):
    __slots__ = ("group_id", "sender", "part_index", "weight", "tensor", "auth")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    PART_INDEX_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    sender: str
    part_index: int
    weight: float
    tensor: EncodedTensor
    auth: _auth_pb2.RequestAuth
    def __init__(self, group_id: _Optional[str] = ..., sender: _Optional[str] = ..., part_index: _Optional[int] = ..., weight: _Optional[float] = ..., tensor: _Optional[_Union[EncodedTensor, _Mapping]] = ..., auth: _Optional[_Union[_auth_pb2.RequestAuth, _Mapping]] = ...) -> None: ...

class ReducedPart(_message.Message):
    __slots__ = ("status", "reason", "tensor", "contributors", "total_weight", "excluded", "exclusions")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    EXCLUSIONS_FIELD_NUMBER: _ClassVar[int]
    status: PartStatus
    reason: str
    tensor: EncodedTensor
    contributors: _containers.RepeatedScalarFieldContainer[str]
    total_weight: float
    excluded: _containers.RepeatedScalarFieldContainer[str]
    exclusions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, status: _Optional[_Union[PartStatus, str]] = ..., reason: _Optional[str] = ..., tensor: _Optional[_Union[EncodedTensor, _Mapping]] = ..., contributors: _Optional[_Iterable[str]] = ..., total_weight: _Optional[float] = ..., excluded: _Optional[_Iterable[str]] = ..., exclusions: _Optional[_Iterable[str]] = ...) -> None: ...

class Confirm(_message.Message):
    __slots__ = ("group_id", "sender", "result_hash", "failure", "offenders", "auth", "accusations")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RESULT_HASH_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    OFFENDERS_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    ACCUSATIONS_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    sender: str
    result_hash: str
    failure: str
    offenders: _containers.RepeatedScalarFieldContainer[str]
    auth: _auth_pb2.RequestAuth
    accusations: _containers.RepeatedCompositeFieldContainer[_audit_pb2.Accusation]
    def __init__(self, group_id: _Optional[str] = ..., sender: _Optional[str] = ..., result_hash: _Optional[str] = ..., failure: _Optional[str] = ..., offenders: _Optional[_Iterable[str]] = ..., auth: _Optional[_Union[_auth_pb2.RequestAuth, _Mapping]] = ..., accusations: _Optional[_Iterable[_Union[_audit_pb2.Accusation, _Mapping]]] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("ok", "result_hash", "agreed", "reason", "offenders", "accusations")
    OK_FIELD_NUMBER: _ClassVar[int]
    RESULT_HASH_FIELD_NUMBER: _ClassVar[int]
    AGREED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OFFENDERS_FIELD_NUMBER: _ClassVar[int]
    ACCUSATIONS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    result_hash: str
    agreed: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    offenders: _containers.RepeatedScalarFieldContainer[str]
    accusations: _containers.RepeatedCompositeFieldContainer[_audit_pb2.Accusation]
    def __init__(self, ok: _Optional[bool] = ..., result_hash: _Optional[str] = ..., agreed: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., offenders: _Optional[_Iterable[str]] = ..., accusations: _Optional[_Iterable[_Union[_audit_pb2.Accusation, _Mapping]]] = ...) -> None: ...

class StateRequest(_message.Message):
    __slots__ = ("run_id", "min_round", "wait_s", "auth")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_ROUND_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    min_round: int
    wait_s: float
    auth: _auth_pb2.RequestAuth
    def __init__(self, run_id: _Optional[str] = ..., min_round: _Optional[int] = ..., wait_s: _Optional[float] = ..., auth: _Optional[_Union[_auth_pb2.RequestAuth, _Mapping]] = ...) -> None: ...

class StateHeader(_message.Message):
    __slots__ = ("ok", "reason", "round", "params_hash", "total_bytes")
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PARAMS_HASH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    reason: str
    round: int
    params_hash: str
    total_bytes: int
    def __init__(self, ok: _Optional[bool] = ..., reason: _Optional[str] = ..., round: _Optional[int] = ..., params_hash: _Optional[str] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class StateChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class RoundEntry(_message.Message):
    __slots__ = ("peer_id", "weight", "base_hash", "timestamp", "reach")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    BASE_HASH_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    REACH_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    weight: float
    base_hash: str
    timestamp: float
    reach: str
    def __init__(self, peer_id: _Optional[str] = ..., weight: _Optional[float] = ..., base_hash: _Optional[str] = ..., timestamp: _Optional[float] = ..., reach: _Optional[str] = ...) -> None: ...
