"""LaunchError names the first cause: the rank whose deadline expired, not one that saw the abort."""

from __future__ import annotations

import numpy as np
import pytest

import shardcore
from shardcore.errors import LaunchError


def _rank1_never_calls(c):
    if c.rank == 0:
        c.timeout = 1.0
        c.all_reduce(np.ones(4))  # rank 1 never enters it: CommTimeoutError, then the abort
    else:
        c.timeout = 120.0
        c.recv(np.empty(1), 0)  # woken by rank 0's abort: PeerFailureError


def test_the_timed_out_rank_is_the_root_cause():
    with pytest.raises(LaunchError) as info:
        shardcore.launch(_rank1_never_calls, 2)
    err = info.value
    assert err.rank == 0
    assert str(err).startswith("rank 0 raised CommTimeoutError")
    assert sorted(f.exc_type for f in err.failures) == ["CommTimeoutError", "PeerFailureError"]


@pytest.mark.parametrize("timeout_first", [True, False])
def test_root_cause_prefers_the_timeout_to_the_reports_of_its_abort(timeout_first):
    from shardcore.launcher import RankFailure, _root_cause

    timeout = RankFailure(2, 0, None, "CommTimeoutError", "rank 2 waited 1.0 s for rank 3")
    peer = RankFailure(0, 0, None, "PeerFailureError", "aborted by rank 2")
    failures = [timeout, peer] if timeout_first else [peer, timeout]
    for order, f in enumerate(failures):
        f.order = order
    assert _root_cause(failures) is timeout
    # A death, and an ordinary error, still come first.
    died = RankFailure(3, 5, -9)
    raised = RankFailure(1, 6, None, "ValueError", "bad")
    assert _root_cause([*failures, raised]) is raised
    assert _root_cause([*failures, raised, died]) is died
