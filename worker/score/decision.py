"""The triage rules: ``Decision`` and ``Priority``, the image decision and the study result."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from db.models import Decision, Priority  # the persisted vocabulary (score and report columns)

__all__ = ["NOT_ASSESSABLE_TEXT", "Decision", "ImageResult", "Priority", "decide", "fold_votes",
           "severity", "study_result"]

# Most suspicious first: a suspected image outranks an indeterminate one, which outranks
# a not-suspected one, whatever their probabilities. A not-assessable image ranks last: any
# assessed image of the study speaks for it, and its probability is no claim.
_SEVERITY = {Decision.SUSPECTED: 2, Decision.INDETERMINATE: 1, Decision.NOT_SUSPECTED: 0,
             Decision.NOT_ASSESSABLE: -1}
NOT_ASSESSABLE_TEXT = "not assessable: image unlike the training data"


def decide(mean: float, std: float, *, threshold: float, indeterminate_std: float,
           unlike_training_data: bool = False) -> Decision:
    """The decision for one image from its ensemble output.

    ``not_assessable`` when the image gate found it unlike the training data
    (:mod:`training.ood`): the probability is then no claim, whatever its value.

    ``suspected`` when the mean probability reaches the manifest threshold (a positive is
    never downgraded for fold disagreement: triage errs towards reading sooner);
    ``indeterminate`` when the folds disagree, i.e. their standard deviation exceeds
    ``indeterminate_std``; otherwise ``not_suspected``.
    """
    if unlike_training_data:
        return Decision.NOT_ASSESSABLE
    if mean >= threshold:
        return Decision.SUSPECTED
    if std > indeterminate_std:
        return Decision.INDETERMINATE
    return Decision.NOT_SUSPECTED


def fold_votes(fold_probabilities: Sequence[float], threshold: float) -> int:
    """How many folds alone would call the image suspected."""
    return sum(1 for p in fold_probabilities if p >= threshold)


@dataclass(frozen=True)
class ImageResult:
    """One scored image of a study, as the study rule sees it."""

    instance_id: int
    sop_instance_uid: str
    decision: Decision
    probability_mean: float
    probability_std: float
    fold_probabilities: tuple[float, ...]


def severity(result: ImageResult) -> tuple[int, float, float]:
    """Sort key: decision rank, then mean probability, then spread (higher = more suspicious)."""
    return (_SEVERITY[Decision(result.decision)], result.probability_mean, result.probability_std)


def study_result(images: Sequence[ImageResult]) -> ImageResult:
    """The study result: that of its most suspicious frontal image (not assessable only when
    no image of the study could be assessed).

    Ties (equal rank, mean and spread) go to the image scored first (lowest instance id), so
    the result doesn't depend on the order the rows were read in.
    """
    if not images:
        raise ValueError("a study result needs at least one scored image")
    return max(sorted(images, key=lambda r: r.instance_id), key=severity)
