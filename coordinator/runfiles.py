"""Run files: small files that belong to a run besides its shards (a model's ``config.json``, the
``tokenizer.json``, the held-out split), kept content-addressed in ``RUN_DIR/files/<sha256>`` and named in the manifest
by a ``FileRef``. The coordinator serves them like shards, by hash only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from barnraise.coordinator.atomic import write_atomic
from barnraise.coordinator.errors import ConfigError, IntegrityError
from barnraise.protos import manifest_pb2

FILES_DIR = "files"
MAX_RUN_FILE_BYTES = 64 << 20  # a tokenizer.json of a very large vocabulary stays well below this


def file_ref(data: bytes, name: str) -> manifest_pb2.FileRef:
    return manifest_pb2.FileRef(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), name=name)


def write_run_file(run_dir: Path, data: bytes, name: str) -> manifest_pb2.FileRef:
    """Store ``data`` under its hash in ``run_dir/files`` (atomically) and return its reference."""
    ref = file_ref(data, name)
    (run_dir / FILES_DIR).mkdir(exist_ok=True)
    write_atomic(run_dir / FILES_DIR / ref.sha256, data, mode=0o644)
    return ref


def manifest_files(manifest: manifest_pb2.RunManifest) -> list[manifest_pb2.FileRef]:
    """Every run file a manifest names."""
    refs = []
    if manifest.model.HasField("config_file"):
        refs.append(manifest.model.config_file)
    if manifest.tokenizer.HasField("file"):
        refs.append(manifest.tokenizer.file)
    if manifest.dataset.HasField("held_out"):
        refs.append(manifest.dataset.held_out)
    return refs


def check_file(data: bytes, ref: manifest_pb2.FileRef) -> bytes:
    if len(data) != ref.size_bytes or hashlib.sha256(data).hexdigest() != ref.sha256:
        raise IntegrityError(
            f"run file {ref.name or ref.sha256[:12]} does not match its sha256 in the manifest"
        )
    return data


def read_run_file(run_dir: Path, ref: manifest_pb2.FileRef) -> bytes:
    """A run file's bytes from ``run_dir``, checked against its reference."""
    path = Path(run_dir) / FILES_DIR / ref.sha256
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"run file {ref.name} ({path}) cannot be read: {e.strerror}") from None
    return check_file(data, ref)
