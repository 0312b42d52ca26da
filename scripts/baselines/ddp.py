"""Synchronous data parallelism: torch.distributed DDP over gloo, fp32 gradients every step.

``python -m baselines.ddp ... --rank R --world N --master IP:PORT``. Each rank draws its own
batches (shard order by worker name ``ddpR``), so N ranks make one step of N x batch_size
sequences. Gradients are all-reduced in buckets during backward, the standard overlap DDP gives.
Run inside a network namespace with ``GLOO_SOCKET_IFNAME=eth0``; gloo otherwise binds to
127.0.0.1 there. Only rank 0 writes snapshots: after every step all ranks hold the same weights.

Two runs with the same world size and data order follow the same loss trajectory step by step
whatever the link speed, which is what lets the benchmark time a few steps at 25 Mbit/s and read
the number of steps to the target from the unlimited-link run.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from baselines.workload import StepResult, Workload, add_worker_args, setup_logging, train_loop, worker_config

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_worker_args(parser)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--master", required=True, metavar="IP:PORT", help="rank 0's rendezvous address")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="longest wait on one collective")
    args = parser.parse_args(argv)
    setup_logging()
    work = Workload(worker_config(args, snapshots=args.rank == 0))
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://{args.master}",
        rank=args.rank,
        world_size=args.world,
        timeout=datetime.timedelta(seconds=args.timeout_s),
    )
    try:
        model = DistributedDataParallel(work.model)
        opt = work.make_adamw(model.parameters())

        def step() -> StepResult:
            t0 = time.perf_counter()
            loss, samples = work.forward_backward(model)
            opt.step()
            opt.zero_grad(set_to_none=True)
            # Backward and the gradient all-reduce overlap: the whole step counts, waiting included.
            return StepResult(loss=loss, samples=samples, compute_s=time.perf_counter() - t0)

        def agree_stop(want: bool) -> bool:
            flag = torch.tensor([1.0 if want else 0.0])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return bool(flag.item() > 0)

        train_loop(work, step, snapshots=args.rank == 0, agree_stop=agree_stop)
        dist.barrier()  # no rank tears gloo down while another still talks to it (aborts with -6)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
