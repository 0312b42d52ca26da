"""``barnraise doctor``'s verdicts: each finding about this machine and the swarm as PASS, WARN or
FAIL, with what to do about it.

The command (``peer/cli/doctor.py``) gathers the facts (versions, device memory, disk, the run's
manifest and key, clock samples, timed transfers, a dial-back); the functions here judge them, so
each rule can be read, and tested, apart from the network. A FAIL means the peer would not work
(it could not join, or would crash or be refused); a WARN means it would work worse than it could.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from barnraise.coordinator import keys
from barnraise.coordinator.swarmclock import ClockSample, estimate
from barnraise.coordinator.versions import Versions, mismatch
from barnraise.peer.training.memoryfit import MemoryFit
from barnraise.protos import coordinator_pb2, manifest_pb2

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
CLOCK_WARN_S = 1.0  # beyond this, rounds are corrected but the volunteer should fix the clock
CLOCK_FAIL_S = 30.0  # beyond this, closed runs' signed requests (60 s skew at most) come close to refusal
SLOW_UPLOAD_MBIT = 5.0  # below this an fp32 update of a mid-size model takes much of a round


@dataclass(frozen=True, kw_only=True)
class Check:
    name: str  # what was checked: "python", "device", "clock", ...
    status: str  # PASS, WARN or FAIL
    detail: str  # what was found
    advice: str = ""  # what to do about it (WARN and FAIL)
    value: float | None = None  # the figure measured, for --json readers: seconds, Mbit/s, bytes
    value: float | None = None  # the figure measured, for --json readers: seconds, Mbit/s, bytes

    def line(self) -> str:
        text = f"{self.status}  {self.name:12} {self.detail}"
        return f"{text}\n      -> {self.advice}" if self.advice else text


def failed(checks: list[Check]) -> bool:
    return any(c.status == FAIL for c in checks)


def render_text(checks: list[Check]) -> str:
    return "".join(c.line() + "\n" for c in checks)


def render_json(checks: list[Check]) -> str:
    return json.dumps({"ok": not failed(checks), "checks": [asdict(c) for c in checks]})


def unreachable(error: str) -> Check:
    return Check(name="swarm", status=FAIL, detail=error)


def gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def versions(ours: Versions, rec: coordinator_pb2.CoordinatorRecord, barnraise_version: str) -> list[Check]:
    """Python, torch and hivemind here against the bootstrap's (the run's), and barnraise itself."""
    out = []
    theirs = {"python": rec.python_version, "torch": rec.torch_version, "hivemind": rec.hivemind_version}
    for name, mine in (("python", ours.python), ("torch", ours.torch), ("hivemind", ours.hivemind)):
        if not theirs[name]:
            out.append(
                Check(
                    name=name, status=PASS, detail=f"{mine or 'not installed'} (the run does not say which)"
                )
            )
        elif (problem := mismatch(name, mine, theirs[name])) is not None:
            out.append(
                Check(
                    name=name,
                    status=problem[0],
                    detail=f"{mine or 'none'} vs the run's {theirs[name]}",
                    advice=problem[1],
                )
            )
        else:
            out.append(Check(name=name, status=PASS, detail=f"{mine} (the run: {theirs[name]})"))
    if rec.version and rec.version != barnraise_version:
        out.append(
            Check(
                name="barnraise",
                status=WARN,
                detail=f"{barnraise_version} vs the run's {rec.version}",
                advice=f"install the run's version: pip install barnraise=={rec.version}",
            )
        )
    return out


def device(description: str, model: manifest_pb2.ModelConfig, memory: MemoryFit, on_cuda: bool) -> Check:
    what = f"{model.name} ({memory.params / 1e6:.1f}M params)"
    if memory.micro_batch == 0:
        more = (
            "a GPU with more memory, or --device cpu on a machine with more RAM"
            if on_cuda
            else "a machine with more RAM, or a GPU (--device cuda)"
        )
        return Check(
            name="device",
            status=FAIL,
            detail=f"{description}: {what} needs ~{gib(memory.need_bytes)} to train, {gib(memory.available_bytes)} available",
            advice=f"this device cannot train the run's model: use {more}; close other programs using its memory",
            value=memory.need_bytes,
        )
    mb = f", micro-batch {memory.micro_batch}" if on_cuda else f", batch {memory.micro_batch}"
    return Check(
        name="device",
        status=PASS,
        detail=f"{description}: {what} needs ~{gib(memory.need_bytes)}{mb}, {gib(memory.available_bytes)} available",
        value=memory.need_bytes,
    )


def disk(cache_dir: Path, budget_bytes: int, manifest: manifest_pb2.RunManifest) -> Check:
    """Room for the shard cache: the run's shards, up to the cache budget."""
    where = cache_dir
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    need = min(budget_bytes, sum(s.size_bytes for s in manifest.shards))
    detail = f"{gib(free)} free at {where}, the shard cache needs up to {gib(need)}"
    if free < need:
        return Check(
            name="disk",
            status=FAIL,
            detail=detail,
            advice="free some space, point --cache-dir at a bigger disk or lower --cache-budget-mb",
        )
    return Check(name="disk", status=PASS, detail=detail)


def run_key(manifest: manifest_pb2.RunManifest, cache_dir: Path, expected: str) -> Check:
    """The run key's fingerprint, against --run-key-fingerprint or the key trusted before."""
    fp = keys.fingerprint(manifest.run_public_key)
    if expected:
        if keys.parse_fingerprint(expected) != fp:
            return Check(
                name="run key",
                status=FAIL,
                detail=f"run {manifest.run_id} is signed by {fp}, not {expected}",
                advice="this is not the run you were invited to: check the --initial-peers address with its owner",
            )
        return Check(name="run key", status=PASS, detail=f"{fp} (as --run-key-fingerprint says)")
    try:
        known = json.loads((cache_dir / keys.KNOWN_RUNS_FILE).read_text()).get(manifest.run_id)
    except (OSError, ValueError, AttributeError):
        known = None
    if known and known != fp:
        return Check(
            name="run key",
            status=FAIL,
            detail=f"run {manifest.run_id} is now signed by {fp}; this machine trusted {known}",
            advice="someone may be impersonating the run: ask its owner before deleting the entry in known_runs.json",
        )
    how = "trusted before" if known else "not pinned yet: compare it with the one the run's owner published"
    return Check(name="run key", status=PASS, detail=f"{fp} ({how})")


def clock(samples: list[ClockSample]) -> Check:
    est = estimate(samples)
    if est is None:
        return Check(
            name="clock",
            status=WARN,
            detail="no swarm member told its time",
            advice="rerun when peers are up",
        )
    detail = f"{est.offset_s:+.3f} s against the swarm ({est.sources} sources)"
    if abs(est.offset_s) <= CLOCK_WARN_S:
        return Check(name="clock", status=PASS, detail=detail, value=est.offset_s)
    advice = "rounds are corrected for it, but turn on time synchronisation (NTP: timedatectl set-ntp true)"
    status = FAIL if abs(est.offset_s) > CLOCK_FAIL_S else WARN
    return Check(name="clock", status=status, detail=detail, advice=advice, value=est.offset_s)


def bandwidth(name: str, mbit: float | None, against: str, error: str = "") -> Check:
    if mbit is None:
        return Check(
            name=name,
            status=WARN,
            detail=f"not measured: {error or 'no live peer to measure against'}",
            advice="rerun when peers are up",
        )
    detail = f"{mbit:.1f} Mbit/s (against {against[:12]})"
    if name == "upload" and mbit < SLOW_UPLOAD_MBIT:
        return Check(
            name=name,
            status=WARN,
            detail=detail,
            advice="averaging will take much of each round: ask for a smaller codec (peer --codec int4)",
            value=mbit,
        )
    return Check(name=name, status=PASS, detail=detail, value=mbit)


def reachability(dialed: dict[str, bool] | None, by: str, error: str = "") -> Check:
    if dialed is None:
        return Check(
            name="reachable",
            status=WARN,
            detail=f"not measured: {error or 'no live peer to dial back'}",
            advice="rerun when peers are up",
        )
    ok = [a for a, yes in dialed.items() if yes]
    if ok:
        return Check(name="reachable", status=PASS, detail=f"{by[:12]} dialed {ok[0]}")
    return Check(
        name="reachable",
        status=WARN,
        detail=f"{by[:12]} could not dial {', '.join(dialed) or 'any address of ours'}",
        advice="others cannot dial this machine (NAT or firewall): it trains through reachable peers; to "
        "serve as leader or reducer, forward a TCP port P and pass --listen /ip4/0.0.0.0/tcp/P --announce /ip4/PUBLIC_IP/tcp/P",
    )
