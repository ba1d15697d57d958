"""The bytes between hosts: NumPy arrays through a gloo process group of torch.distributed.

shardcore does not speak its own network protocol: between hosts it uses gloo over TCP, the
transport torch.distributed users already run across machines. A ``Link`` is a standalone gloo
group (no global torch.distributed state) over a store, with its own byte counters.

Byte counters follow the algorithm gloo runs for each call (ring all-reduce: 2(H-1)/H of the
buffer per rank; ring all-gather: H-1 blocks; reduce-scatter: (H-1)/H of the buffer; broadcast:
the root sends its buffer to each of the others; all-to-all and send/recv: the bytes handed over).
The multi-host tests check them against the bytes seen on the wire.
"""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Any

import numpy as np

from .._dtypes import BFLOAT16
from ..errors import CommTimeoutError, PeerFailureError

_torch: Any = None


def _load_torch():
    global _torch
    if _torch is None:
        try:
            import torch
            import torch.distributed  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "ranks on more than one host talk through torch.distributed (gloo): "
                "install torch (pip install torch)"
            ) from exc
        _torch = torch
    return _torch


def tensor_of(a: np.ndarray):
    """A torch tensor over the memory of C-contiguous ``a`` (no copy); bfloat16 included."""
    torch = _load_torch()
    flat = a.reshape(-1)
    if flat.dtype == BFLOAT16:
        return torch.from_numpy(flat.view(np.int16)).view(torch.bfloat16)
    if flat.dtype == np.bool_:
        return torch.from_numpy(flat.view(np.uint8)).view(torch.bool)
    return torch.from_numpy(flat)


def _bytes(a: np.ndarray):
    """A uint8 tensor over the bytes of C-contiguous ``a``: data movement is dtype-blind."""
    return _load_torch().from_numpy(a.reshape(-1).view(np.uint8))


def local_address(master_addr: str, master_port: int) -> str:
    """The address of this host's interface that routes to the store's host."""
    family = socket.AF_INET6 if ":" in master_addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((master_addr, int(master_port) or 1))  # UDP: no packet is sent
        return s.getsockname()[0]


def _translate(exc: Exception, what: str, timeout: float) -> Exception:
    text = str(exc)
    low = text.lower()
    if "timed out" in low or "timeout" in low:
        return CommTimeoutError(
            f"{what}: no answer from another host within {timeout:g} s ({text})"
        )
    return PeerFailureError(f"{what}: a peer on another host failed or closed ({text})")


_OPS_NAMES = ("sum", "max", "min", "prod")


class Link:
    """One gloo group of ``size`` ranks on different hosts; ``rank`` is this process's index."""

    def __init__(
        self, store: Any, prefix: str, rank: int, size: int, timeout: float, address: str | None
    ):
        torch = _load_torch()
        dist = torch.distributed
        self.rank, self.size, self.timeout = rank, size, timeout
        self.sent = 0
        self.recv = 0
        opts = dist.ProcessGroupGloo._Options()
        device = (
            dist.ProcessGroupGloo.create_device(hostname=address)
            if address
            else dist.ProcessGroupGloo.create_default_device()
        )
        opts._devices = [device]
        opts._timeout = timedelta(seconds=timeout)
        try:
            self._pg = dist.ProcessGroupGloo(dist.PrefixStore(prefix, store), rank, size, opts)
        except RuntimeError as exc:
            raise _translate(exc, f"connecting {size} hosts", timeout) from exc
        self._dist = dist
        self._ops = {
            "sum": dist.ReduceOp.SUM,
            "max": dist.ReduceOp.MAX,
            "min": dist.ReduceOp.MIN,
            "prod": dist.ReduceOp.PRODUCT,
        }

    # --- asynchronous calls: each returns a handle for wait() --------------------------------
    def all_reduce_async(self, a: np.ndarray, op: str):
        """Start an in-place all-reduce of ``a`` across the hosts."""
        opts = self._dist.AllreduceOptions()
        opts.reduceOp = self._ops[op]
        opts.timeout = timedelta(seconds=self.timeout)
        n = (2 * (self.size - 1) * a.nbytes) // self.size
        self.sent += n
        self.recv += n
        return self._start("all_reduce", lambda: self._pg.allreduce([tensor_of(a)], opts))

    def wait(self, work) -> None:
        """Wait for a handle from one of the *_async calls."""
        what, handle = work
        try:
            handle.wait()
        except RuntimeError as exc:
            raise _translate(exc, what, self.timeout) from exc

    def _start(self, what: str, call):
        try:
            return what, call()
        except RuntimeError as exc:
            raise _translate(exc, what, self.timeout) from exc

    # --- blocking calls ----------------------------------------------------------------------
    def all_reduce(self, a: np.ndarray, op: str) -> None:
        """In-place all-reduce of ``a``."""
        self.wait(self.all_reduce_async(a, op))

    def all_gather(self, a: np.ndarray, out: np.ndarray) -> None:
        """``out`` (size blocks) gets every rank's ``a`` in rank order."""
        n = (self.size - 1) * a.nbytes
        self.sent += n
        self.recv += n
        self.wait(
            self._start("all_gather", lambda: self._pg._allgather_base(_bytes(out), _bytes(a)))
        )

    def reduce_scatter(self, a: np.ndarray, out: np.ndarray, op: str) -> None:
        """Reduce ``a`` (size blocks) and leave block ``rank`` of the result in ``out``."""
        opts = self._dist.ReduceScatterOptions()
        opts.reduceOp = self._ops[op]
        opts.timeout = timedelta(seconds=self.timeout)
        n = (self.size - 1) * out.nbytes
        self.sent += n
        self.recv += n
        self.wait(
            self._start(
                "reduce_scatter",
                lambda: self._pg._reduce_scatter_base(tensor_of(out), tensor_of(a), opts),
            )
        )

    def broadcast(self, a: np.ndarray, root: int) -> None:
        """Copy root's ``a`` into every rank's ``a``."""
        if self.rank == root:
            self.sent += (self.size - 1) * a.nbytes
        else:
            self.recv += a.nbytes
        opts = self._dist.BroadcastOptions()
        opts.rootRank = root
        opts.rootTensor = 0
        opts.timeout = timedelta(seconds=self.timeout)
        self.wait(self._start("broadcast", lambda: self._pg.broadcast([_bytes(a)], opts)))

    def all_to_allv_async(self, send: np.ndarray, send_counts, recv: np.ndarray, recv_counts):
        """Start: ``send_counts[j]`` consecutive elements of ``send`` go to rank j; ``recv``
        gets ``recv_counts[i]`` elements from each rank i, in rank order (counts in elements)."""
        item = send.itemsize
        send_counts = [c * item for c in send_counts]
        recv_counts = [c * item for c in recv_counts]
        self.sent += sum(send_counts) - send_counts[self.rank]
        self.recv += sum(recv_counts) - recv_counts[self.rank]
        opts = self._dist.AllToAllOptions()
        opts.timeout = timedelta(seconds=self.timeout)
        return self._start(
            "all_to_all",
            lambda: self._pg.alltoall_base(
                _bytes(recv), _bytes(send), recv_counts, send_counts, opts
            ),
        )

    def send(self, a: np.ndarray, dst: int, tag: int) -> None:
        """Send ``a`` to rank ``dst``."""
        self.sent += a.nbytes
        self.wait(self._start("send", lambda: self._pg.send([_bytes(a)], dst, tag)))

    def recv_into(self, a: np.ndarray, src: int, tag: int) -> None:
        """Receive the next message from ``src`` with ``tag`` into ``a``."""
        self.recv += a.nbytes
        self.wait(self._start("recv", lambda: self._pg.recv([_bytes(a)], src, tag)))

    def barrier(self) -> None:
        """Return once every rank has entered."""
        opts = self._dist.BarrierOptions()
        opts.timeout = timedelta(seconds=self.timeout)
        self.wait(self._start("barrier", lambda: self._pg.barrier(opts)))

    def abort(self) -> None:
        """Break the group's connections so that peers blocked on this rank fail at once."""
        if self._pg is None:
            return
        try:
            self._pg.abort()
        except (RuntimeError, AttributeError):
            pass

    def close(self) -> None:
        """Release the group: its threads and connections go now, not at interpreter exit."""
        pg, self._pg = self._pg, None
        if pg is None:
            return
        try:
            pg.shutdown()
        except (RuntimeError, AttributeError):
            pass
        del pg
