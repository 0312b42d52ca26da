"""hivemind.Optimizer, configured as its documentation recommends for peers on slow links.

``python -m baselines.hivemind_worker ... --host IP [--initial-peers MADDR ...]``. The first
worker starts the DHT and writes its multiaddrs to ``--maddrs-file``; the others join through it.

Modes (``--mode``), both from the Optimizer's configuration guide:

- ``local`` (default): ``use_local_updates=True``: every peer steps AdamW on its own gradients and
  the swarm averages parameters in the background once per epoch of ``target_batch_size``
  samples, the mode the docstring calls fully asynchronous; with an epoch as long as a barnraise
  round this is the closest hivemind comes to DiLoCo, so the comparison is of like with like.
- ``dpu``: accumulate gradients to a large ``target_batch_size`` and average them, with
  ``delay_grad_averaging`` and ``delay_optimizer_step`` (delayed parameter updates) and
  ``offload_optimizer``.

Both use ``Float16Compression`` for gradients and state: hivemind's 8-bit codecs decode wrongly on
numpy >= 2.4 (they silently leave part of the tensor un-averaged), so fp16 is the smallest codec
that works. ``matchmaking_time`` and ``averaging_timeout`` follow the guide (a few seconds for a
small run; about twice the time an all-reduce takes).
"""

from __future__ import annotations

import argparse
import functools
import logging
import time
from pathlib import Path

import torch

from baselines.events import EventLog
from baselines.workload import StepResult, Workload, add_worker_args, setup_logging, train_loop, worker_config

logger = logging.getLogger(__name__)

RUN_ID = "barnraise-bench"


def build_optimizer(args: argparse.Namespace, work: Workload, dht):
    import hivemind
    from hivemind.compression import Float16Compression, NoCompression

    compression = Float16Compression() if args.compression == "fp16" else NoCompression()
    common = dict(
        dht=dht,
        run_id=RUN_ID,
        target_batch_size=args.target_batch_size,
        batch_size_per_step=work.batch_size,
        params=work.model.parameters(),
        optimizer=functools.partial(
            torch.optim.AdamW, lr=work.training.inner_lr, weight_decay=work.training.inner_weight_decay
        ),
        matchmaking_time=args.matchmaking_s,
        averaging_timeout=args.averaging_timeout_s,
        state_averaging_compression=compression,
        verbose=True,
    )
    if args.mode == "local":
        return hivemind.Optimizer(**common, use_local_updates=True)
    return hivemind.Optimizer(
        **common,
        grad_compression=compression,
        offload_optimizer=True,
        delay_optimizer_step=True,
        delay_grad_averaging=True,
    )


def wait_for_swarm(dht, name: str, workers: int, timeout_s: float) -> None:
    """Start together: every worker announces itself and waits until all have.

    Without this the first worker steps alone for a while, and the others, finding themselves an
    epoch behind, download the whole training state before their first step (which at 25 Mbit/s
    costs tens of seconds) although they hold the same initial weights.
    """
    from hivemind.utils import get_dht_time

    key = f"{RUN_ID}_ready"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dht.store(key, subkey=name, value=True, expiration_time=get_dht_time() + 3600)
        found = dht.get(key, latest=True)
        ready = len(found.value) if found is not None and isinstance(found.value, dict) else 0
        if ready >= workers:
            return
        time.sleep(0.5)
    raise TimeoutError(f"only some of {workers} hivemind workers showed up within {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_worker_args(parser)
    parser.add_argument("--host", required=True, help="this worker's IPv4 address to listen on")
    parser.add_argument("--initial-peers", nargs="*", default=[], metavar="MADDR")
    parser.add_argument("--maddrs-file", type=Path, default=None, help="write this DHT's multiaddrs here")
    parser.add_argument("--mode", choices=("local", "dpu"), default="local")
    parser.add_argument("--target-batch-size", type=int, required=True, help="samples per swarm epoch")
    parser.add_argument("--matchmaking-s", type=float, default=5.0)
    parser.add_argument("--averaging-timeout-s", type=float, default=60.0)
    parser.add_argument("--compression", choices=("fp16", "none"), default="fp16")
    parser.add_argument("--snapshots", action="store_true", help="this worker writes parameter snapshots")
    parser.add_argument("--workers", type=int, default=1, help="wait for this many workers before training")
    parser.add_argument("--ready-timeout-s", type=float, default=180.0)
    args = parser.parse_args(argv)
    setup_logging()
    import hivemind

    work = Workload(worker_config(args, snapshots=args.snapshots))
    dht = hivemind.DHT(initial_peers=args.initial_peers, host_maddrs=[f"/ip4/{args.host}/tcp/0"], start=True)
    if args.maddrs_file is not None:
        tmp = args.maddrs_file.with_suffix(".tmp")
        tmp.write_text("\n".join(str(m) for m in dht.get_visible_maddrs()) + "\n")
        tmp.rename(args.maddrs_file)
    wait_for_swarm(dht, args.name, args.workers, args.ready_timeout_s)
    opt = build_optimizer(args, work, dht)
    epochs = EventLog(args.out_dir / "epochs.jsonl")
    last_epoch = opt.local_epoch

    def step() -> StepResult:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, samples = work.forward_backward(work.model)
        compute = time.perf_counter() - t0
        opt.step()  # local AdamW step, plus whatever waiting on the swarm the mode needs
        return StepResult(loss=loss, samples=samples, compute_s=compute)

    def note_epoch() -> None:
        nonlocal last_epoch
        if opt.local_epoch != last_epoch:
            last_epoch = opt.local_epoch
            epochs.write("epoch", t=time.time(), epoch=last_epoch)

    try:
        train_loop(work, step, snapshots=args.snapshots, on_step=note_epoch)
    finally:
        epochs.close()
        opt.shutdown()
        dht.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
