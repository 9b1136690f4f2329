"""Delivery retries: capped exponential backoff with jitter, up to the retry horizon."""

from __future__ import annotations

import random

import pytest

from worker.retry_policy import backoff_s, retry_in_s


def test_jitter_only_shortens_the_wait() -> None:
    rng = random.Random(7)
    waits = [backoff_s(4, base_s=5, max_s=600, jitter=0.2, rng=rng) for _ in range(200)]
    assert all(32 <= wait <= 40 for wait in waits)  # 40 s, less up to 20 %
    assert len(set(waits)) > 100  # spread out, so a backlog doesn't return at once
    capped = [backoff_s(30, base_s=5, max_s=600, jitter=0.2, rng=rng) for _ in range(50)]
    assert all(480 <= wait <= 600 for wait in capped)


@pytest.mark.parametrize(
    ("attempt", "failing_for_s", "expected"),
    [
        (1, 0.0, 5.0),  # the first failure: the base wait
        (3, 100.0, 20.0),
        (20, 3000.0, 600.0),  # capped
        (20, 86000.0, 400.0),  # the last retry is moved up to the horizon
        (20, 86400.0, None),  # the horizon has passed: failed
        (1, 90000.0, None),
    ],
)
def test_retry_until_the_horizon(attempt: int, failing_for_s: float,
                                 expected: float | None) -> None:
    assert retry_in_s(attempt, failing_for_s, base_s=5, max_s=600, horizon_s=86400,
                      jitter=0.0) == expected


def test_a_zero_horizon_never_retries() -> None:
    assert retry_in_s(1, 0.0, base_s=5, max_s=600, horizon_s=0, jitter=0.0) is None
