"""The exceptions netsim raises, as one small tree.

- ``NetSimError``: base of everything below; catch this to handle any harness failure.
  - ``NeedsRoot``: the caller is not root, or ``ip``/``tc`` is missing; nothing was created.
  - ``CommandFailed``: an ``ip``/``tc`` invocation exited non-zero; carries its argv and stderr.
  - ``ScenarioError``: a churn scenario file or event is malformed.
  - ``SwarmError``: the barnraise swarm did not come up (e.g. no initial-peers line in time).

They are separate so a caller can skip a test on ``NeedsRoot`` while still failing on the others.
"""

from __future__ import annotations

from collections.abc import Sequence


class NetSimError(Exception):
    """Base class so callers can catch every harness failure in one clause."""


class NeedsRoot(NetSimError):
    """Raised before touching the system, so a non-root run leaves nothing behind."""


class CommandFailed(NetSimError):
    """An ``ip``/``tc`` call failed; keeps argv and stderr because those say what to fix."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"`{' '.join(self.argv)}` exited {returncode}: {self.stderr}")


class ScenarioError(NetSimError):
    """A scenario is rejected up front so a long benchmark does not die half-way through."""


class SwarmError(NetSimError):
    """The swarm under test misbehaved in a way that makes the run meaningless."""
