"""What the bench commands print: tables within 120 columns, the byte rule of the algorithm
that ran, a warning for a fit that explains nothing, progress lines off a terminal."""

import pytest

from shardcore.bench import metrics
from shardcore.bench.compare import ratio_table
from shardcore.bench.modelfit import AlphaBetaFit, format_fits
from shardcore.bench.report import bytes_verdict, format_table
from shardcore.bench.sweep import _Progress, _traffic_columns
from shardcore.cliargs import progress_mode

ALL_BACKENDS = ["shardcore", "shardcore-sym", "gloo", "mpi", "deepspeed", "torch-shardcore"]


def test_size_range_ends_at_max():
    assert metrics.size_range("8:256M", 4)[-1] == 256 << 20
    assert metrics.size_range("8:256M", 4)[-2] == 128 << 20
    assert metrics.size_range("8:64", 2) == [8, 16, 32, 64]


def _row(backend, nbytes, **extra):
    row = {
        "backend": backend,
        "op": "all_reduce",
        "world_size": 8,
        "dtype": "bfloat16",
        "inplace": True,
        "nominal_bytes": nbytes,
        "nbytes": nbytes,
        "count": nbytes // 2,
        "time_median_us": 123456.789 if nbytes > 1 << 20 else 1.5,
        "busbw": 123.456,
    }
    if backend.startswith("shardcore"):
        row["algorithm"] = "symmetric"
    row.update(extra)
    return row


def test_compare_table_fits_120_columns_with_every_peer():
    rows = [_row(b, s) for b in ALL_BACKENDS for s in (8, 4096, 256 << 20)]
    text = ratio_table(rows, "time_median_us")
    assert max(len(line) for line in text.splitlines()) <= 120
    headers = " ".join(line for line in text.splitlines() if line.lstrip().startswith("size"))
    for name in ("sc us", "sc-sym us", "gloo us", "mpi us", "ds us", "t-sc us"):
        assert name in headers
    for ratio in ("sc/gloo", "sc/t-sc", "sc-sym/ds", "sc-sym/t-sc"):  # whole, never cut
        assert f" {ratio}" in headers
    assert "t-sc = torch.distributed on shardcore's backend" in text.replace("\n#   ", " ")


def _one_shot_columns(n, nbytes, extra=0):
    sent = (n - 1) * nbytes  # each rank's input, read by the n-1 others
    traffic = [
        {"calls": 2, "sent": 2 * sent + (extra if r == 0 else 0), "algorithms": {"one_shot": 2}}
        for r in range(n)
    ]
    return _traffic_columns("all_reduce", n, nbytes, traffic)


def test_one_shot_bytes_follow_their_own_rule():
    n = 4
    rows = []
    for nbytes, cols in ((64, _one_shot_columns(n, 64)), (4096, _one_shot_columns(n, 4096))):
        assert cols["bytes_exact"] is False and cols["bytes_equal_rule"] is True
        rows.append({**_row("shardcore", nbytes), "world_size": n, **cols})
    ring = {"calls": 1, "sent": 2 * (n - 1) * (1 << 20) // n, "algorithms": {"ring": 1}}
    cols = _traffic_columns("all_reduce", n, 1 << 20, [ring] * n)
    rows.append({**_row("shardcore", 1 << 20), "world_size": n, **cols})
    verdict = bytes_verdict(rows)
    assert "one_shot at 2 sizes == the one-shot rule (n-1)*S" in verdict
    assert "ring at 1 size == the ring model 2(n-1)/n*S" in verdict
    assert "exact at all 3 sizes" in verdict and "!=" not in verdict
    table = format_table(rows)
    assert max(len(line) for line in table.splitlines()) <= 120


def test_bytes_off_their_rule_are_reported():
    cols = _one_shot_columns(4, 64, extra=1)
    verdict = bytes_verdict([{**_row("shardcore", 64), "world_size": 4, **cols}])
    assert "1 of 1 size != the one-shot rule" in verdict and "worst" in verdict


def _fit(r2):
    return AlphaBetaFit("all_reduce", 2, "shardcore", 2, 1e-6, 1e10, r2, 10, [])


def test_a_fit_that_explains_nothing_says_so():
    assert "warning" not in format_fits([_fit(0.998)], 0.25)
    text = format_fits([_fit(0.998), _fit(-0.45)], 0.25)
    assert text.count("warning") == 1 and "R2 -0.45" in text and "does not explain" in text
    assert _fit(-0.45).to_dict()["explains_data"] is False


def test_progress_lines_when_not_a_terminal(capsys):
    assert progress_mode("auto") == "lines"  # pytest's stderr is not a terminal
    assert progress_mode("off") == ""
    progress = _Progress(2, "shardcore all_reduce n=2", "lines")
    progress.update(8)
    progress.update(1 << 20)
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "8 B done (1/2" in lines[0] and "1 MiB done (2/2" in lines[1]


@pytest.mark.timeout(120)
def test_collectives_progress_reaches_stderr_per_size(capfd):
    from shardcore.cli import main

    argv = ["bench", "collectives", "-n", "2", "--sizes", "64:256", "--iters", "2"]
    assert main(argv + ["--progress", "lines"]) == 0
    err = capfd.readouterr().err
    assert [line.split(": ")[1].split(" done")[0] for line in err.splitlines()] == [
        "64 B",
        "128 B",
        "256 B",
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["qwen3-235b-a22b", "--devices", "8", "-tp", "8"],
        ["qwen3-235b-a22b", "--devices", "16", "--devices-per-node", "8", "--search"],
        ["qwen3-32b", "--devices", "8", "-pp", "2", "--schedule", "1f1b"],
    ],
)
def test_plan_output_fits_120_columns(capsys, argv):
    from shardcore.cli import main

    assert main(["plan", *argv]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 120
    assert "per rank:" in out and "KV tokens" in out


def test_tp_vs_pp_table_fits_120_columns():
    from shardcore.bench.tp_vs_pp import format_results

    cfg = dict(blocks=80, hidden=16384, dtype="float32", tokens=128, steps=20, top_k=8, experts=128)
    cfg["algorithm"] = "two_shot"
    row = {
        "mode": "ep",
        "degree": 64,
        "per": "rank, all-to-all",
        "formula": "2k*2(n-1)h*4/n",
        "algorithms": ["pairwise", "flat"],
        "measured_bytes_per_token": 12345678.9,
        "seed_bytes_per_token": 1234567.8,
        "ratio_to_seed": 1.0,
        "ratio_to_exact": 1.0,
        "comm_us_per_token_max": 12345.678,
        "comm_ms_per_step_max": 1234.567,
    }
    text = format_results([row], cfg)
    assert max(len(line) for line in text.splitlines()) <= 120
