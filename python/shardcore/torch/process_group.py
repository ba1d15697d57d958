"""``ShardcoreProcessGroup``: torch.distributed operations on CPU tensors through a shardcore
communicator, zero-copy: the core reads and writes the tensors' storage, through NumPy views
(an all_reduce SUM through the tensor's address)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import ReduceOp

from shardcore._dtypes import OPS as CORE_OPS
from shardcore._dtypes import dtype_code as core_dtype_code

from ._dtypes import MOVABLE, REDUCIBLE, dtype_names, numpy_view
from ._work import DONE, CompletedWork, Lane

BACKEND_NAME = "shardcore"

_RedOpType = ReduceOp.RedOpType
# torch reduce op -> the core's op name; AVG is a SUM followed by a division on every rank.
# Keyed by the enum's int value: pybind11 makes a new enum object on every attribute read, and
# hashing one is slower than int().
_OPS = {
    int(_RedOpType.SUM): "sum",
    int(_RedOpType.AVG): "sum",
    int(_RedOpType.MAX): "max",
    int(_RedOpType.MIN): "min",
    int(_RedOpType.PRODUCT): "prod",
}
_SUM_OP = ReduceOp.SUM
# The core's codes for the reducible dtypes and for SUM, from the table the Communicator uses.
_CORE_DTYPES = {
    t: core_dtype_code(numpy_view(torch.empty(0, dtype=t)).dtype, "all_reduce", reducible=True)
    for t in REDUCIBLE
}
_CORE_SUM = CORE_OPS["sum"]
_FLOATING = frozenset({torch.float32, torch.float64, torch.float16, torch.bfloat16})


class UnsupportedError(NotImplementedError):
    """An operation, reduce op or argument the shardcore backend does not serve."""


def _unsupported(what: str) -> UnsupportedError:
    return UnsupportedError(
        f"the shardcore torch.distributed backend does not support {what}; supported: "
        "all_reduce, reduce_scatter_tensor, reduce_scatter (lists), all_gather_into_tensor, "
        "all_gather (lists), all_to_all_single, broadcast, send, recv (from a given rank), "
        "barrier, and their coalesced forms"
    )


def _check_tensor(t: Any, what: str, dtypes: frozenset, kind: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"shardcore {what}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_cpu:
        raise TypeError(f"shardcore {what}: tensors must be on the CPU, got device {t.device}")
    if t.dtype not in dtypes:
        raise TypeError(
            f"shardcore {what}: dtype {t.dtype} is not supported for {kind} "
            f"(supported: {dtype_names(dtypes)})"
        )
    if not t.is_contiguous():
        raise ValueError(f"shardcore {what}: tensors must be contiguous")


def _single(tensors: Any, what: str) -> torch.Tensor:
    if len(tensors) != 1:
        raise ValueError(f"shardcore {what}: expected exactly one tensor, got {len(tensors)}")
    return tensors[0]


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two contiguous tensors share any byte of memory."""
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.nbytes and b0 < a0 + a.nbytes and a.nbytes > 0 and b.nbytes > 0


def _op_name(reduce_op: Any, dtype: torch.dtype, what: str) -> tuple[str, bool]:
    """(core op name, is_avg) for a torch ReduceOp; raises for ops the core lacks."""
    kind = reduce_op.op if isinstance(reduce_op, ReduceOp) else reduce_op
    name = _OPS.get(int(kind))
    if name is None:
        raise _unsupported(
            f"reduce op {kind.name} in {what} (supported: SUM, AVG, MAX, MIN, PRODUCT)"
        )
    is_avg = int(kind) == int(_RedOpType.AVG)
    if is_avg and dtype not in _FLOATING:
        raise TypeError(
            f"shardcore {what}: AVG needs a floating-point dtype, got {dtype} "
            "(an integer average would truncate; use SUM and divide)"
        )
    return name, is_avg


class ShardcoreProcessGroup(dist.ProcessGroup):
    """A torch.distributed process group whose operations run on a shardcore communicator.

    ``comm`` is any object with the ``shardcore.Communicator`` methods (NumPy arrays in, in place
    or into ``out=``). Collectives run on the calling thread. ``send``/``recv`` run on two
    per-group threads, through ``p2p_comm`` (a second communicator over the same ranks; default
    ``comm``), so that exchange patterns (every rank sends, then receives) cannot deadlock on
    the bounded shared-memory mailboxes.
    """

    def __init__(self, comm: Any, rank: int, size: int, p2p_comm: Any = None):
        super().__init__(rank, size)  # type: ignore[call-arg]  # torch's stubs list other overloads
        self._comm = comm
        # shardcore's own Communicator: its C++ communicator, for the all_reduce fast path
        self._core = getattr(comm, "_core", None)
        self._p2p = comm if p2p_comm is None else p2p_comm
        self._rank = rank
        self._size = size
        self._group_name = ""
        self._group_desc = ""
        self._send_lane = Lane("shardcore-send")
        self._recv_lane = Lane("shardcore-recv")

    # ---- identity ------------------------------------------------------------------------

    @property
    def communicator(self) -> Any:
        """The shardcore communicator this group runs on."""
        return self._comm

    def getBackendName(self) -> str:
        return BACKEND_NAME

    def name(self) -> str:
        return BACKEND_NAME

    # torch stores a group's name on its C++ backends; a Python group has none, so keep it here.
    def _set_group_name(self, name: str) -> None:
        self._group_name = name

    @property
    def group_name(self) -> str:
        return self._group_name

    def _set_group_desc(self, desc: str) -> None:
        self._group_desc = desc

    @property
    def group_desc(self) -> str:
        return self._group_desc

    def __repr__(self) -> str:
        return f"ShardcoreProcessGroup(rank={self._rank}, size={self._size})"

    # ---- reductions ----------------------------------------------------------------------

    def allreduce(self, tensors, opts=None):
        # Fast path for a SUM over a plain contiguous CPU tensor: the core is handed the
        # tensor's own address. Small-message latency is mostly per-call Python overhead here,
        # and this skips the NumPy view (~0.7 us) and the Communicator's re-validation of it.
        core = self._core
        if core is not None and opts is not None and len(tensors) == 1:
            t = tensors[0]
            code = _CORE_DTYPES.get(t.dtype)
            if (
                code is not None
                and type(t) is torch.Tensor
                and t.is_cpu
                and t.is_contiguous()
                and opts.reduceOp == _SUM_OP
            ):
                p = t.data_ptr()
                core.all_reduce(p, p, t.numel(), code, _CORE_SUM, 0)
                return CompletedWork([t]) if opts.asyncOp else DONE
        t = _single(tensors, "all_reduce")
        _check_tensor(t, "all_reduce", REDUCIBLE, "reductions")
        op = opts.reduceOp if opts is not None else _RedOpType.SUM
        name, is_avg = _op_name(op, t.dtype, "all_reduce")
        self._comm.all_reduce(numpy_view(t), op=name)
        if is_avg:
            t.div_(self._size)
        if opts is None or opts.asyncOp:
            return CompletedWork([t])
        return DONE

    def allreduce_coalesced(self, tensors, opts=None):
        for t in tensors:
            self.allreduce([t], opts)
        return CompletedWork(list(tensors))

    def reduce_scatter_single(self, output, input, opts=None):
        what = "reduce_scatter_tensor"
        _check_tensor(output, what, REDUCIBLE, "reductions")
        _check_tensor(input, what, REDUCIBLE, "reductions")
        self._check_same_dtype(what, output, input)
        if input.numel() != output.numel() * self._size:
            raise ValueError(
                f"shardcore {what}: input has {input.numel()} elements, expected "
                f"output.numel() * group size = {output.numel()} * {self._size}"
            )
        op = opts.reduceOp if opts is not None else _RedOpType.SUM
        name, is_avg = _op_name(op, input.dtype, what)
        # in place (the output is a block of the input): the core reads the input while it writes
        # the output, so reduce from a copy
        src = input.clone() if _overlap(input, output) else input
        self._comm.reduce_scatter(
            numpy_view(src).reshape(-1), op=name, out=numpy_view(output).reshape(-1)
        )
        if is_avg:
            output.div_(self._size)
        return self._work(opts, [output])

    def reduce_scatter_single_coalesced(self, outputs, inputs, opts=None):
        for out, inp in zip(outputs, inputs):
            self.reduce_scatter_single(out, inp, opts)
        return CompletedWork(list(outputs))

    def reduce_scatter(self, outputs, input_lists, opts=None):
        what = "reduce_scatter"
        output = _single(outputs, what)
        (inputs,) = input_lists
        if len(inputs) != self._size:
            raise ValueError(
                f"shardcore {what}: expected {self._size} input tensors, got {len(inputs)}"
            )
        for t in inputs:
            _check_tensor(t, what, REDUCIBLE, "reductions")
            if t.dtype != output.dtype or t.numel() != output.numel():
                raise ValueError(
                    f"shardcore {what}: every input must match the output's dtype "
                    f"{output.dtype} and element count {output.numel()}"
                )
        return self.reduce_scatter_single(output, torch.cat([t.reshape(-1) for t in inputs]), opts)

    # ---- data movement -------------------------------------------------------------------

    def all_gather_single(self, output, input, opts=None):
        what = "all_gather_into_tensor"
        _check_tensor(output, what, MOVABLE, "data movement")
        _check_tensor(input, what, MOVABLE, "data movement")
        self._check_same_dtype(what, output, input)
        if output.numel() != input.numel() * self._size:
            raise ValueError(
                f"shardcore {what}: output has {output.numel()} elements, expected "
                f"input.numel() * group size = {input.numel()} * {self._size}"
            )
        self._comm.all_gather(numpy_view(input).reshape(-1), out=numpy_view(output).reshape(-1))
        return self._work(opts, [output])

    def all_gather_single_coalesced(self, outputs, inputs, opts=None):
        for out, inp in zip(outputs, inputs):
            self.all_gather_single(out, inp, opts)
        return CompletedWork(list(outputs))

    def allgather(self, output_lists, inputs, opts=None):
        what = "all_gather"
        inp = _single(inputs, what)
        outputs = _single(output_lists, what)
        if len(outputs) != self._size:
            raise ValueError(
                f"shardcore {what}: expected {self._size} output tensors, got {len(outputs)}"
            )
        _check_tensor(inp, what, MOVABLE, "data movement")
        for t in outputs:
            if not isinstance(t, torch.Tensor) or t.dtype != inp.dtype or t.numel() != inp.numel():
                raise ValueError(
                    f"shardcore {what}: every output must match the input's dtype "
                    f"{inp.dtype} and element count {inp.numel()}"
                )
        gathered = torch.empty(self._size * inp.numel(), dtype=inp.dtype)
        self._comm.all_gather(numpy_view(inp).reshape(-1), out=numpy_view(gathered))
        for t, block in zip(outputs, gathered.view(self._size, -1)):
            t.copy_(block.view(t.shape))
        return self._work(opts, list(outputs))

    def allgather_coalesced(self, output_lists, inputs, opts=None):
        for outputs, inp in zip(output_lists, inputs):
            self.allgather([outputs], [inp], opts)
        return CompletedWork([t for outputs in output_lists for t in outputs])

    def all_to_all_single(self, output, input, output_split_sizes, input_split_sizes, opts=None):
        what = "all_to_all_single"
        _check_tensor(output, what, MOVABLE, "data movement")
        _check_tensor(input, what, MOVABLE, "data movement")
        self._check_same_dtype(what, output, input)
        n = self._size
        if not output_split_sizes and not input_split_sizes:
            if input.numel() != output.numel() or input.dim() == 0 or input.shape[0] % n:
                raise ValueError(
                    f"shardcore {what}: without split sizes input and output need the same "
                    f"element count and a first dimension divisible by the group size {n} "
                    f"(input {tuple(input.shape)}, output {tuple(output.shape)})"
                )
            src = input.clone() if _overlap(input, output) else input
            self._comm.all_to_all(numpy_view(src).reshape(-1), out=numpy_view(output).reshape(-1))
            return self._work(opts, [output])
        send = self._splits(what, "input", input, input_split_sizes)
        recv = self._splits(what, "output", output, output_split_sizes)
        row = input[0].numel() if input.shape[0] else int(torch.Size(input.shape[1:]).numel())
        out_row = int(torch.Size(output.shape[1:]).numel()) if output.dim() else 1
        if row != out_row:
            raise ValueError(
                f"shardcore {what}: input rows have {row} elements, output rows {out_row}"
            )
        src = input.clone() if _overlap(input, output) else input
        x = numpy_view(src).reshape(input.shape[0], row)
        out = numpy_view(output).reshape(output.shape[0], row)
        _, got = self._comm.all_to_allv(x, list(send), out=out)
        if list(got) != list(recv):
            raise ValueError(
                f"shardcore {what}: output_split_sizes {list(recv)} disagree with "
                f"what the peers sent {list(got)}"
            )
        return self._work(opts, [output])

    def broadcast(self, tensors, opts=None):
        what = "broadcast"
        t = _single(tensors, what)
        _check_tensor(t, what, MOVABLE, "data movement")
        root = opts.rootRank if opts is not None else 0
        if not 0 <= root < self._size:
            raise ValueError(
                f"shardcore {what}: root {root} is not a rank of this group of {self._size}"
            )
        self._comm.broadcast(numpy_view(t).reshape(-1), root=root)
        return self._work(opts, [t])

    def barrier(self, opts=None):
        self._comm.barrier()
        return self._work(opts, [])

    # ---- point to point ------------------------------------------------------------------

    def send(self, tensors, dst, tag=0):
        t = _single(tensors, "send")
        _check_tensor(t, "send", MOVABLE, "data movement")
        self._check_peer("send", dst)
        x = numpy_view(t).reshape(-1)
        comm = self._p2p
        return self._send_lane.submit(lambda: comm.send(x, dst, tag=tag), [t])

    def recv(self, tensors, src, tag=0):
        t = _single(tensors, "recv")
        _check_tensor(t, "recv", MOVABLE, "data movement")
        self._check_peer("recv", src)
        out = numpy_view(t).reshape(-1)
        comm = self._p2p
        return self._recv_lane.submit(lambda: comm.recv(out, src, tag=tag), [t])

    def recv_anysource(self, tensors, tag=0):
        raise _unsupported("recv from any source (recv with src=None)")

    # ---- not served ----------------------------------------------------------------------

    def reduce(self, tensors, opts=None):
        raise _unsupported("reduce")

    def gather(self, outputs, inputs, opts=None):
        raise _unsupported("gather")

    def scatter(self, outputs, inputs, opts=None):
        raise _unsupported("scatter")

    def alltoall(self, outputs, inputs, opts=None):
        raise _unsupported("all_to_all with tensor lists (use all_to_all_single)")

    def monitored_barrier(self, *args, **kwargs):
        raise _unsupported("monitored_barrier")

    # ---- lifetime ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Close the communicators (``destroy_process_group`` calls this).

        A send or recv still pending would wait for a peer forever: it is aborted (it raises
        PeerFailureError on this rank and on the peer) before its thread is joined.
        """
        if self._send_lane.busy or self._recv_lane.busy:
            self._p2p.abort("the process group was destroyed with a send/recv pending")
        self._send_lane.shutdown()
        self._recv_lane.shutdown()
        for comm in {id(self._comm): self._comm, id(self._p2p): self._p2p}.values():
            close = getattr(comm, "close", None)
            if close is not None:
                close()

    def abort(self) -> None:
        """Mark the communicators failed for every rank, then close them."""
        for comm in {id(self._comm): self._comm, id(self._p2p): self._p2p}.values():
            abort = getattr(comm, "abort", None)
            if abort is not None:
                abort("torch.distributed abort")
        self.shutdown()

    # ---- helpers -------------------------------------------------------------------------

    def _work(self, opts, outputs):
        if opts is None or opts.asyncOp:
            return CompletedWork(outputs)
        return DONE

    def _check_same_dtype(self, what, a, b):
        if a.dtype != b.dtype:
            raise TypeError(
                f"shardcore {what}: input dtype {b.dtype} differs from output dtype {a.dtype}"
            )

    def _check_peer(self, what, peer):
        if not isinstance(peer, int) or not 0 <= peer < self._size or peer == self._rank:
            raise ValueError(
                f"shardcore {what}: peer {peer!r} must be another rank of this "
                f"group (0..{self._size - 1}, this rank is {self._rank})"
            )

    def _splits(self, what, side, t, sizes):
        n = self._size
        rows = t.shape[0] if t.dim() else 0
        if not sizes:
            if rows % n:
                raise ValueError(
                    f"shardcore {what}: {side} first dimension {rows} is not "
                    f"divisible by the group size {n}"
                )
            return [rows // n] * n
        sizes = [int(s) for s in sizes]
        if len(sizes) != n or any(s < 0 for s in sizes) or sum(sizes) != rows:
            raise ValueError(
                f"shardcore {what}: {side}_split_sizes {sizes} must be {n} "
                f"non-negative counts adding up to the first dimension {rows}"
            )
        return sizes
