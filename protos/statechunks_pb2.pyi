from barnraise.protos import auth_pb2 as _auth_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StateManifest(_message.Message):
    __slots__ = ("ok", "reason", "round", "params_hash", "numel", "chunk_bytes", "param_chunks", "momentum_chunks")
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PARAMS_HASH_FIELD_NUMBER: _ClassVar[int]
    NUMEL_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARAM_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    reason: str
    round: int
    params_hash: str
    numel: int
    chunk_bytes: int
    param_chunks: _containers.RepeatedScalarFieldContainer[bytes]
    momentum_chunks: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, ok: _Optional[bool] = ..., reason: _Optional[str] = ..., round: _Optional[int] = ..., params_hash: _Optional[str] = ..., numel: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., param_chunks: _Optional[_Iterable[bytes]] = ..., momentum_chunks: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ChunkRequest(_message.Message):
    __slots__ = ("run_id", "round", "params_hash", "chunks", "auth")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PARAMS_HASH_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    params_hash: str
    chunks: _containers.RepeatedScalarFieldContainer[int]
    auth: _auth_pb2.RequestAuth
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., params_hash: _Optional[str] = ..., chunks: _Optional[_Iterable[int]] = ..., auth: _Optional[_Union[_auth_pb2.RequestAuth, _Mapping]] = ...) -> None: ...

class ChunkReply(_message.Message):
    __slots__ = ("ok", "reason", "index", "data")
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    reason: str
    index: int
    data: bytes
    def __init__(self, ok: _Optional[bool] = ..., reason: _Optional[str] = ..., index: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class UpdatesRequest(_message.Message):
    __slots__ = ("run_id", "from_round", "base_hash", "to_round", "max_bytes", "wait_s", "auth")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ROUND_FIELD_NUMBER: _ClassVar[int]
    BASE_HASH_FIELD_NUMBER: _ClassVar[int]
    TO_ROUND_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    from_round: int
    base_hash: str
    to_round: int
    max_bytes: int
    wait_s: float
    auth: _auth_pb2.RequestAuth
    def __init__(self, run_id: _Optional[str] = ..., from_round: _Optional[int] = ..., base_hash: _Optional[str] = ..., to_round: _Optional[int] = ..., max_bytes: _Optional[int] = ..., wait_s: _Optional[float] = ..., auth: _Optional[_Union[_auth_pb2.RequestAuth, _Mapping]] = ...) -> None: ...

class KeptRound(_message.Message):
    __slots__ = ("round", "base_hash", "result_hash", "params_hash", "codec", "part_chunks", "encoded_bytes")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    BASE_HASH_FIELD_NUMBER: _ClassVar[int]
    RESULT_HASH_FIELD_NUMBER: _ClassVar[int]
    PARAMS_HASH_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    PART_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    ENCODED_BYTES_FIELD_NUMBER: _ClassVar[int]
    round: int
    base_hash: str
    result_hash: str
    params_hash: str
    codec: str
    part_chunks: _containers.RepeatedScalarFieldContainer[int]
    encoded_bytes: int
    def __init__(self, round: _Optional[int] = ..., base_hash: _Optional[str] = ..., result_hash: _Optional[str] = ..., params_hash: _Optional[str] = ..., codec: _Optional[str] = ..., part_chunks: _Optional[_Iterable[int]] = ..., encoded_bytes: _Optional[int] = ...) -> None: ...

class UpdatesHeader(_message.Message):
    __slots__ = ("ok", "reason", "rounds")
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    reason: str
    rounds: _containers.RepeatedCompositeFieldContainer[KeptRound]
    def __init__(self, ok: _Optional[bool] = ..., reason: _Optional[str] = ..., rounds: _Optional[_Iterable[_Union[KeptRound, _Mapping]]] = ...) -> None: ...
