"""Regenerate protos/*_pb2.py from protos/*.proto (needs grpcio-tools, a dev dependency).

Usage: python scripts/gen_protos.py [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRPC_PROTOS = {"coordinator.proto"}  # those that define a service


def generate(out_dir: Path) -> None:
    """Run protoc with the repo root as include path, so imports read ``from protos import ...``."""
    from grpc_tools import protoc

    (out_dir / "protos").mkdir(parents=True, exist_ok=True)
    for proto in sorted((ROOT / "protos").glob("*.proto")):
        args = ["protoc", f"-I{ROOT}", f"--python_out={out_dir}", f"--pyi_out={out_dir}"]
        if proto.name in GRPC_PROTOS:
            args.append(f"--grpc_python_out={out_dir}")
        args.append(str(proto.relative_to(ROOT)))
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT)
    generate(parser.parse_args().out)


if __name__ == "__main__":
    sys.exit(main())
