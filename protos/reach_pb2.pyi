from barnraise.protos import auth_pb2 as _auth_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DialBackRequest(_message.Message):
    __slots__ = ("addrs", "auth")
    ADDRS_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    addrs: _containers.RepeatedScalarFieldContainer[str]
    auth: _auth_pb2.RequestAuth
    def __init__(self, addrs: _Optional[_Iterable[str]] = ..., auth: _Optional[_Union[_auth_pb2.RequestAuth, _Mapping]] = ...) -> None: ...

class DialBackReply(_message.Message):
    __slots__ = ("dialable", "addr", "observed", "reason")
    DIALABLE_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    dialable: bool
    addr: str
    observed: str
    reason: str
    def __init__(self, dialable: _Optional[bool] = ..., addr: _Optional[str] = ..., observed: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
