from barnraise.protos import auth_pb2 as _auth_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FetchStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FETCH_UNSPECIFIED: _ClassVar[FetchStatus]
    FETCH_OK: _ClassVar[FetchStatus]
    FETCH_NOT_FOUND: _ClassVar[FetchStatus]
    FETCH_WRONG_RUN: _ClassVar[FetchStatus]
    FETCH_BUSY: _ClassVar[FetchStatus]
    FETCH_REFUSED: _ClassVar[FetchStatus]
FETCH_UNSPECIFIED: FetchStatus
FETCH_OK: FetchStatus
FETCH_NOT_FOUND: FetchStatus
FETCH_WRONG_RUN: FetchStatus
FETCH_BUSY: FetchStatus
FETCH_REFUSED: FetchStatus

class ShardLease(_message.Message):
    __slots__ = ("peer_id", "epoch", "shard", "claim_time", "expires_at", "offset", "released")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    CLAIM_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    epoch: int
    shard: int
    claim_time: float
    expires_at: float
    offset: int
    released: bool
    def __init__(self, peer_id: _Optional[str] = ..., epoch: _Optional[int] = ..., shard: _Optional[int] = ..., claim_time: _Optional[float] = ..., expires_at: _Optional[float] = ..., offset: _Optional[int] = ..., released: _Optional[bool] = ...) -> None: ...

class ShardDone(_message.Message):
    __slots__ = ("shard", "epoch", "peer_id", "finished_at")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    shard: int
    epoch: int
    peer_id: str
    finished_at: float
    def __init__(self, shard: _Optional[int] = ..., epoch: _Optional[int] = ..., peer_id: _Optional[str] = ..., finished_at: _Optional[float] = ...) -> None: ...

class EpochMark(_message.Message):
    __slots__ = ("peer_id", "epoch", "timestamp")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    epoch: int
    timestamp: float
    def __init__(self, peer_id: _Optional[str] = ..., epoch: _Optional[int] = ..., timestamp: _Optional[float] = ...) -> None: ...

class CacheAnnouncement(_message.Message):
    __slots__ = ("peer_id", "n_shards", "bitmap", "timestamp")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    N_SHARDS_FIELD_NUMBER: _ClassVar[int]
    BITMAP_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    n_shards: int
    bitmap: bytes
    timestamp: float
    def __init__(self, peer_id: _Optional[str] = ..., n_shards: _Optional[int] = ..., bitmap: _Optional[bytes] = ..., timestamp: _Optional[float] = ...) -> None: ...

class ShardFetchRequest(_message.Message):
    __slots__ = ("run_id", "sha256", "auth")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    sha256: str
    auth: _auth_pb2.RequestAuth
    def __init__(self, run_id: _Optional[str] = ..., sha256: _Optional[str] = ..., auth: _Optional[_Union[_auth_pb2.RequestAuth, _Mapping]] = ...) -> None: ...

class ShardFetchReply(_message.Message):
    __slots__ = ("status", "total_bytes", "reason")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    status: FetchStatus
    total_bytes: int
    reason: str
    def __init__(self, status: _Optional[_Union[FetchStatus, str]] = ..., total_bytes: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...
