"""One face over every communicator the sweep measures: shardcore's and its peers'.

A backend lives in one rank's process. The sweep hands it NumPy buffers once per size; the
backend wraps them in whatever its library wants (a torch tensor shares the NumPy memory) and
returns a zero-argument callable per buffer set, so that the timed loop pays only the call.
"""

from __future__ import annotations

import inspect
from typing import Callable

import numpy as np

from .metrics import TRAFFIC_KIND

_REDUCING = ("all_reduce", "reduce_scatter")
_ALL_TO_ALL_ALGORITHMS = ("pairwise", "flat", "cma", "symmetric")


def buffer_shapes(op: str, count: int, world_size: int, inplace: bool) -> tuple[int, int | None]:
    """(send elements, receive elements or None) for one call of ``op`` on the size's ``count``."""
    n = world_size
    if op == "all_reduce":
        return count, (None if inplace else count)
    if op == "all_gather":
        return count // n, count
    if op == "reduce_scatter":
        return count, count // n
    if op == "broadcast":
        return count, None
    return count, count  # all_to_all, sendrecv


class Backend:
    """What the sweep needs from a communicator."""

    name = "base"
    supports_out_of_place = True

    def __init__(self, rank: int, size: int):
        self.rank, self.size = rank, size

    def barrier(self) -> None:
        raise NotImplementedError

    def agree(self, value: int) -> int:
        """Rank 0's ``value`` on every rank."""
        x = np.array([value], dtype=np.int64)
        self._broadcast_int64(x)
        return int(x[0])

    def _broadcast_int64(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def unsupported(self, op: str, dtype: np.dtype) -> str | None:
        """Why this backend cannot run ``op`` on ``dtype``, or None when it can."""
        return None

    def caller(
        self, op: str, send: np.ndarray, recv: np.ndarray | None, algorithm: str | None
    ) -> Callable[[], object]:
        raise NotImplementedError

    def allocate(self, elements: int, dtype: np.dtype) -> np.ndarray:
        return np.empty(elements, dtype=dtype)

    def reset_traffic(self) -> None:
        """Zero the byte counters (a no-op for peers, which have none)."""

    def traffic(self, op: str) -> dict | None:
        """{"calls", "sent", "recv"[, "algorithm"]} for ``op`` since the reset, or None."""
        return None

    def close(self) -> None:
        """Release the library's resources."""


class ShardcoreBackend(Backend):
    """shardcore's own Communicator."""

    name = "shardcore"

    def __init__(self, comm, symmetric: bool = False):
        super().__init__(comm.rank, comm.size)
        self.comm = comm
        self.symmetric = symmetric
        if symmetric:
            self.name = "shardcore-sym"
        if symmetric and not hasattr(comm, "empty"):
            raise ValueError("--symmetric needs Communicator.empty, which this build lacks")

    def barrier(self) -> None:
        self.comm.barrier()

    def _broadcast_int64(self, x: np.ndarray) -> None:
        self.comm.broadcast(x, root=0)

    def allocate(self, elements: int, dtype: np.dtype) -> np.ndarray:
        if self.symmetric:
            return self.comm.empty((elements,), dtype)
        return np.empty(elements, dtype=dtype)

    def caller(self, op, send, recv, algorithm):
        comm = self.comm
        # Ops with a choice of algorithm take ``algorithm=``; the others run their only one, and
        # all_to_all runs its own choice when the name is not one of its algorithms (``ring``).
        kwargs = {}
        if (
            algorithm is not None
            and (
                op in ("all_reduce", "all_gather")
                or (op == "all_to_all" and algorithm in _ALL_TO_ALL_ALGORITHMS)
            )
            and "algorithm" in inspect.signature(getattr(comm, op)).parameters
        ):
            kwargs["algorithm"] = algorithm
        if op == "all_reduce":
            if recv is None:
                return lambda: comm.all_reduce(send, **kwargs)
            return lambda: comm.all_reduce(send, out=recv, **kwargs)
        if op == "all_gather":
            return lambda: comm.all_gather(send, out=recv, **kwargs)
        if op == "reduce_scatter":
            return lambda: comm.reduce_scatter(send, out=recv)
        if op == "all_to_all":
            return lambda: comm.all_to_all(send, out=recv, **kwargs)
        if op == "broadcast":
            return lambda: comm.broadcast(send, root=0)
        return _sendrecv_caller(comm.send, comm.recv, self.rank, self.size, send, recv)

    def reset_traffic(self) -> None:
        self.comm.reset_traffic()

    def traffic(self, op):
        entry = self.comm.traffic().get(TRAFFIC_KIND[op])
        return None if entry is None else dict(entry)


def _sendrecv_caller(send_fn, recv_fn, rank, size, send, recv):
    """Each rank sends to rank+1 and receives from rank-1; even ranks send first so that blocking
    sends of messages larger than a slot cannot all wait on each other."""
    nxt, prv = (rank + 1) % size, (rank - 1) % size
    if rank % 2 == 0:

        def call():
            send_fn(send, nxt)
            recv_fn(recv, prv)
    else:

        def call():
            recv_fn(recv, prv)
            send_fn(send, nxt)

    return call


# --------------------------------------------------------------------------- torch.distributed


def _torch_view(x: np.ndarray):
    """A torch tensor sharing ``x``'s memory (bfloat16 through an int16 view)."""
    import torch

    if x.dtype.name == "bfloat16":
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(x)


class TorchBackend(Backend):
    """torch.distributed with an already initialised process group (gloo, or shardcore's)."""

    def __init__(self, name: str):
        import torch.distributed as dist

        super().__init__(dist.get_rank(), dist.get_world_size())
        self.dist = dist
        self.name = name

    def barrier(self) -> None:
        self.dist.barrier()

    def _broadcast_int64(self, x):
        self.dist.broadcast(_torch_view(x), src=0)

    def caller(self, op, send, recv, algorithm):
        dist = self.dist  # --algorithm is shardcore's: peers run their own choice
        s = _torch_view(send)
        r = None if recv is None else _torch_view(recv)
        if op == "all_reduce":
            if r is None:
                return lambda: dist.all_reduce(s)

            def copy_then_reduce():  # torch has no out-of-place all-reduce
                r.copy_(s)
                dist.all_reduce(r)

            return copy_then_reduce
        if op == "all_gather":
            # torch 2.13 renamed the single-tensor forms and deprecated the old names.
            gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
            return lambda: gather(r, s)
        if op == "reduce_scatter":
            scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
            return lambda: scatter(r, s)
        if op == "all_to_all":
            return lambda: dist.all_to_all_single(r, s)
        if op == "broadcast":
            return lambda: dist.broadcast(s, src=0)
        nxt, prv = (self.rank + 1) % self.size, (self.rank - 1) % self.size

        def sendrecv():
            ops = [dist.P2POp(dist.isend, s, nxt), dist.P2POp(dist.irecv, r, prv)]
            for req in dist.batch_isend_irecv(ops):
                req.wait()

        return sendrecv

    def close(self) -> None:
        self.dist.destroy_process_group()


class DeepSpeedBackend(TorchBackend):
    """DeepSpeed's CPU shared-memory all-reduce (``deepspeed.comm.inference_all_reduce``)."""

    def __init__(self):
        import deepspeed.comm as ds_comm

        super().__init__("deepspeed")
        self.ds_comm = ds_comm

    def unsupported(self, op, dtype):
        if op != "all_reduce":
            return "DeepSpeed's shared-memory path is an all-reduce only"
        return None

    def caller(self, op, send, recv, algorithm):
        ds = self.ds_comm
        s = _torch_view(send)
        if recv is None:
            return lambda: ds.inference_all_reduce(s)
        r = _torch_view(recv)

        def copy_then_reduce():
            r.copy_(s)
            ds.inference_all_reduce(r)

        return copy_then_reduce


# --------------------------------------------------------------------------- MPI


class MPIBackend(Backend):
    """mpi4py's buffer interface (the fast, upper-case methods) on COMM_WORLD."""

    name = "mpi"

    def __init__(self):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        super().__init__(self.comm.Get_rank(), self.comm.Get_size())

    def barrier(self):
        self.comm.Barrier()

    def _broadcast_int64(self, x):
        self.comm.Bcast(x, root=0)

    def unsupported(self, op, dtype):
        if op in _REDUCING and dtype.name in ("bfloat16", "float16"):
            return f"MPI has no {dtype.name} reduction"
        return None

    def caller(self, op, send, recv, algorithm):
        MPI, comm = self.MPI, self.comm
        if op in _REDUCING:
            if op == "reduce_scatter":
                return lambda: comm.Reduce_scatter_block(send, recv, op=MPI.SUM)
            if recv is None:
                return lambda: comm.Allreduce(MPI.IN_PLACE, send, op=MPI.SUM)
            return lambda: comm.Allreduce(send, recv, op=MPI.SUM)
        # Data movement is typeless: bytes move any dtype, bfloat16 included.
        sb = send.view(np.uint8)
        rb = None if recv is None else recv.view(np.uint8)
        if op == "all_gather":
            return lambda: comm.Allgather(sb, rb)
        if op == "all_to_all":
            return lambda: comm.Alltoall(sb, rb)
        if op == "broadcast":
            return lambda: comm.Bcast(sb, root=0)
        nxt, prv = (self.rank + 1) % self.size, (self.rank - 1) % self.size
        return lambda: comm.Sendrecv(sb, nxt, recvbuf=rb, source=prv)
