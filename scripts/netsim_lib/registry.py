"""Records of live harness runs, and removal of what crashed runs left behind.

Every run writes a small JSON record naming its owner process before it creates anything. A
later ``cleanup_stale`` removes namespaces and links of runs whose owner is gone, and never
touches a run whose owner still lives: several developers share this machine and may run the
harness at the same time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import iproute

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "bns"
# Linux interface names hold at most 15 characters (IFNAMSIZ - 1).
IFNAME_MAX = 15
RUN_ID_LEN = 4


def registry_dir() -> Path:
    """Where run records live: /run (tmpfs, cleared at boot, like the namespaces themselves)."""
    for base in (Path("/run/netsim"), Path(tempfile.gettempdir()) / "netsim-runs"):
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(base, os.W_OK):
            return base
    raise OSError("no writable directory for netsim run records")


def _start_ticks(pid: int) -> int | None:
    """Kernel start time of ``pid``; with the pid it identifies a process despite pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    # Field 2 (comm) may contain spaces; everything after the last ')' is space-separated.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # a killed owner lingers as a zombie until reaped: it is dead
        return None
    return int(fields[19])


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """What one run created, so another process can undo it after a crash."""

    tag: str  # prefix + run id, e.g. "bns3fa2"; every name of the run starts with it
    pid: int  # owner process id
    start_ticks: int | None  # owner start time in clock ticks since boot, guards against pid reuse
    created_unix_s: float  # wall-clock creation time in seconds since the epoch, for humans

    @property
    def path(self) -> Path:
        """File holding this record."""
        return registry_dir() / f"{self.tag}.json"

    def owner_alive(self) -> bool:
        """True while the process that made the run still exists (same pid, same start time)."""
        ticks = _start_ticks(self.pid)
        return ticks is not None and ticks == self.start_ticks

    def save(self) -> None:
        """Write the record before creating anything, so a crash at any point is recoverable."""
        self.path.write_text(json.dumps(asdict(self)), encoding="utf-8")

    def remove(self) -> None:
        """Forget the run once everything it made is gone."""
        self.path.unlink(missing_ok=True)

    @classmethod
    def load(cls, tag: str) -> RunRecord | None:
        """Read a record, or None when it is missing or unreadable (treated as dead)."""
        try:
            data = json.loads((registry_dir() / f"{tag}.json").read_text(encoding="utf-8"))
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None

    @classmethod
    def new(cls, prefix: str) -> RunRecord:
        """Claim a fresh run tag under ``prefix`` that no record or namespace uses yet."""
        taken = set(iproute.list_netns()) | set(iproute.list_links())
        for _ in range(100):
            tag = prefix + os.urandom(RUN_ID_LEN // 2).hex()
            path = registry_dir() / f"{tag}.json"
            if path.exists() or any(name.startswith(tag) for name in taken):
                continue
            record = cls(
                tag=tag, pid=os.getpid(), start_ticks=_start_ticks(os.getpid()), created_unix_s=time.time()
            )
            record.save()
            return record
        raise RuntimeError(f"could not find a free run id under prefix {prefix!r}")


def validate_prefix(prefix: str) -> None:
    """Keep prefixes short and plain so every derived name fits IFNAMSIZ and matches our regex."""
    if not re.fullmatch(r"[a-z]{1,4}", prefix):
        raise ValueError(f"prefix must be 1-4 lowercase letters, got {prefix!r}")


def _tag_of(name: str, prefix: str) -> str | None:
    match = re.fullmatch(rf"({re.escape(prefix)}[0-9a-f]{{{RUN_ID_LEN}}})(-[a-z0-9]+)?", name)
    return match.group(1) if match else None


def kill_netns_processes(netns: str) -> None:
    """SIGKILL everything still inside ``netns``; a namespace with processes outlives deletion."""
    for pid in iproute.netns_pids(netns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def remove_objects(tag: str) -> list[str]:
    """Delete every namespace and root-side link whose name belongs to run ``tag``."""
    removed = []
    for ns in iproute.list_netns():
        if ns == tag or ns.startswith(tag + "-"):
            kill_netns_processes(ns)
            iproute.run(["ip", "netns", "del", ns], check=False)
            removed.append(f"netns {ns}")
    for link in iproute.list_links():
        if link == tag or link.startswith(tag + "-"):
            iproute.run(["ip", "link", "del", link], check=False)
            removed.append(f"link {link}")
    return removed


def cleanup_stale(prefix: str = DEFAULT_PREFIX, *, force: bool = False) -> list[str]:
    """Remove leftovers of crashed runs under ``prefix``; ``force`` also removes live runs.

    Returns a description of each removed object, so the CLI can tell the user what it did.
    """
    iproute.require_root()
    validate_prefix(prefix)
    tags = {t for name in iproute.list_netns() + iproute.list_links() if (t := _tag_of(name, prefix))}
    tags |= {p.stem for p in registry_dir().glob(f"{prefix}*.json") if _tag_of(p.stem, prefix)}
    removed: list[str] = []
    for tag in sorted(tags):
        record = RunRecord.load(tag)
        if record is not None and record.owner_alive() and not force:
            logger.info("keeping %s: its owner pid %d is still running", tag, record.pid)
            continue
        removed += remove_objects(tag)
        (registry_dir() / f"{tag}.json").unlink(missing_ok=True)
    return removed
