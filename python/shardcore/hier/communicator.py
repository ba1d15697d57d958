"""``HierCommunicator``: one communicator over ranks on several hosts, in two levels.

Inside a host the ranks share a plain shardcore ``Communicator`` (shared memory); between hosts
the rank with local index j on every host belongs to rail j, a gloo group (``Link``), and all
ranks belong to one more gloo group for point-to-point and all-to-all traffic. The API is the
``Communicator``'s; a group inside one host is never a ``HierCommunicator`` (see ``build``).

Byte model per rank, for a buffer of S bytes, H hosts of L ranks each (uniform hosts):
- all_reduce: intra reduce-scatter of S and all-gather of S/L; inter ring all-reduce of S/L
  over H ranks, 2(H-1)/H * S/L (flat ring over all n = H*L ranks: 2(n-1)/n * S).
- reduce_scatter (S = the whole input): intra reduce-scatter of S; inter (H-1)/H * S/L.
- all_gather (b bytes per rank): inter (H-1) * b; intra all-gather of H * b.
- all_to_all (S per rank): the blocks regrouped inside the host by destination local index,
  then (n-L)/n * S between hosts, one message per other host on each rail.
- broadcast (S): the root's rail sends S to each other host (the root S * (H-1)), then each
  host broadcasts in shared memory.
Uneven hosts (3 + 5 ranks) run the same phases with the smallest host's count of rails: the
all-reduce reduces inside each host, splits the buffer over those rails and broadcasts inside.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._dtypes import dtype_code, op_code
from ..comm import (
    Communicator,
    _check_disjoint,
    _check_out,
    _require_array,
    _require_writeable,
    check_all_to_allv,
    check_peer,
)
from ..errors import PeerFailureError
from .interhost import Link
from .model import PIPELINE_CHUNK_BYTES
from .topology import Topology


def _check_algorithm(algorithm: str | None, what: str, intra: tuple) -> None:
    """Across hosts the phases inside a host choose their own algorithm: the names a
    single-host communicator takes are accepted (as hints for nothing), others are errors."""
    known = ("hierarchical", "flat") if what == "all_reduce" else ("hierarchical",)
    if algorithm is not None and algorithm not in known + intra:
        raise ValueError(
            f"{what}: unknown algorithm {algorithm!r}; known: {', '.join(known + intra)}"
        )


def _local_totals(comm: Communicator) -> tuple[int, int]:
    t = comm.traffic()
    return sum(v["sent"] for v in t.values()), sum(v["recv"] for v in t.values())


class HierCommunicator:
    """A communicator whose ranks span hosts: shared memory inside each, gloo between them."""

    def __init__(
        self,
        topology: Topology,
        rank: int,
        local: Communicator,
        rail: Link | None,
        world: Link,
        *,
        store: Any,
        prefix: str,
        timeout: float,
        address: str | None,
        group_ranks: Sequence[int],
        slot_bytes: int | None = None,
    ):
        self.topology = topology
        self._rank = rank
        self.local = local
        self._rail = rail
        self._world = world
        self._store = store
        self._prefix = prefix
        self._timeout = timeout
        self._address = address
        self._slot_bytes = slot_bytes
        self.group_ranks = list(group_ranks)
        self._host = topology.host_of(rank)
        self._local_index = topology.local_index(rank)
        self._closed = False
        self._nsplits = 0
        # all-reduce pipeline chunk (bytes); the byte rules in .model take the same value
        self.chunk_bytes = PIPELINE_CHUNK_BYTES
        self._last: str | None = None
        # the same kinds as the shared-memory communicator's counters
        self._kinds = tuple(local.traffic())
        self._counters = {k: [0, 0, 0, 0, 0] for k in self._kinds}
        self._algorithms: dict[str, dict[str, int]] = {k: {} for k in self._kinds}

    # --- properties ---------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        """This process's rank in the communicator."""
        return self._rank

    @property
    def size(self) -> int:
        """Number of ranks (on every host)."""
        return self.topology.size

    @property
    def name(self) -> str:
        """The store prefix the communicator was built under."""
        return f"hier:{self._prefix}"

    @property
    def host(self) -> int:
        """Index of this rank's host."""
        return self._host

    @property
    def local_rank(self) -> int:
        """This rank's index among the ranks of its host."""
        return self._local_index

    @property
    def timeout(self) -> float:
        """Seconds a wait may last before CommTimeoutError."""
        return self._timeout

    @property
    def last_algorithm(self) -> str | None:
        """The algorithm the last collective ran: 'hierarchical' or 'flat'."""
        return self._last

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed

    def __repr__(self) -> str:
        return f"HierCommunicator(rank={self.rank}, {self.topology.describe()})"

    # --- bookkeeping --------------------------------------------------------------------------
    def _links(self) -> list[Link]:
        return [self._world] if self._rail is None else [self._rail, self._world]

    @contextlib.contextmanager
    def _collective(self, kind: str, algorithm: str = "hierarchical"):
        """Count the bytes of one call under ``kind``; on any failure make every peer raise."""
        if self._closed:
            raise PeerFailureError(f"{kind}: the communicator is closed")
        intra0 = _local_totals(self.local)
        inter0 = [(link.sent, link.recv) for link in self._links()]
        try:
            yield
        except BaseException as exc:
            self.abort(f"{kind} failed on rank {self.rank}: {type(exc).__name__}: {exc}")
            raise
        finally:
            intra1 = _local_totals(self.local)
            c = self._counters[kind]
            c[1] += intra1[0] - intra0[0]
            c[2] += intra1[1] - intra0[1]
            for link, (s, r) in zip(self._links(), inter0):
                c[3] += link.sent - s
                c[4] += link.recv - r
        c[0] += 1
        algos = self._algorithms[kind]
        algos[algorithm] = algos.get(algorithm, 0) + 1
        self._last = algorithm

    def traffic(self) -> dict[str, dict]:
        """Bytes this rank sent and received per collective kind, inside and between hosts.

        Each kind maps to ``{"calls", "sent", "recv", "intra_sent", "intra_recv",
        "inter_sent", "inter_recv", "algorithms"}``; sent = intra_sent + inter_sent.
        """
        out = {}
        for k, (calls, isent, irecv, xsent, xrecv) in self._counters.items():
            out[k] = {
                "calls": calls,
                "sent": isent + xsent,
                "recv": irecv + xrecv,
                "intra_sent": isent,
                "intra_recv": irecv,
                "inter_sent": xsent,
                "inter_recv": xrecv,
                "algorithms": dict(self._algorithms[k]),
            }
        return out

    def reset_traffic(self) -> None:
        """Zero the traffic counters."""
        for k in self._kinds:
            self._counters[k] = [0, 0, 0, 0, 0]
            self._algorithms[k] = {}

    # --- collectives --------------------------------------------------------------------------
    def barrier(self) -> None:
        """Return once every rank on every host has entered the barrier."""
        with self._collective("barrier"):
            self.local.barrier()
            if self._local_index == 0:
                self._rail_link(0).barrier()
            self.local.barrier()

    def _rail_link(self, j: int) -> Link:
        assert self._rail is not None and self._local_index == j
        return self._rail

    def all_reduce(
        self,
        x: np.ndarray,
        op: str = "sum",
        out: np.ndarray | None = None,
        algorithm: str | None = None,
    ) -> np.ndarray:
        """Reduce ``x`` element-wise over all ranks; in place unless ``out`` is given.

        ``algorithm``: "hierarchical" (default: reduce-scatter inside each host, all-reduce of
        each shard between hosts, all-gather inside) or "flat" (one gloo ring over all ranks,
        for comparison).
        """
        _require_array(x, "all_reduce: x")
        dtype_code(x.dtype, "all_reduce", reducible=True)
        op_code(op, "all_reduce")
        _check_algorithm(algorithm, "all_reduce", ("ring", "one_shot", "two_shot", "symmetric"))
        if out is None:
            _require_writeable(x, "all_reduce: x (in place; pass out= for a read-only input)")
            out = x
        else:
            _check_out(out, x.dtype, x.shape, "all_reduce: out")
            if out.ctypes.data != x.ctypes.data:
                _check_disjoint(x, out, "all_reduce")
                np.copyto(out, x)
        flat = out.reshape(-1)
        algorithm = "flat" if algorithm == "flat" else "hierarchical"
        with self._collective("all_reduce", algorithm):
            if algorithm == "flat":
                if flat.size:
                    self._world.all_reduce(flat, op)
            else:
                self._all_reduce_flat(flat, op)
        return out

    def _all_reduce_flat(self, flat: np.ndarray, op: str) -> None:
        n = flat.size
        if n == 0:
            return
        topo, local, j = self.topology, self.local, self._local_index
        nlocal = local.size
        if topo.uniform and nlocal > 1:
            assert self._rail is not None
            rail = self._rail
            q = n // nlocal
            # Shards of at most PIPELINE_CHUNK_BYTES / L elements: chunk i crosses hosts on the
            # gloo thread while this one reduce-scatters chunk i+1.
            per = max(1, self.chunk_bytes // (flat.itemsize * nlocal))
            pending: deque = deque()
            for start in range(0, q, per):
                count = min(per, q - start)
                part = flat[start * nlocal : (start + count) * nlocal]
                shard = local.reduce_scatter(part, op=op)
                pending.append((part, shard, rail.all_reduce_async(shard, op)))
                if len(pending) > 1:
                    self._finish_chunk(rail, *pending.popleft())
            while pending:
                self._finish_chunk(rail, *pending.popleft())
            tail = flat[q * nlocal :]
            if tail.size:
                local.all_reduce(tail, op=op)
                if j == 0:
                    rail.all_reduce(tail, op)
                local.broadcast(tail, root=0)
        elif nlocal == 1 and topo.uniform:
            assert self._rail is not None
            self._rail.all_reduce(flat, op)
        else:
            # Uneven hosts: reduce inside each host, then the smallest host's count of rails
            # each all-reduce one piece between hosts, and broadcast the pieces inside.
            if nlocal > 1:
                local.all_reduce(flat, op=op)
            rails = topo.nrails
            bounds = [n * k // rails for k in range(rails + 1)]
            if j < rails and bounds[j + 1] > bounds[j]:
                assert self._rail is not None
                self._rail.all_reduce(flat[bounds[j] : bounds[j + 1]], op)
            if nlocal > 1:
                for k in range(rails):
                    if bounds[k + 1] > bounds[k]:
                        local.broadcast(flat[bounds[k] : bounds[k + 1]], root=k)

    def _finish_chunk(self, rail: Link, part, shard, work) -> None:
        rail.wait(work)
        self.local.all_gather(shard, out=part)

    def reduce_scatter(
        self, x: np.ndarray, op: str = "sum", out: np.ndarray | None = None
    ) -> np.ndarray:
        """Reduce ``x`` (size*m rows) over all ranks and return this rank's m rows."""
        _require_array(x, "reduce_scatter: x")
        dtype_code(x.dtype, "reduce_scatter", reducible=True)
        op_code(op, "reduce_scatter")
        n = self.size
        if x.ndim == 0 or x.shape[0] % n:
            raise ValueError(
                f"reduce_scatter: x has shape {x.shape}; its first dimension must be "
                f"a multiple of the communicator size {n}"
            )
        shape = (x.shape[0] // n,) + x.shape[1:]
        if out is None:
            out = np.empty(shape, x.dtype)
        else:
            _check_out(out, x.dtype, shape, "reduce_scatter: out")
        topo = self.topology
        with self._collective("reduce_scatter"):
            blk = out.size
            if blk == 0:
                return out
            xb = x.reshape(n, blk)
            if topo.uniform:
                assert self._rail is not None
                nhosts, nlocal = topo.nhosts, self.local.size
                # order the blocks (local index, host): local rank j' reduces, inside its host,
                # the blocks of rank j' of every host
                index = np.array([[topo.hosts[h][k] for h in range(nhosts)] for k in range(nlocal)])
                ordered = xb[index].reshape(-1)
                mine = self.local.reduce_scatter(ordered, op=op) if nlocal > 1 else ordered
                self._rail.reduce_scatter(mine, out.reshape(-1), op)
            else:
                whole = np.ascontiguousarray(xb).reshape(-1).copy()
                self._all_reduce_flat(whole, op)
                out.reshape(-1)[:] = whole.reshape(n, blk)[self.rank]
        return out

    def all_gather(
        self, x: np.ndarray, out: np.ndarray | None = None, algorithm: str | None = None
    ) -> np.ndarray:
        """Concatenate every rank's ``x`` along axis 0 (0-d arrays: a vector), in rank order."""
        _check_algorithm(algorithm, "all_gather", ("ring", "flat", "cma", "symmetric"))
        _require_array(x, "all_gather: x")
        dtype_code(x.dtype, "all_gather")
        n = self.size
        shape = (n * x.shape[0],) + x.shape[1:] if x.ndim else (n,)
        if out is None:
            out = np.empty(shape, x.dtype)
        else:
            _check_out(out, x.dtype, shape, "all_gather: out")
            if x.size and np.may_share_memory(x, out):
                x = x.copy()  # in place (x is this rank's block of out): gather from a copy
        with self._collective("all_gather"):
            self._all_gather_into(np.ascontiguousarray(x).reshape(-1), out.reshape(n, -1))
        return out

    def _all_gather_into(self, x: np.ndarray, outb: np.ndarray) -> None:
        """outb[r] = rank r's x (1-D); outb is [size, len(x)]."""
        topo, local = self.topology, self.local
        blk = x.size
        if blk == 0:
            return
        nhosts, nlocal = topo.nhosts, local.size
        if topo.uniform:
            assert self._rail is not None
            across = np.empty((nhosts, blk), x.dtype)
            self._rail.all_gather(x, across)
            if nlocal > 1:
                inside = local.all_gather(across.reshape(-1)).reshape(nlocal, nhosts, blk)
            else:
                inside = across.reshape(1, nhosts, blk)
            index = np.array([[topo.hosts[h][k] for h in range(nhosts)] for k in range(nlocal)])
            outb[index] = inside
        else:
            widest = max(len(h) for h in topo.hosts)
            mine = local.all_gather(x).reshape(nlocal, blk) if nlocal > 1 else x.reshape(1, blk)
            everything = np.zeros((nhosts, widest, blk), x.dtype)
            if self._local_index == 0:
                padded = np.zeros((widest, blk), x.dtype)
                padded[:nlocal] = mine
                assert self._rail is not None
                self._rail.all_gather(padded.reshape(-1), everything.reshape(nhosts, -1))
            if nlocal > 1:
                local.broadcast(everything.reshape(-1), root=0)
            for h, ranks in enumerate(topo.hosts):
                outb[list(ranks)] = everything[h, : len(ranks)]

    def all_to_all(
        self, x: np.ndarray, out: np.ndarray | None = None, algorithm: str | None = None
    ) -> np.ndarray:
        """Send block j (rows) of ``x`` to rank j; block i of the result came from rank i.

        ``algorithm``: "aggregated" (default on hosts of equal size: one message per other
        host, gathered inside the host first) or "direct" (blocks for this host's ranks through
        shared memory while gloo moves each block for another host).
        """
        _check_algorithm(
            algorithm,
            "all_to_all",
            ("aggregated", "direct", "pairwise", "flat", "cma", "symmetric"),
        )
        _require_array(x, "all_to_all: x")
        dtype_code(x.dtype, "all_to_all")
        n = self.size
        if x.ndim == 0 or x.shape[0] % n:
            raise ValueError(
                f"all_to_all: x has shape {x.shape}; its first dimension must be a "
                f"multiple of the communicator size {n}"
            )
        if out is None:
            out = np.empty_like(x)
        else:
            _check_out(out, x.dtype, x.shape, "all_to_all: out")
            _check_disjoint(x, out, "all_to_all")
        blk = x.size // n
        topo = self.topology
        aggregate = topo.uniform and self.local.size > 1 and algorithm != "direct"
        with self._collective("all_to_all", "aggregated" if aggregate else "direct"):
            if blk and aggregate:
                self._aggregated_all_to_all(x.reshape(n, blk), out.reshape(n, blk))
            elif blk:
                counts = [1] * n  # one row of blk elements for each rank
                self._exchange(x.reshape(n, blk), counts, out.reshape(n, blk), counts)
        return out

    def _aggregated_all_to_all(self, xb: np.ndarray, ob: np.ndarray) -> None:
        """Uniform hosts: gather inside the host, per destination local index, the blocks of
        every local rank (a shared-memory all-to-all), then one message per other host on each
        rail. A rank sends H-1 messages between hosts instead of n-L, the same bytes."""
        topo = self.topology
        nhosts, nlocal, blk = topo.nhosts, self.local.size, xb.shape[1]
        # index[j, h] = the rank with local index j on host h
        index = np.array([[topo.hosts[h][j] for h in range(nhosts)] for j in range(nlocal)])
        # to local rank j: the blocks for (h, j) of every host h, in host order
        inside = self.local.all_to_all(xb[index].reshape(-1)).reshape(nlocal, nhosts, blk)
        # inside[i, h] = what local rank i sends to (h, me); to host h go all of inside[:, h]
        send = np.ascontiguousarray(inside.transpose(1, 0, 2))
        recv = np.empty_like(send)
        counts = [nlocal * blk] * nhosts
        assert self._rail is not None
        self._rail.wait(self._rail.all_to_allv_async(send, counts, recv, counts))
        ob[index.T] = recv  # recv[h, i] came from (h, i)

    def _exchange(self, xb, send_counts, ob, recv_counts) -> None:
        """Rows of xb go to each rank by send_counts; ob gets recv_counts rows from each rank.

        xb and ob are 2-D [rows, row elements]; peers on this host are served through shared
        memory while the gloo thread moves the rows for other hosts.
        """
        topo = self.topology
        n = self.size
        mine = topo.hosts[self._host]
        here = set(mine)
        so = np.concatenate([[0], np.cumsum(send_counts)]).astype(np.int64)
        ro = np.concatenate([[0], np.cumsum(recv_counts)]).astype(np.int64)
        remote = [r for r in range(n) if r not in here]
        row = xb.shape[1] if xb.ndim == 2 else 1
        # rows for other hosts, packed in rank order
        send_remote = [0 if r in here else send_counts[r] * row for r in range(n)]
        recv_remote = [0 if r in here else recv_counts[r] * row for r in range(n)]
        sbuf = (
            np.concatenate([xb[so[r] : so[r + 1]].reshape(-1) for r in remote])
            if remote
            else np.empty(0, xb.dtype)
        )
        rbuf = np.empty(sum(recv_remote), xb.dtype)
        # every rank joins the gloo exchange, even with nothing for other hosts
        work = self._world.all_to_allv_async(sbuf, send_remote, rbuf, recv_remote)
        if len(mine) > 1:
            lsend = [int(send_counts[r]) for r in mine]
            lx = np.concatenate([xb[so[r] : so[r + 1]] for r in mine]) if sum(lsend) else xb[:0]
            lo = np.empty((sum(int(recv_counts[r]) for r in mine),) + xb.shape[1:], xb.dtype)
            self.local.all_to_allv(np.ascontiguousarray(lx), lsend, out=lo)
            at = 0
            for r in mine:
                c = int(recv_counts[r])
                ob[ro[r] : ro[r] + c] = lo[at : at + c]
                at += c
        else:
            r = mine[0]
            ob[ro[r] : ro[r + 1]] = xb[so[r] : so[r + 1]]
        self._world.wait(work)
        at = 0
        for r in remote:
            c = int(recv_counts[r]) * row
            ob[ro[r] : ro[r + 1]] = rbuf[at : at + c].reshape((-1,) + ob.shape[1:])
            at += c

    def all_to_allv(
        self, x: np.ndarray, send_counts: Sequence[int], out: np.ndarray | None = None
    ) -> tuple[np.ndarray, list[int]]:
        """Send ``send_counts[j]`` consecutive rows of ``x`` to rank j.

        Returns ``(result, recv_counts)``. A wrong-shaped ``out`` on any rank raises the same
        ValueError on every rank, and the communicator stays usable.
        """
        _require_array(x, "all_to_allv: x")
        dtype_code(x.dtype, "all_to_allv")
        n = self.size
        counts = check_all_to_allv(x, send_counts, out, n)
        mine = np.array(counts + [-1 if out is None else out.shape[0]], np.int64)
        table = np.empty((n, n + 1), np.int64)
        with self._collective("internal"):
            self._all_gather_into(mine, table)
        recv = [int(c) for c in table[:, self.rank]]
        bad = [r for r in range(n) if table[r, n] >= 0 and table[r, n] != table[:, r].sum()]
        if bad:
            r = bad[0]
            raise ValueError(
                f"all_to_allv: rank {r}'s out has {table[r, n]} rows, it receives "
                f"{int(table[:, r].sum())}"
            )
        if out is None:
            out = np.empty((sum(recv),) + x.shape[1:], x.dtype)
        row = math.prod(x.shape[1:])
        with self._collective("all_to_allv"):
            self._exchange(x.reshape(x.shape[0], row), counts, out.reshape(out.shape[0], row), recv)
        return out, recv

    def broadcast(self, x: np.ndarray, root: int = 0) -> np.ndarray:
        """Copy root's ``x`` into every rank's ``x`` (in place); returns ``x``."""
        _require_array(x, "broadcast: x")
        dtype_code(x.dtype, "broadcast")
        root = int(root)
        if not 0 <= root < self.size:
            raise ValueError(f"broadcast: root {root} is outside [0, {self.size})")
        if self.rank != root:
            _require_writeable(x, "broadcast: x")
        topo, local = self.topology, self.local
        flat = x.reshape(-1)
        root_host, root_local = topo.host_of(root), topo.local_index(root)
        with self._collective("broadcast"):
            if flat.size == 0:
                return x
            if root_local < topo.nrails:
                # root's rail carries it to every host, then each host shares it inside
                if self._local_index == root_local:
                    assert self._rail is not None
                    self._rail.broadcast(flat, root_host)
                if local.size > 1:
                    local.broadcast(flat, root=root_local)
            else:
                if self._host == root_host and local.size > 1:
                    local.broadcast(flat, root=root_local)
                if self._local_index == 0:
                    assert self._rail is not None
                    self._rail.broadcast(flat, root_host)
                if self._host != root_host and local.size > 1:
                    local.broadcast(flat, root=0)
        return x

    def send(self, x: np.ndarray, dst: int, tag: int = 0) -> None:
        """Send ``x`` to rank ``dst`` (through shared memory when it is on this host)."""
        _require_array(x, "send: x")
        dtype_code(x.dtype, "send")
        dst = self._peer(dst, "send: dst")
        with self._collective("send"):
            if self.topology.host_of(dst) == self._host:
                self.local.send(x, self.topology.local_index(dst), tag)
            else:
                self._world.send(x, dst, int(tag))

    def recv(self, out: np.ndarray, src: int, tag: int = 0) -> np.ndarray:
        """Receive the next message from ``src`` with ``tag`` into ``out``."""
        _require_array(out, "recv: out")
        _require_writeable(out, "recv: out")
        dtype_code(out.dtype, "recv")
        src = self._peer(src, "recv: src")
        with self._collective("recv"):
            if self.topology.host_of(src) == self._host:
                self.local.recv(out, self.topology.local_index(src), tag)
            else:
                self._world.recv_into(out, src, int(tag))
        return out

    def _peer(self, r: int, what: str) -> int:
        return check_peer(r, self.rank, self.size, what)

    # --- groups and buffers -------------------------------------------------------------------
    def split(self, color: int | None, key: int = 0):
        """Split by ``color`` (as MPI_Comm_split), ordered by ``key`` then rank.

        A sub-group inside one host is a plain shared-memory ``Communicator``; one that spans
        hosts is a ``HierCommunicator``. Ranks with color None get None.
        """
        if color is not None:
            color = int(color)
            if color < 0:
                raise ValueError(f"split: color must be >= 0 or None, got {color}")
        mine = np.array([-1 if color is None else color, int(key), self.rank], np.int64)
        table = np.empty((self.size, 3), np.int64)
        with self._collective("internal"):
            self._all_gather_into(mine, table)
        index = self._nsplits
        self._nsplits += 1
        spans = {}
        for c in {int(c) for c in table[:, 0] if c >= 0}:
            spans[c] = len({self.topology.host_of(int(r)) for cc, _, r in table if cc == c}) > 1
        local_color = None if color is None or spans[color] else color
        sub_local = self.local.split(local_color, key)
        if color is None:
            return None
        if not spans[color]:
            return sub_local
        members = sorted((int(k), int(r)) for c, k, r in table if c == color)
        ranks = [r for _, r in members]
        from .rendezvous import build

        return build(
            self._store,
            f"{self._prefix}/s{index}c{color}",
            ranks.index(self.rank),
            self.topology.subset(ranks),
            timeout=self._timeout,
            address=self._address,
            group_ranks=[self.group_ranks[r] for r in ranks],
            slot_bytes=self._slot_bytes,
        )

    def empty(self, shape, dtype=np.float32) -> np.ndarray:
        """A zero-filled array, agreed by every rank (collective); across hosts there is no
        shared buffer to gain, so it is ordinary memory."""
        dtype = np.dtype(dtype)
        if dtype.hasobject:
            raise TypeError(f"empty: dtype {dtype} cannot move between processes")
        shape = (int(shape),) if isinstance(shape, int) else tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"empty: negative dimension in shape {shape}")
        nbytes = math.prod(shape) * dtype.itemsize
        sizes = np.empty((self.size, 1), np.int64)
        with self._collective("internal"):
            self._all_gather_into(np.array([nbytes], np.int64), sizes)
        if len(set(sizes.reshape(-1).tolist())) != 1:
            raise ValueError(f"empty: ranks asked for different sizes in bytes: {sizes.tolist()}")
        return np.zeros(shape, dtype)

    def zeros(self, shape, dtype=np.float32) -> np.ndarray:
        """Same as ``empty``."""
        return self.empty(shape, dtype)

    # --- lifetime -----------------------------------------------------------------------------
    def abort(self, reason: str = "aborted") -> None:
        """Make every rank's current and next collective raise, on every host."""
        self.local.abort(str(reason))
        for link in self._links():
            link.abort()

    def close(self) -> None:
        """Detach from the host's segment and close the connections to other hosts."""
        if self._closed:
            return
        self._closed = True
        self.local.close()
        for link in self._links():
            link.close()

    def __enter__(self) -> HierCommunicator:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.abort(f"{exc_type.__name__}: {exc}")
        self.close()
