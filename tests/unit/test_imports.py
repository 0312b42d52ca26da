"""Imports run one way: protos <- coordinator <- peer."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_import_direction():
    allowed = {"protos": {"protos"}, "coordinator": {"protos", "coordinator"}}
    for layer, ok in allowed.items():
        for path in (ROOT / layer).rglob("*.py"):
            ours = imported_packages(path) & {"protos", "coordinator", "peer"}
            assert ours <= ok, f"{path.relative_to(ROOT)} imports {sorted(ours - ok)} (must not reach up)"


def test_no_grab_bag_modules():
    for layer in ("peer", "coordinator"):
        for path in (ROOT / layer).rglob("*.py"):
            assert path.stem not in {"utils", "helpers", "misc", "common"}, path
