"""Unmodified PyTorch clients on the "shardcore" backend, each run twice: once with gloo as the
default backend (the oracle), once with "shardcore", same ranks, same seeds, default arguments.
Results must be bitwise equal (2 ranks: a sum of two terms does not depend on the order).

Clients: torch's tensor-parallel API (``parallelize_module`` with ColwiseParallel and
RowwiseParallel: forward, backward, an optimizer step), ``distribute_tensor`` and
``redistribute`` on 1-D and 2-D meshes, DDP, FSDP2 (``fully_shard``), and transformers
``tp_plan="auto"`` on a tiny random Qwen3 (prefill and one decode step).
"""

from __future__ import annotations

import io

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from test_torch_backend import run_ranks  # noqa: E402  (the shared multi-process harness)


def _plain(obj):
    """Nested dicts/lists of plain tensors (clients may hand back tensor subclasses)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        plain = torch.empty(obj.shape, dtype=obj.dtype)
        plain.copy_(obj.detach())
        return plain
    return obj


def on_both_backends(world, case, *args, tmp_path):
    """``case``'s per-rank results with gloo and with shardcore as the default backend."""

    def serialized(rank, world, gloo, *args):
        # tensors travel as bytes: a tensor put on a queue as itself would share its storage
        # with a process that exits before the parent reads it
        buf = io.BytesIO()
        torch.save(_plain(case(rank, world, gloo, *args)), buf)
        return buf.getvalue()

    serialized.__name__ = case.__name__
    results = {}
    for backend in ("gloo", "shardcore"):
        out = run_ranks(world, serialized, *args, tmp_path=tmp_path, backend=backend, tag=backend)
        results[backend] = [torch.load(io.BytesIO(b)) for b in out]
    return results["gloo"], results["shardcore"]


def assert_same(want, got, what=""):
    """Nested lists/dicts of tensors are bitwise equal."""
    if isinstance(want, dict):
        assert want.keys() == got.keys(), what
        for k in want:
            assert_same(want[k], got[k], f"{what}/{k}")
    elif isinstance(want, (list, tuple)):
        assert len(want) == len(got), what
        for i, (a, b) in enumerate(zip(want, got)):
            assert_same(a, b, f"{what}[{i}]")
    elif isinstance(want, torch.Tensor):
        assert want.dtype == got.dtype and want.shape == got.shape, what
        assert torch.equal(want, got), f"{what}: max |diff| {(want - got).abs().max()}"
    else:
        assert want == got, what


# ---- cases (run inside every rank; the default group is the backend under test) -------------


class MLP(torch.nn.Module):
    def __init__(self, dim=16, hidden=40):
        super().__init__()
        self.w1 = torch.nn.Linear(dim, hidden)
        self.w2 = torch.nn.Linear(hidden, dim)

    def forward(self, x):
        return self.w2(torch.relu(self.w1(x)))


def case_parallelize_module(rank, world, gloo):
    """torch's TP API with default arguments (its src_data_rank=0 scatters the weights)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    torch.manual_seed(0)
    model = MLP()
    mesh = init_device_mesh("cpu", (world,))
    parallelize_module(model, mesh, {"w1": ColwiseParallel(), "w2": RowwiseParallel()})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    out = model(x)
    out.pow(2).sum().backward()
    opt.step()
    after = model(x)
    return {
        "out": out.detach(),
        "after": after.detach(),
        "weights": {n: p.full_tensor().detach() for n, p in model.named_parameters()},
    }


def case_distribute_tensor(rank, world, gloo):
    """distribute_tensor (a scatter from rank 0) and redistribute between placements."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    full = torch.arange(8.0 * 12).reshape(8, 12) * (1 + rank)  # only rank 0's is used
    out = {}
    mesh = init_device_mesh("cpu", (world,))
    dt = distribute_tensor(full, mesh, [Shard(0)])
    out["shard0"] = dt.to_local().clone()
    out["shard1"] = dt.redistribute(mesh, [Shard(1)]).to_local().clone()
    out["replicate"] = dt.redistribute(mesh, [Replicate()]).to_local().clone()
    replicated = distribute_tensor(full, mesh, [Replicate()]).to_local()  # a broadcast
    p = DTensor.from_local(replicated * (rank + 1), mesh, [Partial()])  # per-rank partial sums
    out["partial_to_replicate"] = p.redistribute(mesh, [Replicate()]).to_local().clone()
    out["partial_to_shard"] = p.redistribute(mesh, [Shard(0)]).to_local().clone()
    if world == 4:  # a 2-D mesh: scatters and gathers on its sub-groups
        mesh2 = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        d2 = distribute_tensor(full, mesh2, [Shard(0), Shard(1)])
        out["2d"] = d2.to_local().clone()
        out["2d_full"] = d2.full_tensor().clone()
        out["2d_tp_replicate"] = d2.redistribute(mesh2, [Shard(0), Replicate()]).to_local()
    return out


def case_ddp(rank, world, gloo):
    """DistributedDataParallel with default arguments, three steps on per-rank data."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)
    model = DDP(MLP())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(10 + rank)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 16, generator=g)).pow(2).mean().backward()
        opt.step()
    return {n: p.detach().clone() for n, p in model.module.named_parameters()}


def case_fsdp2(rank, world, gloo, mixed):
    """FSDP2 (fully_shard per layer and on the root), three steps on per-rank data; ``mixed``:
    bf16 parameters in the forward (bf16 all-gathers), fp32 gradient reduce-scatters."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    torch.manual_seed(0)
    model = MLP()
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    kwargs = {"mp_policy": policy} if mixed else {}
    fully_shard(model.w1, **kwargs)
    fully_shard(model.w2, **kwargs)
    fully_shard(model, **kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(10 + rank)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 16, generator=g)).pow(2).mean().backward()
        opt.step()
    return {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}


def case_transformers_tp(rank, world, gloo, path):
    """transformers' own tensor parallelism: the default group is the one it uses."""
    import inspect
    import os

    import transformers

    # what torchrun sets: transformers sizes its mesh by them
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world)
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, distributed_config=transformers.DistributedConfig(tp_plan="auto")
    )
    q = model.model.layers[0].self_attn.q_proj.weight
    assert q.to_local().shape[0] * world == q.shape[0], "q_proj is not sharded"
    ids = torch.tensor([[5, 17, 3, 99, 42, 7], [1, 2, 3, 4, 5, 6]])
    # the cache's keyword is `cache` in current transformers (`past_key_values` before 5.24)
    params = inspect.signature(model.forward).parameters
    keyword = "cache" if "cache" in params else "past_key_values"
    cache = transformers.DynamicCache()
    with torch.no_grad():
        prefill = model(ids, use_cache=True, **{keyword: cache})
        step = prefill.logits[:, -1].argmax(-1, keepdim=True)
        decode = model(step, use_cache=True, **{keyword: cache})
    return {"prefill": prefill.logits.clone(), "decode": decode.logits.clone()}


# ---- tests -----------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_parallelize_module_default_arguments(tmp_path):
    gloo, shardcore = on_both_backends(2, case_parallelize_module, tmp_path=tmp_path)
    assert_same(gloo, shardcore)
    # every rank ends with the same full weights, and the step changed them
    assert_same(shardcore[0]["weights"], shardcore[1]["weights"])
    assert not torch.equal(shardcore[0]["out"], shardcore[0]["after"])


@pytest.mark.timeout(180)
@pytest.mark.parametrize("world", [2, 4])
def test_distribute_tensor_and_redistribute(world, tmp_path):
    gloo, shardcore = on_both_backends(world, case_distribute_tensor, tmp_path=tmp_path)
    assert_same(gloo, shardcore)
    full = torch.arange(8.0 * 12).reshape(8, 12)
    for rank, out in enumerate(shardcore):
        assert torch.equal(out["replicate"], full)  # rank 0's tensor, everywhere
        assert torch.equal(out["shard0"], full.chunk(world)[rank])
        factor = sum(range(1, world + 1))
        assert torch.equal(out["partial_to_replicate"], full * factor)


@pytest.mark.timeout(180)
def test_ddp(tmp_path):
    gloo, shardcore = on_both_backends(2, case_ddp, tmp_path=tmp_path)
    assert_same(gloo, shardcore)
    assert_same(shardcore[0], shardcore[1])


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mixed", [False, True], ids=["fp32", "bf16-params"])
def test_fsdp2(mixed, tmp_path):
    gloo, shardcore = on_both_backends(2, case_fsdp2, mixed, tmp_path=tmp_path)
    assert_same(gloo, shardcore)


@pytest.mark.timeout(240)
def test_transformers_tp_plan_auto_tiny_qwen3(tmp_path):
    pytest.importorskip("transformers")
    from shardcore.runtime.tiny import make_tiny_checkpoint

    path = make_tiny_checkpoint(tmp_path / "qwen3", "qwen3", "float32", seed=0)
    gloo, shardcore = on_both_backends(2, case_transformers_tp, path, tmp_path=tmp_path)
    assert_same(gloo, shardcore)
    assert_same(shardcore[0], shardcore[1])
