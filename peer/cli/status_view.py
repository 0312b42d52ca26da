"""The status table: a health report (``coordinator/health.py``) as plain text or as rich renderables.

Plain text is for pipes and logs; rich is for a terminal (``status`` on a TTY, ``status --watch``).
Both show the same things: swarm totals, peers sorted by contribution, findings. The report's
strings were sanitised when it was built; ``clean`` runs again here so that a report assembled
elsewhere (a JSON file, a test) cannot put escapes on the terminal either.
"""

from __future__ import annotations

import time

from barnraise.coordinator.findings import short_id
from barnraise.coordinator.health import sanitize

MAX_FINDINGS = 12  # findings listed; the rest are counted
SEVERE = {"params_disagree", "params_split", "reported_offender", "version_mismatch"}


def clean(text: object, width: int = 40) -> str:
    """Strip control characters (terminal escapes from hostile records) and bound the width."""
    return sanitize(text, width)


def utc_clock(t: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(t))


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def summary_lines(report: dict) -> list[str]:
    """Two lines of swarm totals: who and how fast; how training goes."""
    t = report["totals"]
    first = [f"run {clean(report['run_id'])}", f"round {report['round']}"]
    if report["round_s"]:
        actual = f", {t['round_wall_s']:.1f} s actual" if t["round_wall_s"] else ""
        first[-1] += f" ({report['round_s']:g} s rounds{actual})"
    first.append(
        f"peers alive {t['peers_alive']}" + (f" ({t['peers_dead']} dead)" if t["peers_dead"] else "")
    )
    first.append(f"samples/s {t['samples_per_s']:.1f}")
    if t["mean_loss"] is None:
        second = ["mean loss -"]
    else:
        trend = f" ({t['loss_trend']:+.4f}/round)" if t["loss_trend"] is not None else ""
        second = [f"mean loss {t['mean_loss']:.3f} {t['loss_trend_label']}{trend}"]
    if t["agreement"]:
        a = t["agreement"]
        second.append(f"params agree {a['peers']}/{a['of']} at round {a['round']}")
    return ["  ".join(first), "  ".join(second)]


def empty_message(report: dict) -> str | None:
    if not report["run_id"] and not report["peers"]:
        return "no run found in this swarm: no peers (is a bootstrap running with `barnraise bootstrap`?)"
    if not report["peers"]:
        return "no peers: nobody is training in this run yet (start one with `barnraise peer`)"
    return None


def params_cell(p: dict) -> str:
    return f"{clean(p['params_hash'], 16)}@{p['hash_round']}" if p["params_hash"] else "-"


def status_cell(p: dict) -> str:
    if not p["alive"]:
        return "DEAD"
    flags = (("DISAGREES", p["disagrees"]), ("straggler", p["straggler"]), ("paused", p.get("paused", False)))
    marks = [m for m, on in flags if on]
    return ",".join(marks) or "ok"


def finding_line(f: dict) -> str:
    who = f"{short_id(clean(f['peer_id'], 64))}: " if f["peer_id"] else ""
    return f"{f['kind']}: {who}{clean(f['detail'], 160)}"


def finding_style(f: dict) -> str:
    return "red" if f["kind"] in SEVERE else ("dim" if f["kind"] == "records_ignored" else "yellow")


def findings_lines(findings: list[dict]) -> list[tuple[str, str]]:
    """(line, rich style) for the findings: the first ``MAX_FINDINGS``, a count of the rest, or the
    all-clear."""
    lines = [(f"! {finding_line(f)}", finding_style(f)) for f in findings[:MAX_FINDINGS]]
    if len(findings) > MAX_FINDINGS:
        lines.append((f"! ... and {len(findings) - MAX_FINDINGS} more findings (see --json)", ""))
    if not findings:
        lines.append(("no findings: the swarm looks healthy", "green"))
    return lines


def render_text(report: dict, max_rows: int | None = None) -> str:
    """The report as plain text lines (no colours, no escapes)."""
    lines = []
    message = empty_message(report)
    if report["run_id"] or report["peers"]:
        lines += summary_lines(report)
    if message:
        lines.append(message)
        return "\n".join(lines) + "\n"
    lines.append(
        f"{'peer':12} {'reach':8} {'device':18} {'round':>6} {'phase':9} {'loss':>7} {'samples/s':>10} {'share':>6} "
        f"{'sent':>9} {'params':22} {'j/m':>7} {'seen':>6} status"
    )
    shown = report["peers"] if max_rows is None else report["peers"][:max_rows]
    for p in shown:
        lines.append(
            f"{short_id(clean(p['peer_id'], 64)):12} {clean(p['link'], 8):8} {clean(p['device'], 18):18} {p['round']:>6} "
            f"{p['phase']:9} {p['loss']:>7.3f} {p['samples_per_s']:>10.1f} {p['contribution']:>6.0%} "
            f"{human_bytes(p['bytes_sent']):>9} {params_cell(p):22} "
            f"{p['rounds_joined']:>3}/{p['rounds_missed']:<3} {p['last_seen_s']:>5.1f}s {status_cell(p)}"
        )
    if len(shown) < len(report["peers"]):
        lines.append(f"... and {len(report['peers']) - len(shown)} more peers")
    lines += [line for line, _style in findings_lines(report["findings"])]
    return "\n".join(lines) + "\n"


# The rich table's columns: (header, justification); the rows are ``peer_cells``.
RICH_COLUMNS = (
    ("peer", "left"),
    ("device", "left"),
    ("round", "right"),
    ("phase", "left"),
    ("loss", "right"),
    ("samples/s", "right"),
    ("share", "right"),
    ("sent", "right"),
    ("params", "left"),
    ("joined/missed", "right"),
    ("seen", "right"),
    ("status", "left"),
)


def peer_cells(p: dict) -> list[str]:
    """One peer's row of the rich table, in ``RICH_COLUMNS`` order."""
    return [
        short_id(clean(p["peer_id"], 64)),
        clean(p["device"], 24),
        str(p["round"]),
        p["phase"],
        f"{p['loss']:.3f}",
        f"{p['samples_per_s']:.1f}",
        f"{p['contribution']:.0%}",
        human_bytes(p["bytes_sent"]),
        params_cell(p),
        f"{p['rounds_joined']}/{p['rounds_missed']}",
        f"{p['last_seen_s']:.1f}s",
        status_cell(p),
    ]


def peer_style(p: dict) -> str:
    """Dead peers dim, disagreeing ones red, stragglers yellow."""
    if not p["alive"]:
        return "dim"
    return "red" if p["disagrees"] else ("yellow" if p["straggler"] else "")


def peers_table(peers: list[dict]):
    """The peers as a rich Table."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
    for name, justify in RICH_COLUMNS:
        table.add_column(name, justify=justify, no_wrap=True)
    for p in peers:
        table.add_row(*peer_cells(p), style=peer_style(p))
    return table


def render_rich(report: dict, *, footer: str = "", error: str = "", max_rows: int | None = None):
    """The report as a rich renderable (a Group): summary, peers table, findings, footer."""
    from rich.console import Group
    from rich.text import Text

    parts: list = []
    if report["run_id"] or report["peers"]:
        parts.append(Text("\n".join(summary_lines(report)), style="bold"))
    message = empty_message(report)
    if message:
        parts.append(Text(message, style="yellow"))
    else:
        shown = report["peers"] if max_rows is None else report["peers"][:max_rows]
        parts.append(peers_table(shown))
        if len(shown) < len(report["peers"]):
            parts.append(Text(f"... and {len(report['peers']) - len(shown)} more peers", style="dim"))
        parts += [Text(line, style=style) for line, style in findings_lines(report["findings"])]
    if error:
        parts.append(Text(f"last refresh failed: {clean(error, 200)}", style="red"))
    if footer:
        parts.append(Text(footer, style="dim"))
    return Group(*parts)
