"""Smoke test of the benchmark's baseline workers, evaluator and figures, without namespaces.

The solo, DDP (2 ranks over gloo on 127.0.0.1) and hivemind.Optimizer workers each train the
smallest model for a few seconds as real processes; the evaluator must score their snapshots and
the held-out loss must fall. The probe must still find every barnraise method it instruments, so
a rename breaks this test instead of silently emptying the benchmark.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

from baselines import agreement, corpus, metrics  # noqa: E402
from baselines.evaluator import CurvePoint, Evaluator  # noqa: E402
from baselines.events import read_all  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(SCRIPTS), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONWARNINGS": "ignore::DeprecationWarning", **extra}


def _worker(module: str, run_dir: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", f"baselines.{module}", "--run-dir", str(run_dir), "--out-dir", str(out / name),
        "--name", name, "--budget-s", "3", "--snapshot-every-s", "1", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("bench")
    spec = corpus.RunSpec(model="gpt-nano", round_s=5.0, round_delay=0, codec="int8", batch_size=4, seed=7)
    from netsim_lib.swarm import default_barnraise_command

    return corpus.prepare_run(work, spec, default_barnraise_command())


def test_workers_train_and_snapshots_evaluate(run_dir: Path, tmp_path: Path) -> None:
    port = 29500 + os.getpid() % 1000
    jobs = {
        "solo": _worker("solo", run_dir, tmp_path / "solo", "solo"),
        "ddp0": _worker("ddp", run_dir, tmp_path / "ddp", "d0", "--rank", "0", "--world", "2",
                        "--master", f"127.0.0.1:{port}", "--slot", "0/2"),
        "ddp1": _worker("ddp", run_dir, tmp_path / "ddp", "d1", "--rank", "1", "--world", "2",
                        "--master", f"127.0.0.1:{port}", "--slot", "1/2"),
        "hivemind": _worker("hivemind_worker", run_dir, tmp_path / "hm", "h1", "--host", "127.0.0.1",
                            "--target-batch-size", "16", "--snapshots", "--matchmaking-s", "1"),
    }  # fmt: skip
    procs = {
        name: subprocess.Popen(
            argv, env=_env(GLOO_SOCKET_IFNAME="lo"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for name, argv in jobs.items()
    }
    try:
        outputs = {name: p.communicate(timeout=150)[0].decode(errors="replace") for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    for name, p in procs.items():
        assert p.returncode == 0, f"{name} failed:\n{outputs[name][-3000:]}"

    ev = Evaluator(run_dir, run_dir.parent / corpus.HELDOUT_FILE, n_seqs=4, threads=1)
    for system, workers in (("solo", ["solo"]), ("ddp", ["d0", "d1"]), ("hm", ["h1"])):
        events = read_all([tmp_path / system / w / "events.jsonl" for w in workers])
        starts = [e["t"] for e in events if e["kind"] == "start"]
        assert len(starts) == len(workers)
        curve = ev.curve(events, min(starts))
        assert len(curve) >= 2, f"{system}: too few snapshots"
        assert all(math.isfinite(p.loss) for p in curve)
        assert curve[-1].loss < curve[0].loss, f"{system}: held-out loss did not fall: {curve}"
    ddp_steps = [
        [e for e in read_all([tmp_path / "ddp" / w / "events.jsonl"]) if e["kind"] == "step"]
        for w in ("d0", "d1")
    ]
    assert len(ddp_steps[0]) == len(ddp_steps[1]) > 0, "DDP ranks must stop after the same step"


def test_probe_finds_every_hook(tmp_path: Path) -> None:
    code = "from pathlib import Path; from baselines import probe; probe.install(Path(r'%s'), None)"
    done = subprocess.run(
        [sys.executable, "-c", code % (tmp_path / "events.jsonl")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_time_to_target_interpolates() -> None:
    curve = [CurvePoint(t_s=0, loss=5.0, file=""), CurvePoint(t_s=10, loss=3.0, file="")]
    assert metrics.time_to_target(curve, 4.0) == pytest.approx(5.0)
    assert metrics.time_to_target(curve, 2.0) is None
    assert metrics.allreduce_limit_s(1e6, 4, 8.0) == pytest.approx(1.5)


def test_agreement_flags_a_split_round(tmp_path: Path) -> None:
    events = [
        {"kind": "snapshot", "source": "p1", "round": 3, "hash": "aa", "t": 1.0},
        {"kind": "snapshot", "source": "p2", "round": 3, "hash": "aa", "t": 1.1},
        {"kind": "snapshot", "source": "p1", "round": 4, "hash": "bb", "t": 2.0},
        {"kind": "snapshot", "source": "p2", "round": 4, "hash": "cc", "t": 2.1},
    ]
    from barnraise.peer.events import RoundApplied, RoundMissed, open_events

    path = tmp_path / "p1.events.jsonl"
    sink = open_events(path)
    sink.emit(RoundApplied(round=3, members=2, params_hash="aa", duration_s=1.0))
    sink.emit(RoundMissed(round=4, reason="averaging did not finish in time"))
    sink.close()
    audits = agreement.audit(events, [path, tmp_path / "killed-before-it-wrote.jsonl"])
    summary = agreement.summarise(audits)
    assert summary["rounds_disagreed"] == [4]
    assert summary["rounds_missed_deadline"] == 1
    assert audits[0].applied == 1 and audits[0].agreed and audits[0].group_sizes == {2: 1}
