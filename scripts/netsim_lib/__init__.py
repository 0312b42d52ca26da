"""Emulate home internet links on one Linux machine and run a swarm through them.

Public surface (import from here; submodules are free to change):

- ``NetSim``, ``HostSpec``: namespaces on a bridge, tbf-shaped both ways, reliable teardown.
- ``cleanup_stale``: remove leftovers of crashed runs (never those of live runs).
- ``measure``: TCP throughput between two hosts, to confirm shaping.
- ``DelayProxy``, ``DelayConfig``, ``start_delay_proxy``: user-space latency (no netem here).
- ``Scenario``, ``ChurnEvent``, ``load_scenario``, ``ChurnRunner``, ``EventRecord``: churn.
- ``Swarm``, ``SwarmConfig``, ``run_swarm``: a barnraise swarm driven through its CLI.
- errors: ``NetSimError`` and subclasses, see ``netsim_lib.errors``.

Needs root and iproute2; ``missing_requirements()`` says why not, for test skips.
"""

from .churn import ChurnRunner, EventRecord
from .errors import CommandFailed, NeedsRoot, NetSimError, ScenarioError, SwarmError
from .iproute import missing_requirements
from .latency import DelayConfig, DelayProxy, start_delay_proxy
from .registry import cleanup_stale
from .rounds import RoundReport, RoundSample
from .scenario import ChurnEvent, Scenario, load_scenario
from .swarm import Swarm, SwarmConfig, run_swarm
from .throughput import Throughput, measure
from .topology import HostSpec, NetSim

__all__ = [
    "ChurnEvent",
    "ChurnRunner",
    "CommandFailed",
    "DelayConfig",
    "DelayProxy",
    "EventRecord",
    "HostSpec",
    "NeedsRoot",
    "NetSim",
    "NetSimError",
    "RoundReport",
    "RoundSample",
    "Scenario",
    "ScenarioError",
    "Swarm",
    "SwarmConfig",
    "SwarmError",
    "Throughput",
    "cleanup_stale",
    "load_scenario",
    "measure",
    "missing_requirements",
    "run_swarm",
    "start_delay_proxy",
]
