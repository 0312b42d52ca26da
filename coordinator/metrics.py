"""Prometheus metrics of a swarm: the health report as gauges on ``/metrics``.

Both the bootstrap node and a peer can serve them (``--metrics-port [HOST:]PORT``), so an existing
Prometheus and Grafana chart a run with nothing barnraise-specific. The gauges are computed at
scrape time from the latest health report (``coordinator/health.py``) by a custom collector, so a
peer that left disappears from ``/metrics`` instead of lingering as a stale series. A report source
that fails makes ``barnraise_report_ok`` 0; the scrape itself still succeeds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from barnraise.coordinator.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_HOST = "0.0.0.0"

# The gauges read from the report: (report section, metric name after the section's prefix, key,
# help). A "totals" gauge is one swarm-wide value of report["totals"]; a "peers" gauge has one value per
# row of report["peers"], labelled with the peer's id.
GAUGE_PREFIX = {"totals": "barnraise_", "peers": "barnraise_peer_"}
GAUGES = (
    ("totals", "samples_per_second", "samples_per_s", "Samples per second over live peers."),
    ("totals", "samples", "samples_total", "Samples processed by the listed peers since they started."),
    ("totals", "mean_loss", "mean_loss", "Mean of live peers' last inner loss."),
    ("totals", "loss_trend", "loss_trend", "Median loss change per round of live peers (negative: falling)."),
    ("totals", "round_wall_seconds", "round_wall_s", "Median wall time of a round at live peers."),
    ("totals", "compute_fraction", "compute_fraction", "Median share of a round live peers spend computing."),
    ("totals", "bytes_sent", "bytes_sent", "Averaging bytes live peers sent in their last round."),
    ("peers", "up", "alive", "1 if the peer's heartbeat is fresh, 0 if it is marked dead."),
    ("peers", "samples_per_second", "samples_per_s", "The peer's samples per second in its last round."),
    ("peers", "samples", "samples_total", "Samples the peer processed since it started."),
    ("peers", "contribution", "contribution", "The peer's share of the listed peers' samples."),
    ("peers", "loss", "loss", "The peer's mean inner loss in its last round."),
    ("peers", "round", "round", "Round the peer is working in."),
    ("peers", "hash_round", "hash_round", "Round whose average produced the peer's parameters."),
    ("peers", "last_seen_seconds", "last_seen_s", "Seconds since the peer's last heartbeat."),
    ("peers", "bytes_sent", "bytes_sent", "Averaging bytes the peer sent in its last round."),
    ("peers", "bytes_received", "bytes_received", "Averaging bytes the peer received in its last round."),
    ("peers", "rounds_joined", "rounds_joined", "Rounds the peer averaged in."),
    ("peers", "rounds_missed", "rounds_missed", "Rounds the peer was left out of."),
    ("peers", "rounds_late", "rounds_late", "Rounds whose averaging missed its deadline at the peer."),
    ("peers", "compute_fraction", "compute_fraction", "Share of its round time the peer spent computing."),
    ("peers", "round_wall_seconds", "round_wall_s", "Wall time of the peer's last round."),
    ("peers", "disagrees", "disagrees", "1 if the peer's parameters differ from the majority's."),
    ("peers", "straggler", "straggler", "1 if the peer is flagged as a straggler."),
)


def gauges_of(section: str) -> list[tuple[str, str, str]]:
    """(metric name, report key, help) of the gauges read from ``section`` of the report."""
    return [(GAUGE_PREFIX[s] + name, key, doc) for s, name, key, doc in GAUGES if s == section]


def parse_metrics_address(text: str) -> tuple[str, int]:
    """'PORT' or 'HOST:PORT' -> (host, port); a ConfigError says what is wrong."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or DEFAULT_HOST
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ConfigError(f"--metrics-port {text!r} must be PORT or HOST:PORT, e.g. 9100 or 127.0.0.1:9100")
    return host, number


class ReportCollector:
    """A prometheus-client collector over ``source()``, a callable returning a health report.

    ``cache_s`` bounds how often ``source`` runs (a peer's source reads the DHT at scrape time).
    """

    def __init__(self, source: Callable[[], dict], cache_s: float = 0.0):
        self.source = source
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._cached: tuple[float, dict | None] = (float("-inf"), None)

    def report(self) -> dict | None:
        with self._lock:
            at, report = self._cached
            if time.monotonic() - at >= self.cache_s or report is None:
                try:
                    report = self.source()
                except Exception as e:  # a scrape must not fail because the DHT hiccuped
                    log.debug("metrics: no report: %s", e)
                    report = None
                self._cached = (time.monotonic(), report)
            return report

    def describe(self) -> list:
        return []  # metric set depends on the report: no up-front registration checks

    def collect(self) -> Iterator:
        from prometheus_client.core import GaugeMetricFamily

        report = self.report()
        ok = GaugeMetricFamily("barnraise_report_ok", "1 if the last health report could be read.")
        ok.add_metric([], 0.0 if report is None else 1.0)
        yield ok
        if report is None:
            return
        run = [report["run_id"]]
        totals = report["totals"]

        def gauge(name: str, doc: str, value, labels: tuple[str, ...] = ("run",), label_values=run):
            family = GaugeMetricFamily(name, doc, labels=list(labels))
            if value is not None:
                family.add_metric(list(label_values), float(value))
            return family

        yield gauge("barnraise_round", "The swarm's current round.", report["round"])
        yield gauge("barnraise_round_length_seconds", "Configured round length.", report["round_s"])
        peers = GaugeMetricFamily("barnraise_peers", "Peers by state.", labels=["run", "state"])
        peers.add_metric([*run, "alive"], totals["peers_alive"])
        peers.add_metric([*run, "dead"], totals["peers_dead"])
        yield peers
        for name, key, doc in gauges_of("totals"):
            yield gauge(name, doc, totals[key])
        agreement = totals["agreement"]
        yield gauge(
            "barnraise_params_agreement",
            "Share of live peers holding the majority parameters at the top round.",
            agreement["peers"] / agreement["of"] if agreement else None,
        )
        kinds = GaugeMetricFamily("barnraise_findings", "Current findings by kind.", labels=["run", "kind"])
        counts: dict[str, int] = {}
        for f in report["findings"]:
            counts[f["kind"]] = counts.get(f["kind"], 0) + 1
        for kind, n in sorted(counts.items()):
            kinds.add_metric([*run, kind], n)
        yield kinds
        yield gauge("barnraise_records_ignored", "Heartbeat records ignored.", report["records"]["ignored"])
        for name, key, doc in gauges_of("peers"):
            family = GaugeMetricFamily(name, doc, labels=["run", "peer"])
            for p in report["peers"]:
                family.add_metric([*run, p["peer_id"]], float(p[key]))
            yield family
        info = GaugeMetricFamily(
            "barnraise_peer_info",
            "Peer attributes as labels.",
            labels=["run", "peer", "version", "device", "phase"],
        )
        for p in report["peers"]:
            info.add_metric([*run, p["peer_id"], p["version"], p["device"], p["phase"]], 1.0)
        yield info


@dataclass
class MetricsServer:
    """A running /metrics endpoint; ``stop`` closes it."""

    host: str
    port: int  # the bound port (useful when 0 was asked for)
    _server: object

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(address: str, source: Callable[[], dict], cache_s: float = 0.0) -> MetricsServer:
    """Serve ``source``'s report as Prometheus gauges at ``address`` ('PORT' or 'HOST:PORT')."""
    from prometheus_client import CollectorRegistry, start_http_server

    host, port = parse_metrics_address(address)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReportCollector(source, cache_s))
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from e
    bound = server.server_address[1]
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return MetricsServer(host=host, port=bound, _server=server)
