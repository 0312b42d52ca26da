"""Home routers: a host behind a NAT namespace that masquerades outbound and drops unsolicited inbound.

A volunteer's machine usually sits behind a home router: it can dial out, but nothing outside can
dial it, neither at its private address nor at the router's. ``build_home`` makes that with two
namespaces: the router (``<tag>-<name>gw``, WAN ``wan0`` on the bridge, LAN ``lan0``) and the home
host (``<tag>-<name>``, ``eth0`` on the router's LAN, default route through it). The router does
``MASQUERADE`` out of its WAN and accepts from the WAN only packets of connections the LAN opened.

``block_inbound``/``allow_inbound`` put the same rule on a host with a public address, as when a
router's port forward lapses mid-run: connections it already has keep working, new ones are dropped.

iptables is not installed by default on Debian: ``ensure_iptables`` installs it when missing.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

from . import iproute
from .errors import NeedsRoot

logger = logging.getLogger(__name__)

WAN, LAN = "wan0", "lan0"
_APT_TIMEOUT_S = 300.0


def lan_addresses(index: int) -> tuple[str, str]:
    """(router, home host) addresses on home number ``index``'s own private /24."""
    if not 0 <= index < 250:
        raise ValueError(f"home index must be in [0, 250), got {index}")
    return f"192.168.{index + 1}.1", f"192.168.{index + 1}.2"


def ensure_iptables() -> None:
    """Install iptables from Debian's packages when it is missing (NAT needs it); raise NeedsRoot
    with the reason when that is not possible, so a test can skip with it."""
    if shutil.which("iptables"):
        return
    if shutil.which("apt-get") is None:
        raise NeedsRoot("iptables is not installed and there is no apt-get to install it")
    logger.info("installing iptables (apt-get install -y iptables)")
    proc = subprocess.run(
        ["apt-get", "install", "-y", "-q", "iptables"],
        capture_output=True,
        text=True,
        check=False,
        timeout=_APT_TIMEOUT_S,
    )
    if proc.returncode != 0 or shutil.which("iptables") is None:
        raise NeedsRoot(f"could not install iptables: {proc.stderr.strip()[-300:]}")


def iptables(netns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one iptables command inside ``netns``."""
    return iproute.run(["ip", "netns", "exec", netns, "iptables", *args], check=check)


def _drop_unsolicited(netns: str, dev: str, chains: tuple[str, ...]) -> None:
    for chain in chains:
        out = ("-o", LAN) if chain == "FORWARD" else ()
        iptables(
            netns,
            "-A",
            chain,
            "-i",
            dev,
            *out,
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        )
        iptables(netns, "-A", chain, "-i", dev, *out, "-j", "DROP")


def build_home(*, root_veth: str, router_ns: str, home_ns: str, wan_cidr: str, index: int) -> str:
    """Wire a router namespace and a home namespace; returns the home host's private address.

    ``root_veth`` (already on the bridge) gets ``wan0`` inside the router as its peer, with
    ``wan_cidr`` (the router's public address and prefix length).
    """
    router_ip, home_ip = lan_addresses(index)
    run = iproute.run
    run(["ip", "netns", "add", router_ns])
    run(["ip", "netns", "add", home_ns])
    run(["ip", "link", "add", root_veth, "type", "veth", "peer", "name", WAN, "netns", router_ns])
    run(["ip", "-n", router_ns, "link", "add", LAN, "type", "veth", "peer", "name", "eth0", "netns", home_ns])
    for ns, dev, cidr in (
        (router_ns, WAN, wan_cidr),
        (router_ns, LAN, f"{router_ip}/24"),
        (home_ns, "eth0", f"{home_ip}/24"),
    ):
        run(["ip", "-n", ns, "addr", "add", cidr, "dev", dev])
        run(["ip", "-n", ns, "link", "set", dev, "up"])
    for ns in (router_ns, home_ns):
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
    run(["ip", "-n", home_ns, "route", "add", "default", "via", router_ip])
    run(["ip", "netns", "exec", router_ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    iptables(router_ns, "-t", "nat", "-A", "POSTROUTING", "-o", WAN, "-j", "MASQUERADE")
    _drop_unsolicited(router_ns, WAN, ("FORWARD", "INPUT"))
    return home_ip


def block_inbound(netns: str, dev: str = "eth0") -> None:
    """Drop new inbound connections on ``dev`` of ``netns``; established ones keep flowing."""
    _drop_unsolicited(netns, dev, ("INPUT",))


def allow_inbound(netns: str) -> None:
    """Undo ``block_inbound``."""
    iptables(netns, "-F", "INPUT")
