"""The communicator: collectives on NumPy arrays across shared-memory worker processes."""

from __future__ import annotations

import math
import operator
import os
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _core
from ._dtypes import ALGORITHMS, BFLOAT16, dtype_code, op_code

_core.set_type_nums(
    [
        np.dtype(t).num
        for t in (
            np.float32,
            np.float64,
            np.float16,
            BFLOAT16,
            np.int32,
            np.int64,
            np.int8,
            np.uint8,
            np.bool_,
        )
    ]
)
# Methods whose common calls go to the core through a C fast path (see __init__).
_FAST_METHODS = (
    "all_reduce",
    "reduce_scatter",
    "broadcast",
    "send",
    "recv",
    "all_gather",
    "all_to_all",
)

_DEFAULT_SLOT_BYTES = 1 << 19
_DEFAULT_P2P_BYTES = 1 << 16
_DEFAULT_TIMEOUT = 600.0


def _env_number(name: str, default: float, cast=float):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return cast(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not a number") from None


def new_segment_name() -> str:
    """A fresh, unguessable shared-memory segment name (``/shardcore-<pid>-<random>``)."""
    return f"/shardcore-{os.getpid()}-{secrets.token_hex(8)}"


def _addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _require_array(x: Any, what: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what} must be a numpy.ndarray, got {type(x).__name__}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous (use numpy.ascontiguousarray)")
    return x


def _require_writeable(x: np.ndarray, what: str) -> None:
    if not x.flags.writeable:
        raise ValueError(f"{what} is read-only")


def _check_out(out: Any, dtype: np.dtype, shape: tuple, what: str) -> np.ndarray:
    _require_array(out, what)
    _require_writeable(out, what)
    if out.dtype != dtype:
        raise TypeError(f"{what} has dtype {out.dtype}, expected {dtype}")
    if out.shape != shape:
        raise ValueError(f"{what} has shape {out.shape}, expected {shape}")
    return out


def _check_disjoint(a: np.ndarray, b: np.ndarray, what: str) -> None:
    # Both are C-contiguous, so overlapping bounds mean shared memory (and this is cheap).
    if a.size and b.size and np.may_share_memory(a, b):
        raise ValueError(f"{what}: out must not overlap the input")


def check_peer(r: int, rank: int, size: int, what: str) -> int:
    """``r`` as an int when it is another rank of a communicator of ``size`` (this one ``rank``)."""
    r = int(r)
    if not 0 <= r < size or r == rank:
        raise ValueError(
            f"{what} {r} is not another rank of this communicator (rank {rank} of {size})"
        )
    return r


def check_all_to_allv(x: np.ndarray, send_counts: Any, out: np.ndarray | None, size: int) -> list:
    """The checks of an all_to_allv call that need no other rank; returns the send counts."""
    if x.ndim == 0:
        raise ValueError("all_to_allv: x must have at least one dimension (rows)")
    if isinstance(send_counts, (list, tuple)):
        try:
            counts = [operator.index(c) for c in send_counts]
        except TypeError:
            raise TypeError(
                f"all_to_allv: send counts must be integers, got {send_counts!r}"
            ) from None
    else:
        arr = np.asarray(send_counts)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"all_to_allv: send counts must be integers, got {send_counts!r}")
        counts = arr.reshape(-1).tolist()
    if len(counts) != size:
        raise ValueError(f"all_to_allv: {len(counts)} send counts for {size} ranks")
    if min(counts) < 0:
        raise ValueError(f"all_to_allv: negative send count in {counts}")
    if sum(counts) != x.shape[0]:
        raise ValueError(
            f"all_to_allv: send counts add up to {sum(counts)} rows but x has {x.shape[0]}"
        )
    if out is not None:
        # Everything but the number of rows, which the counts exchange tells, is checked
        # here, before any rank is committed to the call.
        _require_array(out, "all_to_allv: out")
        _require_writeable(out, "all_to_allv: out")
        if out.dtype != x.dtype:
            raise TypeError(f"all_to_allv: out has dtype {out.dtype}, expected {x.dtype}")
        if out.ndim != x.ndim or out.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"all_to_allv: out has shape {out.shape}; it needs rows of shape "
                f"{x.shape[1:]}, as x has"
            )
        _check_disjoint(x, out, "all_to_allv")
    return counts


class Communicator:
    """A group of ranks that run collectives together through one shared-memory segment.

    Arrays must be C-contiguous NumPy arrays; results are written straight into the output array
    (zero-copy in and out) and the GIL is released while a rank waits. Collectives on one
    communicator run one at a time; ``send`` and ``recv`` may run concurrently with each other
    (a sending and a receiving thread). Sub-communicators from ``split`` run concurrently with
    each other and with their parent.
    """

    def __init__(self, core: _core.Comm, group_ranks: Sequence[int] | None = None):
        self._core = core
        self._nsplits = 0
        self.group_ranks = list(group_ranks) if group_ranks is not None else list(range(core.size))
        # The common calls of the hot methods go straight to the core through C (vectorcall)
        # objects set on the instance, shadowing the methods below, which take every other call
        # and are where argument errors are raised. A subclass's own override stays in charge.
        for method in _FAST_METHODS:
            impl = getattr(Communicator, method)
            if getattr(type(self), method) is impl:
                setattr(self, method, _core.fast_call(method, core, self, impl))

    @classmethod
    def connect(
        cls,
        name: str,
        rank: int,
        size: int,
        *,
        timeout: float | None = None,
        slot_bytes: int | None = None,
        p2p_bytes: int | None = None,
        group_ranks: Sequence[int] | None = None,
    ) -> Communicator:
        """Join communicator ``name`` as ``rank`` of ``size``; returns when every rank has joined.

        The processes need to agree on nothing but the name: rank 0 creates the shared memory (never
        named, so nothing outlives the processes) and hands it to the others through a Unix
        socket at an abstract address made from ``name``, which exists only while rank 0 waits
        for them. The ranks must share a network namespace.

        ``timeout`` (seconds, default $SHARDCORE_TIMEOUT or 600) bounds every wait;
        ``slot_bytes`` (default $SHARDCORE_SLOT_BYTES or 512 KiB) is the chunk size of the
        collectives, ``p2p_bytes`` (default $SHARDCORE_P2P_BYTES or 64 KiB) that of send/recv.
        """
        if timeout is None:
            timeout = _env_number("SHARDCORE_TIMEOUT", _DEFAULT_TIMEOUT)
        if slot_bytes is None:
            slot_bytes = _env_number("SHARDCORE_SLOT_BYTES", _DEFAULT_SLOT_BYTES, int)
        if p2p_bytes is None:
            p2p_bytes = _env_number("SHARDCORE_P2P_BYTES", _DEFAULT_P2P_BYTES, int)
        spin_us = _env_number("SHARDCORE_SPIN_US", -1.0)
        yield_us = _env_number("SHARDCORE_YIELD_US", -1.0)
        from .tuning import thresholds

        one_shot_max, two_shot_max = thresholds(int(size))
        core = _core.Comm(
            name,
            int(rank),
            int(size),
            int(slot_bytes),
            int(p2p_bytes),
            float(timeout),
            float(spin_us),
            one_shot_max,
            two_shot_max,
            float(yield_us),
        )
        return cls(core, group_ranks)

    # --- properties -----------------------------------------------------------------------
    @property
    def last_algorithm(self) -> str | None:
        """The algorithm the last collective on this communicator ran (None before the first)."""
        return self._core.last_algorithm

    @property
    def rank(self) -> int:
        """This process's rank in the communicator."""
        return self._core.rank

    @property
    def size(self) -> int:
        """Number of ranks."""
        return self._core.size

    @property
    def name(self) -> str:
        """The communicator's name: where its ranks meet (the memory itself has no name)."""
        return self._core.name

    @property
    def timeout(self) -> float:
        """Seconds a wait may last before CommTimeoutError."""
        return self._core.timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {seconds}")
        self._core.timeout = float(seconds)

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, size={self.size}, name={self.name!r})"

    # --- collectives ------------------------------------------------------------------------
    def barrier(self) -> None:
        """Return once every rank has entered the barrier."""
        self._core.barrier()

    def all_reduce(
        self,
        x: np.ndarray,
        op: str = "sum",
        out: np.ndarray | None = None,
        algorithm: str | None = None,
    ) -> np.ndarray:
        """Reduce ``x`` element-wise over all ranks; in place unless ``out`` is given."""
        try:
            _require_array(x, "all_reduce: x")
            code = dtype_code(x.dtype, "all_reduce", reducible=True)
            opc = op_code(op, "all_reduce")
            algo = self._algorithm_code(
                algorithm, ("ring", "one_shot", "two_shot", "symmetric"), "all_reduce"
            )
            if out is None:
                _require_writeable(x, "all_reduce: x (in place; pass out= for a read-only input)")
                out = x
            else:
                _check_out(out, x.dtype, x.shape, "all_reduce: out")
                if out is not x and not (_addr(out) == _addr(x)):
                    _check_disjoint(x, out, "all_reduce")
        except Exception as exc:
            self._reject("all_reduce", exc)
            raise
        # (the core recognises an x that lives in a symmetric buffer by itself)
        self._core.all_reduce(x, out, x.size, code, opc, algo)
        return out

    # --- symmetric buffers ------------------------------------------------------------------
    def empty(self, shape, dtype=np.float32) -> np.ndarray:
        """A zero-filled array in shared memory, at the same place on every rank (collective).

        Every rank must call it with the same shape and dtype. In-place collectives of this
        communicator on such arrays read the peers' copies where they live instead of copying
        through the slots (on any other communicator they are ordinary arrays). Either every
        rank gets its array or every rank raises the same error, and the communicator stays
        usable; the memory never has a name, so nothing of it outlives the processes.
        """
        try:
            dtype = np.dtype(dtype)
            if dtype.hasobject:
                raise TypeError(f"empty: dtype {dtype} cannot live in shared memory")
            shape = (
                tuple(int(d) for d in np.atleast_1d(np.asarray(shape, dtype=np.int64)).tolist())
                if not isinstance(shape, int)
                else (int(shape),)
            )
            if any(d < 0 for d in shape):
                raise ValueError(f"empty: negative dimension in shape {shape}")
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes >= 1 << 62:
                raise ValueError(f"empty: {nbytes} bytes per rank do not fit in memory")
        except Exception as exc:
            self._reject("internal", exc)
            raise
        mine = np.array([nbytes], np.int64)
        sizes = np.empty(self.size, np.int64)
        self._core.all_gather(mine, sizes, 1, 5, 8, True)
        if len(set(sizes.tolist())) != 1:
            raise ValueError(f"empty: ranks asked for different sizes in bytes: {sizes.tolist()}")
        seg = _core.SymmetricSegment(self._core, nbytes)
        return np.frombuffer(seg, dtype=dtype, count=nbytes // dtype.itemsize).reshape(shape)

    def zeros(self, shape, dtype=np.float32) -> np.ndarray:
        """Same as ``empty``: fresh shared memory is zero-filled."""
        return self.empty(shape, dtype)

    def reduce_scatter(
        self, x: np.ndarray, op: str = "sum", out: np.ndarray | None = None
    ) -> np.ndarray:
        """Reduce ``x`` (size*m rows) over all ranks and return this rank's m rows."""
        try:
            _require_array(x, "reduce_scatter: x")
            code = dtype_code(x.dtype, "reduce_scatter", reducible=True)
            opc = op_code(op, "reduce_scatter")
            if x.ndim == 0 or x.shape[0] % self.size:
                raise ValueError(
                    f"reduce_scatter: x has shape {x.shape}; its first dimension must be "
                    f"a multiple of the communicator size {self.size}"
                )
            shape = (x.shape[0] // self.size,) + x.shape[1:]
            if out is None:
                out = np.empty(shape, x.dtype)
            else:
                _check_out(out, x.dtype, shape, "reduce_scatter: out")
        except Exception as exc:
            self._reject("reduce_scatter", exc)
            raise
        self._core.reduce_scatter(x, out, out.size, code, opc)
        return out

    def all_gather(
        self, x: np.ndarray, out: np.ndarray | None = None, algorithm: str | None = None
    ) -> np.ndarray:
        """Concatenate every rank's ``x`` along axis 0 (0-d arrays: a vector), in rank order.

        ``algorithm``: "flat" (each block is written once and read by every rank), "ring" (the
        traffic model's reference), "cma" (read from the peers' memory with process_vm_readv) or
        "symmetric" (``x`` from ``empty``/``zeros``: read where it lives). None: by size.
        """
        try:
            algo = self._algorithm_code(
                algorithm, ("ring", "flat", "cma", "symmetric"), "all_gather"
            )
            _require_array(x, "all_gather: x")
            code = dtype_code(x.dtype, "all_gather")
            shape = (self.size * x.shape[0],) + x.shape[1:] if x.ndim else (self.size,)
            if out is None:
                out = np.empty(shape, x.dtype)
            else:
                _check_out(out, x.dtype, shape, "all_gather: out")
                if x.size and np.may_share_memory(x, out):
                    # in place: x is this rank's block of out
                    if _addr(x) != _addr(out) + self.rank * x.nbytes:
                        raise ValueError("all_gather: out must not overlap the input")
        except Exception as exc:
            self._reject("all_gather", exc)
            raise
        self._core.all_gather(x, out, x.size, code, x.dtype.itemsize, False, algo)
        return out

    def _reject(self, kind: str, exc: Exception) -> None:
        """This rank's arguments to collective ``kind`` are wrong (``exc``): tell the others.

        Collective, instead of returning alone while the peers wait in the call: every rank's
        call raises (the peers a ValueError naming this rank and ``exc``) and the communicator
        stays usable. The caller then raises ``exc``.
        """
        try:
            self._core.reject(kind, f"{type(exc).__name__}: {exc}")
        except Exception:  # noqa: BLE001 - this rank's own rejection, or a failed communicator
            pass

    @staticmethod
    def _algorithm_code(algorithm: str | None, allowed: tuple, what: str) -> int:
        if algorithm is None:
            return 0
        if algorithm not in allowed:
            raise ValueError(
                f"{what}: unknown algorithm {algorithm!r}; known: {', '.join(allowed)}"
            )
        return ALGORITHMS[algorithm]

    def all_to_all(
        self, x: np.ndarray, out: np.ndarray | None = None, algorithm: str | None = None
    ) -> np.ndarray:
        """Send block j (rows) of ``x`` to rank j; block i of the result came from rank i.

        ``algorithm``: "pairwise" (n-1 steps, one peer at a time), "flat" (rounds in which a
        piece of every peer's block goes through one slot and every peer is read at once), "cma"
        or "symmetric" (as for ``all_gather``). None: by size.
        """
        try:
            algo = self._algorithm_code(
                algorithm, ("pairwise", "flat", "cma", "symmetric"), "all_to_all"
            )
            _require_array(x, "all_to_all: x")
            code = dtype_code(x.dtype, "all_to_all")
            if x.ndim == 0 or x.shape[0] % self.size:
                raise ValueError(
                    f"all_to_all: x has shape {x.shape}; its first dimension must be a "
                    f"multiple of the communicator size {self.size}"
                )
            if out is None:
                out = np.empty_like(x)
            else:
                _check_out(out, x.dtype, x.shape, "all_to_all: out")
                _check_disjoint(x, out, "all_to_all")
        except Exception as exc:
            self._reject("all_to_all", exc)
            raise
        self._core.all_to_all(x, out, x.size // self.size, code, x.dtype.itemsize, algo)
        return out

    def all_to_allv(
        self, x: np.ndarray, send_counts: Sequence[int], out: np.ndarray | None = None
    ) -> tuple[np.ndarray, list[int]]:
        """Send ``send_counts[j]`` consecutive rows of ``x`` to rank j.

        Returns ``(result, recv_counts)``: the rows received, in source-rank order, and how many
        came from each rank.
        """
        try:
            _require_array(x, "all_to_allv: x")
            code = dtype_code(x.dtype, "all_to_allv")
            counts = check_all_to_allv(x, send_counts, out, self.size)
        except Exception as exc:
            self._reject("all_to_allv", exc)
            raise
        row = math.prod(x.shape[1:])
        recv = list(self._core.all_to_allv_counts(counts, row, code, x.dtype.itemsize))
        if out is None:
            out = np.empty((sum(recv),) + x.shape[1:], x.dtype)
        # A wrong number of rows in any rank's out: every rank raises the same ValueError.
        self._core.all_to_allv_data(x, out, out.shape[0])
        return out, recv

    def broadcast(self, x: np.ndarray, root: int = 0) -> np.ndarray:
        """Copy root's ``x`` into every rank's ``x`` (in place); returns ``x``."""
        try:
            _require_array(x, "broadcast: x")
            code = dtype_code(x.dtype, "broadcast")
            root = int(root)
            if not 0 <= root < self.size:
                raise ValueError(f"broadcast: root {root} is outside [0, {self.size})")
            if self.rank != root:
                _require_writeable(x, "broadcast: x")
        except Exception as exc:
            self._reject("broadcast", exc)
            raise
        self._core.broadcast(x, x.size, code, x.dtype.itemsize, root)
        return x

    def send(self, x: np.ndarray, dst: int, tag: int = 0) -> None:
        """Send ``x`` to rank ``dst``; returns once x may be reused (small messages: at once)."""
        _require_array(x, "send: x")
        code = dtype_code(x.dtype, "send")
        self._core.send(x, x.size, code, x.dtype.itemsize, self._peer(dst, "send: dst"), int(tag))

    def recv(self, out: np.ndarray, src: int, tag: int = 0) -> np.ndarray:
        """Receive the next message from ``src`` into ``out``; its tag, size and dtype must match."""
        _require_array(out, "recv: out")
        _require_writeable(out, "recv: out")
        code = dtype_code(out.dtype, "recv")
        self._core.recv(
            out, out.size, code, out.dtype.itemsize, self._peer(src, "recv: src"), int(tag)
        )
        return out

    def _peer(self, r: int, what: str) -> int:
        return check_peer(r, self.rank, self.size, what)

    # --- groups -----------------------------------------------------------------------------
    def split(self, color: int | None, key: int = 0) -> Communicator | None:
        """Split into sub-communicators by ``color`` (as MPI_Comm_split), ordered by ``key`` then rank.

        Every rank must call it. Ranks with color None get None. Sub-communicators have their own
        segments and run concurrently with each other and with this one.
        """
        try:
            if color is not None:
                color = int(color)
                if color < 0:
                    raise ValueError(f"split: color must be >= 0 or None, got {color}")
        except Exception as exc:
            self._reject("internal", exc)
            raise
        mine = np.array([-1 if color is None else color, int(key), self.rank], np.int64)
        table = np.empty(3 * self.size, np.int64)
        self._core.all_gather(mine, table, 3, 5, 8, True)
        index = self._nsplits
        self._nsplits += 1
        if color is None:
            return None
        members = sorted((int(k), int(r)) for c, k, r in table.reshape(-1, 3) if c == color)
        ranks = [r for _, r in members]
        return Communicator.connect(
            f"{self.name}.{index}c{color}",
            ranks.index(self.rank),
            len(ranks),
            timeout=self.timeout,
            slot_bytes=self._core.slot_bytes,
            group_ranks=[self.group_ranks[r] for r in ranks],
        )

    # --- accounting and lifetime ----------------------------------------------------------
    def traffic(self) -> dict[str, dict]:
        """Bytes this rank sent to / received from peers, per collective kind, and call counts.

        Each kind maps to ``{"calls", "sent", "recv", "algorithms"}``; ``internal`` is
        shardcore's own bookkeeping (split, the counts exchange of all_to_allv).
        """
        return self._core.traffic()

    def reset_traffic(self) -> None:
        """Zero the traffic counters."""
        self._core.reset_traffic()

    def abort(self, reason: str = "aborted") -> None:
        """Make every rank's current and next collective on this communicator raise."""
        self._core.abort(str(reason))

    def close(self) -> None:
        """Detach from the segment; peers that wait for this rank afterwards get PeerFailureError."""
        self._core.close()

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._core.closed

    def __enter__(self) -> Communicator:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.abort(f"{exc_type.__name__}: {exc}")
        self.close()
