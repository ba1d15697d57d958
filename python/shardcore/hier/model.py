"""The bytes a multi-host collective puts between hosts, per rank (pure Python, no core).

These rules mirror ``HierCommunicator`` call for call, so that the planner can predict a run's
inter-host counters byte for byte; tests/test_hier.py checks them against the counters and
tests/test_hier_netns.py the counters against the wire.
"""

from __future__ import annotations

from collections.abc import Sequence

# Large all-reduces run in chunks of this many bytes, so that gloo's thread moves chunk i
# between hosts while the rank reduce-scatters chunk i+1 in shared memory. 4 MiB keeps a
# chunk far above gloo's per-message cost (tens of microseconds) and the pipeline a few deep.
PIPELINE_CHUNK_BYTES = 4 << 20


def ring_bytes(nbytes: int, members: int) -> int:
    """What the counters charge one rank of a gloo ring all-reduce of ``nbytes``."""
    return (2 * (members - 1) * nbytes) // members


def all_reduce_inter(
    elements: int,
    itemsize: int,
    host_sizes: Sequence[int],
    local_index: int,
    chunk_bytes: int = PIPELINE_CHUNK_BYTES,
) -> int:
    """Bytes rank ``local_index`` of its host sends (and receives) between hosts in an
    all-reduce of ``elements`` items over hosts of ``host_sizes`` ranks."""
    nhosts = len(host_sizes)
    if elements == 0 or nhosts < 2:
        return 0
    nlocal = host_sizes[0] if len(set(host_sizes)) == 1 else None
    if nlocal is not None and nlocal > 1:
        q = elements // nlocal
        per = max(1, chunk_bytes // (itemsize * nlocal))
        total = 0
        for start in range(0, q, per):
            total += ring_bytes(min(per, q - start) * itemsize, nhosts)
        tail = elements - q * nlocal
        if tail and local_index == 0:
            total += ring_bytes(tail * itemsize, nhosts)
        return total
    if nlocal == 1:
        return ring_bytes(elements * itemsize, nhosts)
    rails = min(host_sizes)
    if local_index >= rails:
        return 0
    lo, hi = elements * local_index // rails, elements * (local_index + 1) // rails
    return ring_bytes((hi - lo) * itemsize, nhosts) if hi > lo else 0


def all_gather_inter(block_bytes: int, host_sizes: Sequence[int], local_index: int) -> int:
    """Bytes rank ``local_index`` of its host sends between hosts in an all-gather of
    ``block_bytes`` per rank (received: the same)."""
    nhosts = len(host_sizes)
    if block_bytes == 0 or nhosts < 2:
        return 0
    if len(set(host_sizes)) == 1:
        return (nhosts - 1) * block_bytes
    if local_index != 0:
        return 0
    return (nhosts - 1) * max(host_sizes) * block_bytes
