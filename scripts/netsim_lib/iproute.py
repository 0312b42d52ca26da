"""Thin wrappers around the ``ip`` and ``tc`` binaries.

We shell out instead of using netlink bindings so the harness needs nothing beyond iproute2,
which every Linux box with namespaces already has, and so each step can be replayed by hand
from the debug log when something goes wrong.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence

from .errors import CommandFailed, NeedsRoot

logger = logging.getLogger(__name__)

# tbf needs a bucket at least one timer tick of traffic deep or it cannot reach its rate;
# 64 kbit (8 KiB) is what was measured to give ~95% of 25 Mbit/s here; faster links scale up.
_MIN_BURST_BYTES = 8 * 1024
_BURST_WINDOW_S = 0.002
# Queueing allowance before tbf drops: bounds bufferbloat like a home router's buffer would.
_TBF_LATENCY = "200ms"


def missing_requirements() -> str | None:
    """Say why namespaces cannot be built here, or None; tests use it as their skip reason."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (run as root, e.g. sudo)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    return None


def require_root() -> None:
    """Fail before creating anything, so a non-root run leaves no half-built topology."""
    reason = missing_requirements()
    if reason is not None:
        raise NeedsRoot(reason)


def run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one iproute2 command; raise CommandFailed with its stderr when ``check`` is set."""
    logger.debug("+ %s", " ".join(argv))
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stderr)
    return proc


def list_netns() -> list[str]:
    """Names of all network namespaces visible to ``ip netns`` (other users' included)."""
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def list_links() -> list[str]:
    """Names of all interfaces in the root namespace, without the ``@peer`` suffix."""
    out = run(["ip", "-o", "link", "show"], check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def netns_pids(netns: str) -> list[int]:
    """PIDs of every process inside ``netns``, tracked by us or not (children, daemons)."""
    out = run(["ip", "netns", "pids", netns], check=False).stdout
    return [int(tok) for tok in out.split() if tok.isdigit()]


def tbf_args(mbit: float) -> list[str]:
    """The tbf parameters for ``mbit``; the bucket grows with rate so fast links stay fast."""
    rate_bits = mbit * 1_000_000
    burst_bytes = max(_MIN_BURST_BYTES, int(rate_bits / 8 * _BURST_WINDOW_S))
    return ["tbf", "rate", f"{rate_bits:.0f}bit", "burst", f"{burst_bytes}b", "latency", _TBF_LATENCY]


def shape(dev: str, mbit: float | None, *, netns: str | None = None) -> None:
    """Limit egress of ``dev`` to ``mbit`` (None: leave it unlimited)."""
    if mbit is None:
        return
    prefix = ["tc"] if netns is None else ["tc", "-n", netns]
    run([*prefix, "qdisc", "replace", "dev", dev, "root", *tbf_args(mbit)])


def disable_ipv6(dev: str) -> None:
    """Silence IPv6 router solicitations on root-side devices; the harness speaks IPv4 only."""
    path = f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"
    try:
        with open(path, "w", encoding="ascii") as fh:
            fh.write("1")
    except OSError:
        logger.debug("could not disable IPv6 on %s (no IPv6 in this kernel?)", dev)
