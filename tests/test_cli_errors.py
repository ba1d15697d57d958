"""One error convention for every command: a value that is not allowed gives one line naming
the flag, exit status 2, before any work; no traceback; a closed pipe ends quietly."""

import os
import subprocess
import sys

import pytest

import shardcore
from shardcore.cli import main

# the shardcore these tests import (the installed package, or python/ in a development tree)
PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(shardcore.__file__)))
MISSING = "/nonexistent-shardcore-dir/out"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.abspath(PYTHON_DIR) + os.pathsep + env.get("PYTHONPATH", "")
    return env


CASES = [
    # argv, words the one line must hold
    (["bench", "collectives", "-n", "2,x"], ["shardcore bench collectives: error:", "-n/--ranks"]),
    (["bench", "collectives", "-n", "1"], ["-n/--ranks", "at least 2"]),
    (["bench", "collectives", "--csv", f"{MISSING}/x.csv"], ["--csv", "does not exist"]),
    (["bench", "collectives", "--json", "/"], ["--json", "is a directory"]),
    (["bench", "collectives", "--factor", "1"], ["--factor", "greater than 1"]),
    (["bench", "collectives", "--iters", "0"], ["--iters", "at least 1"]),
    (["bench", "collectives", "--min-time", "-1"], ["--min-time", "greater than 0"]),
    (["bench", "collectives", "--sizes", "64:8"], ["--sizes", "MIN <= MAX"]),
    (["bench", "collectives", "--dtype", "float8"], ["--dtype", "invalid choice"]),
    (
        ["bench", "collectives", "--op", "all_gather", "--algorithm", "one_shot"],
        ["--algorithm one_shot", "all_gather"],
    ),
    (["bench", "collectives", "--algorithm", "fastest"], ["--algorithm", "choose from"]),
    (["bench", "compare", "--peers", "nccl"], ["--peers", "'nccl'", "gloo"]),
    (["bench", "compare", "--json", f"{MISSING}/x.json"], ["--json", "does not exist"]),
    (["bench", "compare", "--plots", f"{MISSING}/img"], ["--plots", "cannot create"]),
    (["bench", "model", "--from", f"{MISSING}.json"], ["--from", "no such file"]),
    (["bench", "tp-vs-pp", "--tp", "1"], ["--tp", "at least 2"]),
    (["bench", "tp-vs-pp", "--experts", "6", "--ep", "4"], ["--experts 6", "--ep 4"]),
    (["bench", "tp-vs-pp", "--top-k", "9"], ["--top-k 9", "--experts 8"]),
    (["bench", "stream", "-p", "0"], ["-p/--processes", "at least 1"]),
    (["bench", "stream", "--size", "lots"], ["--size", "bad size"]),
    (["bench", "gemm", "--shapes", "1x2"], ["--shapes", "not MxKxN"]),
    (["bench", "gemm", "--repeat", "0"], ["--repeat", "at least 1"]),
    (["bench", "nope"], ["BENCHMARK", "invalid choice"]),
    (
        ["plan", "qwen3-32b", "--devices", "0"],
        ["shardcore plan: error:", "--devices", "at least 1"],
    ),
    (["plan", "qwen3-32b", "--context", "-5"], ["--context", "at least 1"]),
    (["plan", "qwen3-32b", "--devices", "8", "--devices-per-node", "3"], ["--devices-per-node 3"]),
    (["plan", "qwen3-32b", "-tp", "x"], ["-tp/--tensor-parallel-size", "'x'"]),
    (["plan", "qwen3-32b", "--layer-partition", "1,a"], ["--layer-partition"]),
    (["plan", "qwen3-32b", "--save", f"{MISSING}/p.json"], ["--save", "does not exist"]),
    (["plan", "qwen3-32b", "--dtype", "fp7"], ["--dtype", "invalid choice"]),
    (["generate", MISSING, "--prompt-ids", "1"], ["CHECKPOINT", "no such checkpoint"]),
    (["tune", "-n", "2,x"], ["shardcore tune: error:", "-n/--ranks"]),
    (["tune", "--max-bytes", "8"], ["--max-bytes", "at least 64"]),
    (["tune", "--output", f"{MISSING}/t.json"], ["--output", "does not exist"]),
    (["frobnicate"], ["shardcore: error:", "COMMAND", "invalid choice"]),
]


@pytest.mark.parametrize("argv,words", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_one_line_naming_the_flag_and_exit_2(capsys, argv, words):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    for word in words:
        assert word in lines[0]
    assert captured.out == ""


def test_config_that_is_not_json_names_the_file(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and str(path) in err and "not a JSON file" in err


def test_no_traceback_from_the_console():
    out = subprocess.run(
        [sys.executable, "-m", "shardcore", "bench", "collectives", "-n", "2,x"],
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "-n/--ranks" in out.stderr


def test_closed_pipe_ends_quietly():
    """``shardcore plan ... | head``: the reader is gone before the table is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "shardcore", "plan", "qwen3-32b", "--devices", "8"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
    finally:
        os.close(write_end)
    assert out.returncode == 141 and out.stderr == ""


def test_run_timeout_names_the_ranks_still_running(tmp_path):
    script = tmp_path / "blocks.py"
    script.write_text(
        "import os, signal\nif os.environ['SHARDCORE_RANK'] == '1':\n    signal.pause()\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "shardcore", "run", "-n", "2", "--timeout", "0.5", str(script)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert out.returncode == 124 and "Traceback" not in out.stderr
    assert "--timeout 0.5 s passed; ranks still running: [" in out.stderr
    assert "1]" in out.stderr


def test_closed_pipe_with_short_output():
    """Output that fits the buffer meets the closed pipe only when flushed."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "shardcore", "plan", "qwen3-8b", "--devices", "1", "-tp", "1"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
    finally:
        os.close(write_end)
    assert out.returncode == 141 and out.stderr == ""
