"""The software a node runs, as the bootstrap publishes it in the coordinator record and ``barnraise
doctor`` compares it with a volunteer's: Python, torch and hivemind versions.

Read from package metadata, never by importing torch: the bootstrap has no use for it otherwise.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from importlib import metadata


@dataclass(frozen=True, kw_only=True)
class Versions:
    python: str  # "3.11.7"; "" = unknown
    torch: str  # "2.13.0+cpu"; "" = unknown or not installed
    hivemind: str  # "1.1.12"; "" = unknown or not installed


def _installed(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def local_versions() -> Versions:
    return Versions(
        python=platform.python_version(), torch=_installed("torch"), hivemind=_installed("hivemind")
    )


def release(version: str, parts: int) -> tuple[str, ...]:
    """The first ``parts`` numbers of a version: ``release("2.13.0+cpu", 2) == ("2", "13")``."""
    return tuple(version.split("+")[0].split(".")[:parts])


def mismatch(name: str, ours: str, theirs: str) -> tuple[str, str] | None:
    """(level, message) when our ``name`` differs from the run's in a way that matters, else None.

    hivemind must match exactly (its DHT and P2P protocol); torch and Python must share major and
    minor (the outer step must give bit-identical parameters on every peer; pickles, kernels).
    """
    if not theirs:
        return None
    if not ours:
        return "FAIL", f"{name} is not installed; the run uses {theirs}: pip install {name}=={theirs}"
    if name == "hivemind" and ours != theirs:
        return "FAIL", f"hivemind {ours} here, the run uses {theirs}: pip install hivemind=={theirs}"
    if release(ours, 2) != release(theirs, 2):
        fix = "use the run's Python" if name == "python" else f"pip install {name}=={theirs.split('+')[0]}"
        return "WARN", f"{name} {ours} here, the run uses {theirs}: {fix}"
    return None
