"""A rank under torchrun --nnodes in the namespaced-host tests: init_process_group("shardcore")
from torchrun's environment, a few collectives, a JSON line per rank in argv[1]."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

import shardcore.torch._rendezvous as rendezvous

made: list[str] = []
_connect = rendezvous.connect_from_store


def _recording(*args):
    pair = _connect(*args)
    made.extend(type(c).__name__ for c in pair)
    return pair


rendezvous.connect_from_store = _recording
dist.init_process_group("shardcore")
rank, size = dist.get_rank(), dist.get_world_size()
x = torch.arange(5, dtype=torch.float32) * (rank + 1)
dist.all_reduce(x)
parts = [torch.empty(2, dtype=torch.int64) for _ in range(size)]
dist.all_gather(parts, torch.full((2,), rank, dtype=torch.int64))
dist.barrier()
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump(
        {"rank": rank, "kinds": made, "x": x.tolist(), "parts": [p.tolist() for p in parts]}, f
    )
dist.destroy_process_group()
