"""A CPU quota per emulated machine, so that "one peer" is the same compute in every system.

On a small shared box, four peers and one solo worker would otherwise get different shares of the
cores (the solo worker a whole core, each swarm peer half of one), and a comparison of wall times
would measure the scheduler, not the training method. Each machine gets a CFS quota of ``cpus``
cores in its own cgroup; the process and every child it forks later (p2pd, hivemind's DHT
process) are in it. cgroup v1 (``cpu.cfs_quota_us``) and v2 (``cpu.max``) are both handled;
without a writable cpu controller the caps are off and a warning says so.

Group names start with ``OWNER_PREFIX-<owner pid>-`` so ``remove_stale`` can clear what a crashed
run left without touching a live run of another developer.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

OWNER_PREFIX = "brbench"
_V1_ROOT = Path("/sys/fs/cgroup/cpu")
_V2_ROOT = Path("/sys/fs/cgroup")
_PERIOD_US = 100_000  # CFS period: quota is enforced per 100 ms slice
_REMOVE_TIMEOUT_S = 10.0  # a killed process may take a moment to leave its cgroup


def _controller_root() -> tuple[Path, bool] | None:
    """(root, is_v2) of a writable cpu controller, or None."""
    if (_V1_ROOT / "cpu.cfs_quota_us").exists() and os.access(_V1_ROOT, os.W_OK):
        return _V1_ROOT, False
    controllers = _V2_ROOT / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split() and os.access(_V2_ROOT, os.W_OK):
        return _V2_ROOT, True
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Remove empty cgroups left by benchmark runs whose owner process is gone."""
    found = _controller_root()
    if found is None:
        return []
    root, _ = found
    removed = []
    for path in root.glob(f"{OWNER_PREFIX}-*"):
        parts = path.name.split("-")
        if len(parts) < 3 or not parts[1].isdigit() or _pid_alive(int(parts[1])):
            continue
        try:
            path.rmdir()
            removed.append(path.name)
        except OSError as e:
            logger.warning("could not remove stale cgroup %s: %s", path, e)
    return removed


class CpuCaps:
    """Per-machine CPU quotas; a context manager that removes its groups on exit.

    >>> with CpuCaps(cpus=0.45, tag="bench") as caps:
    ...     caps.assign("p1", proc.pid)
    """

    def __init__(self, *, cpus: float | None, tag: str) -> None:
        if cpus is not None and not 0.01 <= cpus <= 1024:
            raise ValueError(f"cpus must be between 0.01 and 1024 cores, got {cpus}")
        self.cpus = cpus  # cores per machine; None: no caps
        self._tag = tag
        self._groups: dict[str, Path] = {}
        found = _controller_root() if cpus is not None else None
        self._root, self._v2 = found if found is not None else (None, False)
        if cpus is not None and found is None:
            logger.warning("no writable cgroup cpu controller: CPU caps are off, peers share cores freely")

    @property
    def enabled(self) -> bool:
        """True when quotas are really enforced."""
        return self._root is not None

    def __enter__(self) -> CpuCaps:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _group(self, machine: str) -> Path:
        assert self._root is not None and self.cpus is not None
        if machine in self._groups:
            return self._groups[machine]
        path = self._root / f"{OWNER_PREFIX}-{os.getpid()}-{self._tag}-{machine}"
        path.mkdir(exist_ok=True)
        quota = max(1000, int(self.cpus * _PERIOD_US))
        if self._v2:
            (path / "cpu.max").write_text(f"{quota} {_PERIOD_US}")
        else:
            (path / "cpu.cfs_period_us").write_text(str(_PERIOD_US))
            (path / "cpu.cfs_quota_us").write_text(str(quota))
        self._groups[machine] = path
        return path

    def assign(self, machine: str, pid: int) -> None:
        """Put ``pid`` (and the children it forks from now on) under ``machine``'s quota.

        Call it right after starting the process: our processes import for seconds before they
        fork anything, so nothing escapes the quota.
        """
        if not self.enabled:
            return
        try:
            (self._group(machine) / "cgroup.procs").write_text(str(pid))
        except ProcessLookupError:
            logger.debug("pid %d exited before it could be capped", pid)
        except OSError as e:
            logger.warning("could not cap pid %d of %s: %s", pid, machine, e)

    def close(self) -> None:
        """Remove every group made; waits briefly for killed processes to leave them."""
        deadline = time.monotonic() + _REMOVE_TIMEOUT_S
        for machine, path in list(self._groups.items()):
            while True:
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if time.monotonic() > deadline:
                        logger.warning("cgroup %s not removed (%s); `remove_stale` will retry", path, e)
                        break
                    time.sleep(0.1)
            self._groups.pop(machine, None)
