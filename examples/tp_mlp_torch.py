"""A two-layer tensor-parallel MLP in plain PyTorch on the shardcore torch.distributed backend.

    torchrun --nproc-per-node 4 examples/tp_mlp_torch.py

Every rank builds the same unsharded MLP (same seed), keeps its shard of each linear layer
(the first column-parallel, the second row-parallel), runs the sharded forward pass with one
all_reduce, and checks the result against the unsharded module.
"""

from __future__ import annotations

import argparse

import shardcore.torch  # noqa: F401  registers the "shardcore" backend
import torch
import torch.distributed as dist
from torch import nn

# style -> (weight dim to split, the nn.Linear attribute that shrinks); biases split with dim 0.
SHARDING = {"colwise": (0, "out_features"), "rowwise": (1, "in_features")}


def shard_linear(full: nn.Linear, style: str, rank: int, world: int) -> nn.Linear:
    """This rank's shard of ``full``: a smaller nn.Linear holding a slice of its weights."""
    dim, attr = SHARDING[style]
    size = getattr(full, attr)
    if size % world:
        raise ValueError(f"{style} sharding needs {attr}={size} divisible by {world} ranks")
    dims = {"in_features": full.in_features, "out_features": full.out_features}
    dims[attr] = size // world
    part = nn.Linear(**dims, bias=full.bias is not None, dtype=full.weight.dtype)
    with torch.no_grad():
        part.weight.copy_(full.weight.chunk(world, dim=dim)[rank])
        if full.bias is not None:
            # a row-parallel layer's bias is added once, after the all_reduce (TPMLP.forward)
            part.bias.copy_(full.bias.chunk(world)[rank] if dim == 0 else full.bias)
    return part


class MLP(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.up = nn.Linear(hidden, ffn)
        self.down = nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.gelu(self.up(x)))


class TPMLP(nn.Module):
    """``MLP`` split over a process group: each rank holds 1/world of both weight matrices."""

    def __init__(self, full: MLP, group=None):
        super().__init__()
        self.group = group
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        self.up = shard_linear(full.up, "colwise", rank, world)
        self.down = shard_linear(full.down, "rowwise", rank, world)
        self.down_bias = self.down.bias
        self.down.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        partial = self.down(torch.nn.functional.gelu(self.up(x)))
        dist.all_reduce(partial, group=self.group)  # sum the row-parallel partial products
        return partial + self.down_bias


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="shardcore", help="shardcore or gloo")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--ffn", type=int, default=2048)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()

    dist.init_process_group(args.backend)  # env:// rendezvous from torchrun
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)  # the ranks share the host's cores
    dtype = getattr(torch, args.dtype)

    torch.manual_seed(0)  # the same full model and input on every rank
    full = MLP(args.hidden, args.ffn).to(dtype)
    x = torch.randn(args.tokens, args.hidden, dtype=dtype)

    with torch.no_grad():
        want = full(x)
        got = TPMLP(full)(x)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    if rank == 0:
        err = (got.float() - want.float()).abs().max().item()
        print(f"TP MLP on {world} ranks ({dist.get_backend()}, {args.dtype}): "
              f"output {tuple(got.shape)} matches the unsharded module (max |diff| {err:.2e})")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
