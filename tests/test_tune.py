"""shardcore tune: crossovers from measured rows, the cache it writes and reads back."""

from __future__ import annotations

import json

import shardcore
from shardcore import cli, tuning
from shardcore.tune import crossovers


def test_crossovers_from_rows():
    rows = [
        {"bytes": 64, "one_shot": 1.0, "two_shot": 2.0, "ring": 3.0},
        {"bytes": 128, "one_shot": 1.5, "two_shot": 2.0, "ring": 3.0},
        {"bytes": 256, "one_shot": 2.5, "two_shot": 2.0, "ring": 3.0},
        {"bytes": 512, "one_shot": 5.0, "two_shot": 3.0, "ring": 3.5},
        {"bytes": 1024, "two_shot": 5.0, "ring": 4.0},
        # two-shot up to 2048 loses 5/4 at 1024; stopping at 512 would lose 9/5 here
        {"bytes": 2048, "two_shot": 5.0, "ring": 9.0},
        {"bytes": 4096, "two_shot": 9.0, "ring": 8.0},
    ]
    assert crossovers(rows) == (128, 2048)


def test_one_noisy_size_does_not_cut_a_range_short():
    # One-shot fastest everywhere but at 2 KiB (a blip), then the ring from 256 KiB.
    rows = []
    for k in range(6, 21):
        n = 1 << k
        one = 1.0 + n / 1e5
        rows.append(
            {
                "bytes": n,
                "one_shot": one * (1.3 if n == 2048 else 1.0),
                "two_shot": one * 1.2,
                "ring": one * (1.1 if n < 1 << 18 else 0.5),
            }
        )
    assert crossovers(rows) == (1 << 17, 1 << 17)


def test_crossovers_skip_sizes_one_shot_cannot_run():
    rows = [
        {"bytes": 64, "one_shot": 1.0, "two_shot": 2.0, "ring": 3.0},
        {"bytes": 128, "two_shot": 2.0, "ring": 3.0},  # larger than a slot: no one-shot
        {"bytes": 256, "one_shot": 0.1, "two_shot": 2.0, "ring": 3.0},
    ]
    one, two = crossovers(rows)
    assert one < 128 and two == 256


def test_crossovers_never_below_the_inline_size():
    rows = [{"bytes": 64, "one_shot": 3.0, "two_shot": 2.0, "ring": 1.0}]
    assert crossovers(rows) == (88, 88)


def _thresholds(comm):
    return comm._core.one_shot_max, comm._core.two_shot_max


def test_tune_writes_a_cache_that_communicators_use(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("SHARDCORE_ONE_SHOT_MAX", raising=False)
    monkeypatch.delenv("SHARDCORE_TWO_SHOT_MAX", raising=False)
    assert cli.main(["tune", "-n", "2", "--max-bytes", "1024", "--budget", "0.001"]) == 0
    doc = json.loads(tuning.cache_path().read_text())
    entry = doc["world_sizes"]["2"]
    assert [r["bytes"] for r in entry["rows"]] == [64, 128, 256, 512, 1024]
    assert all(set(r) >= {"one_shot", "two_shot", "ring"} for r in entry["rows"])
    assert "saved to" in capsys.readouterr().out
    # Pin the values, then check a new communicator picks them up.
    entry["one_shot_max"], entry["two_shot_max"] = 200, 3000
    tuning.cache_path().write_text(json.dumps(doc))
    assert shardcore.launch(_thresholds, 2)[0] == (200, 3000)
