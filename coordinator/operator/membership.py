"""``barnraise token``: who am I, issue a membership token, revoke tokens and ban peers.

A volunteer runs ``token whoami`` and sends the peer id it prints to the run's owner, who runs
``token issue --run RUN_DIR --peer-key PEER_ID`` and sends back the token (one line of text); the
volunteer starts ``barnraise peer --token FILE``. ``token revoke`` adds token ids or banned peer
ids to the run's signed revocation record and, given ``--initial-peers``, publishes it at once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from barnraise.coordinator.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser("token", help="membership of closed runs: whoami, issue, revoke")
    tsub = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")

    w = tsub.add_parser("whoami", help="print this machine's peer id (create its identity if needed)")
    w.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "barnraise")
    w.add_argument("--identity", type=Path, default=None, help="identity file (default CACHE_DIR/peer.id)")
    w.add_argument("--json", action="store_true")
    w.set_defaults(handler=cmd_whoami)

    i = tsub.add_parser("issue", help="issue a membership token (run owner)")
    i.add_argument("--run", type=Path, required=True, metavar="RUN_DIR")
    i.add_argument(
        "--peer-key", required=True, metavar="PEER_ID_OR_PUBKEY", help="what `token whoami` printed"
    )
    i.add_argument("--name", default="", help="a name to remember the volunteer by")
    i.add_argument("--days", type=float, default=30.0, help="validity in days (default 30)")
    i.add_argument("--run-key", type=Path, default=None, help="run key (default RUN_DIR/run.key)")
    i.add_argument("--out", type=Path, default=None, help="write the token here (default: print it)")
    i.set_defaults(handler=cmd_issue)

    r = tsub.add_parser("revoke", help="revoke tokens or ban peers for the rest of the run (run owner)")
    r.add_argument("--run", type=Path, required=True, metavar="RUN_DIR")
    r.add_argument(
        "--token-id", nargs="+", default=[], metavar="HEX", help="token ids (see RUN_DIR/tokens.jsonl)"
    )
    r.add_argument(
        "--peer", nargs="+", default=[], metavar="PEER_ID", help="revoke every token issued to these"
    )
    r.add_argument("--ban", nargs="+", default=[], metavar="PEER_ID", help="refuse these peers, token or not")
    r.add_argument("--run-key", type=Path, default=None, help="run key (default RUN_DIR/run.key)")
    r.add_argument(
        "--initial-peers", nargs="+", default=[], metavar="MADDR", help="publish in this swarm now"
    )
    r.set_defaults(handler=cmd_revoke)


def _run_and_key(run_dir: Path, run_key: Path | None):
    from barnraise.coordinator import keys
    from barnraise.coordinator.manifest import load_signed_manifest
    from barnraise.coordinator.signing import verify_manifest

    manifest = verify_manifest(load_signed_manifest(run_dir))
    key = keys.load_run_key(run_key or run_dir / keys.RUN_KEY_FILE)
    if keys.public_bytes(key) != manifest.run_public_key:
        raise ConfigError(
            f"that run key (fingerprint {keys.fingerprint(keys.public_bytes(key))}) did not sign run "
            f"{manifest.run_id} (fingerprint {keys.fingerprint(manifest.run_public_key)}): pass the right --run-key"
        )
    return manifest, key


def cmd_whoami(args) -> int:
    from barnraise.coordinator import keys

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    path = args.identity or args.cache_dir / "peer.id"
    key = keys.ensure_identity(path, replace_foreign=args.identity is None)
    pub = keys.public_bytes(key)
    peer_id = keys.peer_id_of(pub)
    if args.json:
        print(json.dumps({"peer_id": peer_id, "public_key": pub.hex(), "identity": str(path)}))
    else:
        print(f"peer id:    {peer_id}")
        print(f"public key: {pub.hex()}")
        print(
            f"send the peer id to the run's owner; they run: barnraise token issue --run RUN_DIR --peer-key {peer_id}"
        )
    return 0


def cmd_issue(args) -> int:
    from barnraise.coordinator import keys, tokens
    from barnraise.coordinator.atomic import write_atomic

    manifest, key = _run_and_key(args.run, args.run_key)
    peer_key = keys.parse_peer_key(args.peer_key)
    signed = tokens.issue_token(key, manifest.run_id, peer_key, days=args.days, name=args.name)
    tokens.record_issued(args.run, signed)
    text = tokens.encode_token(signed) + "\n"
    token = tokens.read_token(signed)
    peer_id = keys.peer_id_of(peer_key)
    if args.out is not None:
        write_atomic(args.out, text.encode(), mode=0o600)
        print(f"token {token.token_id.hex()} for {peer_id} written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
        print(f"token {token.token_id.hex()} for {peer_id}", file=sys.stderr)
    if manifest.membership.open:
        print(
            f"note: run {manifest.run_id} is open; tokens only matter in runs made with --closed",
            file=sys.stderr,
        )
    return 0


def cmd_revoke(args) -> int:
    from barnraise.coordinator import keys, tokens

    manifest, key = _run_and_key(args.run, args.run_key)
    ids = []
    for text in args.token_id:
        try:
            ids.append(bytes.fromhex(text))
        except ValueError as e:
            raise ConfigError(f"token id {text!r} is not hex") from e
    for peer in args.peer:
        found = tokens.issued_to(args.run, peer)
        if not found:
            raise ConfigError(f"no token for {peer} in {args.run / tokens.TOKENS_LEDGER}")
        ids.extend(found)
    for peer in args.ban:
        if keys.public_key_of(peer) is None:
            raise ConfigError(f"{peer!r} is not a peer id (12D3KooW...)")
    if not ids and not args.ban:
        raise ConfigError("nothing to revoke: give --token-id, --peer or --ban")
    rev = tokens.revoke(args.run, manifest.run_id, token_ids=ids, ban=args.ban)
    published = False
    if args.initial_peers:
        published = _publish(args.initial_peers, rev, key)
    print(
        json.dumps(
            {
                "run_id": manifest.run_id,
                "revoked_tokens": len(rev.token_ids),
                "banned_peers": list(rev.banned_peer_ids),
                "published": published,
            }
        )
    )
    return 0


def _publish(initial_peers: list[str], rev, key) -> bool:
    from barnraise.coordinator.dhtnode import DHTOptions, start_dht
    from barnraise.coordinator.signing import dht_validators
    from barnraise.coordinator.tokens import publish_revocation

    dht = start_dht(
        DHTOptions(
            initial_peers=tuple(initial_peers),
            listen=("/ip4/127.0.0.1/tcp/0",),
            client_mode=True,
            extra={"record_validators": dht_validators()},
        )
    )
    try:
        return publish_revocation(dht, rev, key)
    finally:
        dht.shutdown()
