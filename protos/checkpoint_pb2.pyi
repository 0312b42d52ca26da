from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ShardOffset(_message.Message):
    __slots__ = ("shard", "offset")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    shard: int
    offset: int
    def __init__(self, shard: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class CheckpointRecord(_message.Message):
    __slots__ = ("peer_id", "run_id", "round", "params_hash", "samples_seen", "epoch", "done", "offsets", "loss", "saved_at", "timestamp")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PARAMS_HASH_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_SEEN_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    SAVED_AT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    run_id: str
    round: int
    params_hash: str
    samples_seen: int
    epoch: int
    done: bytes
    offsets: _containers.RepeatedCompositeFieldContainer[ShardOffset]
    loss: float
    saved_at: float
    timestamp: float
    def __init__(self, peer_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., params_hash: _Optional[str] = ..., samples_seen: _Optional[int] = ..., epoch: _Optional[int] = ..., done: _Optional[bytes] = ..., offsets: _Optional[_Iterable[_Union[ShardOffset, _Mapping]]] = ..., loss: _Optional[float] = ..., saved_at: _Optional[float] = ..., timestamp: _Optional[float] = ...) -> None: ...
