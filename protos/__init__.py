"""Wire schema of barnraise: generated protobuf modules (see protos/*.proto).

The generated ``*_pb2.py`` files are committed, so installing needs no protoc;
``tests/unit/test_protos.py`` regenerates them and fails if they drift from the ``.proto`` sources.
"""
