"""The swarm's state for ``export`` and ``sample --initial-peers``: join the DHT as a client, fetch and
check the manifest, then pull the newest state live peers agree on, or the newest checkpoint a
trusted node announces when no live peer holds one as new (``peer/sync/resume.py``'s rules).
"""

from __future__ import annotations

import logging
import time

from barnraise.coordinator.errors import ConfigError, PeerUnavailable

log = logging.getLogger(__name__)


def _sources(dht, manifest, peer_id: str) -> list[tuple[int, str, list[str], float | None]]:
    """(round, params hash, holders, loss) of what can be pulled, newest first."""
    from barnraise.coordinator import checkpoints, records
    from barnraise.peer.sync.puller import agreed_hash
    from barnraise.peer.sync.resume import trusted_records
    from barnraise.peer.sync.statesync import choose_donors

    beats = records.read_heartbeats(dht, manifest.run_id, timeout_s=10.0)
    found = []
    phash, rnd, donors = choose_donors(beats, peer_id)
    if donors and rnd >= 0 and agreed_hash(beats, rnd) == phash:
        losses = [b.loss for b in beats if b.loss > 0]
        found.append((rnd, phash, donors, sum(losses) / len(losses) if losses else None))
    recs = checkpoints.read_records(dht, manifest.run_id, len(manifest.shards))
    for rec in trusted_records(recs, manifest.run_public_key, peer_id):
        holders = [r.peer_id for _, r in recs if (r.round, r.params_hash) == (rec.round, rec.params_hash)]
        found.append((rec.round, rec.params_hash, holders, rec.loss if rec.loss == rec.loss else None))
    return sorted(found, key=lambda s: -s[0])


def _run_manifest(dht, timeout_s: float):
    """(the run's verified manifest, its tokenizer file or None, its held-out split or None) from the
    coordinator."""
    from barnraise.coordinator import records
    from barnraise.coordinator.signing import verify_manifest
    from barnraise.peer.net.coordinator_client import CoordinatorClient

    rec = records.wait_for_run(dht, None, timeout_s)
    client = CoordinatorClient(rec.grpc_addrs)
    try:
        manifest = verify_manifest(client.manifest()[0])
        tok, data = manifest.tokenizer, manifest.dataset
        return (
            manifest,
            client.fetch_file(tok.file) if tok.HasField("file") else None,
            client.fetch_file(data.held_out) if data.HasField("held_out") else None,
        )
    finally:
        client.close()


PULL_ATTEMPTS = 4  # reads of who holds what: a live swarm can move on between a read and the pull
PULL_RETRY_S = 2.0  # wait before reading again, for heartbeats to name the round holders moved to


def _pull_agreed(loop, dht, manifest, round_no: int | None, numel: int):
    """(state, donor, loss) of the newest agreed state a holder serves as announced; None if none did."""
    from barnraise.peer.net.auth import OPEN_RUN
    from barnraise.peer.sync.puller import PULL_TIMEOUT_S, pull_state

    sources = [s for s in _sources(dht, manifest, dht.peer_id.to_base58()) if round_no in (None, s[0])]
    if not sources:
        which = f"of round {round_no} " if round_no is not None else ""
        raise ConfigError(
            f"no state {which}in the swarm: no live peer agrees on one and no checkpoint is announced"
        )
    for rnd, phash, holders, loss in sources:
        try:
            coro = pull_state(loop.p2p, holders, manifest.run_id, numel, auth=OPEN_RUN, min_round=rnd)
            state, donor = loop.call(coro, PULL_TIMEOUT_S)
        except PeerUnavailable as e:
            log.warning("state of round %d not pulled: %s", rnd, e)
            continue
        if state.round == rnd and state.params_hash() == phash:
            return state, donor, loss
        log.warning(
            "state from %s refused: it is not the round-%d state the swarm agrees on", donor[:12], rnd
        )
    return None


def pull_weights(initial_peers, round_no: int | None, timeout_s: float, make):
    """``make(...)`` (a ``Weights``) of the state pulled from the swarm."""
    from barnraise.coordinator.dhtnode import DHTOptions, start_dht
    from barnraise.coordinator.signing import dht_validators
    from barnraise.peer.net.p2ploop import P2PLoop
    from barnraise.peer.sync.checkpoint import run_layout, split_flat

    opts = DHTOptions(
        initial_peers=tuple(initial_peers),
        listen=("/ip4/0.0.0.0/tcp/0",),
        client_mode=True,
        start_timeout_s=timeout_s,
        extra={"record_validators": dht_validators()},
    )
    dht = start_dht(opts)
    loop = None
    try:
        manifest, tokenizer_bytes, held_out_bytes = _run_manifest(dht, timeout_s)
        if not manifest.membership.open:
            raise ConfigError(
                f"run {manifest.run_id} is closed: export from its RUN_DIR or a --checkpoint DIR"
            )
        numel, layout = run_layout(manifest)
        loop = P2PLoop(dht)
        for attempt in range(PULL_ATTEMPTS):
            time.sleep(PULL_RETRY_S if attempt else 0.0)
            got = _pull_agreed(loop, dht, manifest, round_no, numel)
            if got is not None:
                state, donor, loss = got
                return make(
                    manifest=manifest,
                    params=split_flat(state.params, layout),
                    round=state.round,
                    loss=loss,
                    source=f"peer {donor}",
                    tokenizer_bytes=tokenizer_bytes,
                    held_out_bytes=held_out_bytes,
                )
        raise PeerUnavailable("no holder served the state it announced")
    finally:
        if loop is not None:
            loop.stop()
        dht.shutdown()
