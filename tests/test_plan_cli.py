"""The ``shardcore plan`` CLI in-process, JSON round trip, stable hash, import isolation."""

import json
import subprocess
import sys

import pytest

from shardcore.cli import main
from shardcore.plan import MODEL_PRESETS, ClusterSpec, ParallelConfig, Plan, make_plan


def run(capsys, *argv):
    code = main(["plan", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_fixed_plan_text(capsys):
    code, out, _ = run(capsys, "qwen3-235b-a22b", "--devices", "8", "-tp", "8")
    assert code == 0
    assert "tp=8 pp=1 dp=1 ep=1" in out and "KV heads replicated" in out
    assert "GiB" in out and "all_reduce" in out


def test_cli_long_names_and_json(capsys):
    code, out, _ = run(
        capsys,
        "llama-3-70b",
        "--devices",
        "16",
        "--devices-per-node",
        "8",
        "--tensor-parallel-size",
        "4",
        "--pipeline-parallel-size",
        "4",
        "--data-parallel-size",
        "1",
        "--expert-parallel-size",
        "1",
        "--json",
    )
    assert code == 0
    data = json.loads(out)
    plan = Plan.from_dict(data["plan"])
    assert plan.config == ParallelConfig(4, 4, 1, 1) and plan.hash == data["hash"]
    assert len(data["memory"]) == 16


def test_cli_search_and_schedule(capsys):
    code, out, _ = run(
        capsys,
        "qwen3-235b-a22b",
        "--devices",
        "16",
        "--devices-per-node",
        "8",
        "--objective",
        "throughput",
        "--schedule",
        "1f1b",
        "--top",
        "6",
    )
    assert code == 0
    assert "ranked by throughput" in out and "wins on throughput" in out and "1F1B" in out


def test_cli_rejection(capsys):
    code, _, err = run(capsys, "qwen3-235b-a22b", "--devices", "8", "-tp", "3")
    assert code == 2 and "PlanError" in err and "Configurations that would work" in err
    code, out, _ = run(capsys, "qwen3-235b-a22b", "--devices", "8", "-tp", "3", "--json")
    assert code == 2 and json.loads(out)["type"] == "PlanError"
    code, _, err = run(capsys, "no-such-model", "--devices", "8")
    assert code == 2 and "preset" in err


def test_cli_config_json_path(capsys, tmp_path):
    cfg = {
        "model_type": "qwen3",
        "hidden_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 96,
        "vocab_size": 100,
        "tie_word_embeddings": True,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    save = tmp_path / "plan.json"
    code, out, _ = run(
        capsys, str(path), "--devices", "4", "-tp", "2", "-pp", "2", "--save", str(save)
    )
    assert code == 0 and "tp=2 pp=2 dp=1" in out
    plan = Plan.load(str(save))
    assert plan.model.tie_embeddings and plan.world_size == 4


def test_json_round_trip_and_hash():
    for name, devices, cfg in [
        ("qwen3-235b-a22b", 16, ParallelConfig(4, 2, 2, 8)),
        ("mixtral-8x7b", 8, ParallelConfig(2, 2, 2, 2)),
        ("llama-3-70b", 4, ParallelConfig(4, 1, 1, 1)),
    ]:
        cluster = ClusterSpec.make("h100-80gb", devices, min(devices, 8))
        plan = make_plan(MODEL_PRESETS[name], cluster, cfg)
        back = Plan.from_json(plan.to_json())
        assert back == plan and back.hash == plan.hash
        assert back.weight_shards(devices - 1) == plan.weight_shards(devices - 1)
    other = make_plan(
        MODEL_PRESETS["llama-3-70b"], ClusterSpec.make("h100-80gb", 4), ParallelConfig(2, 2, 1, 1)
    )
    assert other.hash != plan.hash


def test_hash_stable_across_processes():
    code = (
        "from shardcore.plan import *; p = make_plan(MODEL_PRESETS['qwen3-32b'], "
        "ClusterSpec.make('h100-80gb', 8), ParallelConfig(4, 2, 1, 1)); print(p.hash)"
    )
    here = make_plan(
        MODEL_PRESETS["qwen3-32b"], ClusterSpec.make("h100-80gb", 8), ParallelConfig(4, 2, 1, 1)
    ).hash
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env()
    )
    assert out.stdout.strip() == here and len(here) == 64


def _env():
    import os

    env = dict(os.environ)
    env["PYTHONHASHSEED"] = "12345"  # a different str-hash seed must not change the plan hash
    return env


def test_importing_plan_loads_no_core():
    code = (
        "import sys, shardcore.plan, shardcore.plan.cli; "
        "from shardcore.plan import auto_plan, make_plan; "
        "bad = [m for m in ('shardcore._core', 'shardcore.comm', 'shardcore.runtime', "
        "'shardcore.launch') if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env()
    )
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("bad", [["-tp", "0"], ["--layer-partition", "1,2"]])
def test_cli_bad_arguments(capsys, bad):
    code, _, err = run(capsys, "qwen3-32b", "--devices", "8", *bad)
    assert code == 2 and err


def test_rich_and_plain_tables():
    import io

    from shardcore.plan import auto_plan
    from shardcore.plan.format import render, search_rows, text_table

    res = auto_plan("qwen3-32b", ClusterSpec.make("h100-80gb", 8), "throughput")
    rows = search_rows(res, 4)
    plain = text_table(rows, "t")
    assert plain.splitlines()[0] == "t" and len(plain.splitlines()) == 2 + 1 + 4
    rich = pytest.importorskip("rich.console")
    buf = io.StringIO()
    assert render(rows, "t", console=rich.Console(file=buf, width=300)) is None
    assert "tok/s" in buf.getvalue() and rows[0]["tok/s"] in buf.getvalue()


def test_make_plan_on_a_world_size():
    from shardcore.plan import ModelSpec

    m = ModelSpec(
        name="t",
        hidden_size=16,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        head_dim=4,
        ffn_size=8,
        vocab_size=11,
        num_experts=4,
        experts_per_token=2,
        expert_ffn_size=6,
    )
    plan = make_plan(m, 8, tp=2, pp=2, ep=2)
    assert plan.config == ParallelConfig(2, 2, 2, 2) and plan.cluster.device.name == "cpu"


def test_cli_plan_that_does_not_fit(capsys):
    code, out, _ = run(
        capsys, "mixtral-8x7b", "--devices", "2", "--device", "rngd", "-tp", "8", "-pp", "2"
    )
    assert code == 0 and "DOES NOT FIT" in out and "card" in out
    code, out, _ = run(
        capsys,
        "mixtral-8x7b",
        "--devices",
        "2",
        "--device",
        "rngd",
        "-tp",
        "8",
        "-pp",
        "2",
        "--json",
    )
    assert json.loads(out)["fits"] is False
    code, out, _ = run(
        capsys,
        "mixtral-8x7b",
        "--devices",
        "4",
        "--device",
        "rngd",
        "-tp",
        "8",
        "-pp",
        "4",
        "--json",
    )
    assert json.loads(out)["fits"] is True


def test_cli_pinned_search(capsys):
    code, out, _ = run(
        capsys,
        "qwen3-235b-a22b",
        "--devices",
        "16",
        "--devices-per-node",
        "8",
        "--objective",
        "throughput",
        "--search",
        "-ep",
        "1",
        "--json",
    )
    assert code == 0
    data = json.loads(out)
    assert all(c["ep"] == "1" for c in data["search"]["candidates"])
    assert data["plan"]["config"] == {"tp": 4, "pp": 4, "dp": 1, "ep": 1}
