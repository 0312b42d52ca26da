"""A process that only serves a fixed state to syncing peers: a donor for tests and benchmarks.

It joins the DHT, serves a state made from ``--seed`` (so the requester can rebuild the same one
and compare) through the peer's own ``StateServer`` to anyone (``OPEN_RUN``), prints one JSON line
``{"peer_id": ..., "maddrs": [...]}`` once it serves, and serves until stdin closes or a signal
ends it. ``--inject FILE`` takes a fault plan of ``barnraise peer --inject`` (``corrupt_state``).

    python scripts/state_donor.py --numel 6000000 --seed 1 --round 7 [--host 10.0.0.2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

RUN_ID = "state-donor"


def make_state(numel: int, seed: int, round_no: int):
    """The state every donor with this seed serves."""
    import torch

    from barnraise.peer.sync.state import GlobalState

    g = torch.Generator().manual_seed(seed)
    params = torch.randn(numel, generator=g)
    momentum = torch.randn(numel, generator=g) * 0.01
    return GlobalState(params=params, momentum=momentum, round=round_no)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, required=True, help="parameters in the state")
    ap.add_argument("--seed", type=int, default=1, help="seed of the state's values")
    ap.add_argument("--round", type=int, default=7, help="the state's round")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on")
    ap.add_argument("--initial-peers", nargs="*", default=[], help="DHT peers to join")
    ap.add_argument("--inject", type=Path, help="fault plan (barnraise peer --inject format)")
    args = ap.parse_args(argv)

    import hivemind

    from barnraise.peer.injection import InjectionPlan, load_plan
    from barnraise.peer.net.auth import OPEN_RUN
    from barnraise.peer.net.p2ploop import P2PLoop
    from barnraise.peer.sync.statesync import StateServer

    state = make_state(args.numel, args.seed, args.round)
    dht = hivemind.DHT(start=True, host_maddrs=[f"/ip4/{args.host}/tcp/0"], initial_peers=args.initial_peers)
    loop = P2PLoop(dht)
    peer_id = loop.p2p.peer_id.to_base58()
    plan = (load_plan(args.inject) if args.inject else InjectionPlan()).for_peer(peer_id)
    server = StateServer(loop.p2p, RUN_ID, auth=OPEN_RUN, corrupt_state=lambda: plan.corrupts_state(0))
    loop.call(server.register(), 30.0)
    server.publish(state)
    maddrs = [str(m) for m in dht.get_visible_maddrs()]
    print(json.dumps({"peer_id": peer_id, "maddrs": maddrs, "params_hash": state.params_hash()}), flush=True)
    try:
        while sys.stdin.read(1):
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        loop.stop()
        dht.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
