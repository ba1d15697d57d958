"""``shardcore generate`` and ``python -m shardcore.runtime.tiny``."""

from __future__ import annotations

import json

import pytest
from runtime_fixtures import qwen3_moe_ckpt  # noqa: F401

from shardcore.cli import main


def test_generate_cli_tp2_pp2_checked_against_single_process(qwen3_moe_ckpt, capsys):  # noqa: F811
    rc = main(
        [
            "generate",
            qwen3_moe_ckpt,
            "--prompt-ids",
            "5,17,42,99,3",
            "--prompt-ids",
            "8,1,0,130,64",
            "-tp",
            "2",
            "-pp",
            "2",
            "--max-new-tokens",
            "6",
            "--check",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["traffic_matches_plan"] is True
    assert out["check"]["tokens_identical"] is True
    assert out["check"]["max_rel_logit_diff"] < 1e-5
    assert len(out["tokens"]) == 2 and len(out["tokens"][0]) == 6
    assert len(out["traffic"]) == 4
    assert "tp=2 pp=2 dp=1 ep=1" in out["plan"]


def test_generate_cli_text_and_saved_plan(qwen3_moe_ckpt, tmp_path, capsys):  # noqa: F811
    plan_path = tmp_path / "plan.json"
    assert (
        main(
            [
                "plan",
                f"{qwen3_moe_ckpt}/config.json",
                "--devices",
                "2",
                "-tp",
                "2",
                "-ep",
                "2",
                "--save",
                str(plan_path),
            ]
        )
        == 0
    )
    capsys.readouterr()
    rc = main(
        [
            "generate",
            qwen3_moe_ckpt,
            "--prompt-ids",
            "1,2,3",
            "--plan",
            str(plan_path),
            "--max-new-tokens",
            "3",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0
    assert "tp=2 pp=1 dp=1 ep=2" in text
    assert "traffic equals the plan's prediction on every rank: yes" in text
    assert text.count("prompt 0: 1,2,3 -> ") == 1


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--prompt-ids", "1,x"], "not a comma-separated list"),
        (["--prompt-ids", "1,2", "--prompt-ids", "3"], "same, non-zero number"),
        (["--prompt-ids", "1,2", "-tp", "3"], "tp=3"),
    ],
)
def test_generate_cli_errors(qwen3_moe_ckpt, capsys, argv, message):  # noqa: F811
    assert main(["generate", qwen3_moe_ckpt] + argv) == 2
    assert message in capsys.readouterr().err


def test_tiny_checkpoint_module(tmp_path, capsys):
    from shardcore.runtime import Checkpoint
    from shardcore.runtime.tiny import main as tiny_main

    assert tiny_main([str(tmp_path / "t"), "--moe", "--dtype", "bfloat16"]) == 0
    cfg = Checkpoint(tmp_path / "t").config
    assert cfg.is_moe and cfg.num_experts == 8 and cfg.moe_layers == (0, 1, 3)
