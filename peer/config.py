"""The peer daemon's settings: what ``barnraise peer``'s flags set."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from barnraise.peer.data.feed import ShardOptions
from barnraise.peer.injection import InjectionPlan
from barnraise.peer.schedule import Window


@dataclass(frozen=True, kw_only=True)
class PeerConfig:
    initial_peers: tuple[str, ...]  # multiaddrs of any swarm member (usually the bootstrap)
    run_id: str = ""  # which run, if the swarm hosts several
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/0",)  # DHT/P2P listen multiaddrs
    announce: tuple[str, ...] = ()  # public multiaddrs, if behind NAT with port forwarding
    no_relay: bool = False  # True: never reserve a relay slot (behind NAT: others cannot dial us at all)
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "barnraise")
    identity: Path | None = None  # default: a free slot, CACHE_DIR/peer.id first (peer/slots.py)
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    threads: int = 0  # CPU threads; 0: all cores
    max_rounds: int = 0  # leave after this many rounds (0: run until stopped)
    join_timeout_s: float = 30.0  # finding the run in the DHT
    codec: str = ""  # ask groups for a smaller update codec than the run's (slow uplink)
    bandwidth_mbit: float = 0.0  # declared upload bandwidth, Mbit/s: parts reduced follow it (0 = unknown)
    max_upload_mbit: float = 0.0  # cap on everything our protocols send, Mbit/s on the wire (0 = none)
    max_compute_share: float = 1.0  # share (0-1] of each round's window spent training; the rest rests
    shards: ShardOptions = field(default_factory=ShardOptions)  # leases, shard cache budget, serving
    token: Path | None = None  # membership token file (closed runs)
    run_key_fingerprint: str = ""  # the run key to trust; "" = trust on first use (CACHE_DIR/known_runs.json)
    checkpoint_every: int = 0  # rounds between this peer's own checkpoints (0: about ten minutes of rounds)
    keep_checkpoints: int = 3  # own checkpoints kept in CACHE_DIR/<run>/checkpoints
    schedule: tuple[Window, ...] = ()  # local hours to train in (--schedule); none: always
    inject: InjectionPlan | None = None  # tests and benchmarks only: faults by (peer, round)
