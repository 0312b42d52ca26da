"""Hypothesis strategies for hostile input: random bytes, and valid messages mutated.

``messages(cls)`` builds any protobuf message from its descriptor with values a hostile peer would
pick (NaN and infinities, extreme integers, long and odd strings, nested and repeated fields);
``hostile(base)`` turns a strategy of valid bytes into a mix of those bytes, random bytes and
mutations of them (bits flipped, truncated, extended, spliced).
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

_F = FieldDescriptor
_INT_RANGES = {
    _F.CPPTYPE_INT32: (-(1 << 31), (1 << 31) - 1),
    _F.CPPTYPE_INT64: (-(1 << 63), (1 << 63) - 1),
    _F.CPPTYPE_UINT32: (0, (1 << 32) - 1),
    _F.CPPTYPE_UINT64: (0, (1 << 64) - 1),
}


def interesting_ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    """Small values, boundaries and powers of two, within [lo, hi]."""
    edges = [0, 1, 2, 7, 8, 15, 16, 255, 256, 1 << 16, 1 << 20, 1 << 31, 1 << 32, 1 << 40, 1 << 48, 1 << 53]
    specials = sorted({v for e in edges for v in (e, -e, e - 1, e + 1) if lo <= v <= hi} | {lo, hi})
    return st.one_of(st.sampled_from(specials), st.integers(min_value=max(lo, -300), max_value=min(hi, 300)))


def hostile_floats(width: int = 64) -> st.SearchStrategy[float]:
    return st.one_of(
        st.sampled_from([0.0, -0.0, 1.0, -1.0, float("nan"), float("inf"), float("-inf"), 1e-45, 3.4e38]),
        st.floats(width=width),
    )


def _text(max_size: int = 40) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=max_size),
        st.sampled_from(["", "fp32", "int8", "topk", "12D3KooW", "a" * 200, "\x00\u202e", "0" * 64]),
    )


def _scalar(f: FieldDescriptor, depth: int) -> st.SearchStrategy:
    if f.cpp_type in _INT_RANGES:
        return interesting_ints(*_INT_RANGES[f.cpp_type])
    if f.cpp_type == _F.CPPTYPE_DOUBLE:
        return hostile_floats(64)
    if f.cpp_type == _F.CPPTYPE_FLOAT:
        return hostile_floats(32)
    if f.cpp_type == _F.CPPTYPE_BOOL:
        return st.booleans()
    if f.cpp_type == _F.CPPTYPE_ENUM:
        return interesting_ints(-(1 << 31), (1 << 31) - 1)
    if f.cpp_type == _F.CPPTYPE_STRING:
        return st.binary(max_size=80) if f.type == _F.TYPE_BYTES else _text()
    return messages(f.message_type._concrete_class, depth + 1)


@st.composite
def _message(draw, cls: type[Message], depth: int) -> Message:
    msg = cls()
    for f in cls.DESCRIPTOR.fields:
        if not draw(st.booleans()):
            continue
        if f.cpp_type == _F.CPPTYPE_MESSAGE and depth >= 2:
            continue
        value = _scalar(f, depth)
        if f.is_repeated:
            items = draw(st.lists(value, max_size=4))
            if f.cpp_type == _F.CPPTYPE_MESSAGE:
                for item in items:
                    getattr(msg, f.name).add().CopyFrom(item)
            else:
                getattr(msg, f.name).extend(items)
        elif f.cpp_type == _F.CPPTYPE_MESSAGE:
            getattr(msg, f.name).CopyFrom(draw(value))
        else:
            setattr(msg, f.name, draw(value))
    return msg


def messages(cls: type[Message], depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of ``cls``, with every field hostile or absent."""
    return _message(cls, depth)


@st.composite
def mutated(draw, base: st.SearchStrategy[bytes]) -> bytes:
    """``base``'s bytes after up to four random edits."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "truncate", "extend", "insert", "delete", "byte")))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            i = min(at, len(data) - 1)
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and data:
            data[min(at, len(data) - 1)] = draw(st.sampled_from([0, 0x7F, 0x80, 0xFF, 0x08, 0x0A, 0x12]))
        elif op == "truncate":
            del data[at:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


def hostile(base: st.SearchStrategy[bytes], max_random: int = 256) -> st.SearchStrategy[bytes]:
    """Valid bytes, random bytes, or valid bytes mutated (the most likely)."""
    return st.one_of(base, st.binary(max_size=max_random), mutated(base), mutated(base))


def encoded(cls: type[Message]) -> st.SearchStrategy[bytes]:
    """Serialized hostile messages of ``cls``."""
    return messages(cls).map(lambda m: m.SerializeToString())


def _scalar_fields(msg: Message) -> list[tuple[Message, FieldDescriptor]]:
    out = []
    for f in msg.DESCRIPTOR.fields:
        if f.is_repeated:
            continue
        if f.cpp_type != _F.CPPTYPE_MESSAGE:
            out.append((msg, f))
        elif msg.HasField(f.name):
            out += _scalar_fields(getattr(msg, f.name))
    return out


@st.composite
def spoiled(draw, msg: Message) -> Message:
    """A copy of ``msg`` with one to three scalar fields (nested ones too) set to hostile values."""
    copy = type(msg)()
    copy.CopyFrom(msg)
    fields = _scalar_fields(copy)
    for _ in range(draw(st.integers(1, 3)) if fields else 0):
        holder, f = draw(st.sampled_from(fields))
        setattr(holder, f.name, draw(_scalar(f, 2)))
    return copy


@st.composite
def varied(draw, msg: Message) -> Message:
    """``msg`` as is, with fields spoiled, or merged with a hostile message of its type."""
    how = draw(st.sampled_from(("keep", "spoil", "spoil", "merge")))
    if how == "spoil":
        return draw(spoiled(msg))
    if how == "merge":
        copy = type(msg)()
        copy.CopyFrom(msg)
        copy.MergeFrom(draw(messages(type(msg))))
        return copy
    return msg
