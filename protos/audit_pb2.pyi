from barnraise.protos import auth_pb2 as _auth_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AuditRequest(_message.Message):
    __slots__ = ("group_id", "part_index", "segments", "auth")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    PART_INDEX_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    part_index: int
    segments: _containers.RepeatedScalarFieldContainer[int]
    auth: _auth_pb2.RequestAuth
    def __init__(self, group_id: _Optional[str] = ..., part_index: _Optional[int] = ..., segments: _Optional[_Iterable[int]] = ..., auth: _Optional[_Union[_auth_pb2.RequestAuth, _Mapping]] = ...) -> None: ...

class CommittedInput(_message.Message):
    __slots__ = ("sender", "weight", "values", "path", "root", "signature", "data", "scales", "block_size")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    sender: str
    weight: float
    values: bytes
    path: _containers.RepeatedScalarFieldContainer[bytes]
    root: bytes
    signature: bytes
    data: bytes
    scales: bytes
    block_size: int
    def __init__(self, sender: _Optional[str] = ..., weight: _Optional[float] = ..., values: _Optional[bytes] = ..., path: _Optional[_Iterable[bytes]] = ..., root: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., data: _Optional[bytes] = ..., scales: _Optional[bytes] = ..., block_size: _Optional[int] = ...) -> None: ...

class SegmentInputs(_message.Message):
    __slots__ = ("segment", "inputs")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    segment: int
    inputs: _containers.RepeatedCompositeFieldContainer[CommittedInput]
    def __init__(self, segment: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[CommittedInput, _Mapping]]] = ...) -> None: ...

class AuditReply(_message.Message):
    __slots__ = ("ok", "reason", "segments")
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    reason: str
    segments: _containers.RepeatedCompositeFieldContainer[SegmentInputs]
    def __init__(self, ok: _Optional[bool] = ..., reason: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[SegmentInputs, _Mapping]]] = ...) -> None: ...

class Accusation(_message.Message):
    __slots__ = ("reducer", "accuser", "group_id", "part_index", "evidence", "why")
    REDUCER_FIELD_NUMBER: _ClassVar[int]
    ACCUSER_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    PART_INDEX_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    reducer: str
    accuser: str
    group_id: str
    part_index: int
    evidence: SegmentInputs
    why: str
    def __init__(self, reducer: _Optional[str] = ..., accuser: _Optional[str] = ..., group_id: _Optional[str] = ..., part_index: _Optional[int] = ..., evidence: _Optional[_Union[SegmentInputs, _Mapping]] = ..., why: _Optional[str] = ...) -> None: ...
