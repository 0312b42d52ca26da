"""The committed generated code matches the .proto sources."""

from __future__ import annotations

import filecmp
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def committed_generator_version() -> str:
    text = (ROOT / "protos" / "coordinator_pb2_grpc.py").read_text()
    return re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", text).group(1)


def test_generated_code_is_up_to_date(tmp_path):
    grpc_tools = pytest.importorskip("grpc_tools")
    from importlib.metadata import version

    if version("grpcio-tools") != committed_generator_version():
        pytest.skip(
            f"grpcio-tools {version('grpcio-tools')} differs from the generator of the committed code"
        )
    del grpc_tools
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)], check=True
    )
    generated = sorted(p.name for p in (tmp_path / "protos").iterdir())
    assert generated, "nothing generated"
    for name in generated:
        assert filecmp.cmp(tmp_path / "protos" / name, ROOT / "protos" / name, shallow=False), (
            f"protos/{name} is stale: run `python scripts/gen_protos.py` and commit the result"
        )
    committed = {p.name for p in (ROOT / "protos").glob("*_pb2*.py*")}
    assert committed == set(generated)
