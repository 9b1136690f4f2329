"""The comparison with the previous model version, on hand-made score rows."""

from __future__ import annotations

import datetime as dt

import pytest

from db.runs import ScoreRow
from worker.rescore.compare import compare, subsample

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def _row(instance: int, study: int, version: str, decision: str, mean: float,
         day: int) -> ScoreRow:
    return ScoreRow(instance, study, f"1.2.{instance}", version, decision, mean, 0.01,
                    (mean, mean), T0 + dt.timedelta(days=day))


def test_changes_against_the_most_recent_other_version() -> None:
    rows = [
        _row(1, 10, "old", "suspected", 0.9, 0), _row(1, 10, "prev", "suspected", 0.8, 1),
        _row(1, 10, "new", "not_suspected", 0.3, 2),
        _row(2, 10, "prev", "not_suspected", 0.2, 1), _row(2, 10, "new", "not_suspected", 0.1, 2),
        _row(3, 20, "prev", "not_suspected", 0.2, 1), _row(3, 20, "new", "not_suspected", 0.3, 2),
        _row(4, 30, "new", "indeterminate", 0.4, 2),  # a study no earlier version scored
    ]
    result = compare(rows, {1, 2, 3, 4}, "new")
    assert (result.scored, result.flagged, result.indeterminate) == (4, 0, 1)
    assert result.compared == 3 and result.decisions_changed == 1
    assert result.mean_shift == pytest.approx(((0.3 - 0.8) + (0.1 - 0.2) + (0.3 - 0.2)) / 3)
    (change,) = result.changed
    assert (change.study_id, change.previous_version, change.previous, change.current) == (
        10, "prev", "suspected", "not_suspected")
    assert result.new_studies == (30,)
    assert result.study_decisions == {10: "not_suspected", 20: "not_suspected",
                                      30: "indeterminate"}
    assert result.indeterminate_rate == pytest.approx(0.25)
    assert result.probabilities == (0.3, 0.1, 0.3, 0.4)


def test_scope_limits_instances_and_subsample_is_bounded() -> None:
    rows = [_row(1, 10, "new", "suspected", 0.9, 2), _row(2, 10, "new", "suspected", 0.8, 2)]
    assert compare(rows, {2}, "new").scored == 1
    assert len(subsample([i / 1000 for i in range(1000)], 100)) == 100
