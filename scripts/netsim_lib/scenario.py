"""Churn scenarios: a small JSON file saying how big the swarm is and what happens when.

Example::

    {"peers": 4, "mbit": 25, "mbit_per_peer": {"p1": 10, "p2": "10/100"}, "duration_s": 120,
     "events": [{"at_s": 30, "action": "kill", "target": "p2"},
                {"at_round": 5, "action": "stop", "target": "p3", "for_s": 10},
                {"at_s": 60, "action": "start", "target": "p5"},
                {"at_s": 90, "action": "restart", "target": "boot"}]}

Each event fires once, at ``at_s`` seconds after the swarm is up or as soon as the swarm reports
round ``at_round``. ``for_s`` undoes ``stop`` (SIGCONT) and ``kill``/``term`` (start again) after
that many seconds. Rates are Mbit/s; ``"UP/DOWN"`` sets the directions apart (``mbit`` too); null is unlimited.
``"nat": ["p3"]`` (or ``"all"``) puts those peers behind their own home router (``router.py``);
the ``block_inbound`` action makes a router start dropping inbound connections mid-run.
Everything is validated on load so a mistake fails before a long run, not half-way through it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ScenarioError

logger = logging.getLogger(__name__)

BOOTSTRAP = "boot"
ACTIONS = {
    "kill": "SIGKILL the process group (crash); with for_s, start it again after for_s",
    "term": "SIGTERM the process group (graceful leave); with for_s, start it again after for_s",
    "stop": "SIGSTOP the process group (frozen peer); with for_s, SIGCONT after for_s",
    "cont": "SIGCONT the process group",
    "start": "start the peer (or the bootstrap) if it is not running",
    "restart": "SIGKILL then start again at once",
    "block_inbound": "the host's router starts dropping new inbound connections (no longer dialable)",
    "allow_inbound": "undo block_inbound",
}
Rate = tuple[float | None, float | None]  # (upload, download) in Mbit/s; None = unlimited


@dataclass(frozen=True, kw_only=True)
class ChurnEvent:
    """One scheduled fault or change, keyed by time or by training round."""

    action: str  # one of ACTIONS
    target: str  # host name: "boot" or a peer such as "p3"
    at_s: float | None = None  # seconds after the swarm is up; exclusive with at_round
    at_round: int | None = None  # fire once the swarm reports this round; exclusive with at_s
    for_s: float | None = None  # seconds until the action is undone (stop/kill/term only)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ScenarioError(f"unknown action {self.action!r}; use one of {sorted(ACTIONS)}")
        if (self.at_s is None) == (self.at_round is None):
            raise ScenarioError(f"{self.describe()}: give exactly one of at_s or at_round")
        if self.at_s is not None and self.at_s < 0:
            raise ScenarioError(f"{self.describe()}: at_s must be >= 0 seconds")
        if self.at_round is not None and self.at_round < 0:
            raise ScenarioError(f"{self.describe()}: at_round must be >= 0")
        if self.for_s is not None and (self.action not in ("stop", "kill", "term") or self.for_s <= 0):
            raise ScenarioError(f"{self.describe()}: for_s must be > 0 and only on stop/kill/term")

    def describe(self) -> str:
        """Human-readable one-liner for logs and reports."""
        when = f"t={round(self.at_s, 1):g}s" if self.at_s is not None else f"round {self.at_round}"
        extra = f" for {round(self.for_s, 1):g}s" if self.for_s is not None else ""
        return f"{when}: {self.action} {self.target}{extra}"


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """A whole experiment: swarm size, link rates, how long, and the churn schedule."""

    peers: int = 4  # peers started at the beginning, named p1..pN
    mbit: float | None = 25.0  # default peer link rate both ways in Mbit/s; None = unlimited
    mbit_per_peer: Mapping[str, Rate] = field(default_factory=dict)  # per-peer (up, down) Mbit/s
    duration_s: float = 120.0  # seconds the schedule runs after the swarm is up
    events: tuple[ChurnEvent, ...] = ()  # the churn schedule
    nat: frozenset[str] = frozenset()  # peers behind their own home router (MASQUERADE, no inbound)

    def __post_init__(self) -> None:
        if self.peers < 0:
            raise ScenarioError(f"peers must be >= 0, got {self.peers}")
        if self.duration_s <= 0:
            raise ScenarioError(f"duration_s must be > 0, got {self.duration_s}")
        for ev in self.events:
            if ev.target != BOOTSTRAP and not re.fullmatch(r"p[0-9]{1,5}", ev.target):
                raise ScenarioError(f"{ev.describe()}: target must be 'boot' or p<N>")
        unknown = set(self.mbit_per_peer) - set(self.all_peers())
        if unknown:
            raise ScenarioError(f"mbit_per_peer names peers the scenario never starts: {sorted(unknown)}")
        unknown = set(self.nat) - set(self.all_peers())
        if unknown:
            raise ScenarioError(f"nat names peers the scenario never starts: {sorted(unknown)}")

    def initial_peers(self) -> list[str]:
        """Names of the peers running from the start."""
        return [f"p{i}" for i in range(1, self.peers + 1)]

    def all_peers(self) -> list[str]:
        """Every peer name the run may need, so late joiners get a namespace up front."""
        names = self.initial_peers()
        for ev in self.events:
            if ev.target != BOOTSTRAP and ev.target not in names:
                names.append(ev.target)
        return names

    def rate(self, peer: str) -> Rate:
        """(upload, download) Mbit/s for ``peer``."""
        return self.mbit_per_peer.get(peer, (self.mbit, self.mbit))


def parse_rate(value: Any) -> Rate:
    """Read 25, null, "none", "10/100" or {"up": 10, "down": 100} as (up, down) Mbit/s."""
    if isinstance(value, Mapping):
        return (_one_rate(value.get("up")), _one_rate(value.get("down")))
    if isinstance(value, str) and "/" in value:
        up, down = value.split("/", 1)
        return (_one_rate(up), _one_rate(down))
    rate = _one_rate(value)
    return (rate, rate)


def _one_rate(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "inf", "")):
        return None
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise ScenarioError(f"not a rate in Mbit/s: {value!r}") from None
    if rate <= 0:
        raise ScenarioError(f"rate must be > 0 Mbit/s, got {rate}")
    return rate


def parse_rate_overrides(text: str) -> dict[str, Rate]:
    """Parse the CLI form ``p1=10,p2=100,p3=10/100``."""
    rates: dict[str, Rate] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ScenarioError(f"expected NAME=MBIT, got {item!r}")
        rates[name.strip()] = parse_rate(value.strip())
    return rates


_EVENT_KEYS = {"action", "target", "at_s", "at_round", "for_s"}
_SCENARIO_KEYS = {"peers", "mbit", "mbit_per_peer", "duration_s", "events", "description", "nat"}


def scenario_from_dict(data: Mapping[str, Any]) -> Scenario:
    """Build a Scenario from parsed JSON, rejecting unknown keys (they are usually typos)."""
    unknown = set(data) - _SCENARIO_KEYS
    if unknown:
        raise ScenarioError(f"unknown scenario keys {sorted(unknown)}; known: {sorted(_SCENARIO_KEYS)}")
    events = []
    for i, raw in enumerate(data.get("events", [])):
        bad = set(raw) - _EVENT_KEYS
        if bad:
            raise ScenarioError(f"event {i}: unknown keys {sorted(bad)}; known: {sorted(_EVENT_KEYS)}")
        try:
            events.append(ChurnEvent(**raw))
        except TypeError as exc:
            raise ScenarioError(f"event {i}: {exc}") from None
    per_peer = {name: parse_rate(v) for name, v in data.get("mbit_per_peer", {}).items()}
    up, down = parse_rate(data.get("mbit", 25.0))
    if up != down:  # an asymmetric default ("25/100"): every peer without its own rate gets it
        peers = int(data.get("peers", 4))
        named = {f"p{i}" for i in range(1, peers + 1)} | {
            str(e.get("target")) for e in data.get("events", [])
        }
        for name in named - set(per_peer) - {BOOTSTRAP}:
            per_peer[name] = (up, down)
    nat = data.get("nat", [])
    if nat == "all":
        nat = [f"p{i}" for i in range(1, int(data.get("peers", 4)) + 1)]
    if not isinstance(nat, list) or not all(isinstance(n, str) for n in nat):
        raise ScenarioError(f'nat must be a list of peer names or "all", got {nat!r}')
    return Scenario(
        nat=frozenset(nat),
        peers=int(data.get("peers", 4)),
        mbit=up,
        mbit_per_peer=per_peer,
        duration_s=float(data.get("duration_s", 120.0)),
        events=tuple(events),
    )


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc}") from None
    if not isinstance(data, Mapping):
        raise ScenarioError(f"{path}: top level must be a JSON object")
    return scenario_from_dict(data)
