from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    PHASE_TRAINING: _ClassVar[Phase]
    PHASE_AVERAGING: _ClassVar[Phase]
    PHASE_SYNCING: _ClassVar[Phase]
    PHASE_IDLE: _ClassVar[Phase]
    PHASE_PAUSED: _ClassVar[Phase]
PHASE_UNSPECIFIED: Phase
PHASE_TRAINING: Phase
PHASE_AVERAGING: Phase
PHASE_SYNCING: Phase
PHASE_IDLE: Phase
PHASE_PAUSED: Phase

class Heartbeat(_message.Message):
    __slots__ = ("peer_id", "version", "run_id", "device", "device_memory_bytes", "link", "samples_per_s", "round", "phase", "loss", "params_hash", "hash_round", "bytes_sent", "bytes_received", "rounds_joined", "rounds_missed", "last_exclusion", "timestamp", "samples_total", "codec_sent", "batch_size", "micro_batch", "compute_fraction", "offenders", "codec_received", "round_wall_s", "init_hash", "recent_hashes", "recent_losses", "exclusion_round", "rounds_late", "late_round", "group_size", "caught_reducers", "dht_records_stored")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_S_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_ROUND_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_JOINED_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_MISSED_FIELD_NUMBER: _ClassVar[int]
    LAST_EXCLUSION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CODEC_SENT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCH_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_FRACTION_FIELD_NUMBER: _ClassVar[int]
    OFFENDERS_FIELD_NUMBER: _ClassVar[int]
    CODEC_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    ROUND_WALL_S_FIELD_NUMBER: _ClassVar[int]
    INIT_HASH_FIELD_NUMBER: _ClassVar[int]
    RECENT_HASHES_FIELD_NUMBER: _ClassVar[int]
    RECENT_LOSSES_FIELD_NUMBER: _ClassVar[int]
    EXCLUSION_ROUND_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_LATE_FIELD_NUMBER: _ClassVar[int]
    LATE_ROUND_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    CAUGHT_REDUCERS_FIELD_NUMBER: _ClassVar[int]
    DHT_RECORDS_STORED_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    version: str
    run_id: str
    device: str
    device_memory_bytes: int
    link: str
    samples_per_s: float
    round: int
    phase: Phase
    loss: float
    params_hash: str
    hash_round: int
    bytes_sent: int
    bytes_received: int
    rounds_joined: int
    rounds_missed: int
    last_exclusion: str
    timestamp: float
    samples_total: int
    codec_sent: str
    batch_size: int
    micro_batch: int
    compute_fraction: float
    offenders: _containers.RepeatedScalarFieldContainer[str]
    codec_received: str
    round_wall_s: float
    init_hash: str
    recent_hashes: _containers.RepeatedCompositeFieldContainer[RoundHash]
    recent_losses: _containers.RepeatedScalarFieldContainer[float]
    exclusion_round: int
    rounds_late: int
    late_round: int
    group_size: int
    caught_reducers: _containers.RepeatedScalarFieldContainer[str]
    dht_records_stored: int
    def __init__(self, peer_id: _Optional[str] = ..., version: _Optional[str] = ..., run_id: _Optional[str] = ..., device: _Optional[str] = ..., device_memory_bytes: _Optional[int] = ..., link: _Optional[str] = ..., samples_per_s: _Optional[float] = ..., round: _Optional[int] = ..., phase: _Optional[_Union[Phase, str]] = ..., loss: _Optional[float] = ..., params_hash: _Optional[str] = ..., hash_round: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ..., rounds_joined: _Optional[int] = ..., rounds_missed: _Optional[int] = ..., last_exclusion: _Optional[str] = ..., timestamp: _Optional[float] = ..., samples_total: _Optional[int] = ..., codec_sent: _Optional[str] = ..., batch_size: _Optional[int] = ..., micro_batch: _Optional[int] = ..., compute_fraction: _Optional[float] = ..., offenders: _Optional[_Iterable[str]] = ..., codec_received: _Optional[str] = ..., round_wall_s: _Optional[float] = ..., init_hash: _Optional[str] = ..., recent_hashes: _Optional[_Iterable[_Union[RoundHash, _Mapping]]] = ..., recent_losses: _Optional[_Iterable[float]] = ..., exclusion_round: _Optional[int] = ..., rounds_late: _Optional[int] = ..., late_round: _Optional[int] = ..., group_size: _Optional[int] = ..., caught_reducers: _Optional[_Iterable[str]] = ..., dht_records_stored: _Optional[int] = ...) -> None: ...

class RoundHash(_message.Message):
    __slots__ = ("round", "params_hash")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PARAMS_HASH_FIELD_NUMBER: _ClassVar[int]
    round: int
    params_hash: str
    def __init__(self, round: _Optional[int] = ..., params_hash: _Optional[str] = ...) -> None: ...

class RunBeacon(_message.Message):
    __slots__ = ("run_id", "genesis", "round_s", "group_size", "timestamp")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    GENESIS_FIELD_NUMBER: _ClassVar[int]
    ROUND_S_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    genesis: float
    round_s: float
    group_size: int
    timestamp: float
    def __init__(self, run_id: _Optional[str] = ..., genesis: _Optional[float] = ..., round_s: _Optional[float] = ..., group_size: _Optional[int] = ..., timestamp: _Optional[float] = ...) -> None: ...

class SignedHeartbeat(_message.Message):
    __slots__ = ("heartbeat", "public_key", "signature")
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    heartbeat: bytes
    public_key: bytes
    signature: bytes
    def __init__(self, heartbeat: _Optional[bytes] = ..., public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...
