"""Reductions the core does not compute (bitwise ops; every op on uint8, int8 and bool), done
by the torch layer on data the core moves, at the traffic of the core's own ring.

reduce-scatter = an all-to-all of the blocks, then each rank combines the n blocks it received
in rank order; all-reduce = that, then an all-gather of the combined blocks. Per rank that
moves (n-1)/n and 2(n-1)/n of the buffer, as a ring reduce-scatter and all-reduce do, and every
rank ends with bitwise the same result (each block is combined once, by the rank that owns it).
Integer arithmetic wraps in the tensor's own dtype, as gloo's does.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch._C._distributed_c10d import ReduceOp

from ._dtypes import numpy_view

_R = ReduceOp.RedOpType
# torch reduce op (int value) -> the element-wise torch function that combines two blocks
TORCH_OPS: dict[int, Callable[..., torch.Tensor]] = {
    int(_R.SUM): torch.add,
    int(_R.PRODUCT): torch.mul,
    int(_R.MAX): torch.maximum,
    int(_R.MIN): torch.minimum,
    int(_R.BAND): torch.bitwise_and,
    int(_R.BOR): torch.bitwise_or,
    int(_R.BXOR): torch.bitwise_xor,
}
BITWISE = frozenset({int(_R.BAND), int(_R.BOR), int(_R.BXOR)})


def _combine(blocks: torch.Tensor, fn: Callable[..., torch.Tensor], out: torch.Tensor) -> None:
    """out = blocks[0] fn blocks[1] fn ... (rank order), in the blocks' dtype."""
    out.copy_(blocks[0])
    for block in blocks[1:]:
        fn(out, block, out=out)


def reduce_scatter(comm: Any, x: torch.Tensor, out: torch.Tensor, fn: Callable) -> None:
    """``out`` (m elements) = block ``rank`` of ``x`` (n*m elements) combined over the ranks.

    Both are contiguous 1-D tensors of one dtype and must not overlap.
    """
    n, m = comm.size, out.numel()
    if n == 1 or m == 0:
        out.copy_(x)
        return
    received = torch.empty(n, m, dtype=x.dtype)
    comm.all_to_all(numpy_view(x).reshape(n, m), out=numpy_view(received))
    _combine(received, fn, out)


def all_reduce(comm: Any, x: torch.Tensor, fn: Callable) -> None:
    """Combine the contiguous 1-D tensor ``x`` element-wise over the ranks, in place."""
    n, count = comm.size, x.numel()
    if n == 1 or count == 0:
        return
    m = -(-count // n)  # blocks of m elements; the last one padded (its padding is discarded)
    padded = x
    if m * n != count:
        padded = torch.zeros(n * m, dtype=x.dtype)
        padded[:count] = x
    mine = torch.empty(m, dtype=x.dtype)
    reduce_scatter(comm, padded, mine, fn)
    gathered = x if m * n == count else padded
    comm.all_gather(numpy_view(mine), out=numpy_view(gathered))
    if gathered is not x:
        x.copy_(gathered[:count])
