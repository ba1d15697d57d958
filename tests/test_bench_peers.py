"""``bench compare`` against the peers that are installed here (skipped when none is)."""

import json

import pytest

from shardcore.bench.compare import ratio_table, short_name
from shardcore.bench.runners import peer_missing
from shardcore.cli import main

pytestmark = pytest.mark.timeout(240)


@pytest.mark.parametrize(
    "peer,ops",
    [
        ("mpi", ("all_reduce", "all_gather")),
        ("gloo", ("all_reduce",)),
        ("torch-shardcore", ("all_reduce", "all_gather")),
    ],
)
def test_compare_with_peer(capsys, peer, ops):
    if peer_missing(peer):
        pytest.skip(peer_missing(peer))
    argv = [
        "bench",
        "compare",
        "--op",
        ",".join(ops),
        "-n",
        "2",
        "--sizes",
        "64,4K",
        "--iters",
        "3",
        "--warmup",
        "1",
        "--check",
        "--peers",
        peer,
        "--json",
        "-",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["peers"] == [peer]
    rows = out["rows"]
    assert {(r["backend"], r["op"]) for r in rows} == {
        (b, op) for b in ("shardcore", peer) for op in ops
    }
    for r in rows:
        assert r["check_error"] <= 1e-6  # every backend computed the right answer
        assert r["inplace"] == (r["op"] == "all_reduce")
        assert r["stat"] == "median"
        if r["backend"] == peer:
            assert r["sent_per_rank"] is None  # peers have no traffic counters
    table = ratio_table(rows, "time_median_us")
    assert f"sc/{short_name(peer)}" in table and "sc algo" in table


def test_compare_unknown_peer(capsys):
    assert main(["bench", "compare", "--peers", "nccl", "--sizes", "8"]) == 2
    assert "argument --peers: 'nccl': choose from gloo" in capsys.readouterr().err
