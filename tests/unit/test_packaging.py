"""What ``pip install barnraise`` puts on a machine: only ``barnraise.*``, every subpackage included.

The design card's folders ``peer/``, ``coordinator/`` and ``protos/`` install as ``barnraise.peer``,
``barnraise.coordinator`` and ``barnraise.protos`` through pyproject's ``package-dir`` mapping and
its explicit package list. These tests read that list, build a wheel from a copy of the sources and
import from the unpacked wheel alone (``python -S``: no site-packages, no editable install, no repo).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
TOP = ("peer", "coordinator", "protos")
NAMESPACE = "barnraise"
GENERIC_NAMES = ("peer", "coordinator", "protos")  # must not be importable once installed
MIN_SETUPTOOLS = (70, 1)  # builds a wheel without the separate `wheel` package


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def source_packages() -> set[str]:
    """``barnraise.*`` names of the folders with an ``__init__.py`` under the top-level folders."""
    return {
        ".".join((NAMESPACE, *init.parent.relative_to(ROOT).parts))
        for top in TOP
        for init in (ROOT / top).rglob("__init__.py")
    }


def test_every_subpackage_is_listed_in_pyproject():
    tool = pyproject()["tool"]["setuptools"]
    listed = set(tool["packages"])
    missing = source_packages() - listed
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    stale = listed - source_packages()
    assert not stale, f"listed in pyproject.toml but no such folder with an __init__.py: {sorted(stale)}"
    assert pyproject()["tool"]["setuptools"]["package-dir"] == {f"{NAMESPACE}.{t}": t for t in TOP}


def run_python(args: list[str], *, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


IMPORT_CHECK = """
import importlib, sys
for name in sys.argv[1].split(","):
    importlib.import_module(name)
for name in sys.argv[2].split(","):
    try:
        importlib.import_module(name)
    except ImportError:
        continue
    raise SystemExit(f"import {name} works: it must not (found at {sys.modules[name].__spec__.origin})")
heavy = sorted({"torch", "hivemind", "google.protobuf"} & set(sys.modules))
if heavy:
    raise SystemExit(f"importing the packages pulled in {heavy}")
print("ok")
"""


def test_generic_names_are_not_importable_from_the_venv(tmp_path):
    """The editable install exposes ``barnraise.*`` only, wherever the interpreter starts."""
    ours = ",".join(f"{NAMESPACE}.{t}" for t in TOP)
    res = run_python(["-c", IMPORT_CHECK, ours, ",".join(GENERIC_NAMES)], cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout + res.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (the build writes build/ and egg-info beside them)."""
    try:
        found = tuple(int(p) for p in version("setuptools").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        found = (0, 0)
    if found < MIN_SETUPTOOLS:
        pytest.skip(
            f"setuptools {'.'.join(map(str, found))} is too old to build the wheel here: "
            f"install the test extra (setuptools>={'.'.join(map(str, MIN_SETUPTOOLS))})"
        )
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for top in TOP:
        shutil.copytree(ROOT / top, src / top, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    build = ["wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out)]
    res = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *build],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    (built,) = out.glob(f"{NAMESPACE}-*.whl")
    return built


def test_wheel_holds_only_the_namespace_and_every_source_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    outside = sorted(n for n in names if n.split("/")[0] != NAMESPACE and ".dist-info/" not in n)
    assert not outside, f"the wheel installs outside {NAMESPACE}/: {outside}"
    assert not any(n.startswith(f"{NAMESPACE}/__init__.py") for n in names), "barnraise is a namespace"
    expected = {
        f"{NAMESPACE}/{p.relative_to(ROOT).as_posix()}"
        for top in TOP
        for pattern in ("*.py", "*.proto")
        for p in (ROOT / top).rglob(pattern)
    }
    expected.add(f"{NAMESPACE}/coordinator/status_schema.json")
    assert any(n.endswith(".proto") for n in expected)
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks {missing}"


def test_unpacked_wheel_imports_barnraise_only(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    ours = ",".join(f"{NAMESPACE}.{t}" for t in TOP)
    # -S: no site-packages, so neither the editable install nor torch and hivemind are visible
    res = run_python(["-S", "-c", IMPORT_CHECK, ours, ",".join(GENERIC_NAMES)], cwd=cwd, pythonpath=site)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout + res.stderr
