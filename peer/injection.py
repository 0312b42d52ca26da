"""Faults injected into a peer by (peer, round) for tests and benchmarks, as torchft injects them by
(replica, step). Never part of a run's or a peer's configuration.

A test writes a plan and starts a peer with the hidden ``barnraise peer --inject FILE``. The plan
is a JSON object listing faults; each names its kind and, optionally, the peer it is meant for (a
peer id; by default any peer given the file, so one file can serve a whole swarm of fixed
identities) and the rounds it covers (``from_round`` to ``to_round``, both included; by default
every round)::

    {"faults": [
        {"kind": "slowdown", "factor": 5},
        {"kind": "fault", "mode": "nan", "from_round": 3, "to_round": 6},
        {"kind": "attack", "mode": "signflip", "peer": "12D3KooW..."},
        {"kind": "corrupt_shards"},
        {"kind": "corrupt_state"},
        {"kind": "tamper"}
    ]}

The kinds:

    slowdown        each inner step of the round's window is followed by a sleep of (factor - 1)
                    times its duration (``factor`` >= 1; the largest one that applies counts)
    tamper          start from slightly perturbed parameters and never sync them away (tests of
                    disagreement detection); it takes no round range
    fault           the part exchange of the round: send NaN values (``nan``), a part one value
                    short (``shape``) or a frame over the cap (``oversize``) as the first chunk of
                    each part; or, as a reducer, take parts and never answer (``stall``), or
                    reduce its part wrongly but consistently, the same wrong bytes to every
                    member (``lie``: the lying reducer that ``peer/averaging/audit.py`` catches)
    attack          send a Byzantine update instead of the honest one (``mode``: a name from
                    ``peer/attacks.py``)
    corrupt_shards  flip the first 64 bytes of every shard served to another peer
    corrupt_state   flip the first 64 bytes of every state chunk served to a syncing peer

A bad file is one ``ConfigError`` line naming the file, the fault and the problem. The product
asks an ``Injector`` at its hook points and has no hook installed when there is no plan. The
older hidden flags (``--slowdown --tamper --fault --attack --serve-corrupt-shards``) stand for
faults of every round, added to the plan by ``barnraise.peer.cli.commands.injection_plan``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from barnraise.coordinator.errors import ConfigError
from barnraise.coordinator.runclock import RoundClock
from barnraise.peer.attacks import ATTACKS, Attacker
from barnraise.peer.averaging import codecs
from barnraise.protos import averaging_pb2

KINDS = ("slowdown", "tamper", "fault", "attack", "corrupt_shards", "corrupt_state")
PART_FAULTS = ("nan", "shape", "oversize", "stall", "lie")
REDUCER_FAULTS = ("stall", "lie")  # faults of the reducer's side: nothing broken in what it sends
_COMMON_KEYS = ("kind", "peer", "from_round", "to_round")
_KIND_KEYS = {"slowdown": ("factor",), "fault": ("mode",), "attack": ("mode",)}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True, kw_only=True)
class Fault:
    kind: str  # one of KINDS
    peer: str = ""  # the peer id it is meant for; "" = whichever peer is given the plan
    from_round: int | None = None  # first round covered, included; None = from the first
    to_round: int | None = None  # last round covered, included; None = no end
    factor: float = 1.0  # slowdown: compute takes this many times as long
    mode: str = ""  # fault: one of PART_FAULTS; attack: one of peer.attacks.ATTACKS

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}: choose one of {', '.join(KINDS)}")
        if not isinstance(self.peer, str):
            raise ValueError(f"peer must be a peer id string, got {self.peer!r}")
        for name in ("from_round", "to_round"):
            v = getattr(self, name)
            if v is not None and not (_is_int(v) and v >= 0):
                raise ValueError(f"{name} must be a round number (an integer >= 0), got {v!r}")
        if self.from_round is not None and self.to_round is not None and self.from_round > self.to_round:
            raise ValueError(f"from_round {self.from_round} is after to_round {self.to_round}")
        if self.kind == "tamper" and (self.from_round, self.to_round) != (None, None):
            raise ValueError("tamper takes no round range: it perturbs the state a peer starts from")
        if self.kind == "slowdown" and not (
            isinstance(self.factor, int | float)
            and not isinstance(self.factor, bool)
            and math.isfinite(self.factor)
            and self.factor >= 1
        ):
            raise ValueError(f"slowdown factor must be a number >= 1, got {self.factor!r}")
        if self.kind == "fault" and self.mode not in PART_FAULTS:
            raise ValueError(f"unknown fault {self.mode!r}: choose one of {', '.join(PART_FAULTS)}")
        if self.kind == "attack" and self.mode not in ATTACKS:
            raise ValueError(f"unknown attack {self.mode!r}: choose one of {', '.join(ATTACKS)}")

    def covers(self, r: int) -> bool:
        return (self.from_round is None or r >= self.from_round) and (
            self.to_round is None or r <= self.to_round
        )


@dataclass(frozen=True)
class InjectionPlan:
    """The faults of one plan file; ask ``for_peer`` for those of one peer."""

    faults: tuple[Fault, ...] = ()

    def __add__(self, other: InjectionPlan) -> InjectionPlan:
        return InjectionPlan(self.faults + other.faults)

    def for_peer(self, peer_id: str) -> InjectionPlan:
        return InjectionPlan(tuple(f for f in self.faults if f.peer in ("", peer_id)))

    def active(self, kind: str, r: int) -> list[Fault]:
        """Faults of ``kind`` that cover round ``r``, in file order."""
        return [f for f in self.faults if f.kind == kind and f.covers(r)]

    def modes(self, kind: str, r: int) -> list[str]:
        return [f.mode for f in self.active(kind, r)]

    def slowdown(self, r: int) -> float:
        return max((f.factor for f in self.active("slowdown", r)), default=1.0)

    def corrupts_shards(self, r: int) -> bool:
        return bool(self.active("corrupt_shards", r))

    def corrupts_state(self, r: int) -> bool:
        return bool(self.active("corrupt_state", r))

    @property
    def tamper(self) -> bool:
        return any(f.kind == "tamper" for f in self.faults)


def parse_plan(data, where: str = "plan") -> InjectionPlan:
    """A plan from its decoded JSON; a problem is a ValueError that names ``where`` and the fault."""
    if not isinstance(data, dict) or set(data) - {"faults"} or not isinstance(data.get("faults"), list):
        raise ValueError(f'{where}: expected an object {{"faults": [...]}}')
    faults = []
    for i, raw in enumerate(data["faults"], 1):
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: fault {i}: expected an object, got {type(raw).__name__}")
        kind = raw.get("kind")
        if kind is None:
            raise ValueError(f"{where}: fault {i}: no kind: choose one of {', '.join(KINDS)}")
        allowed = _COMMON_KEYS + (_KIND_KEYS.get(kind, ()) if isinstance(kind, str) else ())
        unknown = sorted(set(raw) - set(allowed))
        if unknown:
            raise ValueError(
                f"{where}: fault {i}: unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})"
            )
        try:
            faults.append(Fault(**raw))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: fault {i}: {e}") from e
    return InjectionPlan(tuple(faults))


def load_plan(path: Path) -> InjectionPlan:
    """The plan in a JSON file; any problem is one ConfigError line."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read injection plan {path}: {e.strerror}") from e
    except ValueError as e:  # JSONDecodeError and undecodable bytes
        raise ConfigError(f"{path}: not valid JSON: {e}") from e
    try:
        return parse_plan(data, str(path))
    except ValueError as e:
        raise ConfigError(str(e)) from e


def broken_part(mode: str, enc: averaging_pb2.EncodedTensor, codec: str, numel: int) -> bytes:
    """The chunk ``enc`` broken as ``mode`` says, so tests can show how reducers treat bad members."""
    if mode == "nan":
        bad = codecs.encode(torch.full((numel,), float("nan")), "fp32") if codec == "fp32" else enc
        if codec != "fp32":
            bad = averaging_pb2.EncodedTensor()
            bad.CopyFrom(enc)
            bad.scales = b"\xff\x7f" * (len(enc.scales) // 2)  # fp16 NaN scales
        return bad.SerializeToString()
    if mode == "shape":
        return codecs.encode(torch.zeros(max(0, numel - 1)), codec).SerializeToString()
    if mode == "oversize":
        return b"\0" * (codecs.max_encoded_bytes(codec, numel) + 8192)
    return enc.SerializeToString()


class Injector:
    """A plan at work in one peer: the faults meant for it, the run's clock, the attackers' memory.

    The daemon asks it whether to tamper with its start state, for the round's slowdown and for
    the update to send (``forge``); ``AllReduce`` for its part faults (``corrupt_part``, ``stalls``); the shard server
    whether to corrupt what it serves now (``corrupts_shards``), the state server likewise
    (``corrupts_state``).
    """

    def __init__(self, plan: InjectionPlan, peer_id: str, clock: RoundClock):
        self.plan = plan.for_peer(peer_id)
        self.clock = clock
        self._attackers: dict[str, Attacker] = {}  # by attack name: each remembers what it sent

    @property
    def tamper(self) -> bool:
        return self.plan.tamper

    def slowdown(self, r: int) -> float:
        return self.plan.slowdown(r)

    def forge(
        self, r: int, update: torch.Tensor, weight: float, base: torch.Tensor
    ) -> tuple[torch.Tensor, float]:
        """(update, weight) to send for round ``r``: a Byzantine one if an attack covers it."""
        names = self.plan.modes("attack", r)
        if not names:
            return update, weight
        if names[0] not in self._attackers:
            self._attackers[names[0]] = Attacker(names[0])
        return self._attackers[names[0]].forge(r, update, weight, base=base)

    def corrupt_part(
        self, r: int, chunk: int, enc: averaging_pb2.EncodedTensor, codec: str, numel: int
    ) -> averaging_pb2.EncodedTensor | bytes:
        """What to send as chunk ``chunk`` of a part in round ``r``: the first one broken if a fault says."""
        broken = [m for m in self.plan.modes("fault", r) if m not in REDUCER_FAULTS]
        return broken_part(broken[0], enc, codec, numel) if broken and chunk == 0 else enc

    def stalls(self, r: int) -> bool:
        return "stall" in self.plan.modes("fault", r)

    def lies(self, r: int) -> bool:
        return "lie" in self.plan.modes("fault", r)

    def lie(self, r: int):
        """A lying reducer's hook for round ``r`` (None: reduce honestly): the same wrong values,
        here the combined chunk scaled by -2, to every member."""
        return (lambda c, value: -2.0 * value) if self.lies(r) else None

    def corrupts_shards(self) -> bool:
        return self.plan.corrupts_shards(self.clock.round_at())

    def corrupts_state(self) -> bool:
        return self.plan.corrupts_state(self.clock.round_at())
