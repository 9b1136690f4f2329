"""Unit tests of the triage rules and the worker settings (no servers)."""

from __future__ import annotations

import pytest

from common.config import SettingError
from worker.deliver.delivery import backoff_s
from worker.score.decision import Decision, ImageResult, decide, fold_votes, study_result
from worker.settings import WorkerSettings


@pytest.mark.parametrize(
    ("mean", "std", "expected"),
    [
        (0.70, 0.01, Decision.SUSPECTED),
        (0.60, 0.01, Decision.SUSPECTED),  # at the threshold counts
        (0.65, 0.40, Decision.SUSPECTED),  # a positive is never downgraded for disagreement
        (0.40, 0.30, Decision.INDETERMINATE),
        (0.40, 0.20, Decision.NOT_SUSPECTED),  # at the disagreement limit is still agreement
        (0.05, 0.00, Decision.NOT_SUSPECTED),
    ],
)
def test_decide(mean: float, std: float, expected: Decision) -> None:
    assert decide(mean, std, threshold=0.6, indeterminate_std=0.2) is expected


def test_fold_votes() -> None:
    assert fold_votes([0.1, 0.6, 0.9, 0.59], 0.6) == 2


def _image(instance_id: int, decision: Decision, mean: float, std: float = 0.0) -> ImageResult:
    return ImageResult(instance_id, f"1.2.{instance_id}", decision, mean, std, (mean,))


def test_study_result_is_the_most_suspicious_image() -> None:
    images = [
        _image(1, Decision.NOT_SUSPECTED, 0.55),
        _image(2, Decision.SUSPECTED, 0.61),
        _image(3, Decision.INDETERMINATE, 0.58, 0.3),
    ]
    assert study_result(images).instance_id == 2
    # Decision outranks probability: indeterminate 0.3 beats not-suspected 0.55.
    assert study_result([images[0], _image(4, Decision.INDETERMINATE, 0.3, 0.25)]).instance_id == 4
    # Among equals the higher mean wins, and exact ties go to the first scored image.
    assert study_result([_image(5, Decision.SUSPECTED, 0.9), images[1]]).instance_id == 5
    assert study_result([_image(7, Decision.SUSPECTED, 0.9), _image(6, Decision.SUSPECTED, 0.9)]
                        ).instance_id == 6
    with pytest.raises(ValueError):
        study_result([])


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_s(n, base_s=5, max_s=30) for n in range(0, 6)] == [0, 5, 10, 20, 30, 30]


def test_settings_from_env_and_validation() -> None:
    settings = WorkerSettings.from_env({
        "TRIAGE_MODEL_DIR": "/m", "TRIAGE_STUDY_QUIET_S": "1.5", "TRIAGE_SCORE_BATCH": "4",
        "TRIAGE_DEVICE": "CPU", "TRIAGE_STORAGE_DIR": "/s",
    })
    assert (settings.study_quiet_s, settings.score_batch, settings.inference.device) == (
        1.5, 4, "cpu")
    assert str(settings.report_dir) == "/s/sr"
    defaults = WorkerSettings.from_env({})
    assert (defaults.score_batch, defaults.study_quiet_s, defaults.inference.device) == (
        8, 10.0, "auto")
    with pytest.raises(SettingError, match="TRIAGE_DEVICE"):
        WorkerSettings.from_env({"TRIAGE_DEVICE": "tpu"})
    with pytest.raises(SettingError, match="SCORE_BATCH"):
        WorkerSettings.from_env({"TRIAGE_SCORE_BATCH": "0"})
