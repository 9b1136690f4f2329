"""The values the triage SR is built from: the study finding and the predecessor reference."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage

from worker.errors import WorkerError
from worker.score.decision import Decision, Priority


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
    """

    decision: Decision
    probability_mean: float
    probability_std: float
    scored_sop_instance_uids: tuple[str, ...]
    fold_probabilities: tuple[float, ...] = ()

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
        if not self.scored_sop_instance_uids:
            raise SRError("a finding needs at least one scored SOP Instance UID")

    @property
    def priority(self) -> Priority:
        """HIGH for a suspected study, ROUTINE otherwise.

        A not-assessable study is recorded ROUTINE (never HIGH), and its SR has no priority.
        """
        return Priority.HIGH if self.decision is Decision.SUSPECTED else Priority.ROUTINE


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
