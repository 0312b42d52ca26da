"""Regenerate protos/*_pb2.py from protos/*.proto (needs grpcio-tools, a dev dependency).

The sources are compiled as ``barnraise/protos/NAME.proto`` (through a temporary include tree that
links ``barnraise/protos`` to this folder), so the generated modules import each other as
``barnraise.protos.*`` and protobuf's process-wide descriptor pool registers our schema under
``barnraise/protos/``, where no other distribution's files can collide with it.

Usage: python scripts/gen_protos.py [--out DIR]   (writes DIR/protos/*_pb2.py)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRPC_PROTOS = {"coordinator.proto"}  # those that define a service


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc

    (out_dir / "protos").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        include, gen = Path(tmp) / "include", Path(tmp) / "gen"
        (include / "barnraise").mkdir(parents=True)
        (include / "barnraise" / "protos").symlink_to(ROOT / "protos")
        gen.mkdir()
        for proto in sorted((ROOT / "protos").glob("*.proto")):
            args = ["protoc", f"-I{include}", f"--python_out={gen}", f"--pyi_out={gen}"]
            if proto.name in GRPC_PROTOS:
                args.append(f"--grpc_python_out={gen}")
            args.append(f"barnraise/protos/{proto.name}")
            if protoc.main(args) != 0:
                raise SystemExit(f"protoc failed on {proto}")
        for made in sorted((gen / "barnraise" / "protos").iterdir()):
            shutil.copyfile(made, out_dir / "protos" / made.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT)
    generate(parser.parse_args().out)


if __name__ == "__main__":
    sys.exit(main())
