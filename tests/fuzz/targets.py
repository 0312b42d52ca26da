"""Fuzz targets: one per parser of bytes from the network, shared by the suite and scripts/fuzz.py.

A target pairs a hypothesis strategy of hostile input with a check that feeds it to the parser and
asserts the contract: a valid result (checked against the parser's invariants: sizes within the
caps, values finite, indices in range, signatures binding) or one of the errors that parser
documents (``coordinator/errors.py``), never any other exception, and no hang past its deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as fixed_seed
from hypothesis import strategies as st


@dataclass(frozen=True)
class Target:
    name: str  # as --target names it
    parser: str  # the product function under test
    strategy: st.SearchStrategy
    check: Callable[[Any], None]  # raises AssertionError (or the unexpected exception) on a failure


def run_target(target: Target, max_examples: int, seed: int | None = None) -> int:
    """Run ``target`` on ``max_examples`` inputs; returns how many ran. Raises on the first failure.

    ``seed=None`` derandomizes (the suite: the same inputs on every run); no example database.
    """
    ran = 0

    def count_and_check(value: Any) -> None:
        nonlocal ran
        ran += 1
        target.check(value)

    test = settings(
        max_examples=max_examples,
        derandomize=seed is None,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )(given(target.strategy)(count_and_check))
    if seed is not None:
        test = fixed_seed(seed)(test)
    test()
    return ran


def all_targets() -> dict[str, Target]:
    from tests.fuzz import audit_targets, donor_targets, peer_targets, record_targets, sparse_targets

    found = [
        *peer_targets.TARGETS,
        *record_targets.TARGETS,
        *donor_targets.TARGETS,
        *sparse_targets.TARGETS,
        *audit_targets.TARGETS,
    ]
    return {t.name: t for t in found}
