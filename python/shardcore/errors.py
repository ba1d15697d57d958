"""Exceptions raised by shardcore (pure Python: importable without the C++ core)."""

from __future__ import annotations


class ShardcoreError(Exception):
    """Base class of every error shardcore raises on its own account."""


class CommError(ShardcoreError, RuntimeError):
    """A collective could not complete; the communicator is unusable afterwards."""


class PeerFailureError(CommError):
    """A peer rank died, raised, or closed its communicator while this rank waited for it."""


class CollectiveMismatchError(CommError, ValueError):
    """Ranks called different collectives, counts, dtypes, ops, roots or tags."""


class CommTimeoutError(CommError, TimeoutError):
    """A wait passed the communicator's deadline."""


class LaunchError(ShardcoreError, RuntimeError):
    """A rank started by ``launch`` or ``shardcore run`` failed.

    ``rank`` is the rank that failed first, ``traceback`` its formatted traceback (None when the
    process died without one) and ``exitcode`` its exit status (negative: killed by a signal).
    """

    def __init__(
        self,
        message: str,
        rank: int = -1,
        traceback: str | None = None,
        exitcode: int | None = None,
    ):
        super().__init__(message)
        self.args = (message,)
        self.rank = rank
        self.traceback = traceback
        self.exitcode = exitcode
        self.failures: list = []  # every failed rank's record (launcher.RankFailure)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PlanError(ShardcoreError, ValueError):
    """An infeasible parallel configuration; the message names the constraint and alternatives."""
