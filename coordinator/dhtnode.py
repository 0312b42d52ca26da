"""Start a hivemind DHT node with the settings barnraise needs and errors a person can act on.

hivemind's ``DHT()`` listens on 127.0.0.1 only by default and reports unreachable bootstrap peers
as a bare ``P2PDaemonError``; this module fixes the defaults and turns its failures into our
errors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from barnraise.coordinator.errors import ConfigError, PeerUnavailable

log = logging.getLogger(__name__)

DHT_START_TIMEOUT_S = 30.0


@dataclass(frozen=True, kw_only=True)
class DHTOptions:
    """How to join (or start) the swarm's DHT."""

    initial_peers: tuple[str, ...] = ()  # multiaddrs of peers already in the swarm
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/0",)  # multiaddrs to listen on
    announce: tuple[str, ...] = ()  # multiaddrs others should dial (public address behind NAT)
    identity: Path | None = None  # private key file; created if missing; same file = same peer id
    client_mode: bool = False  # True: reach out only, accept no DHT requests (status CLI)
    relay: str = ""  # "serve": a public node others reserve relay slots on; "use": reserve one behind NAT
    start_timeout_s: float = DHT_START_TIMEOUT_S
    extra: dict = field(default_factory=dict)


def relay_settings(relay: str) -> dict:
    """hivemind's libp2p circuit-relay switches for a node's role.

    A peer behind a home router cannot be dialled; libp2p's circuit relay v2 lets it reserve a slot
    on a public node and be dialled through it (``/p2p/RELAY/p2p-circuit/p2p/PEER``). Its daemon's
    AutoNAT learns it is private, and autorelay then reserves a slot on its bootstrap peers (p2pd's
    default trusted relays). With one candidate relay, go-libp2p's autorelay first waits out its
    boot delay, about 3 minutes, hoping for more: a NAT'd peer becomes dialable that long after it
    starts (measured in our namespaces). The relay's side: the bootstrap declares itself publicly
    reachable (it must be: every peer dials it) so that its relay service runs from the start
    instead of waiting for enough peers to confirm it by AutoNAT.

    The relay's budget is go-libp2p's default: a relayed connection carries 128 KiB each way, then
    the relay resets it (and every stream on it) and the next stream opens a fresh one. p2pd
    accepts ``-relayDataLimit`` and ``-relayTimeLimit`` but the relay in hivemind 1.1.12's p2pd
    ignores them: with ``-relayDataLimit=68719476736`` on its command line its own debug log
    still said "relayed 131072 bytes" before every reset (measured in our namespaces), so we pass
    nothing. Relayed members therefore reduce nothing while a direct member can
    (``peer/averaging/roles.py``), and an all-NAT group trains only while each pair's relayed bytes
    stay small: the sparse codec (README, "Relays").
    """
    if relay == "serve":
        return {"use_relay": True, "force_reachability": "public"}
    if relay == "use":
        return {"use_relay": True, "use_auto_relay": True}
    if relay:
        raise ValueError(f"relay role {relay!r}: expected 'serve', 'use' or ''")
    return {}


def check_maddr(text: str, what: str) -> None:
    from hivemind.utils.multiaddr import Multiaddr

    try:
        Multiaddr(text)
    except Exception as e:
        raise ConfigError(
            f"{what} {text!r} is not a multiaddr ({e}); expected e.g. /ip4/1.2.3.4/tcp/31337/p2p/Qm..."
        ) from e


def start_dht(opts: DHTOptions):
    """Start a DHT node in a background process; returns a running ``hivemind.DHT``."""
    import hivemind
    from hivemind.p2p import P2PDaemonError

    for m in opts.initial_peers:
        check_maddr(m, "initial peer")
        if "/p2p/" not in m:
            raise ConfigError(
                f"initial peer {m!r} lacks its /p2p/<peer id> part: copy the full address printed by the bootstrap"
            )
    for m in (*opts.listen, *opts.announce):
        check_maddr(m, "listen/announce address")
    if opts.identity is not None and not opts.identity.parent.is_dir():
        raise ConfigError(f"identity file directory {opts.identity.parent} does not exist")
    kwargs = dict(
        initial_peers=list(opts.initial_peers),
        host_maddrs=list(opts.listen),
        client_mode=opts.client_mode,
        start=True,
        await_ready=True,
        startup_timeout=opts.start_timeout_s,
        # hivemind refuses to join when its ping finds the initial peer's clock over 3 s off ours;
        # a home machine's clock often is, and we correct for it (coordinator/swarmclock.py)
        strict=False,
        **opts.extra,
    )
    kwargs.update(relay_settings(opts.relay))
    if opts.announce:
        kwargs["announce_maddrs"] = list(opts.announce)
    if opts.identity is not None:
        kwargs["identity_path"] = str(opts.identity)
    try:
        dht = hivemind.DHT(**kwargs)
    except P2PDaemonError as e:
        text = str(e)
        if "bootstrap" in text or "connect" in text:
            raise PeerUnavailable(
                f"could not reach any initial peer ({', '.join(opts.initial_peers)}): check the address, "
                "that the bootstrap node is running and that its port is open"
            ) from e
        if "identity" in text.lower() or "taken" in text.lower():
            raise ConfigError(
                f"identity {opts.identity} is already in use by a running node: stop it or pass another --identity"
            ) from e
        raise PeerUnavailable(
            f"the p2p daemon failed to start: {text.splitlines()[0] if text else e!r}"
        ) from e
    except TimeoutError as e:
        raise PeerUnavailable(f"the DHT node did not start within {opts.start_timeout_s:.0f} s") from e
    return dht


def visible_maddrs(dht) -> list[str]:
    """Addresses others can dial, loopback last, each with the /p2p/ suffix."""
    addrs = [str(a) for a in dht.get_visible_maddrs()]
    peer = dht.peer_id.to_base58()
    full = [a if "/p2p/" in a else f"{a}/p2p/{peer}" for a in addrs]
    return sorted(set(full), key=lambda a: ("/127.0.0.1/" in a or "/::1/" in a, a))
