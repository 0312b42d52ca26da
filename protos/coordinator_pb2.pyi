from barnraise.protos import manifest_pb2 as _manifest_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetManifestRequest(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: bytes
    def __init__(self, token: _Optional[bytes] = ...) -> None: ...

class GetManifestReply(_message.Message):
    __slots__ = ("manifest", "genesis")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    GENESIS_FIELD_NUMBER: _ClassVar[int]
    manifest: _manifest_pb2.SignedManifest
    genesis: float
    def __init__(self, manifest: _Optional[_Union[_manifest_pb2.SignedManifest, _Mapping]] = ..., genesis: _Optional[float] = ...) -> None: ...

class ShardRequest(_message.Message):
    __slots__ = ("sha256", "offset", "token")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    offset: int
    token: bytes
    def __init__(self, sha256: _Optional[str] = ..., offset: _Optional[int] = ..., token: _Optional[bytes] = ...) -> None: ...

class ShardChunk(_message.Message):
    __slots__ = ("offset", "data", "total_bytes")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_bytes: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class RoundSummary(_message.Message):
    __slots__ = ("round", "loss", "samples_per_s", "peers", "timestamp")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_S_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    round: int
    loss: float
    samples_per_s: float
    peers: int
    timestamp: float
    def __init__(self, round: _Optional[int] = ..., loss: _Optional[float] = ..., samples_per_s: _Optional[float] = ..., peers: _Optional[int] = ..., timestamp: _Optional[float] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("max_rounds",)
    MAX_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    max_rounds: int
    def __init__(self, max_rounds: _Optional[int] = ...) -> None: ...

class HistoryReply(_message.Message):
    __slots__ = ("rounds",)
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    rounds: _containers.RepeatedCompositeFieldContainer[RoundSummary]
    def __init__(self, rounds: _Optional[_Iterable[_Union[RoundSummary, _Mapping]]] = ...) -> None: ...

class CoordinatorRecord(_message.Message):
    __slots__ = ("run_id", "grpc_addrs", "genesis", "round_s", "peer_id", "timestamp", "version", "run_public_key", "python_version", "torch_version", "hivemind_version")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDRS_FIELD_NUMBER: _ClassVar[int]
    GENESIS_FIELD_NUMBER: _ClassVar[int]
    ROUND_S_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    TORCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    HIVEMIND_VERSION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    grpc_addrs: _containers.RepeatedScalarFieldContainer[str]
    genesis: float
    round_s: float
    peer_id: str
    timestamp: float
    version: str
    run_public_key: bytes
    python_version: str
    torch_version: str
    hivemind_version: str
    def __init__(self, run_id: _Optional[str] = ..., grpc_addrs: _Optional[_Iterable[str]] = ..., genesis: _Optional[float] = ..., round_s: _Optional[float] = ..., peer_id: _Optional[str] = ..., timestamp: _Optional[float] = ..., version: _Optional[str] = ..., run_public_key: _Optional[bytes] = ..., python_version: _Optional[str] = ..., torch_version: _Optional[str] = ..., hivemind_version: _Optional[str] = ...) -> None: ...

class TimeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TimeReply(_message.Message):
    __slots__ = ("time",)
    TIME_FIELD_NUMBER: _ClassVar[int]
    time: float
    def __init__(self, time: _Optional[float] = ...) -> None: ...
