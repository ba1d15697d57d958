"""GPipe and 1F1B time tables, checked against the scheduling rules."""

import pytest

from shardcore.plan import pipeline_schedule


def cells(s):
    return {(st, c): t for st, row in enumerate(s.grid) for t, c in enumerate(row) if c}


@pytest.mark.parametrize("kind", ["gpipe", "1f1b"])
@pytest.mark.parametrize("S, M", [(1, 1), (2, 5), (4, 4), (4, 8), (3, 2), (5, 1)])
def test_schedule_rules(kind, S, M):
    s = pipeline_schedule(kind, S, M)
    at = cells(s)
    assert len(at) == 2 * S * M  # every stage runs F and B of every micro-batch once
    for st in range(S):
        for m in range(M):
            f, b = at[(st, f"F{m}")], at[(st, f"B{m}")]
            if st > 0:
                assert f > at[(st - 1, f"F{m}")]
            if st < S - 1:
                assert b > at[(st + 1, f"B{m}")]
            assert b > f
    assert s.steps == 2 * (M + S - 1)
    assert s.bubble_fraction == pytest.approx((S - 1) / (M + S - 1))
    if kind == "1f1b":
        assert all(s.peak_in_flight(st) <= min(M, S - st) for st in range(S))
    else:
        assert all(s.peak_in_flight(st) == M for st in range(S))
    text = s.text()
    assert text.count("\n") == S + 1 and f"bubble {s.bubble_fraction:.1%}" in text


def test_forward_only_and_errors():
    s = pipeline_schedule("gpipe", 4, 3, backward=False)
    assert s.grid[0] == ("F0", "F1", "F2", "", "", "")
    assert s.grid[3] == ("", "", "", "F0", "F1", "F2")
    assert s.bubble_fraction == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="schedule"):
        pipeline_schedule("zb", 2, 2)
    with pytest.raises(ValueError, match="stages"):
        pipeline_schedule("gpipe", 0, 2)
