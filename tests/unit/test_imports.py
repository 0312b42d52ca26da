"""Layers import one way. Each layer may import only the layers listed for it (and itself):

    protos <- coordinator <- coordinator.operator
                          <- peer.net <- peer.{training, data, averaging} <- peer.sync <- peer <- peer.cli
                          <- peer.events <- peer.data

``coordinator`` is what the swarm agrees on (manifest and codec catalogue, records, signing,
leases, run clock, errors, health rules); ``coordinator.operator`` is the run operator's node and
commands; ``peer`` is the volunteer's daemon, grouped by concern; ``peer.events`` (what a peer
reports to tests and benchmarks) sits under every part that emits one; ``peer.cli`` is the top: the
one ``barnraise`` entry point, which alone reaches both sides.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP = {"peer", "coordinator", "protos"}

# layer -> the layers it may import, itself included. A module's layer is its longest listed prefix.
ALLOWED: dict[str, set[str]] = {
    "protos": {"protos"},
    "coordinator": {"protos", "coordinator"},
    "coordinator.operator": {"protos", "coordinator", "coordinator.operator"},
    "peer.net": {"protos", "coordinator", "peer.net"},
    "peer.training": {"protos", "coordinator", "peer.training"},
    "peer.events": {"coordinator", "peer.events"},
    "peer.data": {"protos", "coordinator", "peer.net", "peer.events", "peer.data"},
    "peer.averaging": {"protos", "coordinator", "peer.net", "peer.averaging"},
    "peer.sync": {"protos", "coordinator", "peer.net", "peer.training", "peer.averaging", "peer.sync"},
    "peer": {
        "protos",
        "coordinator",
        "peer.net",
        "peer.events",
        "peer.training",
        "peer.data",
        "peer.averaging",
        "peer.sync",
        "peer",
    },
    "peer.cli": set(),  # the top: anything
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in ALLOWED:
            return ".".join(parts[:i])
    raise AssertionError(f"{module} belongs to no layer: add its package to ALLOWED")


def our_imports(path: Path) -> set[str]:
    """Modules of ours that ``path`` imports, as ``peer.net.wire`` (without the ``barnraise.``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        mods = []
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for m in mods:
            parts = m.split(".")
            if parts[0] == "barnraise" and len(parts) > 1 and parts[1] in TOP:
                names.add(".".join(parts[1:]))
            elif parts[0] in TOP:
                raise AssertionError(f"{path.relative_to(ROOT)} imports {m}: use barnraise.{m}")
    return names


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__")


def test_layers_import_one_way():
    problems = []
    for top in TOP:
        for path in (ROOT / top).rglob("*.py"):
            layer = layer_of(module_name(path))
            if not ALLOWED[layer]:
                continue
            for imported in our_imports(path):
                target = layer_of(imported) if imported.split(".")[0] in TOP else imported
                if target not in ALLOWED[layer]:
                    problems.append(f"{path.relative_to(ROOT)} ({layer}) imports {imported} ({target})")
    assert not problems, "imports reach up or across:\n" + "\n".join(sorted(problems))


def test_no_grab_bag_modules():
    for layer in ("peer", "coordinator"):
        for path in (ROOT / layer).rglob("*.py"):
            assert path.stem not in {"utils", "helpers", "misc", "common"}, path
