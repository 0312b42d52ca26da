"""One peer training alone with no network: the bar a swarm must beat to be worth joining.

``python -m baselines.solo --run-dir RUN --out-dir OUT --name solo --budget-s 90``: AdamW inner
steps, exactly a barnraise peer's inner loop, for the budget; events and snapshots as every worker.
"""

from __future__ import annotations

import argparse
import time

from baselines.workload import StepResult, Workload, add_worker_args, setup_logging, train_loop, worker_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_worker_args(parser)
    args = parser.parse_args(argv)
    setup_logging()
    work = Workload(worker_config(args))
    opt = work.make_adamw(work.model.parameters())

    def step() -> StepResult:
        t0 = time.perf_counter()
        loss, samples = work.forward_backward(work.model)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return StepResult(loss=loss, samples=samples, compute_s=time.perf_counter() - t0)

    train_loop(work, step, snapshots=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
