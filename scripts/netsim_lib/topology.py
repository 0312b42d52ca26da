"""A star of network namespaces on one bridge, each link shaped by tbf, torn down reliably.

``NetSim`` is a context manager: entering builds the bridge, one namespace per host, a veth pair
per host and the shapers; leaving kills every process it started (whole process groups, then
anything else left in the namespaces) and deletes namespaces, veths and bridge. Teardown is
idempotent and also runs from atexit and on SIGINT/SIGTERM/SIGHUP, because a leftover namespace
breaks the next run. Upload is shaped on the namespace's ``eth0``, download on the bridge-side
veth, so each direction is limited independently like a home connection.
"""

from __future__ import annotations

import atexit
import enum
import ipaddress
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import IO, Any

from . import iproute, registry, router
from .errors import NetSimError

logger = logging.getLogger(__name__)

DEFAULT_MBIT = 25.0
DEFAULT_SUBNET = "10.77.0.0/24"
_HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_File = int | IO[Any] | None


class Inherit(enum.Enum):
    """Marker for "same as ``mbit``", distinct from None which means unlimited."""

    SAME = "same"


@dataclass(frozen=True, kw_only=True)
class HostSpec:
    """One emulated machine: a namespace with one shaped link to the bridge."""

    name: str  # short host name ([a-z][a-z0-9]*), part of interface names, so at most 7 chars
    mbit: float | None = DEFAULT_MBIT  # link rate both ways in Mbit/s; None = unlimited
    up_mbit: float | Inherit | None = Inherit.SAME  # upload override in Mbit/s; None = unlimited
    down_mbit: float | Inherit | None = Inherit.SAME  # download override in Mbit/s; None = unlimited
    nat: bool = False  # behind its own home router: dials out, cannot be dialled (router.py)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]*", self.name):
            raise ValueError(f"host name must match [a-z][a-z0-9]*, got {self.name!r}")
        for label, rate in (
            ("mbit", self.mbit),
            ("up_mbit", self.upload_mbit),
            ("down_mbit", self.download_mbit),
        ):
            if rate is not None and not rate > 0:
                raise ValueError(f"{self.name}: {label} must be > 0 Mbit/s or None, got {rate!r}")

    @property
    def upload_mbit(self) -> float | None:
        """Effective upload rate in Mbit/s (None: unlimited)."""
        return self.mbit if isinstance(self.up_mbit, Inherit) else self.up_mbit

    @property
    def download_mbit(self) -> float | None:
        """Effective download rate in Mbit/s (None: unlimited)."""
        return self.mbit if isinstance(self.down_mbit, Inherit) else self.down_mbit


@dataclass(frozen=True, kw_only=True)
class Host:
    """A host as built: its namespace, root-side veth and address."""

    spec: HostSpec  # what was asked for
    netns: str  # namespace name, also the name of its root-side veth
    ip: str  # IPv4 address of its eth0: in the subnet, or on its home LAN behind a router
    public_ip: str  # the address others see: ``ip``, or its router's WAN address
    router_ns: str | None = None  # its home router's namespace (None: no router)


@dataclass(frozen=True, kw_only=True)
class Tracked:
    """A process started in a namespace; its pid is also its process-group id."""

    host: str  # host name it runs on
    proc: subprocess.Popen[Any]  # the process (``ip netns exec`` execs, so pid is the command's)


class NetSim:
    """Build, use and reliably destroy an emulated network of namespaces.

    >>> with NetSim(hosts=[HostSpec(name="a"), HostSpec(name="b", mbit=100)]) as net:
    ...     net.popen("b", ["sleep", "1"])
    """

    def __init__(
        self,
        *,
        hosts: Sequence[HostSpec],
        subnet: str = DEFAULT_SUBNET,
        prefix: str = registry.DEFAULT_PREFIX,
        stop_grace_s: float = 1.0,
        handle_signals: bool = True,
    ) -> None:
        registry.validate_prefix(prefix)
        names = [h.name for h in hosts]
        if len(set(names)) != len(names):
            raise ValueError(f"host names must be unique, got {names}")
        limit = registry.IFNAME_MAX - len(prefix) - registry.RUN_ID_LEN - 1
        too_long = [n for n in names if len(n) > limit]
        if too_long:
            raise ValueError(f"host names longer than {limit} chars do not fit IFNAMSIZ: {too_long}")
        self._net = ipaddress.IPv4Network(subnet)
        if len(names) > self._net.num_addresses - 2:
            raise ValueError(f"{len(names)} hosts do not fit in {subnet}")
        self._specs = list(hosts)
        self._prefix = prefix
        self._stop_grace_s = stop_grace_s  # seconds between SIGTERM and SIGKILL at teardown
        self._handle_signals = handle_signals
        self._record: registry.RunRecord | None = None
        self._hosts: dict[str, Host] = {}
        self._tracked: list[Tracked] = []
        self._old_handlers: dict[int, Any] = {}
        self._lock = threading.RLock()
        self._closed = False

    # ----- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> NetSim:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def tag(self) -> str:
        """Run tag (prefix + run id) that starts every name this run created."""
        if self._record is None:
            raise NetSimError("NetSim is not open")
        return self._record.tag

    def open(self) -> None:
        """Create bridge, namespaces, veths and shapers; on any failure undo what was made."""
        iproute.require_root()
        if any(spec.nat for spec in self._specs):
            router.ensure_iptables()
        self._record = registry.RunRecord.new(self._prefix)
        atexit.register(self.close)
        self._install_signal_handlers()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        logger.info(
            "netsim %s up: %s", self.tag, ", ".join(f"{h.spec.name}={h.ip}" for h in self._hosts.values())
        )

    def _build(self) -> None:
        bridge = self.tag
        iproute.run(["ip", "link", "add", bridge, "type", "bridge"])
        iproute.disable_ipv6(bridge)
        iproute.run(["ip", "link", "set", bridge, "up"])
        prefix_len = self._net.prefixlen
        for index, spec in enumerate(self._specs):
            ns = f"{self.tag}-{spec.name}"
            ip = str(self._net.network_address + index + 1)
            if spec.nat:
                self._build_home(spec, index, ns, ip, bridge)
                continue
            iproute.run(["ip", "netns", "add", ns])
            self._hosts[spec.name] = Host(spec=spec, netns=ns, ip=ip, public_ip=ip)
            iproute.run(["ip", "link", "add", ns, "type", "veth", "peer", "name", "eth0", "netns", ns])
            iproute.disable_ipv6(ns)
            iproute.run(["ip", "link", "set", ns, "master", bridge])
            iproute.run(["ip", "link", "set", ns, "up"])
            iproute.run(["ip", "-n", ns, "addr", "add", f"{ip}/{prefix_len}", "dev", "eth0"])
            iproute.run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            iproute.run(["ip", "-n", ns, "link", "set", "lo", "up"])
            iproute.shape("eth0", spec.upload_mbit, netns=ns)
            iproute.shape(ns, spec.download_mbit)

    def _build_home(self, spec: HostSpec, index: int, ns: str, wan_ip: str, bridge: str) -> None:
        """A host behind its own router: the router's WAN is on the bridge, shaped like a host's."""
        gw = f"{ns}gw"
        home_ip = router.build_home(
            root_veth=ns, router_ns=gw, home_ns=ns, wan_cidr=f"{wan_ip}/{self._net.prefixlen}", index=index
        )
        self._hosts[spec.name] = Host(spec=spec, netns=ns, ip=home_ip, public_ip=wan_ip, router_ns=gw)
        iproute.disable_ipv6(ns)
        iproute.run(["ip", "link", "set", ns, "master", bridge])
        iproute.run(["ip", "link", "set", ns, "up"])
        iproute.shape(router.WAN, spec.upload_mbit, netns=gw)
        iproute.shape(ns, spec.download_mbit)

    def block_inbound(self, name: str) -> None:
        """From now on nobody can dial ``name`` (its router drops new inbound connections);
        connections it already has go on. A host behind NAT is blocked already."""
        host = self.host(name)
        if host.router_ns is None:
            router.block_inbound(host.netns)

    def allow_inbound(self, name: str) -> None:
        """Undo ``block_inbound``."""
        host = self.host(name)
        if host.router_ns is None:
            router.allow_inbound(host.netns)

    def close(self) -> None:
        """Kill every process, delete everything created; safe to call any number of times."""
        with self._lock:
            if self._closed or self._record is None:
                return
            self._closed = True
            blocked = self._block_signals()
            try:
                self._stop_processes()
                registry.remove_objects(self._record.tag)
                self._record.remove()
                logger.info("netsim %s torn down", self._record.tag)
            finally:
                self._restore_signal_handlers()
                atexit.unregister(self.close)
                if blocked is not None:
                    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _stop_processes(self) -> None:
        """SIGTERM groups, wait ``stop_grace_s``, SIGKILL the rest, then sweep the namespaces."""
        live = [t for t in self._tracked if t.proc.poll() is None]
        for t in live:
            for sig in (signal.SIGTERM, signal.SIGCONT):
                _killpg(t.proc.pid, sig)
        deadline = time.monotonic() + self._stop_grace_s
        for t in live:
            try:
                t.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for t in live:
            _killpg(t.proc.pid, signal.SIGKILL)
        for host in self._hosts.values():
            registry.kill_netns_processes(host.netns)
        for t in live:
            try:
                t.proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                logger.warning("pid %d on %s did not die after SIGKILL", t.proc.pid, t.host)

    # ----- signals ---------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        """Turn SIGINT/SIGTERM/SIGHUP into exceptions so ``with`` blocks unwind and tear down."""
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            return
        for sig in _HANDLED_SIGNALS:
            if signal.getsignal(sig) is signal.SIG_IGN:  # whoever ignores it (nohup) means it
                continue
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._old_handlers.items():
            try:
                signal.signal(sig, handler)
            except (ValueError, TypeError):
                pass
        self._old_handlers.clear()

    def _block_signals(self) -> set[signal.Signals] | None:
        """Defer Ctrl-C during teardown so a second press cannot leave half a topology."""
        if threading.current_thread() is not threading.main_thread():
            return None
        return signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED_SIGNALS)

    # ----- queries ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once teardown started; processes still running then are being killed."""
        return self._closed

    @property
    def hosts(self) -> Mapping[str, Host]:
        """Hosts by name, in creation order."""
        return dict(self._hosts)

    def host(self, name: str) -> Host:
        """The built host ``name``; KeyError names the hosts that exist."""
        try:
            return self._hosts[name]
        except KeyError:
            raise KeyError(f"no host {name!r}; hosts are {sorted(self._hosts)}") from None

    def ip(self, name: str) -> str:
        """IPv4 address of host ``name``."""
        return self.host(name).ip

    def netns(self, name: str) -> str:
        """Namespace name of host ``name``, for ``ip netns exec`` by hand."""
        return self.host(name).netns

    def processes(self, name: str | None = None) -> list[subprocess.Popen[Any]]:
        """Live processes we started, on one host or all."""
        return [t.proc for t in self._tracked if t.proc.poll() is None and (name is None or t.host == name)]

    # ----- processes -------------------------------------------------------------------------

    def popen(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: _File = subprocess.DEVNULL,
        stdout: _File = None,
        stderr: _File = None,
        cwd: str | os.PathLike[str] | None = None,
        text: bool = False,
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` inside host ``name``'s namespace, in its own process group, tracked.

        ``env`` is added to this process's environment; ``GLOO_SOCKET_IFNAME=eth0`` is set by
        default because gloo otherwise binds to 127.0.0.1 inside a namespace.
        """
        if self._closed or self._record is None:
            raise NetSimError("NetSim is not open")
        host = self.host(name)
        full_env = {**os.environ, "GLOO_SOCKET_IFNAME": "eth0", **(env or {})}
        proc = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, *argv],
            env=full_env,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            text=text,
            start_new_session=True,
        )
        with self._lock:  # the churn runner and the round watcher start processes concurrently
            self._tracked = [t for t in self._tracked if t.proc.poll() is None]
            self._tracked.append(Tracked(host=name, proc=proc))
        logger.debug("started pid %d on %s: %s", proc.pid, name, " ".join(argv))
        return proc

    def run(
        self,
        name: str,
        argv: Sequence[str],
        *,
        timeout_s: float,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``name`` to completion, capturing text output; kill it on timeout."""
        proc = self.popen(
            name, argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, text=True
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def signal(self, target: str | subprocess.Popen[Any], sig: int) -> int:
        """Send ``sig`` to one process group, or to all of host ``target``'s; returns how many."""
        procs = self.processes(target) if isinstance(target, str) else [target]
        return sum(_killpg(p.pid, sig) for p in procs if p.poll() is None)


def _killpg(pgid: int, sig: int) -> bool:
    """Signal a process group, tolerating that it already exited."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
