"""``ShardcoreProcessGroup``: torch.distributed operations on CPU tensors through a shardcore
communicator, zero-copy: the core reads and writes the tensors' storage, through NumPy views
(an all_reduce SUM through the tensor's address). Non-contiguous tensors are staged through a
contiguous copy.

Everything runs on the communicator's methods alone (all_reduce, reduce_scatter, all_gather,
all_to_all, all_to_allv, broadcast, send, recv, barrier), so that a communicator spanning hosts
with the same methods serves the same operations. Rooted collectives cost no more than their
all-collective: reduce is an all-reduce, gather an all-to-allv in which only the root receives,
scatter one in which only the root sends.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import ReduceOp

from shardcore._dtypes import OPS as CORE_OPS
from shardcore._dtypes import dtype_code as core_dtype_code

from . import _anysource, _reduce
from ._dtypes import FLOATING, INTEGRAL, MOVABLE, REDUCIBLE, dtype_names, numpy_view, torch_view
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
# monitored_barrier's messages: a tag no torch caller uses (torch's tags are >= 0)
_MONITOR_TAG = -0x5C


class UnsupportedError(NotImplementedError):
    """An operation, reduce op or argument the shardcore backend does not serve."""


def _unsupported(what: str) -> UnsupportedError:
    return UnsupportedError(
        f"the shardcore torch.distributed backend does not support {what}; supported: "
        "all_reduce, reduce, reduce_scatter_tensor, reduce_scatter (lists), "
        "all_gather_into_tensor, all_gather (lists), gather, scatter, all_to_all_single, "
        "all_to_all (lists), broadcast, send, recv (also from any source), barrier, "
        "monitored_barrier, and their coalesced forms; reduce ops SUM, AVG, MAX, MIN, PRODUCT, "
        "BAND, BOR, BXOR"
    )


def _check_tensor(
    t: Any, what: str, dtypes: frozenset = MOVABLE, kind: str = "data movement"
) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"shardcore {what}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_cpu:
        raise TypeError(f"shardcore {what}: tensors must be on the CPU, got device {t.device}")
    if t.dtype not in dtypes:
        raise TypeError(
            f"shardcore {what}: dtype {t.dtype} is not supported for {kind} "
            f"(supported: {dtype_names(dtypes)})"
        )


def _output_buffer(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a contiguous tensor of its shape to write into and then copy into ``t``."""
    return t if t.is_contiguous() else torch.empty(t.shape, dtype=t.dtype)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A contiguous 1-D tensor of ``t``'s elements (``t`` itself, viewed, when contiguous)."""
    return t.detach().reshape(-1) if t.is_contiguous() else t.detach().contiguous().view(-1)


def _single(tensors: Any, what: str) -> torch.Tensor:
    if len(tensors) != 1:
        raise ValueError(f"shardcore {what}: expected exactly one tensor, got {len(tensors)}")
    return tensors[0]


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors may share memory (exact for contiguous ones; same storage otherwise)."""
    if a.nbytes == 0 or b.nbytes == 0:
        return False
    if not (a.is_contiguous() and b.is_contiguous()):
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.nbytes and b0 < a0 + a.nbytes


class _Reduction(NamedTuple):
    """How one reduce op on one dtype is computed: by the core (``core_op``), or by the torch
    layer over the core's data movement (``torch_op``, see ``_reduce``)."""

    core_op: str | None
    torch_op: Any
    average: bool


def _reduction(reduce_op: Any, dtype: torch.dtype, what: str) -> _Reduction:
    """The plan for ``reduce_op`` on ``dtype``; raises (before any communication) where gloo does."""
    kind = reduce_op.op if isinstance(reduce_op, ReduceOp) else reduce_op
    code = int(kind)
    if code in _reduce.BITWISE:
        if dtype not in INTEGRAL:
            raise TypeError(
                f"shardcore {what}: {kind.name} needs an integer or bool dtype, got {dtype} "
                f"(supported: {dtype_names(INTEGRAL)})"
            )
        return _Reduction(None, _reduce.TORCH_OPS[code], False)
    name = _OPS.get(code)
    if name is None:
        raise _unsupported(
            f"reduce op {kind.name} in {what} "
            "(supported: SUM, AVG, MAX, MIN, PRODUCT, BAND, BOR, BXOR)"
        )
    is_avg = code == int(_RedOpType.AVG)
    if is_avg and dtype not in FLOATING:
        raise TypeError(
            f"shardcore {what}: AVG needs a floating-point dtype, got {dtype} "
            "(an integer average would truncate; use SUM and divide)"
        )
    if dtype in REDUCIBLE:
        return _Reduction(name, None, is_avg)
    return _Reduction(None, _reduce.TORCH_OPS[code], False)  # uint8, int8, bool


class ShardcoreProcessGroup(dist.ProcessGroup):
    """A torch.distributed process group whose operations run on a shardcore communicator.

    ``comm`` is any object with the ``shardcore.Communicator`` methods (NumPy arrays in, in place
    or into ``out=``). Collectives run on the calling thread. ``send``/``recv`` run on two
    per-group threads, through ``p2p_comm`` (a second communicator over the same ranks; default
    ``comm``), so that exchange patterns (every rank sends, then receives) cannot deadlock on
    the bounded shared-memory mailboxes. ``any_source`` (an ``_anysource.AnySource``, made
    when ``SHARDCORE_TORCH_ANY_SOURCE=1``) lets ``recv`` take a message from any source; without
    it ``recv(src=None)`` raises.
    """

    def __init__(
        self,
        comm: Any,
        rank: int,
        size: int,
        p2p_comm: Any = None,
        any_source: Any = None,
        timeout: timedelta | None = None,
    ):
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
        if timeout is None or timeout <= timedelta(0):
            timeout = timedelta(seconds=float(getattr(self._p2p, "timeout", 600.0)))
        self._timeout = timeout
        self._any_source = any_source

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
        _check_tensor(t, "all_reduce", MOVABLE, "reductions")
        op = opts.reduceOp if opts is not None else _RedOpType.SUM
        plan = _reduction(op, t.dtype, "all_reduce")
        buf = _flat(t)
        self._all_reduce(buf, plan)
        if not t.is_contiguous():
            t.copy_(buf.view(t.shape))
        return self._work(opts, [t])

    def _all_reduce(self, x: torch.Tensor, plan: _Reduction, out: torch.Tensor | None = None):
        """Reduce the contiguous 1-D ``x`` over the ranks, in place or into ``out``."""
        if plan.core_op is not None:
            self._comm.all_reduce(
                numpy_view(x), op=plan.core_op, out=None if out is None else numpy_view(out)
            )
            if plan.average:
                (x if out is None else out).div_(self._size)
            return
        if out is not None:
            out.copy_(x)
            x = out
        _reduce.all_reduce(self._comm, x, plan.torch_op)

    def allreduce_coalesced(self, tensors, opts=None):
        for t in tensors:
            self.allreduce([t], opts)
        return CompletedWork(list(tensors))

    def reduce(self, tensors, opts=None):
        """The root's tensor gets the reduction; the others' are left as they were.

        An all-reduce (into a scratch tensor off the root): the same traffic as the matching
        all-collective, and one step for every size.
        """
        what = "reduce"
        t = _single(tensors, what)
        _check_tensor(t, what, MOVABLE, "reductions")
        root = self._root(opts.rootRank if opts is not None else 0, what)
        op = opts.reduceOp if opts is not None else _RedOpType.SUM
        plan = _reduction(op, t.dtype, what)
        src = _flat(t)
        if self._rank == root:
            self._all_reduce(src, plan)
            if not t.is_contiguous():
                t.copy_(src.view(t.shape))
        else:
            self._all_reduce(src, plan, out=torch.empty_like(src))
        return self._work(opts, [t])

    def reduce_scatter_single(self, output, input, opts=None):
        what = "reduce_scatter_tensor"
        _check_tensor(output, what, MOVABLE, "reductions")
        _check_tensor(input, what, MOVABLE, "reductions")
        self._check_same_dtype(what, output, input)
        if input.numel() != output.numel() * self._size:
            raise ValueError(
                f"shardcore {what}: input has {input.numel()} elements, expected "
                f"output.numel() * group size = {output.numel()} * {self._size}"
            )
        op = opts.reduceOp if opts is not None else _RedOpType.SUM
        plan = _reduction(op, input.dtype, what)
        out = _output_buffer(output)
        src = _flat(input)
        # in place (the output is a block of the input): the core reads the input while it writes
        # the output, so reduce from a copy
        if _overlap(src, out):
            src = src.clone()
        flat_out = out.detach().view(-1)
        if plan.core_op is not None:
            self._comm.reduce_scatter(numpy_view(src), op=plan.core_op, out=numpy_view(flat_out))
            if plan.average:
                out.div_(self._size)
        else:
            _reduce.reduce_scatter(self._comm, src, flat_out, plan.torch_op)
        if out is not output:
            output.copy_(out)
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
            _check_tensor(t, what, MOVABLE, "reductions")
            if t.dtype != output.dtype or t.numel() != output.numel():
                raise ValueError(
                    f"shardcore {what}: every input must match the output's dtype "
                    f"{output.dtype} and element count {output.numel()}"
                )
        return self.reduce_scatter_single(output, torch.cat([t.reshape(-1) for t in inputs]), opts)

    # ---- data movement -------------------------------------------------------------------

    def all_gather_single(self, output, input, opts=None):
        what = "all_gather_into_tensor"
        _check_tensor(output, what)
        _check_tensor(input, what)
        self._check_same_dtype(what, output, input)
        if output.numel() != input.numel() * self._size:
            raise ValueError(
                f"shardcore {what}: output has {output.numel()} elements, expected "
                f"input.numel() * group size = {input.numel()} * {self._size}"
            )
        out = _output_buffer(output)
        src = _flat(input)
        if out is not output and _overlap(src, output):
            src = src.clone()  # a non-contiguous output that holds the input
        self._comm.all_gather(numpy_view(src), out=numpy_view(out).reshape(-1))
        if out is not output:
            output.copy_(out)
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
        _check_tensor(inp, what)
        for t in outputs:
            if not isinstance(t, torch.Tensor) or t.dtype != inp.dtype or t.numel() != inp.numel():
                raise ValueError(
                    f"shardcore {what}: every output must match the input's dtype "
                    f"{inp.dtype} and element count {inp.numel()}"
                )
        gathered = torch.empty(self._size * inp.numel(), dtype=inp.dtype)
        self._comm.all_gather(numpy_view(_flat(inp)), out=numpy_view(gathered))
        for t, block in zip(outputs, gathered.view(self._size, -1)):
            t.copy_(block.view(t.shape))
        return self._work(opts, list(outputs))

    def allgather_coalesced(self, output_lists, inputs, opts=None):
        for outputs, inp in zip(output_lists, inputs):
            self.allgather([outputs], [inp], opts)
        return CompletedWork([t for outputs in output_lists for t in outputs])

    def gather(self, output_lists, inputs, opts=None):
        """Every rank's tensor into the root's list: an all-to-allv in which only the root
        receives (each rank sends its elements once, to the root)."""
        what = "gather"
        inp = _single(inputs, what)
        _check_tensor(inp, what)
        root = self._root(opts.rootRank if opts is not None else 0, what)
        outputs: list = []
        if self._rank == root:
            outputs = list(output_lists[0]) if len(output_lists) == 1 else []
            if len(outputs) != self._size:
                raise ValueError(
                    f"shardcore {what}: the root needs {self._size} output tensors, "
                    f"got {len(outputs)}"
                )
            for t in outputs:
                _check_tensor(t, what)
                self._check_same_dtype(what, t, inp)
        counts = [0] * self._size
        counts[root] = inp.numel()
        got, recv = self._comm.all_to_allv(numpy_view(_flat(inp)), counts)
        if self._rank == root:
            self._scatter_into(what, outputs, torch_view(got, inp.dtype), recv)
        return self._work(opts, list(outputs))

    def scatter(self, outputs, input_lists, opts=None):
        """The root's list, one tensor per rank: an all-to-allv in which only the root sends."""
        what = "scatter"
        out = _single(outputs, what)
        _check_tensor(out, what)
        root = self._root(opts.rootRank if opts is not None else 0, what)
        counts = [0] * self._size
        if self._rank == root:
            inputs = _single(input_lists, what)
            if len(inputs) != self._size:
                raise ValueError(
                    f"shardcore {what}: the root needs {self._size} input tensors, "
                    f"got {len(inputs)}"
                )
            for t in inputs:
                _check_tensor(t, what)
                self._check_same_dtype(what, out, t)
            counts = [t.numel() for t in inputs]
            src = torch.cat([t.detach().reshape(-1) for t in inputs])
        else:
            src = torch.empty(0, dtype=out.dtype)
        got, recv = self._comm.all_to_allv(numpy_view(src), counts)
        self._scatter_into(what, [out], torch_view(got, out.dtype), [recv[root]])
        return self._work(opts, [out])

    def alltoall(self, outputs, inputs, opts=None):
        """Tensor lists (any sizes per pair of ranks): one all-to-allv of their elements."""
        what = "all_to_all"
        n = self._size
        if len(inputs) != n or len(outputs) != n:
            raise ValueError(
                f"shardcore {what}: expected {n} input and {n} output tensors, "
                f"got {len(inputs)} and {len(outputs)}"
            )
        dtype = inputs[0].dtype if inputs else None
        for t in list(inputs) + list(outputs):
            _check_tensor(t, what)
            if t.dtype != dtype:
                raise TypeError(f"shardcore {what}: tensors of dtypes {dtype} and {t.dtype}")
        src = torch.cat([t.detach().reshape(-1) for t in inputs])
        got, recv = self._comm.all_to_allv(numpy_view(src), [t.numel() for t in inputs])
        self._scatter_into(what, list(outputs), torch_view(got, src.dtype), recv)
        return self._work(opts, list(outputs))

    def _scatter_into(self, what, outputs, flat, counts) -> None:
        """Copy consecutive pieces of ``flat`` (``counts[i]`` elements each) into ``outputs``."""
        sizes = [t.numel() for t in outputs]
        if list(counts) != sizes:
            raise ValueError(
                f"shardcore {what}: the output tensors hold {sizes} elements, "
                f"the peers sent {list(counts)}"
            )
        offset = 0
        for t, count in zip(outputs, sizes):
            t.copy_(flat[offset : offset + count].view(t.shape))
            offset += count

    def all_to_all_single(self, output, input, output_split_sizes, input_split_sizes, opts=None):
        what = "all_to_all_single"
        _check_tensor(output, what)
        _check_tensor(input, what)
        self._check_same_dtype(what, output, input)
        n = self._size
        out = _output_buffer(output)
        src = input.detach().contiguous()
        if _overlap(src, out) or (out is not output and _overlap(src, output)):
            src = src.clone()
        if not output_split_sizes and not input_split_sizes:
            if input.numel() != output.numel() or input.dim() == 0 or input.shape[0] % n:
                raise ValueError(
                    f"shardcore {what}: without split sizes input and output need the same "
                    f"element count and a first dimension divisible by the group size {n} "
                    f"(input {tuple(input.shape)}, output {tuple(output.shape)})"
                )
            self._comm.all_to_all(numpy_view(src).reshape(-1), out=numpy_view(out).reshape(-1))
        else:
            send = self._splits(what, "input", input, input_split_sizes)
            recv = self._splits(what, "output", output, output_split_sizes)
            row = int(torch.Size(input.shape[1:]).numel()) if input.dim() else 1
            out_row = int(torch.Size(output.shape[1:]).numel()) if output.dim() else 1
            if row != out_row:
                raise ValueError(
                    f"shardcore {what}: input rows have {row} elements, output rows {out_row}"
                )
            x = numpy_view(src).reshape(input.shape[0], row)
            _, got = self._comm.all_to_allv(
                x, list(send), out=numpy_view(out).reshape(output.shape[0], row)
            )
            if list(got) != list(recv):
                raise ValueError(
                    f"shardcore {what}: output_split_sizes {list(recv)} disagree with "
                    f"what the peers sent {list(got)}"
                )
        if out is not output:
            output.copy_(out)
        return self._work(opts, [output])

    def broadcast(self, tensors, opts=None):
        what = "broadcast"
        t = _single(tensors, what)
        _check_tensor(t, what)
        root = self._root(opts.rootRank if opts is not None else 0, what)
        buf = _flat(t)
        self._comm.broadcast(numpy_view(buf), root=root)
        if not t.is_contiguous() and self._rank != root:
            t.copy_(buf.view(t.shape))
        return self._work(opts, [t])

    def barrier(self, opts=None):
        self._comm.barrier()
        return self._work(opts, [])

    def monitored_barrier(self, timeout=None, wait_all_ranks=False):
        """gloo's monitored barrier: rank 0 hears from every rank within ``timeout``, else raises
        naming the first rank (every rank, with ``wait_all_ranks``) that did not arrive.

        ``torch.distributed.monitored_barrier`` itself admits gloo groups only; call this
        method on the group (``dist.group.WORLD.monitored_barrier(...)``).
        """
        if self._size == 1:
            return None
        if timeout is None or timeout <= timedelta(0):
            timeout = self._timeout
        seconds = timeout.total_seconds()
        ms = int(seconds * 1000)
        token = torch.zeros(1, dtype=torch.uint8)
        if self._rank != 0:
            self._send_lane.submit(self._internal_send(token, 0), []).wait()
            ack = torch.empty(1, dtype=torch.uint8)
            if not self._recv_lane.submit(self._internal_recv(ack, 0), []).wait_for(seconds):
                raise RuntimeError(
                    f"[Rank {self._rank}]: timed out in monitoredBarrier waiting for rank 0 "
                    f"after {ms} ms"
                )
            return None
        tokens = [torch.empty(1, dtype=torch.uint8) for _ in range(self._size)]
        arrivals = [
            self._recv_lane.submit(self._internal_recv(tokens[r], r), [])
            for r in range(1, self._size)
        ]
        deadline = time.monotonic() + seconds
        missing = []
        for r, work in enumerate(arrivals, start=1):
            if not work.wait_for(max(0.0, deadline - time.monotonic())):
                missing.append(r)
                if not wait_all_ranks:
                    break
        if missing:
            if len(missing) == 1:
                raise RuntimeError(
                    f"[Rank 0]: Rank {missing[0]} failed to pass monitoredBarrier in {ms} ms"
                )
            raise RuntimeError(
                f"[Rank 0]: Ranks {', '.join(map(str, missing))} failed to pass "
                f"monitoredBarrier in {ms} ms"
            )
        acks = [
            self._send_lane.submit(self._internal_send(token, r), []) for r in range(1, self._size)
        ]
        for work in acks:
            work.wait()
        return None

    # ---- point to point ------------------------------------------------------------------

    def send(self, tensors, dst, tag=0):
        t = _single(tensors, "send")
        _check_tensor(t, "send")
        self._check_peer("send", dst)
        x = numpy_view(_flat(t))  # a non-contiguous tensor is sent from a copy made now
        comm, any_source = self._p2p, self._any_source

        def run() -> None:
            if any_source is not None:
                any_source.announce(dst, tag)
            comm.send(x, dst, tag=tag)

        return self._send_lane.submit(run, [t])

    def recv(self, tensors, src, tag=0):
        t = _single(tensors, "recv")
        _check_tensor(t, "recv")
        self._check_peer("recv", src)
        buf = _output_buffer(t)
        out = numpy_view(buf).reshape(-1)
        comm, any_source = self._p2p, self._any_source

        def run() -> None:
            comm.recv(out, src, tag=tag)
            if any_source is not None:
                any_source.received(src)
            if buf is not t:
                t.copy_(buf)

        return self._recv_lane.submit(run, [t])

    def recv_anysource(self, tensors, tag=0):
        t = _single(tensors, "recv")
        _check_tensor(t, "recv")
        any_source = self._any_source
        if self._size == 1:
            raise _unsupported("recv from any source in a group of one rank (no other rank)")
        if any_source is None:
            raise _unsupported(
                f"recv from any source (src=None) unless {_anysource.ENV}=1 is set on every "
                "rank when the group is created (each send then announces itself through the "
                "rendezvous store, which costs send/recv latency)"
            )
        why = any_source.unready()
        if why is not None:
            raise UnsupportedError(f"shardcore: {why}")
        buf = _output_buffer(t)
        out = numpy_view(buf).reshape(-1)
        comm = self._p2p

        def run() -> int:
            src = any_source.next_source(tag)
            comm.recv(out, src, tag=tag)
            if buf is not t:
                t.copy_(buf)
            return src

        return self._recv_lane.submit(run, [t])

    def _internal_send(self, t, dst):
        comm, x = self._p2p, numpy_view(t)
        return lambda: comm.send(x, dst, tag=_MONITOR_TAG)

    def _internal_recv(self, t, src):
        comm, x = self._p2p, numpy_view(t)
        return lambda: comm.recv(x, src, tag=_MONITOR_TAG)

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
        if self._any_source is not None:
            self._any_source.close()
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
        if opts is None or getattr(opts, "asyncOp", True):
            return CompletedWork(outputs)
        return DONE

    def _root(self, root, what) -> int:
        if not 0 <= root < self._size:
            raise ValueError(
                f"shardcore {what}: root {root} is not a rank of this group of {self._size}"
            )
        return root

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
