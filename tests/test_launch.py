"""launch(), shardcore.init() and the ``shardcore run`` launcher."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import shardcore


def _identity(comm, a, b=0):
    return (comm.rank, comm.size, a, b)


@pytest.mark.parametrize("n", [1, 2, 8])
def test_launch_returns_results_in_rank_order(n):
    assert shardcore.launch(_identity, n, args=("x",), kwargs={"b": 3}) == [
        (r, n, "x", 3) for r in range(n)
    ]


def test_launch_accepts_closures_and_large_results():
    scale = 2.5

    def fn(comm):
        return np.full(300_000, scale * comm.rank)

    out = shardcore.launch(fn, 3)
    for r, a in enumerate(out):
        np.testing.assert_array_equal(a, np.full(300_000, 2.5 * r))


def _unpicklable(comm):
    return lambda: None


def test_unpicklable_result_is_reported():
    with pytest.raises(shardcore.LaunchError, match="cannot be pickled"):
        shardcore.launch(_unpicklable, 2)


SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import shardcore

    comm = shardcore.init()
    x = np.array([comm.rank + 1.0])
    comm.all_reduce(x)
    if sys.argv[1] == "fail" and comm.rank == 1:
        raise RuntimeError("rank 1 fails on purpose")
    comm.barrier()
    # one write per line: ranks share the pipe (and PYTHONUNBUFFERED splits print's writes)
    sys.stdout.write(f"rank {comm.rank}/{comm.size} sum {x[0]:.0f} arg {sys.argv[1]}\\n")
""")


def _run_cli(tmp_path, n, arg):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "shardcore.cli",
            "run",
            "-n",
            str(n),
            "--comm-timeout",
            "60",
            str(script),
            arg,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_run_starts_n_ranks(tmp_path):
    proc = _run_cli(tmp_path, 3, "hello")
    assert proc.returncode == 0, proc.stderr
    lines = sorted(proc.stdout.splitlines())
    assert lines == [f"rank {r}/3 sum 6 arg hello" for r in range(3)]


def test_cli_run_fails_when_a_rank_fails(tmp_path):
    proc = _run_cli(tmp_path, 3, "fail")
    assert proc.returncode != 0
    assert "rank 1 fails on purpose" in proc.stderr
    assert "failed" in proc.stderr
    # The others learnt of it through the communicator instead of hanging.
    assert "PeerFailureError" in proc.stderr


def test_init_without_launcher_is_a_single_rank(tmp_path):
    code = (
        "import numpy as np, shardcore; c = shardcore.init(); x = np.ones(3); "
        "c.all_reduce(x); print(c.rank, c.size, x.sum())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDCORE_")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "1", "3.0"]


def test_plan_layer_does_not_load_the_core():
    code = "import sys, shardcore; assert 'shardcore._core' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
