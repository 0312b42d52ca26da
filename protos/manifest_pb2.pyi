from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelConfig(_message.Message):
    __slots__ = ("name", "vocab_size", "seq_len", "d_model", "n_layer", "n_head", "spec", "hf_config", "config_file", "fingerprint", "params", "n_params", "built_with")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    D_MODEL_FIELD_NUMBER: _ClassVar[int]
    N_LAYER_FIELD_NUMBER: _ClassVar[int]
    N_HEAD_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    HF_CONFIG_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FILE_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    N_PARAMS_FIELD_NUMBER: _ClassVar[int]
    BUILT_WITH_FIELD_NUMBER: _ClassVar[int]
    name: str
    vocab_size: int
    seq_len: int
    d_model: int
    n_layer: int
    n_head: int
    spec: str
    hf_config: bytes
    config_file: FileRef
    fingerprint: str
    params: _containers.RepeatedCompositeFieldContainer[ParamShape]
    n_params: int
    built_with: str
    def __init__(self, name: _Optional[str] = ..., vocab_size: _Optional[int] = ..., seq_len: _Optional[int] = ..., d_model: _Optional[int] = ..., n_layer: _Optional[int] = ..., n_head: _Optional[int] = ..., spec: _Optional[str] = ..., hf_config: _Optional[bytes] = ..., config_file: _Optional[_Union[FileRef, _Mapping]] = ..., fingerprint: _Optional[str] = ..., params: _Optional[_Iterable[_Union[ParamShape, _Mapping]]] = ..., n_params: _Optional[int] = ..., built_with: _Optional[str] = ...) -> None: ...

class TrainingConfig(_message.Message):
    __slots__ = ("inner_lr", "inner_weight_decay", "batch_size", "outer_lr", "outer_momentum", "round_s", "round_delay", "codec", "topk_fraction", "group_size", "grad_clip", "aggregator")
    INNER_LR_FIELD_NUMBER: _ClassVar[int]
    INNER_WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OUTER_LR_FIELD_NUMBER: _ClassVar[int]
    OUTER_MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    ROUND_S_FIELD_NUMBER: _ClassVar[int]
    ROUND_DELAY_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    TOPK_FRACTION_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRAD_CLIP_FIELD_NUMBER: _ClassVar[int]
    AGGREGATOR_FIELD_NUMBER: _ClassVar[int]
    inner_lr: float
    inner_weight_decay: float
    batch_size: int
    outer_lr: float
    outer_momentum: float
    round_s: float
    round_delay: int
    codec: str
    topk_fraction: float
    group_size: int
    grad_clip: float
    aggregator: str
    def __init__(self, inner_lr: _Optional[float] = ..., inner_weight_decay: _Optional[float] = ..., batch_size: _Optional[int] = ..., outer_lr: _Optional[float] = ..., outer_momentum: _Optional[float] = ..., round_s: _Optional[float] = ..., round_delay: _Optional[int] = ..., codec: _Optional[str] = ..., topk_fraction: _Optional[float] = ..., group_size: _Optional[int] = ..., grad_clip: _Optional[float] = ..., aggregator: _Optional[str] = ...) -> None: ...

class ShardInfo(_message.Message):
    __slots__ = ("sha256", "size_bytes", "n_tokens", "index")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    N_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    n_tokens: int
    index: int
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., n_tokens: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...

class DatasetInfo(_message.Message):
    __slots__ = ("kind", "source", "token_dtype", "total_tokens", "held_out")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_DTYPE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HELD_OUT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    source: str
    token_dtype: str
    total_tokens: int
    held_out: FileRef
    def __init__(self, kind: _Optional[str] = ..., source: _Optional[str] = ..., token_dtype: _Optional[str] = ..., total_tokens: _Optional[int] = ..., held_out: _Optional[_Union[FileRef, _Mapping]] = ...) -> None: ...

class Membership(_message.Message):
    __slots__ = ("open",)
    OPEN_FIELD_NUMBER: _ClassVar[int]
    open: bool
    def __init__(self, open: _Optional[bool] = ...) -> None: ...

class RunManifest(_message.Message):
    __slots__ = ("format_version", "run_id", "created_at", "seed", "model", "training", "dataset", "shards", "run_public_key", "membership", "tokenizer")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    RUN_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    run_id: str
    created_at: float
    seed: int
    model: ModelConfig
    training: TrainingConfig
    dataset: DatasetInfo
    shards: _containers.RepeatedCompositeFieldContainer[ShardInfo]
    run_public_key: bytes
    membership: Membership
    tokenizer: TokenizerInfo
    def __init__(self, format_version: _Optional[int] = ..., run_id: _Optional[str] = ..., created_at: _Optional[float] = ..., seed: _Optional[int] = ..., model: _Optional[_Union[ModelConfig, _Mapping]] = ..., training: _Optional[_Union[TrainingConfig, _Mapping]] = ..., dataset: _Optional[_Union[DatasetInfo, _Mapping]] = ..., shards: _Optional[_Iterable[_Union[ShardInfo, _Mapping]]] = ..., run_public_key: _Optional[bytes] = ..., membership: _Optional[_Union[Membership, _Mapping]] = ..., tokenizer: _Optional[_Union[TokenizerInfo, _Mapping]] = ...) -> None: ...

class SignedManifest(_message.Message):
    __slots__ = ("manifest", "signature")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    manifest: bytes
    signature: bytes
    def __init__(self, manifest: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class FileRef(_message.Message):
    __slots__ = ("sha256", "size_bytes", "name")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    name: str
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class ParamShape(_message.Message):
    __slots__ = ("name", "shape", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ...) -> None: ...

class TokenizerInfo(_message.Message):
    __slots__ = ("kind", "vocab_size", "file")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    vocab_size: int
    file: FileRef
    def __init__(self, kind: _Optional[str] = ..., vocab_size: _Optional[int] = ..., file: _Optional[_Union[FileRef, _Mapping]] = ...) -> None: ...
