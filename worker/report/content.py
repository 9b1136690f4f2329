"""The values the triage SR is built from: the study finding, the predecessor reference and the
header texts (Series Description and Series Number of each revision)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage

from worker.errors import WorkerError
from worker.score.decision import Decision, Priority

# The SR series of a study's n-th report (any model version) is number SR_SERIES_BASE + n:
# 9901, 9902, ... Every revision is a series of its own, and the numbers stay unique within
# the study whatever model version wrote each report.
SR_SERIES_BASE = 9900
SERIES_DESCRIPTION_MAX = 64  # Series Description is LO (PS3.5 6.2)
# What the Series Description says of each decision and priority (a PACS study list shows it).
DECISION_WORDS = {
    Decision.SUSPECTED: "SUSPECTED",
    Decision.NOT_SUSPECTED: "NOT SUSPECTED",
    Decision.INDETERMINATE: "INDETERMINATE",
    Decision.NOT_ASSESSABLE: "NOT ASSESSABLE",
}
PRIORITY_WORDS = {Priority.HIGH: "HIGH PRIORITY", Priority.ROUTINE: "ROUTINE"}
NO_PRIORITY_WORDS = "NO PRIORITY"  # a not-assessable result makes no priority claim
RESEARCH_WORDS = " - RESEARCH"  # a not-for-clinical-use model, when it fits in 64 characters


class SRError(WorkerError):
    """The triage SR could not be built or written."""


def _check_probability(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise SRError(f"{name} must be a probability in [0, 1], got {value!r}")


@dataclass(frozen=True)
class StudyFinding:
    """What the ensemble concluded for one study.

    Parameters
    ----------
    decision
        Suspected, not suspected, indeterminate or not assessable (a ``Decision`` or its
        value); a not-assessable finding makes no probability claim (the SR omits them).
    probability_mean, probability_std
        Mean COVID-19 probability over the folds and its standard deviation.
    scored_sop_instance_uids
        SOP Instance UIDs of the images that were scored.
    fold_probabilities
        Optional per-fold probabilities, in fold order.
    threshold
        The operating threshold the mean was compared with (the score's), if known.
    """

    decision: Decision
    probability_mean: float
    probability_std: float
    scored_sop_instance_uids: tuple[str, ...]
    fold_probabilities: tuple[float, ...] = ()
    threshold: float | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "decision", Decision(self.decision))
        except ValueError:
            allowed = ", ".join(d.value for d in Decision)
            raise SRError(f"unknown decision {self.decision!r}; use one of {allowed}") from None
        _check_probability("probability_mean", self.probability_mean)
        _check_probability("probability_std", self.probability_std)
        for fold_p in self.fold_probabilities:
            _check_probability("fold probability", fold_p)
        if self.threshold is not None:
            _check_probability("threshold", self.threshold)
        if not self.scored_sop_instance_uids:
            raise SRError("a finding needs at least one scored SOP Instance UID")

    @property
    def priority(self) -> Priority:
        """HIGH for a suspected study, ROUTINE otherwise.

        A not-assessable study is recorded ROUTINE (never HIGH), and its SR has no priority.
        """
        return Priority.HIGH if self.decision is Decision.SUSPECTED else Priority.ROUTINE

    @property
    def assessed(self) -> bool:
        """Whether the finding makes a probability and priority claim."""
        return self.decision is not Decision.NOT_ASSESSABLE


def sr_series_number(earlier_reports: int) -> int:
    """Series Number of the SR of a study that already has ``earlier_reports`` reports."""
    if earlier_reports < 0:
        raise SRError(f"earlier_reports must be 0 or more, got {earlier_reports}")
    return SR_SERIES_BASE + earlier_reports + 1


def result_words(finding: StudyFinding) -> str:
    """Decision and priority as a PACS list shows them: ``SUSPECTED - HIGH PRIORITY``."""
    priority = PRIORITY_WORDS[finding.priority] if finding.assessed else NO_PRIORITY_WORDS
    return f"{DECISION_WORDS[finding.decision]} - {priority}"


def series_description(finding: StudyFinding, *, revision: int = 1,
                       not_for_clinical_use: bool = False) -> str:
    """Series Description (LO, at most 64 characters) stating the decision and the priority.

    ``revision``: the report's place among the study's reports (any model version); from 2 on
    the text says it is a revision: ``AI COVID-19 triage rev 2: NOT SUSPECTED - ROUTINE``.
    A not-for-clinical-use model adds `` - RESEARCH`` when it fits; the full caution is in the
    SR content and in the result image.
    """
    if revision < 1:
        raise SRError(f"revision must be 1 or more, got {revision}")
    label = "AI COVID-19 triage" + (f" rev {revision}" if revision > 1 else "")
    text = f"{label}: {result_words(finding)}"
    if not_for_clinical_use and len(text) + len(RESEARCH_WORDS) <= SERIES_DESCRIPTION_MAX:
        text += RESEARCH_WORDS
    if len(text) > SERIES_DESCRIPTION_MAX:  # only for revisions numbered in the billions
        raise SRError(f"series description over {SERIES_DESCRIPTION_MAX} characters: {text!r}")
    return text


@dataclass(frozen=True)
class PredecessorRef:
    """An earlier triage SR that this one supersedes (PS3.3 C.17.2.1)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str = Comprehensive3DSRStorage

    def as_dataset(self) -> Dataset:
        """The minimal dataset highdicom reads a previous version from."""
        ds = Dataset()
        ds.StudyInstanceUID = self.study_instance_uid
        ds.SeriesInstanceUID = self.series_instance_uid
        ds.SOPInstanceUID = self.sop_instance_uid
        ds.SOPClassUID = self.sop_class_uid
        return ds
