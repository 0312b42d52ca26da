"""What a checkpoint costs: time and bytes to save one, and to pull one over a 25 Mbit/s link.

For gpt-small (4.9M parameters) by default:

- save: ``save_checkpoint`` into a temporary directory (safetensors files, fsync, rename), median of
  several; bytes on disk per checkpoint; load and verify time;
- pull: the state (params and outer momentum, fp32) over barnraise's state sync between two real
  processes, first on loopback (the baseline, same run), then between two network namespaces whose
  links are shaped by tc tbf to 25 Mbit/s each way (``scripts/netsim_lib``, needs root), as a
  catch-up download (unpaced) and as a checkpoint pull (paced by the donor to a quarter of its
  uplink). Without root the 25 Mbit/s figures are computed from the bytes, and the JSON says so.

Usage: python scripts/bench_checkpoint.py [--quick] [--model gpt-small] [--mbit 25] [--repeats N]
The last line printed is one JSON object; results go to scripts/results/bench_checkpoint-*.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))

from baselines.report import describe_machine, stamp, write_results  # noqa: E402

RUN_ID = "bench"
SUBNET = "10.83.0.0/24"
PREFIX = "ck"  # namespace and interface names of this benchmark


def model_state(name: str, round_no: int = 1):
    from barnraise.coordinator.manifest import model_config
    from barnraise.peer.sync.checkpoint import param_layout
    from barnraise.peer.sync.state import GlobalState
    from barnraise.peer.training.model import build_model

    model = build_model(model_config(name, 256), 1)
    s = GlobalState.initial(model)
    return GlobalState(params=s.params, momentum=s.params * 0.1, round=round_no), param_layout(model)


def measure_save(name: str, repeats: int) -> dict:
    from barnraise.coordinator import checkpoints as rules
    from barnraise.peer.sync.checkpoint import load_checkpoint, save_checkpoint

    state, layout = model_state(name)
    info = rules.CheckpointInfo(
        run_id=RUN_ID,
        round=0,
        params_hash="",
        samples_seen=0,
        loss=None,
        position=rules.DataPosition(),
        saved_at=time.time(),
        model=name,
        files={},
    )
    saves, loads, size = [], [], 0
    with tempfile.TemporaryDirectory(prefix="barnraise-bench-ckpt-") as tmp:
        for i in range(repeats):
            s = type(state)(params=state.params, momentum=state.momentum, round=i)
            t0 = time.perf_counter()
            path = save_checkpoint(Path(tmp), s, layout, info, keep=2)
            saves.append(time.perf_counter() - t0)
            size = sum(f.stat().st_size for f in path.iterdir())
            t0 = time.perf_counter()
            load_checkpoint(path, s.params.numel())
            loads.append(time.perf_counter() - t0)
    return {
        "params": state.params.numel(),
        "checkpoint_bytes": size,
        "save_s": statistics.median(saves),
        "load_verify_s": statistics.median(loads),
        "state_sync_bytes": len(state.to_bytes()),
    }


# --- the two processes of a pull ---------------------------------------------------------------
def role_donor(ip: str, name: str) -> None:
    """Serve a state over state sync and print our address; run until killed."""
    from barnraise.coordinator.dhtnode import DHTOptions, start_dht, visible_maddrs
    from barnraise.peer.net.auth import OPEN_RUN
    from barnraise.peer.net.p2ploop import P2PLoop
    from barnraise.peer.sync.statesync import StateServer

    dht = start_dht(DHTOptions(listen=(f"/ip4/{ip}/tcp/0",)))
    loop = P2PLoop(dht)
    server = StateServer(loop.p2p, RUN_ID, auth=OPEN_RUN)  # the default uplink: a 25 Mbit/s home link
    loop.call(server.register(), 10.0)
    server.publish(model_state(name)[0])
    print("maddr", next(m for m in visible_maddrs(dht) if f"/{ip}/" in m), flush=True)
    while True:
        time.sleep(60)


def role_puller(ip: str, name: str, maddr: str, paced: bool) -> None:
    """Pull the donor's state once and print the seconds it took as JSON."""
    from barnraise.coordinator.dhtnode import DHTOptions, start_dht
    from barnraise.peer.net.auth import OPEN_RUN
    from barnraise.peer.net.p2ploop import P2PLoop
    from barnraise.peer.sync.puller import pull_state

    numel = model_state(name)[0].params.numel()
    dht = start_dht(DHTOptions(initial_peers=(maddr,), listen=(f"/ip4/{ip}/tcp/0",)))
    loop = P2PLoop(dht)
    donor = maddr.rsplit("/p2p/", 1)[1]
    t0 = time.perf_counter()
    coro = pull_state(loop.p2p, [donor], RUN_ID, numel, auth=OPEN_RUN, checkpoint=paced)
    state, _ = loop.call(coro, 900.0)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "bytes": len(state.to_bytes())}), flush=True)
    loop.stop()
    dht.shutdown()


def worker(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--role", *args]


def pull_once(popen, run, donor_ip: str, puller_ip: str, name: str, paced: bool) -> float:
    """Start a donor (``popen``) and time one pull (``run``) from it."""
    donor = popen(worker("donor", donor_ip, name), stdout=subprocess.PIPE, text=True)
    try:
        line = donor.stdout.readline().split()
        if len(line) != 2 or line[0] != "maddr":
            raise RuntimeError(f"donor did not start: {line}")
        res = run(worker("puller", puller_ip, name, line[1], "1" if paced else "0"), timeout_s=900)
        if res.returncode != 0:
            raise RuntimeError(f"puller failed: {res.stderr.strip()[-400:]}")
        return json.loads(res.stdout.strip().splitlines()[-1])["seconds"]
    finally:  # the donor and its p2p daemon: its whole process group
        try:
            os.killpg(donor.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        donor.wait(10)


def local_pull(name: str) -> float:
    def popen(argv, **kw):
        return subprocess.Popen(argv, cwd=REPO, start_new_session=True, **kw)

    def run(argv, timeout_s):
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)

    return pull_once(popen, run, "127.0.0.1", "127.0.0.1", name, paced=False)


def shaped_pulls(name: str, mbit: float, paced_too: bool) -> dict | str:
    """Seconds per pull between two namespaces on ``mbit`` links; a string says why not measured."""
    from netsim_lib import HostSpec, NetSim, cleanup_stale, missing_requirements

    reason = missing_requirements()
    if reason:
        return reason
    cleanup_stale(PREFIX)
    out = {}
    hosts = [HostSpec(name="don", mbit=mbit), HostSpec(name="pul", mbit=mbit)]
    with NetSim(hosts=hosts, subnet=SUBNET, prefix=PREFIX) as net:

        def popen(argv, **kw):
            return net.popen("don", argv, cwd=REPO, **kw)

        def run(argv, timeout_s):
            return net.run("pul", argv, timeout_s=timeout_s, cwd=REPO)

        for paced in (False, True) if paced_too else (False,):
            key = "checkpoint_pull_s" if paced else "catchup_pull_s"
            out[key] = pull_once(popen, run, net.ip("don"), net.ip("pul"), name, paced)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer saves; no paced pull over the shaped link")
    p.add_argument("--model", default="gpt-small")
    p.add_argument("--mbit", type=float, default=25.0, help="shaped link rate, Mbit/s")
    p.add_argument("--repeats", type=int, default=None, help="saves timed (default 5, quick 3)")
    p.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.role:
        kind, ip, name, *rest = a.role
        if kind == "donor":
            role_donor(ip, name)
        else:
            role_puller(ip, name, rest[0], rest[1] == "1")
        return 0
    machine = describe_machine()
    save = measure_save(a.model, a.repeats or (3 if a.quick else 5))
    loopback_s = local_pull(a.model)
    shaped = shaped_pulls(a.model, a.mbit, paced_too=not a.quick)
    ideal_s = save["state_sync_bytes"] * 8 / (a.mbit * 1e6)
    summary = {
        "model": a.model,
        "mbit": a.mbit,
        **save,
        "loopback_pull_s": loopback_s,
        "computed_pull_s_at_link": ideal_s,
        "computed_checkpoint_pull_s_at_link": ideal_s / 0.25,  # paced to a quarter of the uplink
        "shaped": shaped if isinstance(shaped, dict) else None,
        "shaped_skipped": shaped if isinstance(shaped, str) else None,
        "machine": machine | {"loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "quick": a.quick,
    }
    rows = [
        f"bench_checkpoint {a.model}: {save['params']:,} params",
        f"  checkpoint on disk        {save['checkpoint_bytes'] / 1e6:9.2f} MB",
        f"  save (fsync, rename)      {save['save_s']:9.3f} s   load+verify {save['load_verify_s']:.3f} s",
        f"  state sync bytes          {save['state_sync_bytes'] / 1e6:9.2f} MB",
        f"  pull on loopback          {loopback_s:9.2f} s   (baseline)",
        f"  pull at {a.mbit:g} Mbit/s computed {ideal_s:7.2f} s   paced checkpoint pull {ideal_s / 0.25:.2f} s",
    ]
    if isinstance(shaped, dict):
        for k, v in shaped.items():
            rows.append(
                f"  {k} (tbf {a.mbit:g} Mbit/s) {v:7.2f} s   x{v / max(loopback_s, 1e-9):.1f} loopback"
            )
    else:
        rows.append(f"  shaped link not measured: {shaped}")
    rows.append(f"  load {machine['loadavg_start']} -> {summary['machine']['loadavg_end']}")
    table = "\n".join(rows)
    paths = write_results(f"bench_checkpoint-{stamp()}{'-quick' if a.quick else ''}", summary, table)
    print(table)
    print(
        json.dumps({k: v for k, v in summary.items() if k != "machine"} | {"result_file": str(paths["json"])})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
