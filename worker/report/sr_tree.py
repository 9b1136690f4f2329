"""The content tree of the triage SR (PS3.16 TID 1500), in the order a reader needs it.

TID 1501 puts a group's measurements before its qualitative evaluations, so the result is
split into three Measurement Groups, each built with highdicom:

1. the result: the finding's decision and the priority, with the scored images;
2. the probability: the mean over the folds, the operating threshold it was compared with,
   and the standard deviation over the folds, each named by what it is;
3. the probability of each fold, labelled ``Fold n probability``.

A not-assessable finding has the first group only, with no priority (docs/safety-gate.md).
Every container is SEPARATE (PS3.3 C.18.8): its items are distinct observations, so viewers
such as dsr2html show each with its name rather than running the values together as one
sentence. docs/sr.md shows the tree item by item.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from worker.report import codes as sr_codes
from worker.report.content import StudyFinding
from worker.report.identity import ModelIdentity
from worker.score.decision import NOT_ASSESSABLE_TEXT

NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"
NOT_VERIFIED = "not verified"
DECIMALS = 4  # values are shown as a reader reads them; the database keeps full precision


def result_label(finding: StudyFinding, model: ModelIdentity) -> str:
    """The first group's tracking identifier: the cautions (and why a study is not assessable).

    dsr2html shows a text of up to 40 characters in place and moves longer ones to an annex,
    so the cautions are kept that short.
    """
    label = (f"{NOT_FOR_CLINICAL_USE} - {NOT_VERIFIED}" if model.not_for_clinical_use
             else f"AI triage result - {NOT_VERIFIED}")
    if not finding.assessed:
        label += f" - {NOT_ASSESSABLE_TEXT}"
    return label


def algorithm_id(model: ModelIdentity) -> AlgorithmIdentification:
    """TID 4019 Algorithm Identification for the ensemble."""
    parameters = [f"ensemble {model.ensemble_hash}"]
    if model.not_for_clinical_use:
        parameters.append(NOT_FOR_CLINICAL_USE)
    return AlgorithmIdentification(
        name=model.algorithm_name,
        version=model.version,
        parameters=parameters,
        family=codes.DCM.ArtificialIntelligence,
    )


def _tracking(study_uid: str, label: str, *role: str) -> TrackingIdentifier:
    # The same UIDs for every version of a study's report track the finding across them.
    return TrackingIdentifier(
        uid=generate_uid(entropy_srcs=["covid19-triage", study_uid, *role]), identifier=label)


def _value(name: CodedConcept, value: float) -> Measurement:
    return Measurement(name, round(value, DECIMALS), sr_codes.UNITLESS)


def _result_group(finding: StudyFinding, model: ModelIdentity,
                  scored: Sequence[Dataset]) -> MeasurementsAndQualitativeEvaluations:
    """Group 1: decision and priority (no priority when not assessable), with the images."""
    evaluations = [QualitativeEvaluation(sr_codes.COVID19,
                                         sr_codes.DECISION_CODES[finding.decision])]
    if finding.assessed:
        evaluations.append(QualitativeEvaluation(sr_codes.PRIORITY,
                                                 sr_codes.PRIORITY_CODES[finding.priority]))
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(scored[0].StudyInstanceUID, result_label(finding, model)),
        finding_type=sr_codes.COVID19,
        qualitative_evaluations=evaluations,
        source_images=[SourceImageForMeasurementGroup.from_source_image(ds) for ds in scored],
    )


def _probability_group(finding: StudyFinding, model: ModelIdentity,
                       study_uid: str) -> MeasurementsAndQualitativeEvaluations:
    """Group 2: the mean probability, the threshold it was compared with, the fold spread."""
    folds = len(finding.fold_probabilities)
    ensemble = f"{folds}-fold ensemble" if folds else "ensemble"
    items = [Measurement(sr_codes.PROBABILITY, round(finding.probability_mean, DECIMALS),
                         sr_codes.UNITLESS, derivation=sr_codes.MEAN)]
    if finding.threshold is not None:
        items.append(_value(sr_codes.THRESHOLD, finding.threshold))
    items.append(_value(sr_codes.STANDARD_DEVIATION, finding.probability_std))
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(study_uid, f"COVID-19 probability ({ensemble})",
                                      "probability"),
        finding_type=sr_codes.COVID19,
        algorithm_id=algorithm_id(model),
        measurements=items,
    )


def _fold_group(finding: StudyFinding, model: ModelIdentity,
                study_uid: str) -> MeasurementsAndQualitativeEvaluations:
    """Group 3: one ``Fold n probability`` per fold, in fold order."""
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(study_uid, "COVID-19 probability of each fold", "folds"),
        finding_type=sr_codes.COVID19,
        algorithm_id=algorithm_id(model),
        measurements=[_value(sr_codes.fold_probability(n), p)
                      for n, p in enumerate(finding.fold_probabilities, start=1)],
    )


def measurement_groups(finding: StudyFinding, model: ModelIdentity,
                       scored: Sequence[Dataset]) -> list[MeasurementsAndQualitativeEvaluations]:
    """The TID 1501 groups of the report, result first."""
    groups = [_result_group(finding, model, scored)]
    if finding.assessed:
        study_uid = str(scored[0].StudyInstanceUID)
        groups.append(_probability_group(finding, model, study_uid))
        if finding.fold_probabilities:
            groups.append(_fold_group(finding, model, study_uid))
    return groups


def observation_context(model: ModelIdentity, manufacturer: str) -> ObservationContext:
    """TID 1002 with a device observer (TID 1004) identified by the Device UID."""
    device = DeviceObserverIdentifyingAttributes(
        uid=model.device_uid,
        name=model.algorithm_name,
        manufacturer_name=manufacturer,
        model_name=model.algorithm_name,
    )
    return ObservationContext(
        observer_device_context=ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=device,
        )
    )


def _separate(items: Iterable[Dataset]) -> None:
    """Mark every container SEPARATE (PS3.3 C.18.8.1.1): distinct observations, not prose."""
    for item in items:
        if item.get("ValueType") == "CONTAINER":
            item.ContinuityOfContent = "SEPARATE"
        _separate(item.get("ContentSequence", []))


def measurement_report(finding: StudyFinding, model: ModelIdentity, scored: Sequence[Dataset],
                       library: Sequence[Dataset], manufacturer: str) -> MeasurementReport:
    """The TID 1500 Measurement Report (root container and everything below it)."""
    report = MeasurementReport(
        observation_context=observation_context(model, manufacturer),
        procedure_reported=[sr_codes.CHEST_IMAGING, sr_codes.PLAIN_RADIOGRAPHY],
        imaging_measurements=measurement_groups(finding, model, scored),
        referenced_images=list(library),
    )
    _separate(report)
    return report
