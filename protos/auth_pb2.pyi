from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MembershipToken(_message.Message):
    __slots__ = ("run_id", "peer_public_key", "expires_at", "name", "token_id", "issued_at")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    peer_public_key: bytes
    expires_at: float
    name: str
    token_id: bytes
    issued_at: float
    def __init__(self, run_id: _Optional[str] = ..., peer_public_key: _Optional[bytes] = ..., expires_at: _Optional[float] = ..., name: _Optional[str] = ..., token_id: _Optional[bytes] = ..., issued_at: _Optional[float] = ...) -> None: ...

class SignedToken(_message.Message):
    __slots__ = ("token", "signature")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    token: bytes
    signature: bytes
    def __init__(self, token: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class RequestAuth(_message.Message):
    __slots__ = ("token", "nonce", "timestamp", "signature")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    token: SignedToken
    nonce: bytes
    timestamp: float
    signature: bytes
    def __init__(self, token: _Optional[_Union[SignedToken, _Mapping]] = ..., nonce: _Optional[bytes] = ..., timestamp: _Optional[float] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Revocation(_message.Message):
    __slots__ = ("run_id", "token_ids", "issued_at", "banned_peer_ids")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    BANNED_PEER_IDS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    token_ids: _containers.RepeatedScalarFieldContainer[bytes]
    issued_at: float
    banned_peer_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_id: _Optional[str] = ..., token_ids: _Optional[_Iterable[bytes]] = ..., issued_at: _Optional[float] = ..., banned_peer_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SignedRecord(_message.Message):
    __slots__ = ("record", "signature", "token")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    record: bytes
    signature: bytes
    token: SignedToken
    def __init__(self, record: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., token: _Optional[_Union[SignedToken, _Mapping]] = ...) -> None: ...

class Libp2pKey(_message.Message):
    __slots__ = ("key_type", "data")
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    key_type: int
    data: bytes
    def __init__(self, key_type: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...
