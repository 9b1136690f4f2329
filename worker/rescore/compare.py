"""What a re-scoring run changed: decisions and probabilities against the previous model version.

Plain functions over score rows. The *previous model version* of an instance is the other
model version whose score of its current content is the most recent; that of a study is the
other model version that scored one of its images most recently. A study's decision under a
version is that of its most suspicious image (``worker.score.decision.study_result``), exactly as
its report would say.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from db.runs import ScoreRow
from worker.score.decision import Decision, ImageResult, study_result


@dataclass(frozen=True)
class StudyChange:
    """A study whose decision differs from the previous model version's."""

    study_id: int
    previous_version: str
    previous: str
    current: str
    previous_mean: float
    current_mean: float


@dataclass(frozen=True)
class Comparison:
    """The run's scope under the new version, and how it differs from the previous one."""

    scored: int = 0  # in-scope instances with a score under the new version
    flagged: int = 0  # of those, suspected
    indeterminate: int = 0
    mean_probability: float | None = None
    compared: int = 0  # in-scope instances also scored by a previous version
    decisions_changed: int = 0
    mean_shift: float | None = None  # mean of (new - previous) probability over ``compared``
    study_decisions: dict[int, str] = field(default_factory=dict)  # new version, per study
    new_studies: tuple[int, ...] = ()  # no previous version has a result for them
    changed: tuple[StudyChange, ...] = ()
    probabilities: tuple[float, ...] = ()  # new-version means, instance id order

    @property
    def indeterminate_rate(self) -> float | None:
        return None if not self.scored else self.indeterminate / self.scored


def _result(row: ScoreRow) -> ImageResult:
    return ImageResult(row.instance_id, row.sop_instance_uid, Decision(row.decision),
                       row.probability_mean, row.probability_std, row.fold_probabilities)


def _previous(rows: Iterable[ScoreRow], model_version: str) -> str | None:
    """The other model version with the most recent score among ``rows``."""
    others = [r for r in rows if r.model_version != model_version]
    if not others:
        return None
    return max(others, key=lambda r: (r.created_at, r.model_version)).model_version


def _study_change(study_id: int, rows: Sequence[ScoreRow], model_version: str
                  ) -> tuple[str | None, StudyChange | None, bool]:
    """(new decision, change if any, whether there is no previous result) of one study."""
    current = [r for r in rows if r.model_version == model_version]
    if not current:
        return None, None, False
    now = study_result([_result(r) for r in current])
    previous_version = _previous(rows, model_version)
    if previous_version is None:
        return now.decision.value, None, True
    before = study_result([_result(r) for r in rows if r.model_version == previous_version])
    if before.decision == now.decision:
        return now.decision.value, None, False
    return now.decision.value, StudyChange(
        study_id, previous_version, before.decision.value, now.decision.value,
        before.probability_mean, now.probability_mean), False


def _instance_shifts(rows: Sequence[ScoreRow], scope: set[int], model_version: str
                     ) -> tuple[int, int, list[float]]:
    """(compared, decisions changed, probability shifts) over in-scope instances."""
    by_instance: dict[int, list[ScoreRow]] = defaultdict(list)
    for row in rows:
        if row.instance_id in scope:
            by_instance[row.instance_id].append(row)
    changed, shifts = 0, []
    for instance_rows in by_instance.values():
        new = [r for r in instance_rows if r.model_version == model_version]
        previous_version = _previous(instance_rows, model_version)
        if not new or previous_version is None:
            continue
        old = max((r for r in instance_rows if r.model_version == previous_version),
                  key=lambda r: r.created_at)
        shifts.append(new[0].probability_mean - old.probability_mean)
        changed += new[0].decision != old.decision
    return len(shifts), changed, shifts


def subsample(values: Sequence[float], limit: int) -> tuple[float, ...]:
    """At most ``limit`` values, evenly spaced (deterministic), rounded to 1e-6."""
    step = max(1, math.ceil(len(values) / limit))
    return tuple(round(v, 6) for v in values[::step])


def compare(rows: Sequence[ScoreRow], scope: set[int], model_version: str, *,
            max_samples: int = 20000) -> Comparison:
    """Summarise the new version over ``scope`` (instance ids) and its studies' changes."""
    mine = sorted((r for r in rows if r.model_version == model_version and r.instance_id in scope),
                  key=lambda r: r.instance_id)
    by_study: dict[int, list[ScoreRow]] = defaultdict(list)
    for row in rows:
        by_study[row.study_id].append(row)
    decisions: dict[int, str] = {}
    changes: list[StudyChange] = []
    new_studies: list[int] = []
    for study_id in sorted({r.study_id for r in mine}):
        decision, change, is_new = _study_change(study_id, by_study[study_id], model_version)
        if decision is not None:
            decisions[study_id] = decision
        if change is not None:
            changes.append(change)
        if is_new:
            new_studies.append(study_id)
    compared, changed, shifts = _instance_shifts(rows, scope, model_version)
    means = [r.probability_mean for r in mine]
    return Comparison(
        scored=len(mine),
        flagged=sum(r.decision == Decision.SUSPECTED.value for r in mine),
        indeterminate=sum(r.decision == Decision.INDETERMINATE.value for r in mine),
        mean_probability=sum(means) / len(means) if means else None,
        compared=compared, decisions_changed=changed,
        mean_shift=sum(shifts) / len(shifts) if shifts else None,
        study_decisions=decisions, new_studies=tuple(new_studies), changed=tuple(changes),
        probabilities=subsample(means, max_samples),
    )
