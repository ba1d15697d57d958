"""Which ranks share memory: host identities and the two-level layout built from them."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "?"


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def _label() -> str:
    label = os.environ.get("SHARDCORE_HOST_ID", "")
    if label == "rank":  # every rank its own host: all traffic through gloo (a flat baseline)
        return "rank-" + os.environ.get("SHARDCORE_RANK", os.environ.get("RANK", "?"))
    return label


def host_identity() -> str:
    """A string equal for two processes exactly when they can share a shardcore segment.

    A segment lives in /dev/shm (the tmpfs instance is named by its device and inode), is found
    through the network namespace's abstract sockets and read across processes by pid, on one
    running kernel (the boot id). Hostname alone is not enough: two containers of one machine
    have the same kernel and may have the same name but not the same /dev/shm.
    $SHARDCORE_HOST_ID, when set, is added to it: processes that set different values act as
    different hosts even where they could share memory (to try a multi-host layout on one host);
    ``rank`` makes every rank a host of its own, so that every collective runs on gloo alone.
    """
    try:
        st = os.stat("/dev/shm")
        shm = f"{st.st_dev}:{st.st_ino}"
    except OSError:
        shm = "?"
    parts = [
        socket.gethostname(),
        _read("/proc/sys/kernel/random/boot_id"),
        shm,
        _link("/proc/self/ns/net"),
        _link("/proc/self/ns/pid"),
        _link("/proc/self/ns/ipc"),
        _label(),
    ]
    return "|".join(parts)


@dataclass(frozen=True)
class Topology:
    """Ranks of a group by host: ``hosts[h]`` lists the group ranks on host h, in rank order.

    Hosts are numbered by their lowest rank. ``rails[j]`` (j below the smallest host's size)
    holds the rank with local index j on every host, in host order: the groups that cross hosts.
    """

    hosts: tuple[tuple[int, ...], ...]

    @classmethod
    def from_identities(cls, identities: Sequence[str]) -> Topology:
        """Group ranks 0..n-1 by equal identity string."""
        order: dict[str, list[int]] = {}
        for rank, ident in enumerate(identities):
            order.setdefault(ident, []).append(rank)
        return cls(tuple(tuple(r) for r in order.values()))

    @property
    def size(self) -> int:
        """Number of ranks."""
        return sum(len(h) for h in self.hosts)

    @property
    def nhosts(self) -> int:
        """Number of hosts."""
        return len(self.hosts)

    @property
    def uniform(self) -> bool:
        """Whether every host has the same number of ranks."""
        return len({len(h) for h in self.hosts}) == 1

    @property
    def nrails(self) -> int:
        """Number of inter-host groups of one rank per host (the smallest host's size)."""
        return min(len(h) for h in self.hosts)

    @property
    def contiguous(self) -> bool:
        """Whether each host holds a consecutive range of ranks, hosts in rank order."""
        return [r for h in self.hosts for r in h] == list(range(self.size))

    def host_of(self, rank: int) -> int:
        """Index of the host of ``rank``."""
        for h, ranks in enumerate(self.hosts):
            if rank in ranks:
                return h
        raise ValueError(f"rank {rank} is not in this topology of {self.size} ranks")

    def local_index(self, rank: int) -> int:
        """Index of ``rank`` among the ranks of its host."""
        return self.hosts[self.host_of(rank)].index(rank)

    def rail(self, j: int) -> tuple[int, ...]:
        """The ranks with local index ``j`` on every host, in host order."""
        if not 0 <= j < self.nrails:
            raise ValueError(f"rail {j} is outside [0, {self.nrails})")
        return tuple(h[j] for h in self.hosts)

    def subset(self, ranks: Sequence[int]) -> Topology:
        """The topology of a sub-group: ``ranks`` (group ranks of this one) renumbered 0..k-1."""
        index = {r: i for i, r in enumerate(ranks)}
        hosts = []
        for h in self.hosts:
            mine = sorted(index[r] for r in h if r in index)
            if mine:
                hosts.append(tuple(mine))
        hosts.sort(key=lambda h: h[0])
        return Topology(tuple(hosts))

    def describe(self) -> str:
        """One line: hosts and their rank counts."""
        sizes = "+".join(str(len(h)) for h in self.hosts)
        return f"{self.size} ranks on {self.nhosts} hosts ({sizes})"
