"""``shardcore generate --prompt TEXT``: text in and out, sampling flags, on sharded workers."""

from __future__ import annotations

import json

import pytest
from runtime_fixtures import make_checkpoint, qwen3_ckpt  # noqa: F401

from shardcore.cli import main

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def text_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("cli_text"), "qwen3", seed=2, tokenizer=True)


def test_generate_text_sampled_and_checked(text_ckpt, capsys):
    argv = ["generate", text_ckpt, "--prompt", "hello world", "--prompt", "the lazy dog jumps"]
    argv += ["-tp", "2", "--temperature", "0.9", "--top-p", "0.9", "--seed", "5"]
    rc = main(argv + ["--max-new-tokens", "6", "--check", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["seed"] == 5
    assert out["check"]["tokens_identical"] is True  # the same sample in one process
    assert out["traffic_matches_plan"] is True
    assert len(out["text"]) == 2 and all(isinstance(t, str) for t in out["text"])
    assert main(argv + ["--max-new-tokens", "6"]) == 0
    text = capsys.readouterr().out
    assert "sampling seed 5" in text
    assert f"prompt 0: 'hello world' -> {out['text'][0]!r}" in text


def test_generate_ids_with_stop_ids(qwen3_ckpt, capsys):  # noqa: F811
    argv = ["generate", qwen3_ckpt, "--prompt-ids", "5,17,42", "--max-new-tokens", "5", "--json"]
    assert main(argv + ["--stop-ids", "none"]) == 0
    full = json.loads(capsys.readouterr().out)["tokens"][0]
    assert len(full) == 5
    assert main(argv + ["--stop-ids", str(full[1])]) == 0
    cut = json.loads(capsys.readouterr().out)["tokens"][0]
    assert cut == full[: full.index(full[1]) + 1]


@pytest.mark.parametrize(
    "argv,message",
    [
        ([], "--prompt (text) or as --prompt-ids"),
        (["--prompt", "a", "--prompt-ids", "1"], "not both"),
        (["--prompt", "hello"], "tokenizer.json"),
        (["--prompt-ids", "1", "--stop-ids", "x"], "--stop-ids"),
        (["--prompt-ids", "1", "--top-p", "2"], "top_p"),
    ],
)
def test_generate_cli_prompt_errors(qwen3_ckpt, capsys, argv, message):  # noqa: F811
    assert main(["generate", qwen3_ckpt] + argv) == 2
    assert message in capsys.readouterr().err


def test_measure_module(qwen3_ckpt, capsys):  # noqa: F811
    from shardcore.runtime.measure import main as measure_main

    argv = [qwen3_ckpt, "-tp", "2", "--requests", "3", "--prompt-len", "4", "--new-tokens", "3"]
    assert measure_main(argv + ["--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["layout"].startswith("tp=2 pp=1") and r["max_decode_batch"] == 3
    assert all(r[k] > 0 for k in ("start_s", "second_request_s", "continuous_tokens_per_s"))
    assert measure_main(argv) == 0
    assert "submitted at once" in capsys.readouterr().out
