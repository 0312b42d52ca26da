"""Plain-text rendering of a health report (the status table)."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(text: object, width: int = 40) -> str:
    """Strip control characters (terminal escapes from hostile records) and bound the width."""
    s = _CONTROL.sub("?", str(text))
    return s if len(s) <= width else s[: width - 1] + "…"


def render_text(report: dict) -> str:
    lines = []
    t = report["totals"]
    if not report["run_id"] and not report["peers"]:
        return "no run found in this swarm: no peers (is a bootstrap running with `barnraise bootstrap`?)\n"
    lines.append(
        f"run {clean(report['run_id'])}  round {report['round']}  peers alive {t['peers_alive']}"
        f"  samples/s {t['samples_per_s']:.1f}  mean loss {t['mean_loss'] if t['mean_loss'] is not None else '-'}"
    )
    if not report["peers"]:
        lines.append("no peers: nobody is training in this run yet (start one with `barnraise peer`)")
        return "\n".join(lines) + "\n"
    header = f"{'peer':14} {'device':18} {'round':>6} {'phase':9} {'loss':>7} {'samples/s':>10} {'params':16} {'seen':>6}"
    lines.append(header)
    for p in report["peers"]:
        mark = "" if p["alive"] else " DEAD"
        lines.append(
            f"{clean(p['peer_id'], 14):14} {clean(p['device'], 18):18} {p['round']:>6} {p['phase']:9} "
            f"{p['loss']:>7.3f} {p['samples_per_s']:>10.1f} {clean(p['params_hash'], 16):16} {p['last_seen_s']:>5.1f}s{mark}"
        )
    for f in report.get("findings", []):
        lines.append(f"! {f['kind']}: {clean(f['peer_id'], 14)} {clean(f['detail'], 120)}")
    return "\n".join(lines) + "\n"
