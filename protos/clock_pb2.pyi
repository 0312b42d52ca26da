from barnraise.protos import auth_pb2 as _auth_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProbeRequest(_message.Message):
    __slots__ = ("padding", "download_bytes", "dial_back", "auth")
    PADDING_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    DIAL_BACK_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    padding: bytes
    download_bytes: int
    dial_back: _containers.RepeatedScalarFieldContainer[str]
    auth: _auth_pb2.RequestAuth
    def __init__(self, padding: _Optional[bytes] = ..., download_bytes: _Optional[int] = ..., dial_back: _Optional[_Iterable[str]] = ..., auth: _Optional[_Union[_auth_pb2.RequestAuth, _Mapping]] = ...) -> None: ...

class ProbeReply(_message.Message):
    __slots__ = ("swarm_time", "received_bytes", "padding", "dialed", "refused")
    SWARM_TIME_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    PADDING_FIELD_NUMBER: _ClassVar[int]
    DIALED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    swarm_time: float
    received_bytes: int
    padding: bytes
    dialed: _containers.RepeatedScalarFieldContainer[bool]
    refused: str
    def __init__(self, swarm_time: _Optional[float] = ..., received_bytes: _Optional[int] = ..., padding: _Optional[bytes] = ..., dialed: _Optional[_Iterable[bool]] = ..., refused: _Optional[str] = ...) -> None: ...
